"""State-dict conversion and safe ``.pth`` reading (see :mod:`kdjax.convert`)."""

from __future__ import annotations

import os
from typing import Any, Mapping

import flax
import jax
import jax.numpy as jnp
import numpy as np

from kdjax import models
from kdjax.errors import KdjaxError

_TORCH_LEAF = {
    ('params', 'kernel'): 'weight',
    ('params', 'scale'): 'weight',
    ('params', 'bias'): 'bias',
    ('batch_stats', 'mean'): 'running_mean',
    ('batch_stats', 'var'): 'running_var',
}


def torch_key(collection: str, path: tuple[str, ...]) -> str:
  """The PyTorch state-dict key of the kdjax variable ``collection/path``."""
  return '.'.join(path[:-1] + (_TORCH_LEAF[collection, path[-1]],))


def _to_kdjax_layout(value: np.ndarray, like_shape: tuple[int, ...]) -> np.ndarray:
  if value.ndim == 4:  # OIHW -> HWIO
    value = value.transpose(2, 3, 1, 0)
  elif value.ndim == 2 and len(like_shape) == 2:  # (out, in) -> (in, out)
    value = value.T
  return value


def variables_from_torch(name: str, state_dict: Mapping[str, Any],
                         num_classes: int = 100) -> dict[str, Any]:
  """Converts a PyTorch ``state_dict`` (name -> array) of zoo model ``name``.

  Returns ``{'params': ..., 'batch_stats': ...}`` for
  ``kdjax.models.create(name, num_classes).apply``. Raises :class:`KdjaxError` naming the
  first key that is missing, left over, or of the wrong shape.
  """
  model = models.create(name, num_classes)
  shapes = jax.eval_shape(
      lambda: model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False))
  remaining = {k: np.asarray(v) for k, v in state_dict.items()
               if not k.endswith('num_batches_tracked')}
  out: dict[str, Any] = {}
  for collection, tree in shapes.items():
    flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(tree))
    filled = {}
    for path, like in flat.items():
      key = torch_key(collection, path)
      if key not in remaining:
        raise KdjaxError(
            f'state dict does not fit {name}: missing key {key!r} (is the checkpoint for '
            f'another architecture?)')
      value = _to_kdjax_layout(remaining.pop(key), like.shape)
      if value.shape != like.shape:
        raise KdjaxError(
            f'state dict does not fit {name} with {num_classes} classes: key {key!r} has '
            f'shape {value.shape} (kdjax layout), expected {like.shape}')
      filled[path] = jnp.asarray(value, dtype=like.dtype)
    out[collection] = flax.traverse_util.unflatten_dict(filled)
  if remaining:
    raise KdjaxError(
        f'state dict does not fit {name}: unexpected key {sorted(remaining)[0]!r} '
        f'(and {len(remaining) - 1} more)')
  return out


def load_pth(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """Reads a RepDistiller / mdistiller ``.pth`` into a state dict of numpy arrays.

  Accepts ``{'model': state_dict, ...}``, ``{'net': ...}``, ``{'state_dict': ...}`` and a
  bare state dict. Loads with ``torch.load(weights_only=True)``: a file that needs
  arbitrary pickled code is refused, never executed. A ``module.`` prefix (DataParallel)
  is removed. Needs the optional extra ``kdjax[torch]``.
  """
  try:
    import torch
  except ImportError as e:
    raise KdjaxError(
        'reading a .pth checkpoint needs PyTorch: pip install "kdjax[torch]"') from e
  try:
    obj = torch.load(os.fspath(path), map_location='cpu', weights_only=True)
  except FileNotFoundError as e:
    raise KdjaxError(f'checkpoint {os.fspath(path)!r} does not exist') from e
  except Exception as e:  # torch raises UnpicklingError for code it refuses to run
    first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    raise KdjaxError(
        f'refused to load {os.fspath(path)!r}: it is not a plain weights file '
        f'(torch.load(weights_only=True) said: {first_line})') from e
  if isinstance(obj, dict):
    for wrapper in ('model', 'net', 'state_dict'):
      if wrapper in obj and isinstance(obj[wrapper], dict):
        obj = obj[wrapper]
        break
  if not isinstance(obj, dict) or not all(hasattr(v, 'shape') for v in obj.values()):
    raise KdjaxError(f'{os.fspath(path)!r} holds no state dict (a mapping of names to tensors)')
  return {k.removeprefix('module.'): v.detach().cpu().numpy() for k, v in obj.items()}
