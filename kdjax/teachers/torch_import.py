"""State-dict conversion and safe ``.pth`` reading (see :mod:`kdjax.convert`)."""

from __future__ import annotations

import argparse
import collections
import dataclasses
import io
import os
import re
import tarfile
import warnings
from typing import Any, Mapping

import flax
import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from kdjax import models, paths
from kdjax.errors import KdjaxError

_TORCH_LEAF = {
    ('params', 'kernel'): 'weight',
    ('params', 'scale'): 'weight',
    ('params', 'bias'): 'bias',
    ('batch_stats', 'mean'): 'running_mean',
    ('batch_stats', 'var'): 'running_var',
}

# Checkpoint dicts that hold the state dict under one of these keys (RepDistiller and
# mdistiller: 'model'; other trainers: 'net', 'state_dict'), tried in this order.
WRAPPER_KEYS = ('model', 'net', 'state_dict')
DATA_PARALLEL_PREFIX = 'module.'


# PyTorch's order of a module's entries: weight, bias, running_mean, running_var.
_LEAF_RANK = {'kernel': 0, 'scale': 0, 'bias': 1, 'mean': 2, 'var': 3}
# The kdjax layout of a PyTorch tensor, by its number of dimensions: the axes of the PyTorch
# tensor in kdjax's order (conv OIHW -> HWIO, dense (out, in) -> (in, out)).
_KDJAX_AXES = {4: (2, 3, 1, 0), 2: (1, 0)}
NUM_BATCHES_TRACKED = 'num_batches_tracked'


def torch_key(collection: str, path: tuple[str, ...]) -> str:
  """The PyTorch state-dict key of the kdjax variable ``collection/path``."""
  return '.'.join(path[:-1] + (_TORCH_LEAF[collection, path[-1]],))


def to_kdjax_layout(value: np.ndarray) -> np.ndarray:
  """A PyTorch tensor in kdjax's layout (see :data:`_KDJAX_AXES`)."""
  return value.transpose(_KDJAX_AXES[value.ndim]) if value.ndim in _KDJAX_AXES else value


def to_torch_layout(value: np.ndarray) -> np.ndarray:
  """A kdjax variable in PyTorch's layout: the inverse of :func:`to_kdjax_layout`."""
  if value.ndim not in _KDJAX_AXES:
    return value
  return value.transpose(np.argsort(_KDJAX_AXES[value.ndim]))


def _torch_shape(kdjax_shape: tuple[int, ...]) -> tuple[int, ...]:
  """The PyTorch shape of a kdjax variable of ``kdjax_shape`` (inverse of the layout)."""
  return to_torch_layout(np.empty(kdjax_shape, np.bool_)).shape


@dataclasses.dataclass(frozen=True)
class TorchLayout:
  """Where each variable of a kdjax model sits in the PyTorch state dict of its model class.

  ``variables``: PyTorch key -> ``(collection, kdjax path, kdjax ShapeDtypeStruct)``, in
  PyTorch's order (modules in forward order; weight, bias, running_mean, running_var).
  ``batch_norm_calls``: kdjax path of each BatchNorm -> how many times one forward pass
  applies it (PyTorch counts each in its ``num_batches_tracked``; WRN applies three twice).
  """
  variables: dict[str, tuple[str, tuple[str, ...], Any]]
  batch_norm_calls: dict[tuple[str, ...], int]


def torch_layout(name: str, num_classes: int = 100, zoo: str = 'cifar') -> TorchLayout:
  """The :class:`TorchLayout` of ``zoo``'s model ``name`` with ``num_classes`` classes."""
  model = models.create(name, num_classes, zoo=zoo)
  call_order: dict[tuple[str, ...], int] = {}
  calls: dict[tuple[str, ...], int] = collections.Counter()

  def record(next_fun, args, kwargs, context):
    if context.method_name == '__call__':
      call_order.setdefault(tuple(context.module.path), len(call_order))
      calls[tuple(context.module.path)] += 1
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(record):  # to name keys in PyTorch's (forward) order
    shapes = models.variable_shapes(model, models.IMAGE_SHAPES[zoo])
  variables = [(collection, path, like) for collection, tree in shapes.items()
               for path, like in
               flax.traverse_util.flatten_dict(flax.core.unfreeze(tree)).items()]
  variables.sort(key=lambda v: (call_order.get(v[1][:-1], len(call_order)),
                                _LEAF_RANK.get(v[1][-1], 4), v[1]))
  return TorchLayout(
      {torch_key(collection, path): (collection, path, like)
       for collection, path, like in variables},
      {path[:-1]: calls[path[:-1]] for collection, path, _ in variables
       if collection == 'batch_stats' and path[-1] == 'var'})


