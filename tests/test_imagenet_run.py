"""ImageNet runs through the host pipeline, on a tiny ImageFolder of real JPEGs written here.

The ImageNet presets are shrunk to fit: the CIFAR zoo's resnet8 student and a random teacher
(resnet8 too) on 32x32 crops (``config.zoo=cifar``, ``config.data.image_size=32``), batch 8.
The data is three classes of JPEGs of varied sizes and aspect ratios: 36 training images (4
steps per epoch) and 15 validation images.
"""

import contextlib
import io
import json
import os

import jax
import numpy as np
import pytest
from PIL import Image

from conftest import kill_when, restore_state, run_cli
from kdjax import config as config_lib, data, evaluate, export, models, plan, teachers
from kdjax.data import host_pipeline, image_sources
from kdjax.errors import KdjaxError
from kdjax.train import loop

CLASSES, TRAIN_PER_CLASS, VAL_PER_CLASS = ('n01', 'n02', 'n03'), 12, 5
TEACHER = 'resnet8'
SHRUNK = ['--config.zoo=cifar', '--config.model=resnet8', f'--config.teacher.model={TEACHER}',
          '--config.data.image_size=32', '--config.data.resize_size=36',
          '--config.batch_size=8', '--config.eval_batch_size=4', '--config.log_every_steps=2']


def _write_split(root, rng, per_class: int) -> None:
  for name in CLASSES:
    os.makedirs(root / name)
    for i in range(per_class):
      # Portrait, landscape, smaller and larger than the 32x32 crop.
      width, height = int(rng.integers(24, 91)), int(rng.integers(24, 91))
      coarse = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
      buffer = io.BytesIO()
      Image.fromarray(coarse).resize((width, height), Image.BILINEAR).save(buffer, 'JPEG',
                                                                           quality=90)
      (root / name / f'img_{i}.JPEG').write_bytes(buffer.getvalue())


@pytest.fixture(scope='module')
def imagenet(tmp_path_factory):
  """``(data_dir, teacher folder)``: train/ and val/ ImageFolders, and a random resnet8
  teacher of the three classes."""
  root = tmp_path_factory.mktemp('imagenet')
  rng = np.random.default_rng(0)
  _write_split(root / 'train', rng, TRAIN_PER_CLASS)
  _write_split(root / 'val', rng, VAL_PER_CLASS)
  net = models.create(TEACHER, len(CLASSES))
  variables = net.init(jax.random.PRNGKey(1), np.zeros((1, 32, 32, 3), np.float32))
  teachers.save(str(root / 'teacher'), TEACHER, len(CLASSES), jax.device_get(dict(variables)),
                source='random, for tests')
  return root, root / 'teacher'


def _config(method, data_dir, teacher=None, **overrides):
  """A ``method`` run on the tiny ImageFolder: 2 epochs of 4 steps, checkpoints every 3."""
  config = config_lib.base_config()
  config.method, config.zoo, config.model = method, 'cifar', 'resnet8'
  config.teacher.model, config.teacher.checkpoint = TEACHER, teacher and str(teacher)
  config.data.name, config.data.data_dir, config.data.workers = 'imagenet', str(data_dir), 0
  config.data.image_size, config.data.resize_size = 32, 36
  config.batch_size, config.eval_batch_size, config.num_epochs = 8, 4, 2
  config.log_every_steps, config.checkpoint_every_steps = 2, 3
  for key, value in overrides.items():
    *parents, leaf = key.split('.')
    target = config
    for p in parents:
      target = target[p]
    target[leaf] = value
  plan.validate(config)
  return config


def _leaves_equal(a, b) -> bool:
  la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
  return len(la) == len(lb) and all(np.array_equal(np.asarray(x), np.asarray(y))
                                    for x, y in zip(la, lb))


def _progress(workdir, step) -> dict:
  """The ``progress`` item of ``workdir``'s checkpoint of ``step``."""
  return json.loads((workdir / 'checkpoints' / str(step) / 'progress' / 'metadata').read_text())


