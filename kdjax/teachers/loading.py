"""Frozen teachers: where their variables come from, and checking that they fit.

``config.teacher.checkpoint`` may name

* a kdjax workdir of a finished (or running) run, e.g. of ``experiments/vanilla.py``: the
  newest checkpoint's trained net, the one its method's ``INFO.trained_net`` names
  (``params['student']`` / ``batch_stats['student']``; for an SFTN run, ``experiments/sftn.py``,
  its ``teacher`` net without the student branches);
* a teacher folder written by ``python -m kdjax.convert`` or :func:`save` (it holds
  ``teacher.json`` and the variables);
* a PyTorch ``.pth`` of RepDistiller / mdistiller, converted on the fly
  (:mod:`kdjax.convert`; needs ``kdjax[torch]``).

Each may be a ``gs://`` URL (:mod:`kdjax.paths`; e.g. ``gs://bucket/teacher``): it is read
from the bucket (Orbax reads the variables there itself).

A teacher whose architecture or class count does not fit the config is refused with one
line, before any training: one trained on another number of classes than the data has
(:func:`check_classes`), or whose variables do not fit (the first mismatched one named). So is
one trained on another dataset (a workdir's ``config.json``, a folder's ``teacher.json``
record it; the dataset fixes kdjax's normalisation too) unless ``config.teacher.other_data``
says it is deliberate: a CIFAR-10 teacher has as many classes as digits, but they mean other
things.
"""

from __future__ import annotations

import json
import os

import flax
import jax.numpy as jnp
import numpy as np

from kdjax import checkpoints, jsonio, methods, models, paths
from kdjax.teachers import torch_import as convert
from kdjax.errors import KdjaxError

TEACHER_JSON = 'teacher.json'


def save(directory: str, model: str, num_classes: int, variables: dict, *,
         source: str = '', dataset: str | None = None) -> None:
  """Writes a teacher folder: the variables (Orbax), then ``teacher.json`` (with the
  ``dataset`` it was trained on, when known), which marks it complete: a folder whose writing
  was interrupted has none, and is never taken for a teacher."""
  directory = paths.path(directory, 'teacher folder')
  directory.mkdir(parents=True, exist_ok=True)
  (directory / TEACHER_JSON).unlink(missing_ok=True)  # an older teacher's, being replaced
  checkpoints.save_tree(os.fspath(directory / 'variables'), variables)
  meta = {'model': model, 'num_classes': num_classes, 'source': source, 'dataset': dataset}
  jsonio.write_json(os.fspath(directory / TEACHER_JSON),
                    {k: v for k, v in meta.items() if v is not None})


def _from_workdir(path: str) -> tuple[dict, dict]:
  config = json.loads((paths.path(path) / 'config.json').read_text())
  restored = checkpoints.restore_on_host(os.fspath(paths.path(path) / 'checkpoints'))
  if restored is None:
    raise KdjaxError(f'workdir {path!r} holds no checkpoint yet')
  step, state = restored
  net = methods.info(config.get('method', methods.SUPERVISED)).trained_net  # SFTN: 'teacher'
  variables = {'params': state['params'][net], 'batch_stats': state['batch_stats'][net]}
  results = jsonio.read_json(os.fspath(paths.path(path) / 'results.json')) or {}
  meta = {'model': config.get('model'), 'dataset': config.get('data', {}).get('name'),
          'step': int(step), 'num_classes': results.get('num_classes')}
  return variables, meta


def _from_folder(path: str) -> tuple[dict, dict]:
  meta = json.loads((paths.path(path) / TEACHER_JSON).read_text())
  return checkpoints.restore_tree(os.fspath(paths.path(path) / 'variables')), meta


def _from_pth(path: str, model: str, num_classes: int, zoo: str) -> tuple[dict, dict]:
  variables = convert.variables_from_torch(model, convert.load_pth(path), num_classes, zoo=zoo)
  return variables, {'model': model, 'num_classes': num_classes, 'source': path}


