"""Your own data and nets (kdjax/data/custom.py, kdjax/models/user.py, docs/custom.md).

A folder of 40x40 PNGs written here (3 classes, told apart by their colour), a resnet8
teacher trained on it with vanilla, then KD into a net of tests/custom_nets.py named by its
module path; the same images as a TFDS dataset prepared here (ArrayRecord, no TensorFlow),
streamed through the host pipeline; and each bad input's one line.
"""

import io
import json
import os

import numpy as np
import pytest
from PIL import Image

from conftest import run_cli, tiny_config, write_tfds
from kdjax import plan
from kdjax.errors import KdjaxError
from kdjax.train import loop

COLOURS = {'blue': (40, 40, 200), 'green': (40, 200, 40), 'red': (200, 40, 40)}
SPLITS = {'train': 20, 'val': 10}  # images per class
NET = 'tests.custom_nets:small_cnn'
COMMON = ['--config.data.image_size=32', '--config.num_epochs=3', '--config.batch_size=16',
          '--config.eval_batch_size=32']


def _png(rng, colour) -> bytes:
  pixels = np.clip(rng.normal(colour, 40, (40, 40, 3)), 0, 255).astype(np.uint8)
  out = io.BytesIO()
  Image.fromarray(pixels).save(out, format='PNG')
  return out.getvalue()


def _examples(seed: int = 0) -> dict:
  """``{split: [(PNG bytes, label)]}``, labels in sorted class order."""
  rng = np.random.default_rng(seed)
  return {split: [(_png(rng, COLOURS[name]), label) for label, name in enumerate(sorted(COLOURS))
                  for _ in range(n)] for split, n in SPLITS.items()}


def _write_folder(root, examples: dict) -> str:
  for split, items in examples.items():
    for i, (png, label) in enumerate(items):
      folder = root / split / sorted(COLOURS)[label]
      folder.mkdir(parents=True, exist_ok=True)
      (folder / f'{i}.png').write_bytes(png)
  return str(root)


def _cli(args, cache, workdir):
  proc = run_cli([*args, *COMMON, f'--workdir={workdir}'], env={'KDJAX_CACHE': str(cache)})
  assert proc.returncode == 0, proc.stderr[-3000:]
  with open(os.path.join(workdir, 'results.json')) as f:
    return json.load(f), proc.stderr


@pytest.fixture(scope='module')
def folder_teacher(tmp_path_factory):
  """``(data_dir, cache, teacher workdir, its results)``: resnet8 trained on the folder."""
  root = tmp_path_factory.mktemp('custom')
  data_dir = _write_folder(root / 'images', _examples())
  args = ['--config=vanilla:resnet8', '--config.data.name=folder',
          f'--config.data.data_dir={data_dir}']
  results, _ = _cli(args, root / 'cache', str(root / 'teacher'))
  return data_dir, root / 'cache', str(root / 'teacher'), results


def _kd_args(teacher: str):
  return ['--config=kd', '--config.model=' + NET, '--config.teacher.model=resnet8',
          f'--config.teacher.checkpoint={teacher}']


@pytest.mark.slow
def test_a_folder_trains_a_teacher_then_kd_into_a_user_net(folder_teacher, tmp_path):
  data_dir, cache, teacher, results = folder_teacher
  assert results['classes'] == ['blue', 'green', 'red'] and results['num_classes'] == 3
  assert results['last_top1'] > 80  # chance: 33%
  kd, log = _cli([*_kd_args(teacher), '--config.data.name=folder',
                  f'--config.data.data_dir={data_dir}'], cache, str(tmp_path / 'kd'))
  assert 'decoded once, held on the devices' in log
  assert kd['model'] == NET and kd['teacher_top1'] > 80
  assert kd['last_top1'] > 70 and kd['best_top1'] > 70
  cached = os.listdir(cache / 'decoded')
  assert len([f for f in cached if f.endswith('.npz')]) == 2 and not any('tmp' in f
                                                                          for f in cached)


@pytest.mark.slow
def test_a_tfds_dataset_streams_through_the_host_pipeline(folder_teacher, tmp_path):
  """The same images as a prepared TFDS ``beans`` (3 classes), its ``validation`` split as the
  test set, streamed; the folder's teacher distils on it (the same images under another
  dataset name: config.teacher.other_data says it is deliberate)."""
  _, cache, teacher, _ = folder_teacher
  examples = _examples()
  write_tfds('beans', tmp_path / 'tfds', {'train': examples['train'],
                                         'validation': examples['val']})
  kd, log = _cli([*_kd_args(teacher), '--config.data.name=tfds:beans',
                  f'--config.data.data_dir={tmp_path / "tfds"}',
                  '--config.data.test_split=validation', '--config.data.placement=host',
                  '--config.data.resize_size=36', '--config.data.workers=0',
                  '--config.teacher.other_data=true'],
                 cache, str(tmp_path / 'kd'))
  assert 'stream through the host pipeline (config.data.placement=host)' in log
  assert kd['classes'] == ['angular_leaf_spot', 'bean_rust', 'healthy']
  assert kd['teacher_top1'] > 80 and kd['last_top1'] > 70