def test_evaluation_counts_every_val_image_once(imagenet, tmp_path):
  """15 val images in eval batches of 4 (the last one padded and masked): top-1 and mean
  loss equal the teacher's, computed image by image with the eval transform."""
  data_dir, teacher = imagenet
  config = _config('kd', data_dir, teacher)
  run = loop.prepare(config, str(tmp_path / 'run'))
  with contextlib.closing(run.open_feed(None, 0, run.initial_state().rng)) as feed:
    got = feed.evaluate(run.steps.teacher_eval, {'teacher': feed.frozen.teacher})['teacher']
  assert len(run.inputs.test) == 15
  _assert_teachers_accuracy(got, data_dir, teacher)


def _assert_teachers_accuracy(got, data_dir, teacher):
  """``got`` is the teacher's top-1 / top-5 / mean loss on the 15 val images, computed image
  by image with the eval transform (resize 36, crop 32)."""
  val = image_sources.ImageFolder(data_dir / 'val')
  assert len(val) == 15
  images = np.stack([host_pipeline.eval_image(host_pipeline.decode(val[i][0]), 32, 36)
                     for i in range(len(val))])
  x = data.normalize(images, host_pipeline.IMAGENET_MEAN, host_pipeline.IMAGENET_STD)
  variables = teachers.load_variables(str(teacher), TEACHER, 3)
  logits = np.asarray(models.create(TEACHER, 3).apply(variables, x, train=False).logits,
                      np.float64)
  log_p = logits - logits.max(1, keepdims=True)
  log_p -= np.log(np.exp(log_p).sum(1, keepdims=True))
  loss = -log_p[np.arange(15), val.labels].mean()
  top1 = 100.0 * np.mean(logits.argmax(1) == val.labels)
  assert got['top1'] == pytest.approx(top1, abs=1e-9)
  assert got['loss'] == pytest.approx(loss, rel=1e-5)
  assert got['top5'] == 100.0  # three classes


def test_kdjax_eval_reads_the_validation_set_through_the_host_pipeline(imagenet):
  """:func:`kdjax.evaluate.evaluate` of a net trained on ImageNet-style data (here on 32x32
  crops, as a shrunk workdir's config.data says) counts every val image once."""
  data_dir, teacher = imagenet
  net = export.Net(teachers.load_variables(str(teacher), TEACHER, 3), TEACHER, 'cifar', 3,
                   'imagenet', host_pipeline.IMAGENET_MEAN, host_pipeline.IMAGENET_STD,
                   source=str(teacher), data={'data_dir': str(data_dir), 'image_size': 32,
                                              'resize_size': 36, 'workers': 0})
  got, size = evaluate.evaluate(net, batch_size=4)
  assert size == 15
  _assert_teachers_accuracy(got, data_dir, teacher)


def test_a_run_stopped_mid_epoch_resumes_on_the_batches_of_a_straight_run(imagenet, tmp_path):
  """Stopped after step 6 (epoch 2 of 4-step epochs), then run on: the same final state as
  one uninterrupted run, bit for bit; the checkpoint holds the input pipeline's position."""
  data_dir, _ = imagenet
  straight = loop.train_and_evaluate(_config('vanilla', data_dir), str(tmp_path / 'straight'))
  assert straight['finished'] and straight['step'] == 8
  stopped = tmp_path / 'stopped'
  loop.train_and_evaluate(_config('vanilla', data_dir, max_steps=6), str(stopped))
  assert _progress(stopped, 6)['input_pipeline'] == {'step': 6, 'seed': 0, 'records': 36,
                                                     'batch_size': 8}
  resumed = loop.train_and_evaluate(_config('vanilla', data_dir), str(stopped))
  assert resumed['finished'] and resumed['last_top1'] == straight['last_top1']
  assert _leaves_equal(restore_state(tmp_path / 'straight'), restore_state(stopped))
  assert _progress(stopped, 8)['input_pipeline']['step'] == 8


def test_a_checkpoint_of_other_data_is_refused(imagenet, tmp_path):
  """Resuming with another batch size is one clear error, not other batches."""
  data_dir, _ = imagenet
  workdir = tmp_path / 'run'
  loop.train_and_evaluate(_config('vanilla', data_dir, max_steps=3), str(workdir))
  with pytest.raises(KdjaxError, match='batch_size=8') as error:
    loop.train_and_evaluate(_config('vanilla', data_dir, batch_size=12), str(workdir))
  assert '\n' not in str(error.value)


