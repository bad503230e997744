"""The teacher-logit cache: the same logits, the same steps and the same run as the teacher's own
forward; keyed by teacher and augmentation; damaged chunks and killed builds recovered."""

import functools
import json
import os
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import ROOT, tiny_config
from kdjax import data, models, teachers
from kdjax.teachers import logit_cache as teacher_cache
from kdjax.plan import validate
from kdjax.errors import KdjaxError
from kdjax.train import loop
from kdjax import sharding

NUM_IMAGES, K = 24, 10


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
  monkeypatch.setenv('KDJAX_CACHE', str(tmp_path / 'cache'))


def _datasets():
  """The first digits: a small training set (and a test set) for quick caches."""
  train = data.load_split('digits', 'train')
  small = data.Dataset(train.images[:NUM_IMAGES], train.labels[:NUM_IMAGES], K, train.mean,
                       train.std)
  return small, small


def _config(method='kd', **overrides):
  """resnet8 -> resnet8 on 8 images per batch; crop_padding 1 with flips: 18 variants."""
  return tiny_config(method, **{'teacher.model': 'resnet8', 'teacher.checkpoint': 'unused',
                                'batch_size': 8, 'data.crop_padding': 1, 'data.flip': True,
                                **overrides})


@functools.lru_cache(maxsize=2)
def _teacher(seed=1):
  """A random resnet8 teacher (its values do not matter here) and its variables."""
  net = models.create('resnet8', K)
  init = jax.jit(lambda key: net.init(key, jnp.zeros((1, 32, 32, 3)), train=False))
  return net, jax.device_get(init(jax.random.PRNGKey(seed)))


def _cache_of(config, variables, train=None):
  net, _ = _teacher()
  return teacher_cache.teacher_logits(config, net, variables, train or _datasets()[0],
                                      sharding.make_mesh())


@pytest.mark.parametrize('crop_padding,flip', [(0, True), (2, False), (2, True)])
def test_the_drawn_augmentation_is_train_transforms_random_stream(crop_padding, flip):
  images = jnp.asarray(np.random.default_rng(0).integers(0, 256, (64, 32, 32, 3)), jnp.uint8)
  key = jax.random.PRNGKey(4)
  aug = data.draw_augmentation(key, 64, crop_padding=crop_padding, flip=flip)
  crop_key, flip_key = jax.random.split(key)  # the draws train_transform always made
  if crop_padding:
    np.testing.assert_array_equal(
        aug.offsets, jax.random.randint(crop_key, (64, 2), 0, 2 * crop_padding + 1))
  if flip:
    np.testing.assert_array_equal(aug.flips,
                                  jax.random.bernoulli(flip_key, 0.5, (64, 1, 1, 1)).ravel())
  kw = dict(mean=(0.5,) * 3, std=(0.25,) * 3, crop_padding=crop_padding, flip=flip)
  np.testing.assert_array_equal(
      data.train_transform(key, images, **kw),
      data.normalize(data.augment(images, aug, crop_padding=crop_padding, flip=flip),
                     kw['mean'], kw['std']))
  variants = data.variant_index(aug, crop_padding=crop_padding, flip=flip)
  assert 0 <= int(variants.min()) and int(variants.max()) < data.num_variants(crop_padding, flip)
  back = data.variant_augmentation(variants, crop_padding=crop_padding, flip=flip)
  np.testing.assert_array_equal(back.offsets, aug.offsets)
  np.testing.assert_array_equal(back.flips, aug.flips)


