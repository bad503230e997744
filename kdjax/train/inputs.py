"""What a run reads before it trains: :func:`load_inputs` and :func:`load_teacher_inputs`
turn a validated config into :class:`RunInputs` (the dataset splits, the held-out quiz
indices, the teacher's recorded trajectory, its variables and its logit cache);
:func:`method_inputs` turns them into the :class:`~kdjax.methods.base.BuildInputs` a method
is built from.

    inputs = load_inputs(config)
    method = methods.build(config, method_inputs(config, inputs, lr_schedule(config, inputs)))
    inputs = load_teacher_inputs(config, inputs, mesh)

The teacher's pieces are loaded after the method is built (its nets checked against the
data first). Each piece has its own loader (:func:`load_datasets`, :func:`load_teacher`,
:func:`load_trajectory`, :func:`load_logit_cache`); ``python -m kdjax.cache`` calls them to
build a teacher-logit cache without training. Every loader reads files only; the config was
checked by :mod:`kdjax.plan` before.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.sharding import Mesh

from kdjax import data, methods, platform_tuning, teachers
from kdjax.data import image_sources
from kdjax.errors import KdjaxError
from kdjax.methods.base import BuildInputs
from kdjax.teachers import logit_cache, trajectory
from kdjax.teachers import zoo as teacher_zoo
from kdjax.train import optim


class RunInputs(NamedTuple):
  """A run's inputs, loaded from files (or given: the throughput benchmark's synthetic ones).

  ``train`` / ``test`` are :class:`kdjax.data.Dataset` splits held whole on the devices, or,
  on a host dataset (``on_host``, :data:`kdjax.data.HOST_DATASETS`), image sources
  (:mod:`kdjax.data.image_sources`) that the host pipeline decodes.
  """
  train: Any
  test: Any
  on_host: bool
  image_shape: tuple  # (H, W, C) of the images the nets see
  mean: tuple  # the normalisation of the images, per channel
  std: tuple
  train_indices: Optional[np.ndarray] = None  # the training indices left (None: all)
  quiz_pool: Optional[np.ndarray] = None  # the held-out training indices (config.data.holdout)
  teacher_variables: Any = None  # of config.teacher, for a method that distils from one
  teacher_trajectory: Any = None  # its recorded snapshots, stacked (SKD's 'snapshots')
  teacher_logits: Optional[np.ndarray] = None  # its logit cache (N, V, classes)

  @property
  def num_classes(self) -> int:
    return self.train.num_classes

  @property
  def train_size(self) -> int:
    """The training images a run trains on (the held-out ones aside)."""
    return len(self.train) if self.train_indices is None else len(self.train_indices)

  def steps_per_epoch(self, batch_size: int) -> int:
    return self.train_size // batch_size


def load_datasets(config: ml_collections.ConfigDict) -> tuple:
  """``(train, test)`` of ``config.data``: held in host memory, or image sources of data the
  host pipeline streams (:func:`kdjax.data.streams`)."""
  d = config.data
  if data.is_custom(d.name):
    if data.streams(config):
      return data.custom.open_sources(config)
    return tuple(data.custom.load(config, split) for split in ('train', 'test'))
  if d.name in data.HOST_DATASETS:
    return tuple(image_sources.open_split(d.name, split, d.data_dir)
                 for split in ('train', 'test'))
  return tuple(data.load_split(d.name, split, data_dir=d.data_dir, download=d.download,
                               url=d.url, sha256=d.sha256) for split in ('train', 'test'))


def teacher_path(config: ml_collections.ConfigDict, num_classes: int) -> str:
  """``config.teacher.checkpoint``, a published ``mdistiller:<model>`` resolved to its
  converted folder in the download cache (downloaded and converted on first use)."""
  spec = config.teacher.checkpoint
  if not teacher_zoo.is_zoo_spec(spec):
    return spec
  return teacher_zoo.resolve(spec, zoo_url=config.teacher.get('zoo_url'),
                             num_classes=num_classes)


def load_teacher(config: ml_collections.ConfigDict, num_classes: int, image_shape: tuple) -> dict:
  """The variables of ``config.teacher``, checked to fit its model."""
  return teachers.load_variables(teacher_path(config, num_classes), config.teacher.model,
                                 num_classes, image_shape, config.zoo,
                                 dataset=config.data.name,
                                 other_data=config.teacher.other_data)


def load_trajectory(config: ml_collections.ConfigDict, num_classes: int,
                    image_shape: tuple) -> dict:
  """The teacher's recorded snapshots (:mod:`kdjax.teachers.trajectory`), stacked."""
  return trajectory.load_snapshots(config.teacher.checkpoint, config.teacher.model,
                                   num_classes, image_shape, config.zoo)


