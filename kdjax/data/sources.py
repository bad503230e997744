"""Datasets as in-memory uint8 arrays: CIFAR-10/100 and the embedded digits.

Every source returns a :class:`Dataset`: NHWC ``uint8`` images of 32x32x3, ``int32``
labels, and the per-channel mean/std used for normalisation. Loading happens once; the
arrays then live on the accelerators (:mod:`kdjax.data.order`).

* ``cifar10`` / ``cifar100``: the official binary archives (:mod:`kdjax.data.cifar`; no
  TensorFlow, no pickles), downloaded once from ``config.data.url`` (None: the official
  www.cs.toronto.edu URL; another URL needs ``config.data.sha256``) into
  ``<cache>/cifar/``, verified by SHA-256 and parsed once into ``<cache>/cifar/<name>.npz``.
  ``<cache>`` is ``config.data.data_dir``, else ``$KDJAX_CACHE``, else ``~/.cache/kdjax``
  (:func:`kdjax.downloads.cache_dir`). Offline, put the archive there by hand.
* ``cifar10`` / ``cifar100`` from a TensorFlow Datasets data dir: when ``config.data.data_dir``
  holds a TFDS-prepared copy (``<data_dir>/<name>/<version>/`` with ArrayRecord files), it is
  read through ``tfds.data_source``, which needs no TensorFlow. Preparing it
  (``tfds build <name> --file_format=array_record``) runs TFDS's builder, which does need
  TensorFlow, so that is done elsewhere; kdjax never builds it.
* ``config.data.data_dir`` (either kind) may be a ``gs://`` URL (:mod:`kdjax.paths`): TFDS
  reads its ArrayRecord files from the bucket, and the CIFAR cache lives there.
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

from kdjax import paths
from kdjax.data import cifar
from kdjax.errors import KdjaxError

# Per-channel statistics that mdistiller / RepDistiller normalise CIFAR with.
CIFAR100_MEAN = (0.5071, 0.4867, 0.4408)
CIFAR100_STD = (0.2675, 0.2565, 0.2761)
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
_CIFAR_STATS = {'cifar10': (CIFAR10_MEAN, CIFAR10_STD), 'cifar100': (CIFAR100_MEAN, CIFAR100_STD)}


@dataclasses.dataclass(frozen=True)
class Dataset:
  """One split of a dataset held in host memory."""
  images: np.ndarray  # (N, 32, 32, 3) uint8; (N, S, S, 3) for your own data (kdjax.data.custom)
  labels: np.ndarray  # (N,) int32
  num_classes: int
  mean: tuple[float, float, float]
  std: tuple[float, float, float]
  classes: tuple[str, ...] = ()  # the class names, where the data names them

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


def _cifar(name: str, images: np.ndarray, labels: np.ndarray) -> Dataset:
  if images.shape[1:] != (32, 32, 3):
    raise KdjaxError(f'{name} images have shape {images.shape[1:]}, expected (32, 32, 3)')
  mean, std = _CIFAR_STATS[name]
  return Dataset(images, labels, cifar.ARCHIVES[name].num_classes, mean, std)


def _tfds_prepared(name: str, data_dir: str | None) -> bool:
  """Whether ``data_dir`` holds a TFDS-prepared ``name``: ``<name>/<version>/*array_record*``."""
  return data_dir is not None and bool(paths.glob(data_dir, f'{name}/*/*.array_record*'))


def _tfds(name: str, split: str, data_dir: str) -> Dataset:
  """A split of ``name`` from the TFDS-prepared ``data_dir`` (read without TensorFlow)."""
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  try:
    source = tfds.data_source(name, split=split, data_dir=data_dir, download=False)
    images = np.stack([source[i]['image'] for i in range(len(source))]).astype(np.uint8)
    labels = np.asarray([source[i]['label'] for i in range(len(source))], np.int32)
  except Exception as e:  # tfds raises many types (missing files, versions, ...)
    reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
    raise KdjaxError(
        f'could not load {name} ({split}) from the TensorFlow Datasets data_dir {data_dir}: '
        f'{reason}. Prepare it again with `tfds build {name} --file_format=array_record` '
        f'(needs TensorFlow), or move its {name} folder away to use the official '
        f'archive') from e
  return _cifar(name, images, labels)


DATASETS = ('digits', 'cifar10', 'cifar100')


def load_split(name: str, split: str, *, data_dir: str | None = None, download: bool = True,
               url: str | None = None, sha256: str | None = None) -> Dataset:
  """Loads split ``'train'`` or ``'test'`` of dataset ``name`` (one of :data:`DATASETS`).

  ``data_dir``, ``download``, ``url`` and ``sha256`` are ``config.data``'s fields of those
  names; see the module docstring. Cached: a second call (a method that needs the labels, a
  pipeline's second stage) costs nothing, whichever of the defaults it spells out. The
  arrays are shared, never modified.
  """
  return _load(name, split, data_dir, download, url, sha256)


@functools.lru_cache(maxsize=4)
def _load(name: str, split: str, data_dir: str | None, download: bool, url: str | None,
          sha256: str | None) -> Dataset:
  if name not in DATASETS:
    raise KdjaxError(f'unknown dataset {name!r}; expected one of: {", ".join(DATASETS)}')
  if split not in ('train', 'test'):
    raise KdjaxError(f'unknown split {split!r}; expected train or test')
  if name == 'digits':
    if url is not None or sha256 is not None:
      raise KdjaxError('config.data.url and config.data.sha256 are for cifar10 and cifar100; '
                       'digits ships with scikit-learn, so unset them')
    return _digits(split)
  if _tfds_prepared(name, data_dir):
    return _tfds(name, split, data_dir)
  images, labels = cifar.load(name, split, cache=data_dir, download=download, url=url,
                              sha256=sha256)
  return _cifar(name, images, labels)
