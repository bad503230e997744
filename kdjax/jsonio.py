"""The JSON files of a run directory (``config.json``, ``results.json``), read and written."""

from __future__ import annotations

import json
import os
from typing import Any, Optional


def read_json_or_why(path: str) -> tuple[Optional[Any], Optional[str]]:
  """``(object, None)`` for the JSON in ``path``; ``(None, None)`` when it does not exist;
  ``(None, why)`` when it cannot be read or parsed (a run still writing, a cut file)."""
  try:
    with open(path) as f:
      return json.load(f), None
  except FileNotFoundError:
    return None, None
  except (OSError, ValueError) as e:
    why = e.strerror if isinstance(e, OSError) else (str(e).splitlines() or [''])[0]
    return None, f'unreadable ({type(e).__name__}: {why})'


def read_json(path: str) -> Optional[Any]:
  """The JSON in ``path``, or None when it is missing or unreadable (a run still writing)."""
  return read_json_or_why(path)[0]


def write_json(path: str, obj: Any) -> None:
  """Writes ``obj`` to ``path`` atomically (a temporary file, then a rename)."""
  tmp = path + '.tmp'
  with open(tmp, 'w') as f:
    json.dump(obj, f, indent=2, sort_keys=True)
  os.replace(tmp, path)