@pytest.mark.parametrize('cache_dtype', ['float32', 'bfloat16'])
def test_cached_logits_equal_the_teachers_forward_on_every_augmented_image(cache_dtype):
  train, _ = _datasets()
  net, variables = _teacher()
  logits = _cache_of(_config(**{'teacher.cache_dtype': cache_dtype}), variables)
  assert logits.shape == (NUM_IMAGES, 18, K) and logits.dtype == jnp.dtype(cache_dtype)
  forward = jax.jit(lambda v, x: net.apply(v, x, train=False).logits)
  variants = jnp.arange(18)
  aug = data.variant_augmentation(variants, crop_padding=1, flip=True)
  for i in (0, 7, NUM_IMAGES - 1):  # every crop and flip of the image, as the step makes them
    x = data.augment(jnp.repeat(train.images[i:i + 1], 18, axis=0), aug, crop_padding=1,
                     flip=True)
    direct = forward(variables, data.normalize(x, train.mean, train.std))
    tolerance = dict(rtol=1e-5, atol=1e-5) if cache_dtype == 'float32' else dict(rtol=1 / 128)
    np.testing.assert_allclose(logits[i].astype(np.float32), direct, **tolerance)
  if cache_dtype == 'float32':  # the rows of a step's draws are its teacher's logits

    @jax.jit
    def step_view(key, images):
      kw = dict(crop_padding=1, flip=True)
      variants = data.variant_index(data.draw_augmentation(key, len(images), **kw), **kw)
      x = data.train_transform(key, images, mean=train.mean, std=train.std, **kw)
      return variants, net.apply(variables, x, train=False).logits

    idx = np.arange(0, NUM_IMAGES, 2)
    drawn, direct = step_view(jax.random.PRNGKey(3), train.images[idx])
    np.testing.assert_allclose(logits[idx, np.asarray(drawn)], direct, rtol=1e-5, atol=1e-5)


def _setup(config, tmp_path, name, variables):
  return loop.prepare(config, str(tmp_path / name), datasets=_datasets(),
                      teacher_variables=variables)


def _two_steps(run):
  """The state and each step's metrics after two updates fed as the loop feeds them."""
  state = run.initial_state()
  feed = run.open_feed(None, 0, state.rng)
  metrics = []
  for step in range(2):
    state, m = run.steps.train(state, feed.frozen, *feed.train_inputs(step))
    metrics.append(jax.device_get(m))
  return jax.device_get(state), metrics


@pytest.mark.parametrize('method', ['kd', pytest.param('slkd', marks=pytest.mark.slow)])
def test_a_cached_step_equals_the_step_that_runs_the_teacher(method, tmp_path):
  _, variables = _teacher()
  plain, plain_metrics = _two_steps(_setup(_config(method), tmp_path, 'plain', variables))
  run = _setup(_config(method, **{'teacher.cache': True}), tmp_path, 'cached', variables)
  assert run.cache_placement == 'device' and run.frozen.teacher_logits is not None
  cached, cached_metrics = _two_steps(run)
  for a, b in zip(plain_metrics, cached_metrics):
    assert a.keys() == b.keys()
    for k in a:
      np.testing.assert_allclose(a[k], b[k], rtol=1e-5, atol=1e-6, err_msg=k)
  for tree in ('params', 'batch_stats'):
    for a, b in zip(jax.tree.leaves(getattr(plain, tree)), jax.tree.leaves(getattr(cached, tree))):
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_a_cache_kept_in_host_memory_gives_the_steps_of_one_on_the_devices(tmp_path):
  """The rows the host gathers for each step are the ones the step gathers on the devices
  (the same variants from the same keys): the same updates, bit for bit."""
  _, variables = _teacher()
  results = []
  for where in ('device', 'host'):
    run = _setup(_config(**{'teacher.cache': True, 'teacher.cache_placement': where}),
                 tmp_path, where, variables)
    assert run.cache_placement == where
    assert (run.frozen.teacher_logits is not None) == (where == 'device')
    results.append(_two_steps(run))
  (on_device, device_metrics), (on_host, host_metrics) = results
  for a, b in zip(device_metrics, host_metrics):
    for k in a:
      np.testing.assert_array_equal(a[k], b[k], err_msg=k)
  for a, b in zip(jax.tree.leaves(on_device), jax.tree.leaves(on_host)):
    np.testing.assert_array_equal(a, b)


def test_auto_placement_keeps_a_cache_over_half_a_device_on_the_host():
  config = _config(**{'teacher.cache': True})
  gib = 2**30
  assert teacher_cache.placement(config, 3 * gib, None) == 'device'  # memory unknown (CPU)
  assert teacher_cache.placement(config, 3 * gib, 16 * gib) == 'device'
  assert teacher_cache.placement(config, 9 * gib, 16 * gib) == 'host'
  config.teacher.cache_placement = 'host'
  assert teacher_cache.placement(config, 1, 16 * gib) == 'host'
  config.teacher.cache_placement = 'device'
  with pytest.raises(KdjaxError,
                     match='over half of the 16.0 GiB of a device.*cache_placement=host'):
    teacher_cache.placement(config, 9 * gib, 16 * gib)
  config.teacher.cache_placement = 'disk'
  with pytest.raises(KdjaxError, match='cache_placement must be one of auto, device, host'):
    validate(config)


