"""Your own data: a folder of images (``folder``) or any prepared TFDS dataset (``tfds:<name>``).

* ``config.data.name='folder'``, ``config.data.data_dir=DIR``: torchvision's ImageFolder
  layout, ``DIR/train/<class>/<image>`` and ``DIR/val/<class>/<image>`` (the folder names are
  ``config.data.train_split`` / ``test_split``), any image Pillow reads; the classes are the
  class folders sorted by name (:class:`kdjax.data.image_sources.ImageFolder`), the same in
  both splits. ``DIR`` may be a ``gs://`` URL: each image is then read from the bucket.
* ``config.data.name='tfds:<name>'``: a TFDS dataset prepared as ArrayRecord in ``data_dir``
  (``<data_dir>/<name>/<version>/``), read through ``tfds.data_source`` without TensorFlow;
  splits ``train`` / ``test`` unless ``train_split`` / ``test_split`` say otherwise, the
  image and label features ``config.data.image_key`` / ``label_key``.

Images are made ``config.data.image_size`` square. Where both splits at that size fit in a
quarter of one device's memory (host memory on the CPU) they are decoded once
(:mod:`kdjax.data.decoded`, cached) and held on the devices, trained with the CIFAR
augmentation (``crop_padding``, ``flip``); otherwise they stream through the grain host
pipeline (:mod:`kdjax.data.host_pipeline`: ``RandomResizedCrop`` + flip, evaluation
``Resize(resize_size)`` + ``CenterCrop``). ``config.data.placement`` (``auto``, ``device``,
``host``) overrides the choice, which is printed. The per-channel mean and std are
``config.data.mean`` / ``std``, else computed once from the training split (on the host
path from at most :data:`STATS_SAMPLE` of its images, evenly spaced; cached).
"""

from __future__ import annotations

import functools
import os
import sys

import jax
import ml_collections
import numpy as np

from kdjax import paths
from kdjax.data import decoded, host_pipeline, image_sources
from kdjax.data.sources import Dataset
from kdjax.errors import KdjaxError

FOLDER, TFDS = 'folder', 'tfds:'
PLACEMENTS = ('auto', 'device', 'host')
STATS_SAMPLE = 5000  # training images the host path computes the mean and std from
_SPLITS = {FOLDER: ('train', 'val'), TFDS: ('train', 'test')}  # default train/test splits


def is_custom(name: str) -> bool:
  """Whether ``config.data.name`` is your own data (``folder`` or ``tfds:<name>``)."""
  return name == FOLDER or name.startswith(TFDS)


def _say(text: str) -> None:
  if jax.process_index() == 0:
    print(f'kdjax: {text}', file=sys.stderr, flush=True)


def _require(condition: bool, message: str) -> None:
  if not condition:
    raise KdjaxError(message)


def check_config(config: ml_collections.ConfigDict) -> None:
  """Raises one line for the first field of ``config.data`` that your data cannot use."""
  d = config.data
  layout = ('a folder holding train/<class>/<image> and val/<class>/<image>' if d.name == FOLDER
            else f'the TFDS data_dir holding {d.name[len(TFDS):]}/<version>/*.array_record*')
  _require(d.name != TFDS, 'config.data.name tfds: names no dataset; expected tfds:<name>')
  _require(bool(d.data_dir), f'{d.name} is read from config.data.data_dir, which is unset: set '
                             f'it to {layout}')
  _require(paths.path(d.data_dir, 'config.data.data_dir').is_dir(),
           f'config.data.data_dir {d.data_dir} does not exist; expected {layout}')
  _require(d.placement in PLACEMENTS, f'config.data.placement must be one of '
                                      f'{", ".join(PLACEMENTS)}, got {d.placement!r}')
  _require(isinstance(d.image_size, int) and d.image_size > 0,
           f'config.data.image_size must be a positive number of pixels, got {d.image_size!r}')
  _require((d.mean is None) == (d.std is None),
           'config.data.mean and config.data.std go together: set both, or neither (computed '
           'from the training split)')
  for field, low in (('mean', -np.inf), ('std', 0.0)):
    value = d[field]
    _require(value is None or (len(value) == 3 and all(
        isinstance(v, (int, float)) and v > low for v in value)),
             f'config.data.{field} must be None (computed from the training split) or 3 '
             f'{"positive " if low == 0 else ""}numbers, one per channel, got {value!r}')
  if d.placement == 'host':
    check_host_fields(config)


def check_host_fields(config: ml_collections.ConfigDict) -> None:
  """Raises one line for a setting data streamed through the host pipeline cannot serve."""
  d = config.data
  _require(d.resize_size <= 2 * d.image_size,
           f'config.data.resize_size {d.resize_size} would evaluate a small central patch of '
           f'each image (Resize({d.resize_size}), then CenterCrop({d.image_size})): set it to '
           f'about image_size * 8 / 7, e.g. {round(d.image_size * 8 / 7)}')
  _require(not d.holdout, f'config.data.holdout is not supported on {d.name} through the host '
                          f'pipeline (no quiz set is held out of it); set it to 0')
  _require(not config.teacher.cache,
           f'config.teacher.cache covers the crops of images held on the devices, not '
           f'{d.name} through the host pipeline; set it to False')


