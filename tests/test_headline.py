"""The headline command as a new user with network access runs it, against a local HTTP
server on 127.0.0.1 that serves CIFAR-100 and mdistiller's teachers in their exact upstream
formats: download, verify, cache, convert, evaluate the teacher, train; then again with the
server stopped, from the cache alone.

The pair is ``res56_res8`` (resnet56's random state dict is small; resnet32x4's, the default
pair's, would make the test slow), a few SLKD steps; the command is otherwise the README's.
"""

import hashlib

import pytest

import archives
from kdjax.teachers import zoo as teacher_zoo
from conftest import run_cli
from fileserver import FileServer


@pytest.mark.slow
def test_headline_command_fetches_verifies_caches_converts_and_trains(tmp_path):
  torch = pytest.importorskip('torch')
  cifar, _ = archives.cifar100(train=64, test=32)
  cache, workdir = tmp_path / 'cache', tmp_path / 'run'
  with FileServer() as server:
    server.files['cifar-100-binary.tar.gz'] = cifar
    server.files['cifar_teachers.tar'] = archives.zoo_tar(
        {'resnet56': archives.teacher_pth(torch, 'resnet56')})
    args = ['--config', 'experiments/slkd.py:res56_res8', f'--workdir={workdir}',
            f'--config.data.url={server.url("cifar-100-binary.tar.gz")}',
            f'--config.data.sha256={hashlib.sha256(cifar).hexdigest()}',
            f'--config.teacher.zoo_url={server.url("cifar_teachers.tar")}',
            '--config.batch_size=16', '--config.eval_batch_size=32', '--config.max_steps=2']
    first = run_cli(args, env={'KDJAX_CACHE': str(cache)})
    assert first.returncode == 0, first.stderr[-3000:]
    assert [path for path, _ in server.requests] == ['cifar-100-binary.tar.gz',
                                                      'cifar_teachers.tar']
  teacher_line = next(line for line in first.stderr.splitlines()
                      if line.startswith('teacher resnet56 (mdistiller:resnet56): top-1 '))
  assert teacher_line.endswith('on the 32 test images (published: 72.34%)')
  # The random teacher is far below the published figure: one warning before training.
  lines = first.stderr.splitlines()
  warning = lines[lines.index(teacher_line) + 1]
  assert warning.startswith('warning: teacher mdistiller:resnet56 measures ') and (
      'points below its published 72.34%: check that the data is the right dataset') in warning
  teacher = teacher_zoo.source_root('mdistiller', server.url('cifar_teachers.tar'), str(cache))
  for path in ('cifar/cifar-100-binary.tar.gz', 'cifar/cifar100.npz',
               f'{teacher}/resnet56/teacher.json'):
    assert (cache / path).exists(), path
  assert (workdir / 'checkpoints' / '2').is_dir()
  # The server is gone: the same command resumes from the cache alone (nothing left to train
  # at max_steps=2, so it loads the data and the teacher, evaluates it, and ends).
  again = run_cli(args, env={'KDJAX_CACHE': str(cache)})
  assert again.returncode == 0, again.stderr[-3000:]
  assert teacher_line in again.stderr.splitlines()
  assert 'resumed from the checkpoint at step 2' in again.stderr
