"""Bad input as a user meets it: one ``kdjax: error:`` line, exit status 2, nothing left
behind (kdjax issue 20: values that cannot work, damaged teachers, a workdir that cannot be
made, a finished run that would be overwritten)."""

import json
import os

import pytest

from conftest import run_cli

DIGITS_KD = ['--config', 'experiments/kd.py:digits']


def _one_line_error(proc, *fragments, alone=True):
  """The one error line (the only line with ``alone``; else the last, after kdjax's own
  progress lines), with no traceback anywhere."""
  assert proc.returncode == 2, proc.stderr[-2000:]
  lines = proc.stderr.strip().splitlines()
  assert 'Traceback' not in proc.stderr, proc.stderr[-2000:]
  assert lines[-1].startswith('kdjax: error: ') and (len(lines) == 1 or not alone), lines
  assert sum(line.startswith('kdjax: error: ') for line in lines) == 1, lines
  for fragment in fragments:
    assert fragment in lines[-1], lines[-1]
  return lines[-1]


@pytest.mark.parametrize('override, fragment', [
    ('--config.kd.temperature=0', 'config.kd.temperature must be positive'),
    ('--config.crd.nce_temperature=-1', 'config.crd.nce_temperature must be positive'),
    ('--config.optimizer.lr=inf', 'config.optimizer.lr must be a positive finite number'),
    ('--config.max_steps=0', 'config.max_steps must be positive'),
    ('--config.data.crop_padding=40', 'config.data.crop_padding must be between 0 and'),
    ('--config.seed=-1', 'config.seed must be an integer >= 0'),
    ('--config.optimizer.lr_decay_epochs=abc', 'lr_decay_epochs'),
])
def test_values_that_cannot_work_are_refused_before_anything_runs(tmp_path, override,
                                                                   fragment):
  workdir = tmp_path / 'run'
  _one_line_error(run_cli(DIGITS_KD + [override, f'--workdir={workdir}']), fragment)
  assert not workdir.exists()


def test_unknown_field_is_named_plainly(tmp_path):
  line = _one_line_error(run_cli(DIGITS_KD + ['--config.optimizer.lrr=1',
                                              f'--workdir={tmp_path / "run"}']))
  assert "'lrr'" in line and 'Did you mean "lr"' in line and '\\' not in line


def test_a_workdir_that_cannot_be_created(tmp_path):
  (tmp_path / 'file').write_text('not a folder')
  for workdir in ('/proc/kdjax_run', str(tmp_path / 'file' / 'run')):
    _one_line_error(run_cli(['--config', 'experiments/vanilla.py:digits',
                             f'--workdir={workdir}']), workdir)


def _teacher_folder(tmp_path, dataset=None):
  """A real teacher folder (kdjax.teachers.save) of a random resnet20 for digits (or, as
  its teacher.json says, trained on ``dataset``)."""
  import jax
  import jax.numpy as jnp
  from kdjax import models, teachers
  net = models.create('resnet20', 10)
  variables = net.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)), train=False)
  folder = tmp_path / 'teacher'
  teachers.save(str(folder), 'resnet20', 10, variables, source='test', dataset=dataset)
  return folder


def test_a_teacher_trained_on_other_data_is_refused_unless_deliberate(tmp_path):
  folder = _teacher_folder(tmp_path, dataset='cifar10')  # 10 classes, as digits has
  workdir = tmp_path / 'run'
  _one_line_error(run_cli(DIGITS_KD + [f'--config.teacher.checkpoint={folder}',
                                       f'--workdir={workdir}']),
                  f"teacher '{folder}' was trained on cifar10, and this run is on digits "
                  f"(config.data.name)", '--config.teacher.other_data=true', alone=False)
  assert not workdir.exists()
  from kdjax import teachers
  assert teachers.load_variables(str(folder), 'resnet20', 10, dataset='digits',
                                 other_data=True)
  assert teachers.load_variables(str(folder), 'resnet20', 10, dataset='cifar10')


def test_damaged_teachers_are_one_line(tmp_path):
  folder = _teacher_folder(tmp_path)
  # Truncated variables: every array file cut to half its size.
  for root, _, files in os.walk(folder / 'variables'):
    for name in files:
      path = os.path.join(root, name)
      if os.path.getsize(path) > 64 and not name.endswith(('.json', 'METADATA')):
        with open(path, 'r+b') as f:
          f.truncate(os.path.getsize(path) // 2)
  cases = {'truncated': folder}
  bad_json = tmp_path / 'bad_json'
  bad_json.mkdir()
  (bad_json / 'teacher.json').write_text('{"model": ')
  cases['bad teacher.json'] = bad_json
  no_config = tmp_path / 'no_config'
  (no_config / 'checkpoints').mkdir(parents=True)
  cases['workdir without config.json'] = no_config
  for what, teacher in cases.items():
    workdir = tmp_path / f'run_{len(what)}'
    line = _one_line_error(run_cli(DIGITS_KD + [f'--config.teacher.checkpoint={teacher}',
                                                f'--workdir={workdir}']), str(teacher),
                           alone=False)  # after the run's setup line
    assert 'could not be read' in line or 'no checkpoint' in line, (what, line)
    assert not workdir.exists(), what


def test_an_ended_run_without_checkpoints_is_not_overwritten(tmp_path):
  workdir = tmp_path / 'run'
  workdir.mkdir()
  (workdir / 'results.json').write_text(json.dumps({'finished': False, 'num_epochs': 8}))
  line = _one_line_error(run_cli(['--config', 'experiments/vanilla.py:digits',
                                  f'--workdir={workdir}']), str(workdir), alone=False)
  assert '--config.restart=true' in line
  assert json.loads((workdir / 'results.json').read_text()) == {'finished': False,
                                                                'num_epochs': 8}
