"""kdjax variables -> the PyTorch state dict of the RepDistiller / mdistiller model class.

The exact inverse of :func:`kdjax.teachers.torch_import.variables_from_torch`, through the same
table (:func:`~kdjax.teachers.torch_import.torch_layout`): the same keys in the same order,
PyTorch's layouts and shapes, float32 weights and BatchNorm running statistics, and every
BatchNorm's ``num_batches_tracked`` (int64) as PyTorch would count it after ``steps``
training steps, so that the model class loads it with ``load_state_dict(strict=True)``.
"""

from __future__ import annotations

import os
from typing import Any, Mapping

import flax
import numpy as np

from kdjax import paths
from kdjax.teachers.torch_import import NUM_BATCHES_TRACKED, to_torch_layout, torch_layout
from kdjax.errors import KdjaxError


def state_dict_from_variables(name: str, variables: Mapping[str, Any], num_classes: int = 100,
                              zoo: str = 'cifar', steps: int = 0) -> dict[str, np.ndarray]:
  """The PyTorch state dict (key -> numpy array, in PyTorch's order) of ``zoo``'s model
  ``name`` with ``num_classes`` classes holding ``variables`` (``{'params', 'batch_stats'}``).

  ``steps``: the training steps the net took; each BatchNorm's ``num_batches_tracked`` is
  ``steps`` times the number of times one forward pass applies it, as in PyTorch. Raises
  :class:`KdjaxError` naming the first variable missing or of the wrong shape.
  """
  layout = torch_layout(name, num_classes, zoo)
  have = {(collection, path): value for collection, tree in variables.items()
          for path, value in flax.traverse_util.flatten_dict(flax.core.unfreeze(tree)).items()}
  state_dict = {}
  for key, (collection, path, like) in layout.variables.items():
    if (collection, path) not in have:
      raise KdjaxError(f'the variables do not fit {name} with {num_classes} classes: they have '
                       f'no {collection}/{"/".join(path)}')
    value = np.asarray(have[collection, path], np.float32)
    if value.shape != like.shape:
      raise KdjaxError(f'the variables do not fit {name} with {num_classes} classes: '
                       f'{collection}/{"/".join(path)} has shape {value.shape}, expected '
                       f'{like.shape}')
    state_dict[key] = np.array(to_torch_layout(value), order='C')  # writable, for torch
    if path[:-1] in layout.batch_norm_calls and path[-1] == 'var':  # after running_var
      calls = layout.batch_norm_calls[path[:-1]]
      state_dict[key.rsplit('.', 1)[0] + '.' + NUM_BATCHES_TRACKED] = np.asarray(
          steps * calls, np.int64)
  return state_dict


def save_pth(path: str | os.PathLike, state_dict: Mapping[str, np.ndarray]) -> None:
  """Writes ``state_dict`` with ``torch.save`` as a bare state dict of tensors (what
  ``model.load_state_dict(torch.load(path))`` takes), whole or not at all
  (:func:`kdjax.paths.writing`; ``path`` may be a ``gs://`` URL). Needs ``kdjax[torch]``."""
  torch = require_torch()
  with paths.writing(path) as f:
    torch.save({k: torch.from_numpy(np.array(v)) for k, v in state_dict.items()}, f)


def require_torch():
  """The ``torch`` module; :class:`KdjaxError` saying how to install it if it is missing."""
  try:
    import torch  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise KdjaxError("writing a PyTorch state dict needs PyTorch: pip install 'kdjax[torch]' "
                     "(or export with --format flax)") from e
  return torch
