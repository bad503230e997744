"""Sources of encoded images read one example at a time: ImageNet, and your own data
(:mod:`kdjax.data.custom`).

A source is a sequence of ``(encoded image bytes, label)``, with ``num_classes``,
``classes`` (their names), ``labels`` (every example's label), ``describe(index)`` (what to
name in a warning about that example) and ``fingerprint()`` (what a decoded copy of it,
:mod:`kdjax.data.decoded`, is keyed by). Nothing is decoded here:
:mod:`kdjax.data.host_pipeline` decodes and augments in its grain workers. Both sources
pickle small enough to be sent to every worker process.

* :class:`ImageFolder`: torchvision's ``ImageFolder`` layout, which mdistiller's ImageNet
  loader reads: ``<folder>/<class>/**/<image>``. The classes are the sub-folders sorted by
  name (label = position in that order) and the examples are found as torchvision's
  ``datasets.folder.make_dataset`` finds them: class by class in that order, walking each
  class folder (following links) in sorted order, files in sorted order, keeping the names
  with one of :data:`IMG_EXTENSIONS` (case-insensitive). A class folder without an image is
  refused, as torchvision refuses it.
* :class:`TfdsImages`: a TFDS-prepared dataset (``tfds build imagenet2012
  --file_format=array_record``; preparing it needs TensorFlow, reading it does not), read
  through ``tfds.data_source`` with the image left encoded (``tfds.decode.SkipDecoding``);
  its image and label features are named by ``image_key`` and ``label_key``.

:func:`imagenet` opens a split of ImageNet from a data dir holding either. Every folder here
may be a ``gs://`` URL (:mod:`kdjax.paths`): the images are then read object by object
(listing and fingerprinting a large folder take one request per class and image), and TFDS
reads its ArrayRecord files from the bucket itself.
"""

from __future__ import annotations

import os

import numpy as np

from kdjax import downloads, paths
from kdjax.errors import KdjaxError

# torchvision.datasets.folder.IMG_EXTENSIONS
IMG_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.ppm', '.bmp', '.pgm', '.tif', '.tiff', '.webp')


class ImageFolder:
  """The images under ``folder``, one sub-folder per class (torchvision's ``ImageFolder``)."""

  def __init__(self, folder: str):
    self.folder = paths.text(folder, 'image folder')
    root = paths.path(self.folder)
    if not root.is_dir():
      raise KdjaxError(f'image folder {folder} does not exist; expected {folder}/<class>/<image> '
                       f'(torchvision\'s ImageFolder layout)')
    self.classes = tuple(sorted(e.name for e in root.iterdir() if e.is_dir()))
    if not self.classes:
      raise KdjaxError(f'image folder {folder} has no class sub-folders; expected '
                       f'{folder}/<class>/<image>')
    files, labels = [], []
    for label, name in enumerate(self.classes):
      found = _images(root / name)
      if not found:  # torchvision refuses an empty class too
        raise KdjaxError(f'class folder {root / name} holds no image '
                         f'({", ".join(IMG_EXTENSIONS)}); add its images or remove it')
      files += [f'{name}/{f}' for f in found]
      labels += [label] * len(found)
    # One array of byte strings rather than a list of str: a few dozen bytes per example,
    # which is what each grain worker receives.
    self._paths = np.asarray([os.fsencode(p) for p in files])
    self._labels = np.asarray(labels, np.int32)

  @property
  def num_classes(self) -> int:
    return len(self.classes)

  def __len__(self) -> int:
    return len(self._labels)

  @property
  def labels(self) -> np.ndarray:
    """Every example's label, int32 (CRD's negatives are drawn by them)."""
    return self._labels

  def __getitem__(self, index: int) -> tuple[bytes, int]:
    return paths.path(self.describe(index)).read_bytes(), int(self._labels[index])

  def describe(self, index: int) -> str:
    """The file of example ``index``."""
    return f'{self.folder.rstrip("/")}/{os.fsdecode(self._paths[index])}'

  def fingerprint(self) -> list:
    """``[relative path, size, mtime_ns]`` of every image (an object's mtime in seconds): what
    its decoded copy depends on."""
    return [[os.fsdecode(p), *downloads.stamp(self.describe(i))]
            for i, p in enumerate(self._paths)]


def _images(class_dir) -> list[str]:
  """The images under ``class_dir``, relative to it, in torchvision's order
  (:func:`kdjax.paths.files_under`)."""
  return [f for f in paths.files_under(class_dir) if f.lower().endswith(IMG_EXTENSIONS)]


