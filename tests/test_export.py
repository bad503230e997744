"""``kdjax-export`` and ``kdjax-eval``: kdjax nets out to PyTorch and Flax files, and the
accuracy of any checkpoint.

The PyTorch export must be the exact inverse of the import: for every model with a PyTorch
fixture (the state dicts of mdistiller's models), importing it and exporting it again gives
the fixture's state dict back, tensor for tensor (keys in order, shapes, dtypes, values,
``num_batches_tracked``), which is what ``load_state_dict(strict=True)`` of mdistiller's
model class needs; and re-importing the export computes the fixture's PyTorch logits. A real
(tiny) digits run then goes through ``--format flax``, ``--format torch`` and ``kdjax-eval``,
which must reproduce the run's own test accuracy and loss.
"""

import json
import re
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest

from kdjax import convert, data, evaluate, export, models
from kdjax.teachers import torch_import
from kdjax.convert import torch_export
from kdjax.data import cifar
from kdjax.errors import KdjaxError
from conftest import FIXTURES, ROOT, load_fixture, tiny_config

# Every model with a fixture state dict: (zoo, name, classes, fixture prefix).
FAMILIES = sorted(
    [('cifar', p.stem.removeprefix('models_'), 100, 'models_')
     for p in FIXTURES.glob('models_*.npz')
     if not p.stem.endswith('_io') and p.stem != 'models_input'] +
    [('imagenet', p.stem.removeprefix('imagenet_'), 1000, 'imagenet_')
     for p in FIXTURES.glob('imagenet_*.npz') if not p.stem.endswith('_io')])
FIXTURE_STEPS = 2  # the fixtures' BatchNorm statistics come from two train-mode forwards


def _fixture_state(prefix: str, name: str) -> dict:
  """The fixture's state dict, its float16 weights as the exact float32 ones PyTorch used."""
  weights = load_fixture(f'{prefix}{name}.npz')
  return {k: weights[k].astype(np.float32) if weights[k].dtype == np.float16 else weights[k]
          for k in weights.files}


@pytest.mark.parametrize('zoo,name,classes,prefix', FAMILIES,
                         ids=[f[1] for f in FAMILIES])
def test_export_gives_back_the_pytorch_state_dict_and_its_logits(zoo, name, classes, prefix):
  fixture = _fixture_state(prefix, name)
  variables = convert.variables_from_torch(name, fixture, classes, zoo=zoo)
  exported = torch_export.state_dict_from_variables(name, variables, classes, zoo,
                                                    steps=FIXTURE_STEPS)
  assert list(exported) == list(fixture)  # the same keys, in PyTorch's order
  for key, want in fixture.items():
    assert exported[key].dtype == want.dtype and exported[key].shape == want.shape, key
    np.testing.assert_array_equal(exported[key], want, err_msg=key)
  if name == 'wrn_40_2':  # three BatchNorms applied twice per forward pass count twice
    assert sorted({int(v) for k, v in exported.items() if k.endswith('tracked')}) == [2, 4]
  io = load_fixture(f'{prefix}{name}_io.npz')
  again = convert.variables_from_torch(name, exported, classes, zoo=zoo)
  logits = models.create(name, classes, zoo=zoo).apply(
      again, jnp.asarray(io['input'].transpose(0, 2, 3, 1)), train=False).logits
  np.testing.assert_allclose(logits, io['logits_eval'], atol=1e-4, rtol=0)


def test_the_pth_file_holds_the_state_dict_as_torch_tensors(tmp_path):
  torch = pytest.importorskip('torch')
  fixture = _fixture_state('models_', 'resnet8x4')
  variables = convert.variables_from_torch('resnet8x4', fixture, 100)
  state_dict = torch_export.state_dict_from_variables('resnet8x4', variables, steps=2)
  torch_export.save_pth(tmp_path / 'student.pth', state_dict)
  loaded = torch.load(tmp_path / 'student.pth', weights_only=True)
  assert list(loaded) == list(fixture)
  for key, want in fixture.items():
    assert loaded[key].dtype == (torch.int64 if key.endswith('tracked') else torch.float32)
    np.testing.assert_array_equal(loaded[key].numpy(), want, err_msg=key)


def test_a_pytorch_resnet50_loads_the_export_strictly_and_equals_the_original():
  """mdistiller's ImageNet ResNet50 (Bottleneck, torchvision's names) as a PyTorch module:
  its state dict, imported and exported, loads into another instance with strict=True and
  makes it the original (whose logits kdjax reproduces, test_imagenet_models.py)."""
  torch = pytest.importorskip('torch')
  from test_imagenet_models import _torch_resnet50  # pylint: disable=import-outside-toplevel
  torch.manual_seed(0)
  original, other = _torch_resnet50(torch), _torch_resnet50(torch)
  variables = convert.variables_from_torch(
      'ResNet50', {k: v.numpy() for k, v in original.state_dict().items()}, 1000, zoo='imagenet')
  exported = torch_export.state_dict_from_variables('ResNet50', variables, 1000, 'imagenet')
  other.load_state_dict({k: torch.from_numpy(v) for k, v in exported.items()}, strict=True)
  for key, tensor in original.state_dict().items():  # num_batches_tracked: 0, never trained
    assert torch.equal(other.state_dict()[key], tensor), key


