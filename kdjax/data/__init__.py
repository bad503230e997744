"""Datasets (built in, and your own: :mod:`kdjax.data.custom`), on-device augmentation, and the
deterministic batch order."""

from kdjax.data import cifar
from kdjax.data.augment import (Augmentation, augment, draw_augmentation, normalize, num_variants,
                                random_crop, random_flip, train_transform, variant_augmentation,
                                variant_index)
from kdjax.data.order import batch_indices, epoch_permutation, eval_batches, holdout_split
from kdjax.data import image_sources
from kdjax.data import custom
from kdjax.data.custom import is_custom, streams
from kdjax.data.image_sources import HOST_DATASETS
from kdjax.data.sources import DATASETS, Dataset, load_split

from kdjax.errors import KdjaxError


def check_config(config, *, need_data_dir: bool = True) -> None:
  """Raises :class:`KdjaxError` for a mistake in ``config.data``: an unknown dataset, a
  CIFAR mirror without its SHA-256, a negative holdout; on a host dataset or your own
  (:mod:`kdjax.data.custom`), its folder (unless ``need_data_dir`` is False: a trace reads
  no data), its image and resize sizes, its workers, and what the host pipeline cannot serve
  (:func:`kdjax.data.custom.check_host_fields`)."""
  d = config.data
  if not (d.name in DATASETS + HOST_DATASETS or is_custom(d.name)):
    raise KdjaxError(f'unknown dataset {d.name!r} (config.data.name); expected one of: '
                     f'{", ".join(DATASETS + HOST_DATASETS)}, or your own: folder, tfds:<name>')
  if d.name in cifar.ARCHIVES:  # a mirror without its sha256, a bad sha256
    cifar.source(d.name, d.get('url'), d.get('sha256'))
  if d.holdout < 0:
    raise KdjaxError(f'config.data.holdout must be >= 0, got {d.holdout}')
  if d.name not in HOST_DATASETS and not is_custom(d.name):
    return
  if is_custom(d.name):
    custom.check_config(config)
  elif need_data_dir:
    image_sources.require_data_dir(d.name, d.data_dir)
  if d.resize_size < d.image_size:
    raise KdjaxError(f'config.data.resize_size ({d.resize_size}) must be at least '
                     f'config.data.image_size ({d.image_size}): evaluation resizes, then '
                     f'center-crops')
  if d.workers is not None and d.workers < 0:
    raise KdjaxError(f'config.data.workers must be >= 0 (0: decode in the training process) '
                     f'or None, got {d.workers}')
  if not is_custom(d.name):  # your own data is streamed where placement says
    custom.check_host_fields(config)


__all__ = ['DATASETS', 'HOST_DATASETS', 'Augmentation', 'Dataset', 'augment', 'batch_indices',
           'check_config', 'custom', 'draw_augmentation', 'epoch_permutation', 'eval_batches',
           'holdout_split', 'is_custom', 'load_split', 'normalize', 'num_variants', 'random_crop',
           'random_flip', 'streams', 'train_transform', 'variant_augmentation', 'variant_index']