def test_a_changed_teacher_or_augmentation_is_another_cache(tmp_path):
  train, _ = _datasets()
  _, variables = _teacher()
  _, other = _teacher(seed=2)
  config = _config()
  key = teacher_cache.cache_key(teacher_cache.cache_fields(config, variables, train))
  assert key == teacher_cache.cache_key(teacher_cache.cache_fields(_config(), variables, train))
  changed = [teacher_cache.cache_fields(config, other, train)]
  for field, value in (('data.crop_padding', 2), ('data.flip', False), ('dtype', 'bfloat16'),
                       ('teacher.cache_dtype', 'bfloat16')):
    changed.append(teacher_cache.cache_fields(_config(**{field: value}), variables, train))
  fewer = data.Dataset(train.images[:-1], train.labels[:-1], K, train.mean, train.std)
  changed.append(teacher_cache.cache_fields(config, variables, fewer))
  keys = {teacher_cache.cache_key(f) for f in changed}
  assert len(keys) == len(changed) and key not in keys
  first = _cache_of(config, variables)
  second = _cache_of(_config(**{'data.crop_padding': 2}), variables)  # built, not reused
  assert first.shape[1] == 18 and second.shape[1] == 50
  assert len(os.listdir(tmp_path / 'cache' / 'teacher_logits')) == 4  # 2 folders, 2 locks


def test_a_damaged_or_missing_chunk_is_detected_and_computed_again(tmp_path, capfd):
  _, variables = _teacher()
  config = _config(**{'teacher.cache_chunk_images': 8})  # 3 chunks
  first = _cache_of(config, variables)
  (folder,) = (tmp_path / 'cache' / 'teacher_logits').glob('*/')
  chunks = sorted(folder.glob('chunk_*.npy'))
  assert len(chunks) == 3
  kept = chunks[0].stat().st_mtime_ns
  with open(chunks[1], 'r+b') as f:  # truncated
    f.truncate(100)
  content = bytearray(chunks[2].read_bytes())  # one logit changed
  content[-3] ^= 0xFF
  chunks[2].write_bytes(bytes(content))
  capfd.readouterr()
  again = _cache_of(config, variables)
  err = capfd.readouterr().err
  assert f'{chunks[1]} is damaged' in err and f'{chunks[2]} is damaged' in err
  assert '2 of 3 chunks' in err
  np.testing.assert_array_equal(again, first)
  assert chunks[0].stat().st_mtime_ns == kept
  chunks[0].unlink()
  np.testing.assert_array_equal(_cache_of(config, variables), first)
  assert 'unreadable' in capfd.readouterr().err
  manifest = json.loads((folder / 'manifest.json').read_text())
  assert sorted(manifest['chunks']) == ['0', '1', '2']


def test_a_complete_cache_is_only_read_so_a_team_can_share_it_read_only(tmp_path):
  _, variables = _teacher()
  config = _config()
  first = _cache_of(config, variables)
  (folder,) = (tmp_path / 'cache' / 'teacher_logits').glob('*/')
  (folder.parent / f'{folder.name}.lock').unlink()  # as a prepared, copied cache has none
  files = sorted(folder.iterdir())
  for path in [*files, folder, folder.parent]:
    os.chmod(path, 0o555 if path.is_dir() else 0o444)
  try:
    np.testing.assert_array_equal(_cache_of(config, variables), first)
  finally:
    for path in (folder, folder.parent):
      os.chmod(path, 0o755)
  assert sorted(folder.iterdir()) == files  # nothing written, not even a lock
  assert not (folder.parent / f'{folder.name}.lock').exists()


def test_a_method_that_reads_teacher_features_is_refused_with_the_cache():
  validate(_config('kd', **{'teacher.cache': True}))
  validate(_config('fitnet'))
  with pytest.raises(KdjaxError, match='fitnet reads its features') as e:
    validate(_config('fitnet', **{'teacher.cache': True}))
  assert '\n' not in str(e.value)
  with pytest.raises(KdjaxError, match='cache_dtype'):
    validate(_config('kd', **{'teacher.cache_dtype': 'float16'}))


