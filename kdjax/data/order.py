"""Batch order: a pure function of (seed, epoch), so a resumed run sees the same batches.

The training set lives on the devices; the host only computes, per step, which indices
form the batch. Epoch ``e`` visits ``permutation(seed, e)`` in consecutive slices of
``batch_size``; the last incomplete slice is dropped (static shapes), so an epoch has
``len(train) // batch_size`` steps.
"""

from __future__ import annotations

import functools

import numpy as np


@functools.lru_cache(maxsize=2)
def epoch_permutation(seed: int, epoch: int, size: int) -> np.ndarray:
  """The order of the training examples in ``epoch`` (0-based)."""
  return np.random.default_rng([seed, epoch]).permutation(size).astype(np.int32)


def batch_indices(seed: int, step: int, size: int, batch_size: int) -> np.ndarray:
  """The training-set indices of global step ``step`` (0-based)."""
  steps_per_epoch = size // batch_size
  epoch, position = divmod(step, steps_per_epoch)
  order = epoch_permutation(seed, epoch, size)
  return order[position * batch_size:(position + 1) * batch_size]


def holdout_split(labels: np.ndarray, holdout: int) -> tuple[np.ndarray, np.ndarray]:
  """``(train, held_out)`` index arrays: ``holdout`` examples set aside, stratified by class.

  The split is fixed (it does not depend on the run's seed), so runs with different seeds
  train and meta-learn on the same examples; both arrays are sorted.
  """
  from sklearn.model_selection import train_test_split  # pylint: disable=import-outside-toplevel
  train, held = train_test_split(np.arange(len(labels)), test_size=holdout,
                                 stratify=labels, random_state=0)
  return np.sort(train).astype(np.int32), np.sort(held).astype(np.int32)


def eval_batches(size: int, batch_size: int):
  """Yields ``(indices, mask)`` covering ``range(size)``, the last batch padded and masked."""
  for start in range(0, size, batch_size):
    idx = np.arange(start, start + batch_size)
    mask = idx < size
    yield np.where(mask, idx, 0).astype(np.int32), mask
