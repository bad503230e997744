"""Datasets as in-memory uint8 arrays: CIFAR-10/100 from TFDS, and the embedded digits.

Every source returns a :class:`Dataset`: NHWC ``uint8`` images of 32x32x3, ``int32``
labels, and the per-channel mean/std used for normalisation. Loading happens once; the
arrays then live on the accelerators (:mod:`kdjax.data.order`).

* ``cifar10`` / ``cifar100``: TensorFlow Datasets through ``tfds.data_source`` (ArrayRecord
  files, no TensorFlow needed). Prepare them once where there is network access with
  ``tfds build cifar100 --file_format=array_record`` (or let kdjax download them), and point
  ``config.data.data_dir`` at the TFDS data dir.
* ``digits``: scikit-learn's 1,797 handwritten digits (8x8, 17 grey levels, shipped inside the
  scikit-learn wheel), upscaled x4 by pixel repetition to 32x32, grey -> 3 equal channels,
  levels 0..16 -> 0..255; a fixed stratified split of 1,437 train / 360 test images.

A dataset that cannot be loaded is a :class:`~kdjax.errors.KdjaxError` saying how to get it;
kdjax never substitutes other data.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np

from kdjax.errors import KdjaxError

# Per-channel statistics that mdistiller / RepDistiller normalise CIFAR with.
CIFAR100_MEAN = (0.5071, 0.4867, 0.4408)
CIFAR100_STD = (0.2675, 0.2565, 0.2761)
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)


@dataclasses.dataclass(frozen=True)
class Dataset:
  """One split of a dataset held in host memory."""
  images: np.ndarray  # (N, 32, 32, 3) uint8
  labels: np.ndarray  # (N,) int32
  num_classes: int
  mean: tuple[float, float, float]
  std: tuple[float, float, float]

  def __len__(self) -> int:
    return len(self.labels)


@functools.lru_cache(maxsize=1)
def _digits_split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
  from sklearn.datasets import load_digits
  from sklearn.model_selection import train_test_split
  digits = load_digits()
  images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)
  images = images.repeat(4, axis=1).repeat(4, axis=2)[..., None].repeat(3, axis=-1)
  return train_test_split(images, digits.target.astype(np.int32), test_size=360,
                          stratify=digits.target, random_state=0)


def _digits(split: str) -> Dataset:
  x_train, x_test, y_train, y_test = _digits_split()
  images, labels = (x_train, y_train) if split == 'train' else (x_test, y_test)
  train_float = x_train.astype(np.float64) / 255.0
  mean = tuple(float(v) for v in train_float.mean(axis=(0, 1, 2)))
  std = tuple(float(v) for v in train_float.std(axis=(0, 1, 2)))
  return Dataset(images, labels, 10, mean, std)


def _tfds(name: str, split: str, data_dir: str | None, download: bool) -> Dataset:
  import tensorflow_datasets as tfds
  try:
    source = tfds.data_source(name, split=split, data_dir=data_dir, download=download)
    images = np.stack([source[i]['image'] for i in range(len(source))]).astype(np.uint8)
    labels = np.asarray([source[i]['label'] for i in range(len(source))], np.int32)
  except Exception as e:  # tfds raises many types (network, missing files, ...)
    reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
    raise KdjaxError(
        f'could not load {name} ({split}) from TensorFlow Datasets (data_dir={data_dir}): '
        f'{reason}. {name} needs network access to download, or a data_dir prepared '
        f'elsewhere with `tfds build {name} --file_format=array_record`') from e
  if images.shape[1:] != (32, 32, 3):
    raise KdjaxError(f'{name} images have shape {images.shape[1:]}, expected (32, 32, 3)')
  mean, std, classes = ((CIFAR100_MEAN, CIFAR100_STD, 100) if name == 'cifar100'
                        else (CIFAR10_MEAN, CIFAR10_STD, 10))
  return Dataset(images, labels, classes, mean, std)


DATASETS = ('digits', 'cifar10', 'cifar100')


@functools.lru_cache(maxsize=4)
def load_split(name: str, split: str, *, data_dir: str | None = None,
         download: bool = True) -> Dataset:
  """Loads split ``'train'`` or ``'test'`` of dataset ``name`` (one of :data:`DATASETS`).

  Cached: a second call (a method that needs the labels, a pipeline's second stage) costs
  nothing. The arrays are shared, never modified.
  """
  if name not in DATASETS:
    raise KdjaxError(f'unknown dataset {name!r}; expected one of: {", ".join(DATASETS)}')
  if split not in ('train', 'test'):
    raise KdjaxError(f'unknown split {split!r}; expected train or test')
  if name == 'digits':
    return _digits(split)
  return _tfds(name, split, data_dir, download)
