"""PyTorch checkpoints -> kdjax teachers: ``python -m kdjax.convert`` and ``teachers.load``.

That converted weights compute PyTorch's outputs is tested model by model in
test_models.py; here: the checkpoint formats of the zoo (RepDistiller / mdistiller wrappers,
DataParallel prefixes), refusing pickles that would run code, naming the first mismatched
key, the teacher folder round trip and the command line's one-line errors.
"""

import argparse
import os
import random
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kdjax import convert, models, teachers
from kdjax.convert.__main__ import main as convert_main
from kdjax.errors import KdjaxError
from conftest import ROOT, load_fixture

MODEL = 'resnet8x4'


@pytest.fixture(name='torch')
def _torch():
  return pytest.importorskip('torch')


def _state(name=MODEL):
  """The fixture's PyTorch state dict (float16 weights -> the exact float32 ones)."""
  weights = load_fixture(f'models_{name}.npz')
  return {k: weights[k].astype(np.float32) if weights[k].dtype == np.float16 else weights[k]
          for k in weights.files}


def _tensors(torch, state, prefix=''):
  return {prefix + k: torch.from_numpy(np.array(v)) for k, v in state.items()}


@jax.jit
def _logits(variables, images):
  return models.create(MODEL, 100).apply(variables, images, train=False).logits


def _assert_reproduces_pytorch(variables):
  io = load_fixture(f'models_{MODEL}_io.npz')
  images = jnp.asarray(io['input'].transpose(0, 2, 3, 1))
  np.testing.assert_allclose(_logits(variables, images), io['logits_eval'], atol=1e-4, rtol=0)


def _run_cli(*args):
  return subprocess.run([sys.executable, '-m', 'kdjax.convert', *map(str, args)], cwd=ROOT,
                        capture_output=True, text=True, timeout=300)


def _assert_one_line_error(proc, *fragments):
  assert proc.returncode == 2, proc.stderr
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith('kdjax: error: '), proc.stderr
  assert 'Traceback' not in proc.stderr
  for fragment in fragments:
    assert fragment in lines[0]


# --- checkpoint formats -------------------------------------------------------------------

# name -> how the state dict is wrapped in the .pth
FORMATS = {
    'bare': lambda torch, sd: sd,
    'repdistiller': lambda torch, sd: {  # train_teacher.py's ckpt_epoch_240.pth
        'epoch': 240, 'model': sd, 'accuracy': torch.tensor(72.34),
        'optimizer': {'state': {}, 'param_groups': [{'lr': 0.0005, 'momentum': 0.9}]}},
    'repdistiller_last': lambda torch, sd: {  # *_last.pth pickles the argparse options
        'opt': argparse.Namespace(model='resnet8x4', learning_rate=0.05), 'model': sd},
    'net': lambda torch, sd: {'net': sd, 'acc': 72.0},
    'state_dict': lambda torch, sd: {'state_dict': sd},
    'data_parallel': lambda torch, sd: {'model': {'module.' + k: v for k, v in sd.items()}},
}


@pytest.mark.parametrize('fmt', FORMATS)
def test_every_checkpoint_format_converts_to_a_teacher_folder_that_reproduces_pytorch(
    fmt, torch, tmp_path, capsys):
  pth = tmp_path / 'ckpt_epoch_240.pth'
  torch.save(FORMATS[fmt](torch, _tensors(torch, _state())), pth)
  out_dir = tmp_path / 'teacher'
  assert convert_main(['--model', MODEL, '--num-classes', '100', str(pth), str(out_dir)]) == 0
  summary = capsys.readouterr().out.strip().splitlines()
  assert len(summary) == 1 and MODEL in summary[0] and '1,233,540 parameters' in summary[0]
  _assert_reproduces_pytorch(teachers.load_variables(str(out_dir), MODEL, 100))
  _assert_reproduces_pytorch(teachers.load_variables(str(pth), MODEL, 100))  # the .pth directly


def test_command_line_round_trip(torch, tmp_path):
  pth = tmp_path / 'resnet8x4_vanilla' / 'ckpt_epoch_240.pth'
  pth.parent.mkdir()
  torch.save(FORMATS['repdistiller'](torch, _tensors(torch, _state())), pth)
  out_dir = tmp_path / 'teachers' / MODEL
  proc = _run_cli('--model', MODEL, '--num-classes', 100, pth, out_dir)
  assert proc.returncode == 0, proc.stderr
  assert len(proc.stdout.strip().splitlines()) == 1 and str(out_dir) in proc.stdout
  assert sorted(os.listdir(out_dir)) == ['teacher.json', 'variables']
  _assert_reproduces_pytorch(teachers.load_variables(str(out_dir), MODEL, 100))