def check_fits(variables: dict, model: str, num_classes: int, source: str,
               image_shape=models.CIFAR_IMAGE_SHAPE, zoo: str = 'cifar') -> dict:
  """Casts ``variables`` to float32 arrays; raises naming the first mismatch with ``zoo``'s
  ``model``."""
  expected = models.variable_shapes(models.create(model, num_classes, zoo=zoo), image_shape)
  want = flax.traverse_util.flatten_dict(flax.core.unfreeze(expected), sep='/')
  have = flax.traverse_util.flatten_dict(flax.core.unfreeze(dict(variables)), sep='/')
  for key, like in want.items():
    if key not in have:
      raise KdjaxError(f'teacher {source!r} does not fit {model} with {num_classes} classes: '
                       f'it has no variable {key}')
    if tuple(np.shape(have[key])) != tuple(like.shape):
      raise KdjaxError(f'teacher {source!r} does not fit {model} with {num_classes} classes: '
                       f'{key} has shape {tuple(np.shape(have[key]))}, expected '
                       f'{tuple(like.shape)}')
  extra = sorted(set(have) - set(want))
  if extra:
    raise KdjaxError(f'teacher {source!r} does not fit {model}: unexpected variable {extra[0]}')
  return flax.traverse_util.unflatten_dict(
      {k: jnp.asarray(v, jnp.float32) for k, v in have.items() if k in want}, sep='/')


def check_classes(meta: dict, num_classes: int, path: str) -> None:
  """Raises one line when the teacher at ``path`` (its ``meta``) was trained on another number
  of classes than the run's data has."""
  trained = meta.get('num_classes')
  if trained is not None and trained != num_classes:
    on = f' of {meta["dataset"]}' if meta.get('dataset') else ''
    raise KdjaxError(f'teacher {path!r} was trained on {trained} classes{on}, and the data has '
                     f'{num_classes}: distil on the data it was trained on, or train a teacher '
                     f'on this data (method vanilla)')


def load_variables(path: str, model: str, num_classes: int,
                   image_shape=models.CIFAR_IMAGE_SHAPE, zoo: str = 'cifar', *,
                   dataset: str | None = None, other_data: bool = False) -> dict:
  """The variables of the teacher at ``path`` (see the module docstring), checked to fit
  ``zoo``'s ``model`` with ``num_classes`` classes on images of ``image_shape``, and to have
  been trained on ``dataset`` where it says (unless ``other_data``)."""
  variables, meta = load(path, model, num_classes, image_shape, zoo)
  trained_on = meta.get('dataset')
  if dataset and trained_on and trained_on != dataset and not other_data:
    raise KdjaxError(f'teacher {path!r} was trained on {trained_on}, and this run is on '
                     f'{dataset} (config.data.name): its classes and normalisation are '
                     f'another\'s; choose a teacher trained on {dataset}, or set '
                     f'--config.teacher.other_data=true if this is deliberate')
  return variables


def load(path: str, model: str, num_classes: int, image_shape=models.CIFAR_IMAGE_SHAPE,
         zoo: str = 'cifar') -> tuple[dict, dict]:
  """:func:`load_variables` and what ``path`` says of them: ``model``, and a workdir's
  ``dataset``, ``step`` and (from its results) ``num_classes``, a teacher folder's
  ``num_classes``, ``source`` and (when recorded) ``dataset``."""
  where = paths.path(path, 'config.teacher.checkpoint')
  if not where.exists():
    raise KdjaxError(f'teacher checkpoint {path!r} does not exist (config.teacher.checkpoint)')
  if path.endswith(('.pth', '.pt', '.tar')) and where.is_file():
    read = lambda: _from_pth(path, model, num_classes, zoo)
  elif (where / TEACHER_JSON).exists():
    read = lambda: _from_folder(path)
  elif (where / 'checkpoints').exists():
    read = lambda: _from_workdir(path)
  else:
    raise KdjaxError(f'teacher checkpoint {path!r} is neither a kdjax workdir, a teacher '
                     f'folder from `python -m kdjax.convert`, nor a .pth file')
  try:
    variables, meta = read()
  except KdjaxError:
    raise
  except Exception as e:  # pylint: disable=broad-except  # a damaged or incomplete folder
    text = str(e).strip()
    reason = f'{type(e).__name__}: {text.splitlines()[0]}' if text else type(e).__name__
    raise KdjaxError(f'teacher {path!r} could not be read ({reason[:300]}); is it complete? '
                     f'Convert or train it again') from None
  if meta.get('model') and meta['model'] != model:
    raise KdjaxError(f'teacher {path!r} is a {meta["model"]}, but config.teacher.model is '
                     f'{model}')
  check_classes(meta, num_classes, path)
  try:
    return check_fits(variables, model, num_classes, path, image_shape, zoo), meta
  except (TypeError, ValueError) as e:
    raise KdjaxError(f'teacher {path!r} could not be read: {e}') from e
