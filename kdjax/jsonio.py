"""The JSON files of a run directory (``config.json``, ``config_changes.jsonl``,
``results.json``), read and written, locally or in an object store (:mod:`kdjax.paths`).

A run writes ``config.json`` once, when it starts, and never overwrites it; a rerun that
continues it under fields the user allowed to change (``--allow_change``) appends each change
to ``config_changes.jsonl``. The config a run now continues under is the first with the
changes applied in order (:func:`read_run_config_or_why`).
"""

from __future__ import annotations

import json
import time
from typing import Any, Optional

from kdjax import paths


def read_json_or_why(path: str) -> tuple[Optional[Any], Optional[str]]:
  """``(object, None)`` for the JSON in ``path``; ``(None, None)`` when it does not exist;
  ``(None, why)`` when it cannot be read or parsed (a run still writing, a cut file)."""
  try:
    return json.loads(paths.path(path).read_text()), None
  except FileNotFoundError:
    return None, None
  except (OSError, ValueError) as e:
    why = e.strerror if isinstance(e, OSError) else (str(e).splitlines() or [''])[0]
    return None, f'unreadable ({type(e).__name__}: {why})'


def read_json(path: str) -> Optional[Any]:
  """The JSON in ``path``, or None when it is missing or unreadable (a run still writing)."""
  return read_json_or_why(path)[0]


def write_json(path: str, obj: Any) -> None:
  """Writes ``obj`` to ``path`` whole or not at all (:func:`kdjax.paths.writing`: locally a
  temporary file, then a rename; in an object store one upload)."""
  write_text(path, json.dumps(obj, indent=2, sort_keys=True))


def write_text(path: paths.PathLike, text: str) -> None:
  """Writes ``text`` to ``path`` whole or not at all (:func:`kdjax.paths.writing`)."""
  with paths.writing(path) as f:
    f.write(text.encode())


CONFIG = 'config.json'
CHANGES = 'config_changes.jsonl'


def read_run_config_or_why(workdir: paths.PathLike) -> tuple[Optional[dict], Optional[str]]:
  """As :func:`read_json_or_why`, for ``workdir``'s config as it now stands: its
  ``config.json`` with the changes of ``config_changes.jsonl`` applied in order."""
  folder = paths.path(workdir)
  config, why = read_json_or_why(folder / CONFIG)
  if not isinstance(config, dict):
    return None, why or (None if config is None else 'not a JSON object')
  log = folder / CHANGES
  try:
    for line in (log.read_text().splitlines() if log.exists() else ()):
      change = json.loads(line)
      *blocks, leaf = change['field'].split('.')
      target = config
      for block in blocks:
        target = target.setdefault(block, {})
      target[leaf] = change['new']
  except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
    return None, f'{CHANGES} unreadable ({type(e).__name__}: {e})'
  return config, None


def record_changes(workdir: paths.PathLike, step: int, changes: list) -> None:
  """Appends ``changes`` (``(field, old, new)``, made when the run resumed at ``step``) to
  ``workdir``'s ``config_changes.jsonl``, one line each (the whole object is rewritten: an
  object store cannot append)."""
  log = paths.path(workdir) / CHANGES
  when = time.strftime('%Y-%m-%dT%H:%M:%S%z')
  lines = ''.join(json.dumps({'time': when, 'step': step, 'field': field, 'old': old,
                              'new': new}) + '\n' for field, old, new in changes)
  write_text(log, (log.read_text() if log.exists() else '') + lines)