def _split_holdout(config: ml_collections.ConfigDict, train) -> tuple:
  """``(train_indices, quiz_pool)``: ``config.data.holdout`` examples set aside (stratified,
  fixed); ``(None, None)`` without a holdout."""
  holdout, batch_size = config.data.holdout, config.batch_size
  if not holdout:
    return None, None
  if holdout >= len(train) - batch_size:
    raise KdjaxError(f'config.data.holdout {holdout} leaves less than one batch of the '
                     f'{len(train)} training images')
  return data.holdout_split(train.labels, holdout)


def load_inputs(config: ml_collections.ConfigDict, *, datasets=None,
                teacher_trajectory=None) -> RunInputs:
  """What ``config``'s method is built from, each piece loaded unless given: the dataset
  splits, the held-out quiz indices, and the teacher's trajectory for a method that names
  ``'teacher_trajectory'`` in ``INFO.inputs``. :func:`load_teacher_inputs` adds the rest."""
  info = methods.info(config.method)
  train, test = datasets or load_datasets(config)
  if data.streams(config):
    size = config.data.image_size
    inputs = RunInputs(train, test, True, (size, size, 3),
                       *data.custom.normalisation(config, train))
  else:
    inputs = RunInputs(train, test, False, tuple(train.images.shape[1:]), train.mean, train.std)
  train_indices, quiz_pool = _split_holdout(config, train)
  inputs = inputs._replace(train_indices=train_indices, quiz_pool=quiz_pool)
  if inputs.steps_per_epoch(config.batch_size) == 0:
    raise KdjaxError(f'config.batch_size {config.batch_size} is larger than the training '
                     f'set ({inputs.train_size} images)')
  if 'teacher_trajectory' in info.inputs(config) and teacher_trajectory is None:
    teacher_trajectory = load_trajectory(config, inputs.num_classes, inputs.image_shape)
  return inputs._replace(teacher_trajectory=teacher_trajectory)


def load_teacher_inputs(config: ml_collections.ConfigDict, inputs: RunInputs, mesh: Mesh, *,
                        teacher_variables=None, teacher_logits=None) -> RunInputs:
  """``inputs`` with what a method that distils from a teacher reads of it, each piece
  loaded unless given: its variables, and its logit cache with ``config.teacher.cache``
  (built first where it is missing, on ``mesh``'s devices)."""
  if not methods.info(config.method).uses_teacher:
    return inputs
  if teacher_variables is None:
    teacher_variables = load_teacher(config, inputs.num_classes, inputs.image_shape)
  if config.teacher.cache and teacher_logits is None:
    teacher_logits = load_logit_cache(config, inputs.train, teacher_variables, mesh)
  return inputs._replace(teacher_variables=teacher_variables, teacher_logits=teacher_logits)


def load_logit_cache(config: ml_collections.ConfigDict, train: data.Dataset, teacher_variables,
                     mesh: Mesh) -> np.ndarray:
  """The logit cache of ``config``'s teacher (``teacher_variables``) on ``train``
  (:func:`kdjax.teachers.logit_cache.teacher_logits`: loaded and verified, its missing chunks
  computed first on ``mesh``'s devices), by the teacher net every distiller builds."""
  teacher = BuildInputs(num_classes=train.num_classes, optimizer=None,
                        dtype=jnp.dtype(config.dtype), zoo=config.zoo,
                        materialize_residuals=platform_tuning.materialize_residuals(config))
  return logit_cache.teacher_logits(
      config, teacher.create_net(config.teacher.model, frozen=True), teacher_variables, train,
      mesh)


def lr_schedule(config: ml_collections.ConfigDict, inputs: RunInputs) -> optax.Schedule:
  """The run's learning rate per step (:func:`kdjax.train.optim.lr_schedule`)."""
  return optim.lr_schedule(config.optimizer, inputs.steps_per_epoch(config.batch_size),
                           config.num_epochs)


def method_inputs(config: ml_collections.ConfigDict, inputs: RunInputs,
                  schedule: optax.Schedule) -> BuildInputs:
  """What ``methods.build`` gets besides the config: the data's classes and image shape,
  the run's optimizer (SGD at the learning rates of ``schedule``, :func:`lr_schedule`),
  dtype and BatchNorm grouping, and the inputs ``INFO.inputs`` names."""
  needs = methods.info(config.method).inputs(config)
  return BuildInputs(
      num_classes=inputs.num_classes,
      optimizer=optim.sgd(config.optimizer, schedule),
      image_shape=inputs.image_shape, dtype=jnp.dtype(config.dtype),
      bn_groups=jax.device_count() if config.bn_stats == 'per_device' else 1,
      materialize_residuals=platform_tuning.materialize_residuals(config),
      train_labels=inputs.train.labels if 'train_labels' in needs else None,
      teacher_trajectory=inputs.teacher_trajectory, zoo=config.zoo)
