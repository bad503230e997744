"""Datasets, on-device augmentation, and the deterministic batch order."""

from kdjax.data.augment import normalize, random_crop, random_flip, train_transform
from kdjax.data.order import batch_indices, epoch_permutation, eval_batches, holdout_split
from kdjax.data.sources import DATASETS, Dataset, load_split

__all__ = ['DATASETS', 'Dataset', 'batch_indices', 'epoch_permutation', 'eval_batches',
           'holdout_split',
           'load_split', 'normalize', 'random_crop', 'random_flip', 'train_transform']