def strip_data_parallel(state_dict: Mapping[str, Any]) -> dict[str, Any]:
  """Removes the ``module.`` prefix ``torch.nn.DataParallel`` puts on every key."""
  return {k.removeprefix(DATA_PARALLEL_PREFIX): v for k, v in state_dict.items()}


def _mismatch_message(name: str, num_classes: int, zoo: str, missing: list[str],
                      unexpected: list[str],
                      wrong: list[tuple[str, tuple[int, ...], tuple[int, ...]]]) -> str:
  """One line naming the first mismatched key, with counts of the rest."""
  problems = []
  if wrong:
    key, have, want = wrong[0]
    problems.append(f'key {key!r} has shape {have}, expected {want}'
                    + (f' (and {len(wrong) - 1} more of the wrong shape)' if len(wrong) > 1
                       else ''))
  if missing:
    problems.append(f'missing key {missing[0]!r}'
                    + (f' (and {len(missing) - 1} more)' if len(missing) > 1 else ''))
  if unexpected:
    problems.append(f'unexpected key {unexpected[0]!r}'
                    + (f' (and {len(unexpected) - 1} more)' if len(unexpected) > 1 else ''))
  # CIFAR's and ImageNet's ResNet18/ResNet50 are different networks of the same name.
  twins = [z for z in models.IMAGE_SHAPES if z != zoo and name in models.names(z)]
  # Only the classifier's class count differs: say so rather than blame the architecture.
  classes = {have[0] for _, have, want in wrong
             if len(have) in (1, 2) and have[1:] == want[1:] and want[0] == num_classes}
  if not missing and not unexpected and len(classes) == 1 and len(wrong) <= 2:
    hint = f' (the checkpoint has {classes.pop()} classes)'
  elif twins:
    hint = f' (is the checkpoint for the {twins[0]} zoo\'s {name}?)'
  else:
    hint = ' (is the checkpoint for another architecture?)'
  model = f"the {zoo} zoo's {name}" if twins else name
  return (f'state dict does not fit {model} with {num_classes} classes: '
          f'{"; ".join(problems)}{hint}')


def variables_from_torch(name: str, state_dict: Mapping[str, Any], num_classes: int = 100,
                         zoo: str = 'cifar') -> dict[str, Any]:
  """Converts a PyTorch ``state_dict`` (name -> array) of model ``name`` of ``zoo``.

  Returns ``{'params': ..., 'batch_stats': ...}`` for
  ``kdjax.models.create(name, num_classes, zoo=zoo).apply``. Raises :class:`KdjaxError`
  naming the first key of the wrong shape (PyTorch shapes) and the first left-over key in
  the state dict's order, and the first missing key in the model's forward order, with
  counts of the rest. A ``module.`` (DataParallel) prefix is removed. The ImageNet ResNets
  carry torchvision's names, so torchvision's ``resnet{18,34,50,101}`` weights convert too.
  """
  expected = torch_layout(name, num_classes, zoo).variables  # in PyTorch's order
  given = {k: v for k, v in strip_data_parallel(state_dict).items()
           if not k.endswith(NUM_BATCHES_TRACKED)}
  missing = [k for k in expected if k not in given]
  unexpected = [k for k in given if k not in expected]
  wrong = []
  filled: dict[str, dict] = {collection: {} for collection, _, _ in expected.values()}
  for key, raw in given.items():  # in the state dict's order
    if key not in expected:
      continue
    collection, path, like = expected[key]
    raw = np.asarray(raw)
    value = to_kdjax_layout(raw)
    if value.shape != like.shape:
      wrong.append((key, tuple(raw.shape), _torch_shape(like.shape)))
      continue
    filled[collection][path] = jnp.asarray(value, dtype=like.dtype)
  if missing or unexpected or wrong:
    raise KdjaxError(_mismatch_message(name, num_classes, zoo, missing, unexpected, wrong))
  return {collection: flax.traverse_util.unflatten_dict(flat)
          for collection, flat in filled.items()}


