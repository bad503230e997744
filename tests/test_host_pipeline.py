"""The grain host pipeline on a small ImageFolder of real JPEGs written here with PIL."""

import io
import json
import os

import grain
import jax
import numpy as np
import pytest
from PIL import Image

from conftest import write_tfds
from kdjax.data import host_pipeline, image_sources
from kdjax.errors import KdjaxError

CROP, RESIZE = 32, 36  # the transforms at a test size (224 / 256 by default)
CLASSES = ('n01', 'n02', 'n03')  # sorted, as the labels must be
PER_CLASS = 8
CORRUPT = os.path.join('n02', 'broken.JPEG')  # sorts first in its class: label 1, index 8


def _jpeg(rng, width, height) -> bytes:
  """A smooth random image (JPEG keeps it close to what was written)."""
  coarse = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
  image = Image.fromarray(coarse).resize((width, height), Image.Resampling.BILINEAR)
  buffer = io.BytesIO()
  image.save(buffer, 'JPEG', quality=90)
  return buffer.getvalue()


def _write_folder(root, rng, *, corrupt: bool) -> None:
  for name in CLASSES:
    os.makedirs(root / name)
    for i in range(PER_CLASS):
      # Sizes from 24x40 to 90x30: portrait, landscape, smaller and larger than the crop.
      width, height = int(rng.integers(24, 91)), int(rng.integers(24, 91))
      (root / name / f'img_{i}.JPEG').write_bytes(_jpeg(rng, width, height))
    (root / name / 'notes.txt').write_text('not an image')
  if corrupt:
    good = (root / 'n01' / 'img_0.JPEG').read_bytes()
    (root / CORRUPT).write_bytes(good[:len(good) // 3])  # truncated mid-scan


@pytest.fixture(scope='module')
def folder(tmp_path_factory):
  """train/ with 25 images (one truncated), val/ with 24 (3 classes x 8)."""
  root = tmp_path_factory.mktemp('imagenet')
  rng = np.random.default_rng(0)
  _write_folder(root / 'train', rng, corrupt=True)
  _write_folder(root / 'val', rng, corrupt=False)
  return root


def _train(folder, **kwargs):
  args = dict(batch_size=8, seed=3, num_epochs=2, image_size=CROP, worker_count=0)
  args.update(kwargs)
  return host_pipeline.train_pipeline(image_sources.ImageFolder(folder / 'train'), **args)


def _take(batches, n):
  return [next(batches) for _ in range(n)]


def _assert_same(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert x.keys() == y.keys()
    for key in x:
      np.testing.assert_array_equal(x[key], y[key])


def test_image_folder_lists_what_torchvision_lists(folder):
  source = image_sources.ImageFolder(folder / 'train')
  assert source.classes == CLASSES and source.num_classes == 3 and len(source) == 25
  assert source.describe(8) == str(folder / 'train' / CORRUPT)
  data, label = source[9]
  assert label == 1 and source.describe(9).endswith(os.path.join('n02', 'img_0.JPEG'))
  assert data == (folder / 'train' / 'n02' / 'img_0.JPEG').read_bytes()
  assert isinstance(image_sources.imagenet(str(folder), 'test'), image_sources.ImageFolder)


def test_missing_imagenet_is_one_clear_error(tmp_path):
  with pytest.raises(KdjaxError, match='tfds build imagenet2012') as error:
    image_sources.imagenet(str(tmp_path), 'train')
  assert '\n' not in str(error.value)


def test_train_batches_have_the_crop_size_and_uint8_pixels(folder):
  source = image_sources.ImageFolder(folder / 'train')
  with _train(folder) as train:
    assert (train.steps_per_epoch, train.steps) == (3, 6)  # 25 // 8, two epochs
    batches = list(train)
  assert len(batches) == 6
  for batch in batches:
    assert batch.keys() == {'images', 'labels', 'indices'}
    assert batch['images'].shape == (8, CROP, CROP, 3) and batch['images'].dtype == np.uint8
    assert batch['labels'].dtype == np.int32 and set(batch['labels']) <= {0, 1, 2}
    # Each row's index is the source example it shows (its label), never the corrupt one.
    np.testing.assert_array_equal(batch['labels'], source.labels[batch['indices']])
    assert 8 not in batch['indices']
  pixels = np.stack([b['images'] for b in batches])
  assert pixels.std() > 20  # real image content, not blank rows


def test_batches_are_a_function_of_seed_and_epoch(folder):
  with _train(folder) as a, _train(folder) as b, _train(folder, seed=4) as c:
    first, again, other_seed = _take(a, 6), _take(b, 6), _take(c, 3)
  _assert_same(first, again)
  # Epoch 2 is another order and other crops of the same images; another seed differs too.
  assert not np.array_equal(first[0]['images'], first[3]['images'])
  assert not np.array_equal(first[0]['images'], other_seed[0]['images'])


def test_worker_processes_give_the_same_batches_as_in_process_decoding(folder):
  with _train(folder) as local, _train(folder, worker_count=2) as workers:
    _assert_same(_take(local, 4), _take(workers, 4))


def test_resume_mid_epoch_from_the_saved_state(folder):
  with _train(folder) as run:
    _take(run, 2)
    state = json.loads(json.dumps(run.get_state()))  # as a checkpoint's JSON item holds it
    rest = list(run)
  assert state == {'step': 2, 'seed': 3, 'records': 25, 'batch_size': 8}
  with _train(folder, worker_count=2) as resumed:
    resumed.set_state(state)
    _assert_same(rest, list(resumed))
  with _train(folder, seed=5) as other, pytest.raises(KdjaxError, match='seed=3'):
    other.set_state(state)


def test_two_shards_are_disjoint_and_cover_each_global_batch(folder):
  source = image_sources.ImageFolder(folder / 'val')  # 24 readable images: 3 batches of 8

  def labels_and_pixels(shard_index):
    shard = grain.sharding.ShardOptions(shard_index=shard_index, shard_count=2)
    with host_pipeline.train_pipeline(source, batch_size=8, seed=1, num_epochs=1,
                                      image_size=CROP, shard=shard, worker_count=0) as half:
      return list(half)

  halves = [labels_and_pixels(0), labels_and_pixels(1)]
  with host_pipeline.train_pipeline(source, batch_size=8, seed=1, num_epochs=1,
                                    image_size=CROP, worker_count=0) as whole:
    full = list(whole)
  for step, batch in enumerate(full):
    for key in batch:  # shard i holds rows [4i, 4i + 4) of the global batch
      np.testing.assert_array_equal(
          batch[key], np.concatenate([halves[0][step][key], halves[1][step][key]]))
  # The epoch visits every example once: the same 24 (image, label) pairs as eval reads.
  seen = {(lbl, img.tobytes()) for b in full for lbl, img in zip(b['labels'], b['images'])}
  assert len(seen) == 24


def test_eval_is_resize_then_center_crop_of_each_file(folder):
  source = image_sources.ImageFolder(folder / 'val')
  with host_pipeline.eval_pipeline(source, batch_size=10, image_size=CROP, resize_size=RESIZE,
                                   worker_count=0) as batches:
    out = list(batches)
  assert [b['images'].shape[0] for b in out] == [10, 10, 10]
  mask = np.concatenate([b['mask'] for b in out])
  assert mask.tolist() == [True] * 24 + [False] * 6
  images = np.concatenate([b['images'] for b in out])
  labels = np.concatenate([b['labels'] for b in out])
  for i in range(24):
    # The statement of Resize(36) + CenterCrop(32), written out on the file itself.
    image = Image.open(source.describe(i)).convert('RGB')
    w, h = image.size
    scale = RESIZE / min(w, h)
    size = (RESIZE, int(h * scale)) if w <= h else (int(w * scale), RESIZE)
    resized = np.asarray(image.resize(size, Image.Resampling.BILINEAR))
    top = int(round((resized.shape[0] - CROP) / 2))
    left = int(round((resized.shape[1] - CROP) / 2))
    np.testing.assert_array_equal(images[i], resized[top:top + CROP, left:left + CROP])
    assert labels[i] == i // PER_CLASS
  assert not images[24:].any()


def test_an_unreadable_jpeg_is_counted_warned_and_replaced(folder, capfd):
  with _train(folder, worker_count=2) as train:
    batches = list(train)
  assert train.unreadable == 2  # once in each epoch
  warnings = [line for line in capfd.readouterr().err.splitlines() if 'unreadable' in line]
  assert len(warnings) == 1 and str(folder / 'train' / CORRUPT) in warnings[0]
  assert warnings[0].startswith('warning: skipped the unreadable image ')
  for batch in batches:  # its place went to another, readable, image
    assert batch['images'].shape == (8, CROP, CROP, 3)
  source = image_sources.ImageFolder(folder / 'train')
  with host_pipeline.eval_pipeline(source, batch_size=25, image_size=CROP, resize_size=RESIZE,
                                   worker_count=0) as evaluation:
    (batch,) = list(evaluation)
  assert evaluation.unreadable == 1
  assert np.flatnonzero(~batch['mask']).tolist() == [8]


def test_a_folder_of_unreadable_files_stops_with_one_clear_error(tmp_path):
  for name in ('a', 'b'):
    (tmp_path / name).mkdir()
    for i in range(10):
      (tmp_path / name / f'{i}.jpg').write_bytes(b'not a jpeg')
  source = image_sources.ImageFolder(tmp_path)
  with host_pipeline.train_pipeline(source, batch_size=4, seed=0, num_epochs=1,
                                    image_size=CROP, worker_count=1) as train:
    with pytest.raises(KdjaxError, match='17 unreadable images in a row'):
      next(train)


def test_random_resized_crop_falls_back_to_the_central_crop():
  # No draw of an area above the whole image fits: torchvision's central-crop fallback.
  rng = np.random.default_rng(0)
  assert host_pipeline.random_resized_crop_box(rng, 100, 300, scale=(2, 3)) == (0, 83, 100, 133)
  assert host_pipeline.random_resized_crop_box(rng, 300, 100, scale=(2, 3)) == (83, 0, 133, 100)
  assert host_pipeline.random_resized_crop_box(rng, 100, 120, scale=(2, 3)) == (0, 0, 100, 120)
  boxes = [host_pipeline.random_resized_crop_box(rng, 375, 500) for _ in range(2000)]
  areas = np.array([h * w for _, _, h, w in boxes]) / (375 * 500)
  ratios = np.array([w / h for _, _, h, w in boxes])
  assert 0.07 < areas.min() and areas.max() <= 1
  assert 0.74 < ratios.min() and ratios.max() < 1.35
  assert all(0 <= t <= 375 - h and 0 <= l <= 500 - w for t, l, h, w in boxes)


def test_device_prefetch_puts_sharded_batches_and_saves_the_consumed_position(folder):
  mesh = jax.sharding.Mesh(np.asarray(jax.devices()), ('data',))
  sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec('data'))
  with _train(folder) as reference:
    expected = list(reference)
  with host_pipeline.DevicePrefetch(_train(folder), sharding) as batches:
    first = next(batches)
    assert isinstance(first['images'], jax.Array) and first['images'].sharding == sharding
    np.testing.assert_array_equal(np.asarray(first['images']), expected[0]['images'])
    assert batches.get_state()['step'] == 1  # batch 1 is on its way, not yet taken
    state = batches.get_state()
  with host_pipeline.DevicePrefetch(_train(folder), sharding) as resumed:
    resumed.set_state(state)
    _assert_same([jax.device_get(b) for b in resumed], expected[1:])


def test_tfds_prepared_imagenet_is_read_as_jpeg_bytes_in_grain_workers(tmp_path):
  rng = np.random.default_rng(1)
  train = [(_jpeg(rng, 40 + i, 30 + 2 * i), i % 5) for i in range(8)]
  val = [(_jpeg(rng, 50, 40), 999)]
  write_tfds('imagenet2012', tmp_path, {'train': train, 'validation': val})
  source = image_sources.imagenet(str(tmp_path), 'train')
  assert isinstance(source, image_sources.TfdsImages)
  assert len(source) == 8 and source.num_classes == 1000
  assert source[3] == train[3]
  assert image_sources.imagenet(str(tmp_path), 'test')[0] == val[0]
  with host_pipeline.train_pipeline(source, batch_size=4, seed=0, num_epochs=1, image_size=CROP,
                                    worker_count=1) as batches:
    out = list(batches)
  assert len(out) == 2 and out[0]['images'].shape == (4, CROP, CROP, 3)
  assert sorted(np.concatenate([b['labels'] for b in out])) == sorted(l for _, l in train)
