"""The JSON files of a run directory (``config.json``, ``results.json``), read and written,
locally or in an object store (:mod:`kdjax.paths`)."""

from __future__ import annotations

import json
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
  """Writes ``obj`` to ``path`` atomically: locally a temporary file, then a rename; in an
  object store one upload (readers see the old object or the new one, never a part)."""
  write_text(path, json.dumps(obj, indent=2, sort_keys=True))


def write_text(path: paths.PathLike, text: str) -> None:
  """Writes ``text`` to ``path`` atomically (see :func:`write_json`)."""
  target = paths.path(path)
  if paths.is_remote(path):
    target.write_text(text)
    return
  tmp = target.with_name(target.name + '.tmp')
  tmp.write_text(text)  # a kill now leaves the old file whole
  tmp.replace(target)