def _load_failure(path: str, error: Exception) -> str:
  """One line from torch.load's (long, multi-paragraph) refusal or failure."""
  text = str(error)
  found = re.search(r'GLOBAL ([\w.]+)', text)
  if found:  # weights_only refused to import (and so to call) something
    return (f'refused to load {path!r}: it pickles {found.group(1)}, which '
            f'torch.load(weights_only=True) will not run; kdjax reads only plain weights '
            f'files and never runs code from a checkpoint')
  lines = [line.strip() for line in text.splitlines() if line.strip()]
  reason = next((line.split('WeightsUnpickler error:', 1)[1].strip() for line in lines
                 if line.split('WeightsUnpickler error:', 1)[-1].strip()
                 and 'WeightsUnpickler error:' in line), None)
  if reason is None:
    boilerplate = ('Weights only load failed', 'Check the documentation', 'Please file an')
    reason = next((line for line in lines if not line.startswith(boilerplate)),
                  lines[0] if lines else type(error).__name__)
  return (f'{path!r} is not a PyTorch checkpoint (torch.load: {reason}); pass a .pth that '
          f'torch.save wrote, such as RepDistiller\'s or mdistiller\'s ckpt_epoch_240.pth')


def _is_checkpoint_archive(path: str) -> bool:
  """Whether ``path`` is a tar of ``.pth`` files, such as the zoo's ``cifar_teachers.tar``."""
  try:
    with paths.path(path).open('rb') as f:
      if not tarfile.is_tarfile(f):
        return False
      f.seek(0)
      with tarfile.open(fileobj=f) as archive:
        return any(member.name.endswith('.pth') for member in archive)
  except (OSError, tarfile.TarError):
    return False


def _unwrap(obj: Any) -> Any:
  for _ in range(3):  # e.g. {'state_dict': {'model': ...}}
    if not isinstance(obj, dict):
      break
    inner = next((obj[k] for k in WRAPPER_KEYS if isinstance(obj.get(k), dict)), None)
    if inner is None:
      break
    obj = inner
  return obj


def _to_numpy(tensor: Any) -> np.ndarray:
  import torch  # pylint: disable=import-outside-toplevel
  tensor = tensor.detach().cpu()
  if tensor.is_floating_point() and tensor.dtype not in (torch.float16, torch.float32,
                                                         torch.float64):
    tensor = tensor.float()  # bfloat16 and friends have no numpy dtype
  return tensor.numpy()


def load_pth(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """Reads a RepDistiller / mdistiller ``.pth`` into a state dict of numpy arrays.

  Accepts ``{'model': state_dict, ...}`` (RepDistiller, mdistiller), ``{'net': ...}``,
  ``{'state_dict': ...}`` and a bare state dict. Loads with
  ``torch.load(weights_only=True)``: a file that needs arbitrary pickled code is refused,
  never executed (``argparse.Namespace``, which RepDistiller's ``*_last.pth`` pickle as
  ``'opt'``, is allowed: it is plain data). A ``module.`` prefix (DataParallel) is removed.
  ``path`` may be a ``gs://`` URL: the file is then read whole into memory first. Needs the
  optional extra ``kdjax[torch]``.
  """
  path = os.fspath(path)
  where = paths.path(path, 'checkpoint')
  try:
    import torch  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise KdjaxError(
        "reading a .pth checkpoint needs PyTorch: pip install 'kdjax[torch]'") from e
  if not where.exists():
    raise KdjaxError(f'checkpoint {path!r} does not exist')
  if not where.is_file():
    raise KdjaxError(f'checkpoint {path!r} is not a file')
  try:
    # torch's own warnings (an unusual pickle protocol in garbage) would speak in its format;
    # what matters reaches the user as the one line below.
    with torch.serialization.safe_globals([argparse.Namespace]), warnings.catch_warnings():
      warnings.simplefilter('ignore')
      source = io.BytesIO(where.read_bytes()) if paths.is_remote(path) else os.fspath(where)
      obj = torch.load(source, map_location='cpu', weights_only=True)
  except Exception as e:  # pylint: disable=broad-except
    if _is_checkpoint_archive(path):
      raise KdjaxError(f'{path!r} is an archive of checkpoints (such as cifar_teachers.tar): '
                       f'extract it with `tar xf` and pass one of its .pth files, e.g. '
                       f'resnet32x4_vanilla/ckpt_epoch_240.pth') from e
    raise KdjaxError(_load_failure(path, e)) from e
  state_dict = _unwrap(obj)
  if (not isinstance(state_dict, dict) or not state_dict
      or not all(hasattr(v, 'shape') for v in state_dict.values())):
    keys = ', '.join(map(str, list(obj)[:8])) if isinstance(obj, dict) else type(obj).__name__
    raise KdjaxError(f'{path!r} holds no state dict (a mapping of names to tensors, bare or '
                     f'under {" / ".join(map(repr, WRAPPER_KEYS))}); it holds: {keys}')
  return {k: _to_numpy(v) for k, v in strip_data_parallel(state_dict).items()}
