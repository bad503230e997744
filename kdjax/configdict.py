"""The one way kdjax derives a config from another: a deep copy with some fields changed."""

from __future__ import annotations

from typing import Any, Mapping

import ml_collections


def derive(config: ml_collections.ConfigDict,
           changes: Mapping[str, Any] = ()) -> ml_collections.ConfigDict:
  """A copy of ``config`` (``config`` itself is never changed) with ``changes`` applied.

  ``changes`` maps dotted field names to values: ``{'method': 'kd', 'teacher.model': 'x'}``.
  """
  copy = ml_collections.ConfigDict(config.to_dict())
  for key, value in dict(changes).items():
    *blocks, field = key.split('.')
    target = copy
    for block in blocks:
      target = target[block]
    target[field] = value
  return copy