class TfdsImages:
  """Split ``split`` of the TFDS-prepared ``name`` in ``data_dir``, images still encoded: the
  features ``image_key`` (an image) and ``label_key`` (a ``ClassLabel``)."""

  def __init__(self, name: str, split: str, data_dir: str, *, image_key: str = 'image',
               label_key: str = 'label'):
    import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
    self.name, self.split, self._labels = name, split, None
    self._keys = image_key, label_key
    try:
      self._source = tfds.data_source(name, split=split, data_dir=data_dir, download=False,
                                      decoders={image_key: tfds.decode.SkipDecoding()})
      label = self._source.dataset_info.features[label_key]
      self.num_classes, self.classes = label.num_classes, tuple(label.names)
    except Exception as e:  # tfds raises many types (missing files, versions, keys, ...)
      reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
      raise KdjaxError(f'could not open {name} ({split}) in the TensorFlow Datasets data_dir '
                       f'{data_dir}: {reason}. Prepare it with `tfds build {name} '
                       f'--file_format=array_record` (needs TensorFlow)') from e

  def __len__(self) -> int:
    return len(self._source)

  @property
  def labels(self) -> np.ndarray:
    """Every example's label, int32: reads every record once (minutes for ImageNet)."""
    if self._labels is None:
      self._labels = np.asarray([int(self._source[i][self._keys[1]]) for i in range(len(self))],
                                np.int32)
    return self._labels

  def __getitem__(self, index: int) -> tuple[bytes, int]:
    record = self._source[index]
    return record[self._keys[0]], int(record[self._keys[1]])

  def describe(self, index: int) -> str:
    return f'{self.name} {self.split} record {index}'

  def fingerprint(self) -> list:
    """The split's files (``[name, size, mtime_ns]``) and features: what its decoded copy
    depends on."""
    files = paths.glob(self._source.dataset_info.data_dir, f'*-{self.split}.*')
    return [[f.rsplit('/', 1)[-1], *downloads.stamp(f)] for f in files] + [list(self._keys)]


_TFDS_SPLITS = {'train': 'train', 'test': 'validation'}
_FOLDER_SPLITS = {'train': 'train', 'test': 'val'}


def imagenet(data_dir: str, split: str):
  """Split ``'train'`` or ``'test'`` (the validation set) of ImageNet in ``data_dir``.

  ``data_dir`` holds either the ImageFolder layout (``train/<wnid>/*.JPEG`` and
  ``val/<wnid>/*.JPEG``, as mdistiller reads it) or a TFDS-prepared ``imagenet2012``
  (``imagenet2012/<version>/*.array_record*``); the folders win when both are there.
  """
  if split not in _FOLDER_SPLITS:
    raise KdjaxError(f'unknown split {split!r}; expected train or test')
  folder = paths.path(data_dir, 'config.data.data_dir') / _FOLDER_SPLITS[split]
  if folder.is_dir():
    return ImageFolder(folder)
  if paths.glob(data_dir, 'imagenet2012/*/*.array_record*'):
    return TfdsImages('imagenet2012', _TFDS_SPLITS[split], data_dir)
  raise KdjaxError(f'no ImageNet in {data_dir}: expected {folder}/<wnid>/*.JPEG (the '
                   f'ImageFolder layout) or {folder.parent / "imagenet2012"}/<version>/ '
                   f'prepared by `tfds build imagenet2012 --file_format=array_record`')


# The datasets read through the host pipeline (config.data.name), beside the in-memory
# kdjax.data.DATASETS.
HOST_DATASETS = ('imagenet',)


def open_split(name: str, split: str, data_dir: str | None):
  """Split ``'train'`` or ``'test'`` of host dataset ``name`` (one of :data:`HOST_DATASETS`)
  in ``data_dir`` (``config.data.data_dir``)."""
  if name not in HOST_DATASETS:
    raise KdjaxError(f'unknown host dataset {name!r}; expected one of: {", ".join(HOST_DATASETS)}')
  require_data_dir(name, data_dir)
  return imagenet(data_dir, split)


def require_data_dir(name: str, data_dir: str | None) -> None:
  """Raises :class:`KdjaxError` when ``config.data.data_dir`` of host dataset ``name`` is
  unset (checked by :func:`kdjax.plan.validate` before any run, and on opening)."""
  if not data_dir:
    raise KdjaxError(f'{name} is read from config.data.data_dir, which is unset: set it to a '
                     f'folder holding train/<wnid>/*.JPEG and val/<wnid>/*.JPEG (ImageFolder) '
                     f'or a TFDS-prepared imagenet2012')