def test_a_build_killed_after_its_first_chunk_resumes(tmp_path, capfd):
  _, variables = _teacher()
  teachers.save(str(tmp_path / 'teacher'), 'resnet8', K, variables)
  env = dict(os.environ, KDJAX_CACHE=str(tmp_path / 'cache'))
  # digits, 1 variant per image (no crop, no flip), 8 images per chunk: 180 chunks
  command = [sys.executable, '-m', 'kdjax.cache', '--config', 'experiments/kd.py:digits',
             '--workdir', str(tmp_path / 'run'), f'--config.teacher.checkpoint={tmp_path}/teacher',
             '--config.teacher.model=resnet8', '--config.model=resnet8',
             '--config.data.crop_padding=0', '--config.teacher.cache_chunk_images=8',
             '--config.teacher.cache_batch=8']
  root, done, deadline = tmp_path / 'cache' / 'teacher_logits', 0, time.time() + 300
  with open(tmp_path / 'stderr.txt', 'w') as err:
    proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=err)
    while proc.poll() is None and time.time() < deadline:
      manifests = list(root.glob('*/manifest.json')) if root.exists() else []
      try:
        done = len(json.loads(manifests[0].read_text())['chunks']) if manifests else 0
      except ValueError:  # being replaced
        done = 0
      if done:
        proc.send_signal(signal.SIGKILL)
        break
      time.sleep(0.01)
    proc.wait()
  assert proc.returncode == -signal.SIGKILL, (tmp_path / 'stderr.txt').read_text()[-3000:]
  (folder,) = root.glob('*/')
  before = {p.name: p.stat().st_mtime_ns for p in folder.glob('chunk_*.npy')}
  done = len(json.loads((folder / 'manifest.json').read_text())['chunks'])
  assert 1 <= done < 180
  resumed = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True,
                           timeout=300)
  assert resumed.returncode == 0, resumed.stderr
  assert f'{180 - done} of 180 chunks' in resumed.stderr
  manifest = json.loads((folder / 'manifest.json').read_text())
  assert len(manifest['chunks']) == 180
  for k in range(done):  # the chunks of the manifest were kept, not computed again
    name = f'chunk_{k:05d}.npy'
    assert (folder / name).stat().st_mtime_ns == before[name]
  capfd.readouterr()
  logits = teacher_cache.teacher_logits(  # the same cache, complete: loaded, nothing computed
      tiny_config('kd', **{'teacher.model': 'resnet8', 'data.crop_padding': 0}),
      models.create('resnet8', K), variables, data.load_split('digits', 'train'),
      sharding.make_mesh())
  assert logits.shape == (1437, 1, K) and 'to compute' not in capfd.readouterr().err


@pytest.mark.slow
def test_a_digits_kd_run_with_the_cache_is_the_same_run(tmp_path):
  """resnet8 -> resnet8, batch 256, one epoch; crop_padding 1 (9 variants per image) keeps
  the build to 12,933 teacher forwards on a CPU. The cache kept in host memory (its rows
  sent with each batch) gives the run of the cache on the devices, bit for bit."""
  _, variables = _teacher()
  teachers.save(str(tmp_path / 'teacher'), 'resnet8', K, variables)
  results, losses = [], []
  for cache, where in ((False, 'auto'), (True, 'device'), (True, 'host')):
    config = tiny_config('kd', **{
        'teacher.model': 'resnet8', 'teacher.checkpoint': str(tmp_path / 'teacher'),
        'teacher.cache': cache, 'teacher.cache_placement': where, 'batch_size': 256,
        'num_epochs': 1, 'data.crop_padding': 1, 'log_every_steps': 1})
    workdir = tmp_path / f'run_{cache}_{where}'
    results.append(loop.train_and_evaluate(config, str(workdir)))
    with open(workdir / 'metrics.jsonl') as f:
      rows = [json.loads(line) for line in f]
    losses.append([r['loss'] for r in rows if r['split'] == 'train'])
  assert len(losses[0]) == 5
  np.testing.assert_allclose(losses[1], losses[0], rtol=1e-5)
  assert results[1]['last_top1'] == results[0]['last_top1']
  assert results[1]['last_epoch']['student']['loss'] == pytest.approx(
      results[0]['last_epoch']['student']['loss'], rel=1e-5)
  assert losses[2] == losses[1] and results[2]['last_epoch'] == results[1]['last_epoch']