@functools.lru_cache(maxsize=4)
def _sources(name: str, data_dir: str, train_split: str, test_split: str, image_key: str,
             label_key: str) -> tuple:
  """``(train, test)`` encoded sources, their class sets checked to be the same."""
  if name == FOLDER:
    opened = []
    for split in (train_split, test_split):
      folder = paths.path(data_dir) / split
      _require(folder.is_dir(), f'no {split} split in {data_dir}: expected '
                                f'{folder}/<class>/<image> (torchvision\'s ImageFolder)')
      opened.append(image_sources.ImageFolder(folder))
    train, test = opened
    only_train, only_test = set(train.classes) - set(test.classes), \
        set(test.classes) - set(train.classes)
    _require(not only_train and not only_test,
             f'{train.folder} and {test.folder} have different class folders (only in '
             f'{train_split}: {sorted(only_train)[:5]}, only in {test_split}: '
             f'{sorted(only_test)[:5]}); both need the same ones, so labels mean the same')
    return train, test
  keys = dict(image_key=image_key, label_key=label_key)
  return tuple(image_sources.TfdsImages(name[len(TFDS):], split, data_dir, **keys)
               for split in (train_split, test_split))


def open_sources(config: ml_collections.ConfigDict) -> tuple:
  """The ``(train, test)`` encoded sources of ``config.data`` (see the module docstring)."""
  d = config.data
  defaults = _SPLITS[FOLDER if d.name == FOLDER else TFDS]
  return _sources(d.name, paths.text(d.data_dir), d.train_split or defaults[0],
                  d.test_split or defaults[1], d.image_key, d.label_key)


def open_source(config: ml_collections.ConfigDict, split: str):
  """Split ``'train'`` or ``'test'`` as an encoded source, for the host pipeline."""
  return open_sources(config)[('train', 'test').index(split)]


@functools.lru_cache(maxsize=4)
def _decoded(source, size: int, skip_unreadable: bool, what: str) -> tuple:
  """``(images, labels, mean, std)`` of ``source`` decoded at ``size`` (cached on disk too)."""
  images, labels, unreadable = decoded.decode(source, size, skip_unreadable=skip_unreadable,
                                              what=what)
  if unreadable:
    _say(f'left out {len(unreadable)} unreadable images of {what} '
         f'(config.data.skip_unreadable), e.g. {unreadable[0]}')
  return (images, labels) + decoded.channel_stats(images)


def load(config: ml_collections.ConfigDict, split: str) -> Dataset:
  """Split ``'train'`` or ``'test'`` decoded into a :class:`Dataset` held in memory, normalised
  by ``config.data.mean`` / ``std`` or the training split's own."""
  d = config.data
  train, source = open_sources(config)[0], open_source(config, split)
  decode = lambda s, name: _decoded(s, d.image_size, d.skip_unreadable, f'{d.name} {name}')
  _, _, mean, std = decode(train, 'train')
  images, labels, _, _ = decode(source, split)
  if d.mean is not None:
    mean, std = tuple(d.mean), tuple(d.std)
  return Dataset(images, labels, source.num_classes, mean, std, source.classes)


def normalisation(config: ml_collections.ConfigDict, train) -> tuple[tuple, tuple]:
  """The mean and std the host pipeline's batches of ``config``'s data are normalised with:
  torchvision's ImageNet ones for ImageNet; for your own data ``config.data.mean`` / ``std``,
  else those of (a sample of) its training split ``train``."""
  d = config.data
  if not is_custom(d.name):
    return host_pipeline.IMAGENET_MEAN, host_pipeline.IMAGENET_STD
  if d.mean is not None:
    return tuple(d.mean), tuple(d.std)
  return decoded.sample_stats(train, d.image_size, STATS_SAMPLE, f'{d.name} train')


def _memory_bytes() -> int:
  """One device's memory as its runtime reports it; on the CPU, the host's."""
  device = jax.local_devices()[0]
  stats = device.memory_stats() if device.platform != 'cpu' else None
  return (stats or {}).get('bytes_limit') or os.sysconf('SC_PAGE_SIZE') * os.sysconf(
      'SC_PHYS_PAGES')


def streams(config: ml_collections.ConfigDict) -> bool:
  """Whether ``config``'s data comes through the host pipeline (ImageNet; your own data as
  ``config.data.placement`` says, or when too large for the devices), not held on them."""
  d = config.data
  if not is_custom(d.name):
    return d.name in image_sources.HOST_DATASETS
  train, test = open_sources(config)
  size = (len(train) + len(test)) * d.image_size ** 2 * 3
  memory, host = _memory_bytes(), d.placement == 'host'
  why = f'config.data.placement={d.placement}'
  if d.placement == 'auto':
    host = size > memory // 4
    why = (f'{"more" if host else "less"} than a quarter of one device\'s {memory / 2**30:.1f} '
           f'GiB; config.data.placement=device or host chooses')
  _say(f'{d.name}: {len(train)} train + {len(test)} test images at {d.image_size}x'
       f'{d.image_size} ({size / 2**20:.1f} MiB) '
       f'{"stream through the host pipeline" if host else "are decoded once, held on the devices"}'
       f' ({why})')
  if host:
    check_host_fields(config)
  return host
