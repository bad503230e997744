"""Feeds: where a run's batches come from, one step at a time, and how its test set is
evaluated. :class:`DeviceFeed` serves datasets held whole on the devices (CIFAR, digits);
:class:`HostFeed` the host pipeline's batches (:mod:`kdjax.data.host_pipeline`, ImageNet).
Both follow :class:`Feed`; :func:`open_feed` gives the one a run's inputs need.
"""

from __future__ import annotations

from typing import Optional, Protocol

import jax
import ml_collections
import numpy as np
from jax.sharding import Mesh

from kdjax import data, sharding
from kdjax.data import host_pipeline
from kdjax.errors import KdjaxError
from kdjax.methods.base import FrozenInputs
from kdjax.teachers import logit_cache
from kdjax.train import step as step_lib
from kdjax.train.inputs import RunInputs


class Feed(Protocol):
  """What the training loop reads from a feed."""
  frozen: FrozenInputs  # on the devices

  def train_inputs(self, step: int) -> tuple:
    """The train step's arguments after ``frozen`` for update ``step`` (0-based)."""

  def evaluate(self, eval_step, variables) -> dict:
    """``{net: {'top1', 'top5', 'loss'}}`` of ``variables`` on the whole test set."""

  def state(self) -> Optional[dict]:
    """The position of the next batch, kept in checkpoints (None: a function of the step)."""

  def close(self) -> None:
    """Stops whatever the feed started (worker processes, prefetching)."""


def eval_batch_size(config: ml_collections.ConfigDict) -> int:
  """``config.eval_batch_size`` rounded up to a multiple of the devices."""
  n_dev = jax.device_count()
  return -(-config.eval_batch_size // n_dev) * n_dev


def batch_indices(config: ml_collections.ConfigDict, inputs: RunInputs, step: int) -> np.ndarray:
  """The training-set indices of update ``step`` (0-based), on the host: a permutation of
  the training indices left after the holdout, fixed by ``(config.seed, epoch)``."""
  idx = data.batch_indices(config.seed, step, inputs.train_size, config.batch_size)
  return np.asarray(idx if inputs.train_indices is None else inputs.train_indices[idx])


class DeviceFeed:
  """The splits held whole on the devices: each step gathers its batch there (and, with a
  teacher-logit cache kept in host memory, receives its rows of it,
  :class:`kdjax.teachers.logit_cache.HostRows`)."""

  def __init__(self, config: ml_collections.ConfigDict, inputs: RunInputs,
               frozen: FrozenInputs, mesh: Mesh, *, rng: jax.Array,
               host_teacher_logits: Optional[np.ndarray] = None):
    self._config, self._inputs, self._mesh = config, inputs, mesh
    self.frozen, self._train_images, self._train_labels, self._test_images, \
        self._test_labels = sharding.put_replicated(
            (frozen, inputs.train.images, inputs.train.labels, inputs.test.images,
             inputs.test.labels), mesh)
    self._rows = sharding.data_sharded(mesh)
    self._cache_rows = None
    if host_teacher_logits is not None:
      self._cache_rows = logit_cache.HostRows(
          host_teacher_logits, rng, batch_size=config.batch_size,
          crop_padding=config.data.crop_padding, flip=config.data.flip, sharding=self._rows)

  def train_inputs(self, step: int) -> tuple:
    """``(train images, train labels, batch indices[, cached teacher rows])``."""
    idx = batch_indices(self._config, self._inputs, step)
    inputs = (self._train_images, self._train_labels, sharding.put_rows(idx, self._rows))
    if self._cache_rows is not None:
      inputs += (self._cache_rows.rows(step, idx),)
    return inputs

  def evaluate(self, eval_step, variables) -> dict:
    """:func:`kdjax.train.step.evaluate` of ``variables`` on the whole test set."""
    return step_lib.evaluate(eval_step, variables, self._test_images, self._test_labels,
                             batch_size=eval_batch_size(self._config),
                             size=len(self._inputs.test), mesh=self._mesh)

  def state(self) -> None:  # the batches are a function of (seed, step): nothing to save
    return None

  def close(self) -> None:
    pass


class HostFeed:
  """The host pipeline's batches, prefetched to the devices; each process reads and decodes
  only its rows of every batch."""

  def __init__(self, config: ml_collections.ConfigDict, inputs: RunInputs,
               frozen: FrozenInputs, mesh: Mesh, *, saved: Optional[dict], start: int):
    self._config, self._inputs = config, inputs
    self.frozen = sharding.put_replicated(frozen, mesh)
    self._sharding = sharding.data_sharded(mesh)
    self._train = host_pipeline.DevicePrefetch(host_pipeline.train_pipeline(
        inputs.train, batch_size=config.batch_size, seed=config.seed,
        num_epochs=config.num_epochs, image_size=config.data.image_size,
        worker_count=config.data.workers), self._sharding)
    # The batches are a function of (seed, step): a checkpoint without the item resumes at
    # its step; one with it is checked against this run's seed, data and batch size.
    self._train.set_state(saved if saved is not None else
                          {**self._train.get_state(), 'step': start})
    if self._train.get_state()['step'] != start:
      raise KdjaxError(f'the checkpoint of step {start} holds the input pipeline state of step '
                       f'{self._train.get_state()["step"]}; the checkpoint is damaged')

  def train_inputs(self, step: int) -> tuple:
    """``(images, labels, indices)`` of the next batch (update ``step``)."""
    assert self._train.get_state()['step'] == step, 'host batches taken out of order'
    batch = next(self._train)
    return batch['images'], batch['labels'], batch['indices']

  def evaluate(self, eval_step, variables) -> dict:
    """Accuracy of ``variables`` on every test image once (the last batch masked)."""
    config = self._config
    batches = host_pipeline.eval_pipeline(
        self._inputs.test, batch_size=eval_batch_size(config),
        image_size=config.data.image_size, resize_size=config.data.resize_size,
        worker_count=config.data.workers)
    with host_pipeline.DevicePrefetch(batches, self._sharding) as prefetched:
      return step_lib.evaluate_batches(eval_step, variables, prefetched,
                                       size=len(self._inputs.test))

  def state(self) -> dict:
    """The position of the next batch, for ``progress['input_pipeline']``."""
    return self._train.get_state()

  def close(self) -> None:
    self._train.close()


def open_feed(config: ml_collections.ConfigDict, inputs: RunInputs, frozen: FrozenInputs,
              mesh: Mesh, *, saved: Optional[dict], start: int, rng: jax.Array,
              host_teacher_logits: Optional[np.ndarray] = None) -> Feed:
  """The feed of a run's steps from update ``start`` on: :class:`HostFeed` on a host dataset
  (continuing from ``saved``, a checkpoint's ``progress['input_pipeline']``), else
  :class:`DeviceFeed` (``rng``: the state's, from which a cache kept on the host finds each
  step's rows)."""
  if inputs.on_host:
    return HostFeed(config, inputs, frozen, mesh, saved=saved, start=start)
  return DeviceFeed(config, inputs, frozen, mesh, rng=rng,
                    host_teacher_logits=host_teacher_logits)
