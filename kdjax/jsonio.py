"""The JSON files of a run directory (``config.json``, ``results.json``), read and written."""

from __future__ import annotations

import json
import os
from typing import Any, Optional


def read_json(path: str) -> Optional[Any]:
  """The JSON in ``path``, or None when it is missing or unreadable (a run still writing)."""
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, ValueError):
    return None


def write_json(path: str, obj: Any) -> None:
  """Writes ``obj`` to ``path`` atomically (a temporary file, then a rename)."""
  tmp = path + '.tmp'
  with open(tmp, 'w') as f:
    json.dump(obj, f, indent=2, sort_keys=True)
  os.replace(tmp, path)
