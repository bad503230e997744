"""Data: sources, the on-device augmentation, and the deterministic batch order."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow_datasets as tfds

from kdjax import data
from kdjax.errors import KdjaxError


def _position_images(n=8, size=32):
  """Images whose pixel (y, x) holds y*size + x in channel 0, so crops can be located."""
  yy, xx = np.meshgrid(np.arange(size), np.arange(size), indexing='ij')
  ids = (yy * size + xx).astype(np.float32) + 1.0  # 0 is kept for padding
  return jnp.asarray(np.broadcast_to(ids[None, :, :, None], (n, size, size, 3)))


def test_random_crop_is_a_window_of_the_zero_padded_image():
  images = _position_images()
  out = np.asarray(data.random_crop(jax.random.key(0), images, padding=4))
  padded = np.pad(np.asarray(images), ((0, 0), (4, 4), (4, 4), (0, 0)))
  offsets = set()
  for i in range(len(out)):
    matches = [(dy, dx) for dy in range(9) for dx in range(9)
               if np.array_equal(padded[i, dy:dy + 32, dx:dx + 32], out[i])]
    assert len(matches) == 1, 'every crop must be exactly one offset in [0, 8]'
    offsets.add(matches[0])
  assert len(offsets) > 1, 'offsets must vary across the batch'


def test_crop_offsets_cover_the_whole_range():
  images = jnp.zeros((2000, 1, 1, 1))
  padded_ones = data.random_crop(jax.random.key(3), images + 1, padding=4)
  # A 1x1 image padded by 4 is 9x9 with the pixel at (4, 4); the crop hits it for one
  # offset of 81, so about 2000/81 crops keep it.
  kept = float(jnp.mean(padded_ones))
  assert 0.5 / 81 < kept < 2.0 / 81


def test_flip_mirrors_about_half_of_the_images():
  images = _position_images(n=400)
  out = np.asarray(data.random_flip(jax.random.key(1), images))
  flipped = np.array([np.array_equal(o, np.asarray(images[0])[:, ::-1]) for o in out])
  same = np.array([np.array_equal(o, np.asarray(images[0])) for o in out])
  assert np.all(flipped | same)
  assert 0.4 < flipped.mean() < 0.6


def test_augmentation_is_determined_by_the_key():
  images = jnp.asarray(np.random.default_rng(0).integers(0, 256, (16, 32, 32, 3)), jnp.uint8)
  kw = dict(mean=(0.5,) * 3, std=(0.25,) * 3, crop_padding=4, flip=True)
  a = data.train_transform(jax.random.key(7), images, **kw)
  b = data.train_transform(jax.random.key(7), images, **kw)
  c = data.train_transform(jax.random.key(8), images, **kw)
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, c)


def test_normalize_uses_mean_and_std_per_channel():
  images = jnp.full((1, 2, 2, 3), 255, jnp.uint8)
  out = data.normalize(images, (0.5, 0.0, 1.0), (0.5, 2.0, 1.0))
  np.testing.assert_allclose(out[0, 0, 0], [1.0, 0.5, 0.0])


def test_epoch_order_is_a_function_of_seed_and_epoch():
  a = data.batch_indices(seed=0, step=5, size=100, batch_size=10)
  np.testing.assert_array_equal(a, data.batch_indices(seed=0, step=5, size=100, batch_size=10))
  assert not np.array_equal(a, data.batch_indices(seed=1, step=5, size=100, batch_size=10))
  epoch = np.concatenate([data.batch_indices(0, s, 100, 10) for s in range(10)])
  np.testing.assert_array_equal(np.sort(epoch), np.arange(100))
  next_epoch = np.concatenate([data.batch_indices(0, s, 100, 10) for s in range(10, 20)])
  assert not np.array_equal(epoch, next_epoch)


def test_eval_batches_cover_the_set_once():
  seen = [idx[mask] for idx, mask in data.eval_batches(10, 4)]
  np.testing.assert_array_equal(np.concatenate(seen), np.arange(10))


def test_digits_is_real_data_with_a_fixed_split():
  train, test = data.load_split('digits', 'train'), data.load_split('digits', 'test')
  assert train.images.shape == (1437, 32, 32, 3) and test.images.shape == (360, 32, 32, 3)
  assert train.images.dtype == np.uint8 and train.labels.dtype == np.int32
  assert train.num_classes == 10 and set(np.unique(test.labels)) == set(range(10))
  from sklearn.datasets import load_digits
  originals = {image.tobytes() for image in load_digits().images}
  first = (test.images[0, ::4, ::4, 0].astype(np.float64) * 16 / 255).round()
  assert first.tobytes() in originals
  np.testing.assert_array_equal(test.labels, data.load_split('digits', 'test').labels)


def _tfds_prepared(data_dir, name):
  """The files `tfds build NAME --file_format=array_record` leaves (here empty)."""
  version = data_dir / name / '3.0.2'
  version.mkdir(parents=True)
  for split in ('train', 'test'):
    (version / f'{name}-{split}.array_record-00000-of-00001').write_bytes(b'')


def test_cifar100_loads_through_tfds_data_source_from_a_prepared_data_dir(tmp_path):
  _tfds_prepared(tmp_path, 'cifar100')
  with tfds.testing.mock_data(num_examples=12):
    train = data.load_split('cifar100', 'train', data_dir=str(tmp_path))
  assert train.images.shape == (12, 32, 32, 3) and train.images.dtype == np.uint8
  assert train.num_classes == 100 and train.labels.dtype == np.int32
  assert train.mean == data.sources.CIFAR100_MEAN
  assert not (tmp_path / 'cifar').exists()  # not the archive path


def test_a_broken_tfds_data_dir_is_one_clear_error(tmp_path):
  _tfds_prepared(tmp_path, 'cifar10')
  with pytest.raises(KdjaxError, match='tfds build cifar10') as error:
    data.load_split('cifar10', 'test', data_dir=str(tmp_path), download=False)
  assert '\n' not in str(error.value)


def test_unknown_dataset_names_the_choices():
  with pytest.raises(KdjaxError, match='digits, cifar10, cifar100'):
    data.load_split('imagenet', 'train')
