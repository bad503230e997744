"""Datasets (built in, and your own: :mod:`kdjax.data.custom`), on-device augmentation, and the
deterministic batch order."""

from kdjax.data.augment import (Augmentation, augment, draw_augmentation, normalize, num_variants,
                                random_crop, random_flip, train_transform, variant_augmentation,
                                variant_index)
from kdjax.data.order import batch_indices, epoch_permutation, eval_batches, holdout_split
from kdjax.data import custom
from kdjax.data.custom import is_custom, streams
from kdjax.data.image_sources import HOST_DATASETS
from kdjax.data.sources import DATASETS, Dataset, load_split

__all__ = ['DATASETS', 'HOST_DATASETS', 'Augmentation', 'Dataset', 'augment', 'batch_indices',
           'custom', 'draw_augmentation', 'epoch_permutation', 'eval_batches', 'holdout_split',
           'is_custom', 'load_split', 'normalize', 'num_variants', 'random_crop', 'random_flip',
           'streams', 'train_transform', 'variant_augmentation', 'variant_index']