def test_variables_of_another_model_are_refused_naming_the_variable():
  variables = convert.variables_from_torch('resnet8x4', _fixture_state('models_', 'resnet8x4'))
  with pytest.raises(KdjaxError, match=r'do not fit resnet8x4 with 10 classes: '
                     r'params/fc/kernel has shape \(256, 100\), expected \(256, 10\)'):
    torch_export.state_dict_from_variables('resnet8x4', variables, 10)


# --- a real digits run, out and back ---------------------------------------------------------


@pytest.fixture(name='digits_run', scope='module')
def _digits_run(tmp_path_factory):
  """A finished 1-epoch resnet8 digits run (11 steps) and its results.json."""
  from kdjax.train import loop  # pylint: disable=import-outside-toplevel
  workdir = tmp_path_factory.mktemp('digits') / 'run'
  loop.train_and_evaluate(tiny_config(num_epochs=1, batch_size=128), str(workdir))
  return str(workdir), json.loads((workdir / 'results.json').read_text())


def _one_line_output(capsys, argv, module=evaluate) -> str:
  assert module.main(argv) == 0
  lines = capsys.readouterr().out.strip().splitlines()
  assert len(lines) == 1
  return lines[0]


def _expected_line(results) -> str:
  own = results['last_epoch']['student']
  return (f'on the 360 test images of digits: top-1 {own["top1"]:.2f}%, top-5 '
          f'{own["top5"]:.2f}%, loss {own["loss"]:.4f}')


@pytest.mark.slow
def test_eval_of_the_workdir_and_of_its_flax_export_reproduces_the_run(digits_run, tmp_path,
                                                                         capsys):
  workdir, results = digits_run
  own = results['last_epoch']['student']
  result, size = evaluate.evaluate(evaluate.resolve(workdir))
  assert size == 360 and result['top1'] == own['top1'] and result['top5'] == own['top5']
  assert result['loss'] == pytest.approx(own['loss'], rel=1e-6)
  assert _expected_line(results) in _one_line_output(capsys, [workdir])

  out = tmp_path / 'student.msgpack'
  line = _one_line_output(capsys, [workdir, '--format', 'flax', '--out', str(out)], export)
  assert f'-> {out} and {tmp_path / "student.json"}' in line
  meta = json.loads((tmp_path / 'student.json').read_text())
  digits = data.load_split('digits', 'test')
  assert (meta['model'], meta['zoo'], meta['num_classes'], meta['dataset'], meta['steps']) == (
      'resnet8', 'cifar', 10, 'digits', results['step'])
  assert meta['mean'] == list(digits.mean) and meta['std'] == list(digits.std)
  for path in (out, tmp_path / 'student.json'):  # either file names the export
    line = _one_line_output(capsys, [str(path)])
    assert line.startswith(f'resnet8 ({out})') and _expected_line(results) in line


@pytest.mark.slow
def test_the_torch_export_of_the_run_evaluates_as_a_pth_to_the_runs_accuracy(digits_run,
                                                                            tmp_path, capsys):
  torch = pytest.importorskip('torch')
  workdir, results = digits_run
  out = tmp_path / 'student.pth'
  line = _one_line_output(capsys, [workdir, '--format', 'torch', '--out', str(out)], export)
  assert re.search(r'-> .*student\.pth: 56 tensors \(78,714 values\)', line), line
  loaded = torch.load(out, weights_only=True)
  layout = torch_import.torch_layout('resnet8', 10)
  assert [k for k in loaded if not k.endswith('num_batches_tracked')] == list(layout.variables)
  assert {int(v) for k, v in loaded.items() if k.endswith('tracked')} == {results['step']}
  line = _one_line_output(capsys, [str(out), '--model', 'resnet8', '--dataset', 'digits'])
  assert _expected_line(results) in line