def test_the_pre_zip_serialization_format_loads(torch, tmp_path):
  # The zoo's teachers were saved by PyTorch 1.x, before torch.save wrote zip files.
  pth = tmp_path / 'legacy.pth'
  torch.save(FORMATS['repdistiller'](torch, _tensors(torch, _state())), pth,
             _use_new_zipfile_serialization=False)
  _assert_reproduces_pytorch(teachers.load_variables(str(pth), MODEL, 100))


def test_bfloat16_checkpoints_load(torch, tmp_path):
  pth = tmp_path / 'bf16.pth'
  torch.save({k: v.to(torch.bfloat16) if v.is_floating_point() else v
              for k, v in _tensors(torch, _state()).items()}, pth)
  variables = teachers.load_variables(str(pth), MODEL, 100)
  assert all(v.dtype == jnp.float32 for v in jax.tree.leaves(variables))


def test_a_file_without_a_state_dict_is_refused(torch, tmp_path):
  pth = tmp_path / 'not_weights.pth'
  torch.save({'epoch': 3, 'best_acc': 71.2}, pth)
  with pytest.raises(KdjaxError, match="holds no state dict.*it holds: epoch, best_acc"):
    convert.load_pth(pth)


def test_garbage_is_named_as_not_a_pytorch_checkpoint(torch, tmp_path, capfd):
  del torch
  rng = random.Random(44)  # bytes that made torch's unpickler fail with an IndexError
  garbage = bytes(rng.getrandbits(8) for _ in range(rng.choice([1, 10, 100, 1000])))
  for content in (garbage, b'hello world\n', b''):
    pth = tmp_path / 'garbage.pth'
    pth.write_bytes(content)
    with pytest.raises(KdjaxError) as refused:
      convert.load_pth(pth)
    assert str(refused.value).startswith(f"'{pth}' is not a PyTorch checkpoint (torch.load: ")
  assert not capfd.readouterr().err  # no torch warning in its own format


def test_an_archive_of_checkpoints_is_named_as_such(torch, tmp_path):
  import tarfile  # pylint: disable=import-outside-toplevel
  pth = tmp_path / 'resnet8x4_vanilla' / 'ckpt_epoch_240.pth'
  pth.parent.mkdir()
  torch.save({'model': {'fc.bias': torch.zeros(3)}}, pth)
  archive = tmp_path / 'cifar_teachers.tar'
  with tarfile.open(archive, 'w') as tar:
    tar.add(pth.parent, arcname='cifar_teachers/resnet8x4_vanilla')
  with pytest.raises(KdjaxError, match='archive of checkpoints.*tar xf'):
    convert.load_pth(archive)


# --- refusing code --------------------------------------------------------------------------


class _RunsCode:
  """Unpickling this runs a shell command (a pickle can name any callable)."""

  def __init__(self, command):
    self.command = command

  def __reduce__(self):
    return (os.system, (self.command,))


@pytest.mark.parametrize('zip_format', [True, False], ids=['zip', 'pre_zip'])
def test_a_pickle_that_would_run_code_is_refused_without_running_it(zip_format, torch,
                                                                   tmp_path):
  marker = tmp_path / 'MARKER'
  pth = tmp_path / 'evil.pth'
  torch.save({'model': _tensors(torch, {'fc.bias': np.zeros(3, np.float32)}),
              'epoch': _RunsCode(f'touch {marker}')}, pth,
             _use_new_zipfile_serialization=zip_format)
  with pytest.raises(KdjaxError, match=r'refused to load .*system.*never runs code'):
    convert.load_pth(pth)
  with pytest.raises(KdjaxError, match='refused to load'):
    teachers.load_variables(str(pth), MODEL, 100)
  out_dir = tmp_path / 'out'
  assert convert_main(['--model', MODEL, str(pth), str(out_dir)]) == 2
  assert not marker.exists()
  assert not out_dir.exists()
  # The file really is malicious: an unsafe load runs the command.
  torch.load(pth, weights_only=False)
  assert marker.exists()


# --- mismatched architectures ----------------------------------------------------------------


def test_weights_of_another_architecture_name_the_first_mismatched_key(torch, tmp_path):
  pth = tmp_path / 'resnet20.pth'
  torch.save({'model': _tensors(torch, _state('resnet20'))}, pth)
  # resnet20's stem has 16 channels, resnet8x4's 32: the very first key differs.
  with pytest.raises(KdjaxError, match=r"does not fit resnet8x4 with 100 classes: key "
                     r"'conv1.weight' has shape \(16, 3, 3, 3\), expected \(32, 3, 3, 3\)"):
    teachers.load_variables(str(pth), 'resnet8x4', 100)