def _setup(tmp_path, data_dir, method='vanilla', **overrides):
  """The prepared run (:func:`kdjax.train.loop.prepare`) of a ``method`` run of resnet8 on
  the folder ``data_dir`` (nothing trained)."""
  config = tiny_config(method, **{'data.name': 'folder', 'data.image_size': 32, 'batch_size': 8,
                                  'data.data_dir': data_dir and str(data_dir), **overrides})
  plan.make_plan(config, str(tmp_path / 'run'))
  return loop.prepare(config, str(tmp_path / 'run'))


def _one_line(match, call, *args, **kwargs):
  with pytest.raises(KdjaxError, match=match) as error:
    call(*args, **kwargs)
  assert '\n' not in str(error.value)


@pytest.fixture
def small_folder(tmp_path, monkeypatch):
  monkeypatch.setenv('KDJAX_CACHE', str(tmp_path / 'cache'))
  return tmp_path / 'images', _examples()


def test_bad_folders_are_one_line_each(small_folder, tmp_path):
  root, examples = small_folder
  _one_line('config.data.data_dir, which is unset', _setup, tmp_path, None)
  _write_folder(root, {'train': examples['train']})
  _one_line(r'no val split in .*images: expected .*val/<class>/<image>', _setup, tmp_path, root)
  (root / 'val' / 'red').mkdir(parents=True)
  _one_line(r'class folder .*val/red holds no image', _setup, tmp_path, root)
  _write_folder(root, {'val': examples['val'][:20]})  # blue and green, and an empty red
  os.rmdir(root / 'val' / 'red')
  _one_line(r"different class folders \(only in train: \['red'\], only in val: \[\]\)",
            _setup, tmp_path, root)


def test_an_unreadable_image_is_named_or_skipped_and_counted(small_folder, tmp_path, capfd):
  root, examples = small_folder
  _write_folder(root, examples)
  (root / 'train' / 'red' / '40.png').write_bytes(b'not a png')
  _one_line(r'cannot read the image .*red/40\.png \(not an image Pillow reads\); .*'
            r'config\.data\.skip_unreadable=true', _setup, tmp_path, root)
  assert not os.listdir(tmp_path / 'cache' / 'decoded')  # nothing half-made
  run = _setup(tmp_path, root, **{'data.skip_unreadable': True})
  assert len(run.inputs.train) == 59 and len(run.inputs.test) == 30
  assert 'left out 1 unreadable images of folder train' in capfd.readouterr().err


def test_bad_user_nets_and_image_sizes_are_one_line_each(small_folder, tmp_path):
  root, examples = small_folder
  _write_folder(root, examples)
  _one_line(r"config.model 'nope.nets:make': cannot import nope.nets \(ModuleNotFoundError",
            _setup, tmp_path, root, model='nope.nets:make')
  _one_line(r'module tests.custom_nets has no callable make', _setup, tmp_path, root,
            model='tests.custom_nets:make')
  _one_line('returns a dict, neither logits nor a kdjax.models.ModelOutput', _setup, tmp_path,
            root, model='tests.custom_nets:no_logits')
  _one_line(r'tests.custom_nets:flat_mlp cannot take 24x24x3 images \(config.data.image_size\)',
            _setup, tmp_path, root, model='tests.custom_nets:flat_mlp',
            **{'data.image_size': 24})
  _one_line(r"image_size is 40, but the cifar zoo's models take 32x32 images", _setup, tmp_path,
            root, **{'data.image_size': 40})
  _one_line(r'PKT reads embedding .* and tests.custom_nets:small_cnn returns none', _setup,
            tmp_path, root, method='pkt', model=NET, **{'teacher.model': 'resnet8',
                                                        'teacher.train_if_missing': True})


@pytest.mark.slow
def test_a_teacher_of_another_class_count_is_refused(folder_teacher, small_folder, tmp_path):
  root, examples = small_folder
  two = {split: [(png, label) for png, label in items if label < 2]
         for split, items in examples.items()}
  _write_folder(root, two)
  _one_line(r'teacher .* was trained on 3 classes of folder, and the data has 2', _setup,
            tmp_path, root, method='kd', **{'teacher.model': 'resnet8',
                                            'teacher.checkpoint': folder_teacher[2]})