def test_mdistiller_teachers_are_evaluated_on_cifar100_from_the_cache(tmp_path, monkeypatch,
                                                                      capsys):
  """``mdistiller:resnet56`` from a mirror of the zoo's tar (the fixture's weights), on a
  CIFAR-100 test split in the parsed cache, normalised with mdistiller's statistics."""
  torch = pytest.importorskip('torch')
  import archives  # pylint: disable=import-outside-toplevel
  from kdjax.teachers import zoo as teacher_zoo  # pylint: disable=import-outside-toplevel
  state = _fixture_state('models_', 'resnet56')
  pth = tmp_path / 'ckpt.pth'
  torch.save({'model': {k: torch.from_numpy(v) for k, v in state.items()}}, pth)
  (tmp_path / 'mirror.tar').write_bytes(archives.tar({teacher_zoo.member('resnet56'):
                                                      pth.read_bytes()}))
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)
  x = (images / 255.0 - np.array([0.5071, 0.4867, 0.4408])) / np.array([0.2675, 0.2565, 0.2761])
  logits = np.asarray(models.create('resnet56', 100).apply(
      convert.variables_from_torch('resnet56', state), jnp.asarray(x, jnp.float32),
      train=False).logits)
  ranked = np.argsort(-logits, axis=1)
  labels = np.concatenate([ranked[:3, 0], ranked[3:5, 3], ranked[5:, 50]]).astype(np.int32)
  (tmp_path / 'cache' / 'cifar').mkdir(parents=True)
  np.savez(tmp_path / 'cache' / 'cifar' / 'cifar100.npz',
           archive_sha256=np.asarray(cifar.source('cifar100')[1]), test_images=images,
           test_labels=labels)  # as kdjax parses the official archive
  monkeypatch.setenv('KDJAX_CACHE', str(tmp_path / 'cache'))
  line = _one_line_output(capsys, ['mdistiller:resnet56', '--zoo-url',
                                    str(tmp_path / 'mirror.tar')])
  assert line.startswith('resnet56 (mdistiller:resnet56) on the 6 test images of cifar100: '
                         'top-1 50.00%, top-5 83.33%, loss '), line


# --- mistakes: one line, status 2 ------------------------------------------------------------


def _assert_one_line_error(capsys, module, argv, *fragments):
  assert module.main(argv) == 2
  captured = capsys.readouterr()
  lines = captured.err.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith('kdjax: error: '), captured.err
  assert not captured.out
  for fragment in fragments:
    assert fragment in lines[0], lines[0]


def _workdir_without_checkpoint(tmp_path):
  workdir = tmp_path / 'run'
  (workdir / 'checkpoints').mkdir(parents=True)
  (workdir / 'config.json').write_text(tiny_config().to_json())
  return str(workdir)


def test_a_workdir_without_a_checkpoint_is_one_line(tmp_path, capsys):
  workdir = _workdir_without_checkpoint(tmp_path)
  out = str(tmp_path / 'x.msgpack')
  for module, argv in ((export, [workdir, '--format', 'flax', '--out', out]),
                       (evaluate, [workdir])):
    _assert_one_line_error(capsys, module, argv, 'holds no checkpoint yet')
  _assert_one_line_error(capsys, export, [str(tmp_path), '--format', 'flax', '--out', out],
                         'is not a kdjax workdir')
  assert not (tmp_path / 'x.msgpack').exists()


def test_usage_mistakes_are_one_line(tmp_path, capsys):
  with pytest.raises(SystemExit) as exit_info:
    export.main([str(tmp_path), '--format', 'onnx', '--out', 'x'])
  assert exit_info.value.code == 2
  assert capsys.readouterr().err.startswith("kdjax: error: argument --format: invalid choice: "
                                            "'onnx'")
  _assert_one_line_error(capsys, export, [str(tmp_path), '--format', 'flax', '--out', 'x.flax'],
                         '--out must end with .msgpack')
  _assert_one_line_error(capsys, evaluate, ['mdistiller:resnet8'],
                         "unknown published teacher 'mdistiller:resnet8'; expected one of: "
                         'mdistiller:resnet32x4')
  _assert_one_line_error(capsys, evaluate, [str(tmp_path / 'nothing.pth')], 'does not exist')
  (tmp_path / 'ckpt.pth').write_bytes(b'')
  _assert_one_line_error(capsys, evaluate, [str(tmp_path / 'ckpt.pth'), '--dataset', 'digits'],
                         '--model must name the architecture')
  _assert_one_line_error(capsys, evaluate, [str(tmp_path / 'ckpt.pth'), '--model', 'resnet8'],
                         '--dataset must name the data')
  (tmp_path / 'other.json').write_text('{"model": "resnet8"}')
  _assert_one_line_error(capsys, evaluate, [str(tmp_path / 'other.json')],
                         'does not describe kdjax variables')


def test_without_pytorch_the_torch_export_says_how_to_install_it(tmp_path, monkeypatch, capsys):
  monkeypatch.setitem(sys.modules, 'torch', None)  # `import torch` raises ImportError
  _assert_one_line_error(capsys, export, [_workdir_without_checkpoint(tmp_path), '--format',
                                          'torch', '--out', str(tmp_path / 'student.pth')],
                         "needs PyTorch: pip install 'kdjax[torch]' (or export with --format "
                         'flax)')
  assert not (tmp_path / 'student.pth').exists()


def test_the_commands_run_as_modules_and_fail_in_one_line(tmp_path):
  for module in ('kdjax.export', 'kdjax.evaluate'):
    proc = subprocess.run([sys.executable, '-m', module, str(tmp_path / 'missing'),
                           *(['--format', 'flax', '--out', 'x.msgpack'] if 'export' in module
                             else [])],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and 'Traceback' not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert proc.stderr.startswith('kdjax: error: ') and 'missing' in proc.stderr