def test_a_shallower_resnet_names_the_first_missing_block():
  # resnet20 has 3 blocks per stage, resnet32 five: every resnet20 key fits, the rest miss.
  with pytest.raises(KdjaxError, match=r"resnet32 .*: missing key 'layer1.3.conv1.weight' "
                     r"\(and \d+ more\) \(is the checkpoint for another architecture\?\)$"):
    convert.variables_from_torch('resnet32', _state('resnet20'))


def test_a_missing_key_is_named():
  state = _state()
  del state['layer2.0.bn1.running_var']
  with pytest.raises(KdjaxError) as error:
    convert.variables_from_torch(MODEL, state)
  assert "missing key 'layer2.0.bn1.running_var'" in str(error.value)
  assert 'unexpected' not in str(error.value) and 'more' not in str(error.value)


def test_an_extra_key_is_named():
  state = _state()
  state['layer3.0.se.fc.weight'] = np.zeros((4, 4), np.float32)
  with pytest.raises(KdjaxError) as error:
    convert.variables_from_torch(MODEL, state)
  assert "unexpected key 'layer3.0.se.fc.weight'" in str(error.value)
  assert 'missing' not in str(error.value)


def test_a_different_class_count_is_named_as_such():
  with pytest.raises(KdjaxError, match=r"with 10 classes: key 'fc.weight' has shape "
                     r"\(100, 256\), expected \(10, 256\).*the checkpoint has 100 classes"):
    convert.variables_from_torch(MODEL, _state(), num_classes=10)


def test_a_teacher_folder_of_another_model_is_refused(tmp_path):
  folder = tmp_path / 'teacher'
  teachers.save(str(folder), MODEL, 100, convert.variables_from_torch(MODEL, _state()))
  with pytest.raises(KdjaxError, match='is a resnet8x4, but config.teacher.model is resnet32x4'):
    teachers.load_variables(str(folder), 'resnet32x4', 100)
  with pytest.raises(KdjaxError, match='was trained on 100 classes, and the data has 10'):
    teachers.load_variables(str(folder), MODEL, 10)


# --- the command line ---------------------------------------------------------------------


def test_cli_missing_checkpoint_is_one_line(tmp_path):
  proc = _run_cli('--model', MODEL, tmp_path / 'nope.pth', tmp_path / 'out')
  _assert_one_line_error(proc, 'nope.pth', 'does not exist')
  assert not (tmp_path / 'out').exists()


def test_cli_unknown_model_and_usage_mistakes_are_one_line(tmp_path):
  pth = tmp_path / 'x.pth'
  pth.write_bytes(b'')
  _assert_one_line_error(_run_cli('--model', 'resnet9000', pth, tmp_path / 'out'),
                         "unknown model 'resnet9000'", 'resnet32x4')
  _assert_one_line_error(_run_cli(pth, tmp_path / 'out'), '--model')


def test_cli_refuses_a_non_empty_output_folder_unless_overwrite(torch, tmp_path, capsys):
  pth = tmp_path / 'ckpt.pth'
  torch.save({'model': _tensors(torch, _state())}, pth)
  out_dir = tmp_path / 'out'
  out_dir.mkdir()
  (out_dir / 'notes.txt').write_text('mine')
  assert convert_main(['--model', MODEL, str(pth), str(out_dir)]) == 2
  assert '--overwrite' in capsys.readouterr().err
  # --overwrite replaces a teacher folder, never a folder of other files.
  assert convert_main(['--model', MODEL, '--overwrite', str(pth), str(out_dir)]) == 2
  assert "holds 'notes.txt'" in capsys.readouterr().err
  (out_dir / 'notes.txt').unlink()
  assert convert_main(['--model', MODEL, str(pth), str(out_dir)]) == 0  # empty: fine
  assert convert_main(['--model', MODEL, str(pth), str(out_dir)]) == 2
  assert convert_main(['--model', MODEL, '--overwrite', str(pth), str(out_dir)]) == 0
  _assert_reproduces_pytorch(teachers.load_variables(str(out_dir), MODEL, 100))


def test_without_pytorch_the_error_says_how_to_install_it(monkeypatch, tmp_path):
  monkeypatch.setitem(sys.modules, 'torch', None)  # `import torch` raises ImportError
  with pytest.raises(KdjaxError, match=r"needs PyTorch: pip install 'kdjax\[torch\]'"):
    convert.load_pth(tmp_path / 'ckpt.pth')