def test_missing_or_empty_image_data_is_one_line(imagenet, tmp_path):
  data_dir, _ = imagenet
  with pytest.raises(KdjaxError, match='config.data.data_dir'):
    _config('vanilla', data_dir, **{'data.data_dir': None})
  with pytest.raises(KdjaxError, match='image_size is 32, but the imagenet zoo'):
    _config('vanilla', data_dir, zoo='imagenet', model='ResNet18')
  (tmp_path / 'empty').mkdir()
  with pytest.raises(KdjaxError, match=r'no ImageNet in .*train/<wnid>/\*\.JPEG') as error:
    loop.prepare(_config('vanilla', tmp_path / 'empty'), str(tmp_path / 'run'))
  assert '\n' not in str(error.value)
  (tmp_path / 'noimages' / 'train' / 'n01').mkdir(parents=True)
  with pytest.raises(KdjaxError, match='holds no image'):
    loop.prepare(_config('vanilla', tmp_path / 'noimages'), str(tmp_path / 'run'))


def _cli_args(preset, data_dir, teacher, workdir, *extra):
  return [f'--config=experiments/{preset}', f'--config.data.data_dir={data_dir}',
          f'--config.teacher.checkpoint={teacher}', *SHRUNK, *extra, f'--workdir={workdir}']


def _metrics(workdir) -> list:
  return [json.loads(line) for line in (workdir / 'metrics.jsonl').read_text().splitlines()]


@pytest.mark.parametrize('preset', [  # SLKD's three nets: about a minute here, slow
    'kd.py:r34_r18', pytest.param('slkd.py:r34_r18', marks=pytest.mark.slow)])
def test_imagenet_preset_shrunk_runs_through_main(imagenet, tmp_path, preset):
  """The preset's recipe and method through ``python -m kdjax.main`` with grain worker
  processes: 4 steps (one epoch), then top-1 over all 15 val images."""
  data_dir, teacher = imagenet
  workdir = tmp_path / 'run'
  done = run_cli(_cli_args(preset, data_dir, teacher, workdir, '--config.max_steps=4',
                           '--config.data.workers=1'))
  assert done.returncode == 0, done.stderr[-3000:]
  results = json.loads((workdir / 'results.json').read_text())
  assert (results['dataset'], results['step'], results['epochs_done']) == ('imagenet', 4, 1)
  for top1 in (results['teacher_top1'], results['last_top1']):
    assert round(top1 * 15 / 100, 6).is_integer()  # hits out of exactly 15 val images
  config = json.loads((workdir / 'config.json').read_text())
  assert (config['optimizer']['lr'], config['num_epochs']) == (0.2, 100)
  method = preset.split('.')[0]
  assert (config[method]['temperature'], config[method]['kd_weight']) == (1.0, 0.5)
  train = [m for m in _metrics(workdir) if m['split'] == 'train']
  assert [m['step'] for m in train] == [2, 4]
  terms = {'kd': ('loss/kd',), 'slkd': ('loss/slt1_kd', 'loss/slt2_kd')}[method]
  for m in train:
    assert all(np.isfinite(m[t]) and m[t] > 0 for t in terms), m


@pytest.mark.slow
def test_killed_mid_epoch_and_resumed_ends_bit_identical(imagenet, tmp_path):
  """SIGKILL right after the checkpoint of step 6 (mid epoch 2), then the same command: the
  final state equals an uninterrupted run's bit for bit."""
  data_dir, teacher = imagenet
  straight, killed = tmp_path / 'straight', tmp_path / 'killed'
  extra = ('--config.num_epochs=2', '--config.checkpoint_every_steps=3',
           '--config.data.workers=0')
  done = run_cli(_cli_args('kd.py:r34_r18', data_dir, teacher, straight, *extra))
  assert done.returncode == 0, done.stderr[-3000:]
  args = _cli_args('kd.py:r34_r18', data_dir, teacher, killed, *extra)
  kill_when(args, (killed / 'checkpoints' / '6').exists, 'the checkpoint of step 6')
  assert not (killed / 'results.json').exists(), 'killed before its end'
  resumed = run_cli(args)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert 'resumed from the checkpoint at step 6' in resumed.stderr
  assert _leaves_equal(restore_state(straight), restore_state(killed))
  assert (json.loads((killed / 'results.json').read_text())['last_top1'] ==
          json.loads((straight / 'results.json').read_text())['last_top1'])
