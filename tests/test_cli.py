"""The commands explain themselves (kdjax issue 26): ``--help`` shows kdjax's own flags under
the name the user typed, ``kdjax`` alone is one error line and the methods, ``--list``, and
``--dry-run`` shows each run's state and its config's differences from the method's defaults.
"""

import os
import subprocess
import sys

import pytest

from conftest import ROOT, run_cli
from kdjax import cli


def test_help_shows_kdjax_flags_under_the_typed_name():
  done = run_cli(['--help'])
  assert done.returncode == 0, done.stderr
  assert done.stdout.startswith('usage: python -m kdjax.main --config METHOD[:PRESET]')
  for flag in ('--config', '--workdir', '--seeds', '--[no]dry-run', '--[no]list'):
    assert f'  {flag}:' in done.stdout, done.stdout


@pytest.mark.parametrize('flag', ['--list', '--help'])
def test_a_reader_that_stops_early_is_no_error(flag):
  """``kdjax --list | head -1``: the pipe closes before kdjax writes; no traceback, status 0."""
  read, write = os.pipe()
  os.close(read)  # the reader is gone before the first byte
  done = subprocess.run([sys.executable, '-m', 'kdjax.main', flag], cwd=ROOT, stdout=write,
                        stderr=subprocess.PIPE, text=True, timeout=120)
  os.close(write)
  assert (done.returncode, done.stderr) == (0, '')


def test_no_config_is_one_error_line_and_the_methods():
  done = run_cli([])
  assert done.returncode == 2 and 'Traceback' not in done.stderr
  lines = done.stderr.splitlines()
  assert lines[0] == ('kdjax: error: --config is required, e.g. python -m kdjax.main '
                      '--config slkd:digits')
  assert sum(line.startswith('kdjax: error:') for line in lines) == 1
  listed = run_cli(['--list'])
  assert listed.returncode == 0 and listed.stdout.strip() == '\n'.join(lines[1:])
  methods = {line.split()[0] for line in lines[2:] if line.startswith('  ') and
             not line.startswith('   ')}
  assert methods == set(cli.method_names()) >= {'vanilla', 'kd', 'slkd', 'skd', 'sftn', 'dkd'}
  slkd = next(line for line in lines if line.startswith('  slkd '))
  assert 'digits, every CIFAR-100 pair*, r34_r18, r50_mv1; variants: official, sequential' in slkd
  assert 'r50_mv1' not in next(line for line in lines if line.startswith('  sftn '))


def test_dry_run_shows_states_and_the_config_diff(tmp_path):
  workdir = tmp_path / 'kd'
  os.makedirs(workdir / 'teacher')
  (workdir / 'teacher' / 'results.json').write_text('{"finished": true, "num_epochs": 8}')
  os.makedirs(workdir / 'checkpoints' / '40')  # the student's checkpoint of step 40
  done = run_cli(['--config', 'kd:digits', f'--workdir={workdir}', '--dry-run',
                  '--config.kd.temperature=2'])
  assert done.returncode == 0, done.stderr[-2000:]
  lines = done.stdout.splitlines()
  runs = [line for line in lines if line[0].isdigit()]
  assert runs[0].endswith(f'-> {workdir}/teacher (finished, no config.json to compare with)')
  assert runs[1].endswith(f'-> {workdir} (resumable from step 40, no config.json to compare '
                          f'with)')
  teacher, student = lines[1:lines.index(runs[1])], lines[lines.index(runs[1]) + 1:]
  assert "     data.name: 'cifar100' -> 'digits'" in student
  assert '     kd.temperature: 4.0 -> 2.0' in student
  assert "     model: 'resnet32x4' -> 'resnet20'" in teacher  # vanilla's defaults
  assert not any(line.startswith(('     kd.', '     teacher.')) for line in teacher)  # unread
  assert not any('optimizer.momentum' in line for line in lines)  # unchanged: not shown
  fresh = run_cli(['--config', 'vanilla:digits', f'--workdir={tmp_path / "v"}', '--dry-run'])
  assert fresh.stdout.splitlines()[0].endswith(' (new)')


@pytest.mark.parametrize('module', ['kdjax.report', 'kdjax.convert', 'kdjax.cache',
                                    'kdjax.evaluate', 'kdjax.export'])
def test_every_command_names_itself_in_its_help(module):
  done = subprocess.run([sys.executable, '-m', module, '--help'], cwd=ROOT,
                        capture_output=True, text=True, timeout=300)
  assert done.returncode == 0, done.stderr
  assert done.stdout.startswith(f'usage: python -m {module} '), done.stdout[:200]


def test_invoked_as(monkeypatch):
  monkeypatch.setattr(sys, 'argv', ['/venv/bin/kdjax-report', '--help'])
  assert cli.invoked_as('kdjax.report') == 'kdjax-report'
  monkeypatch.setattr(sys, 'argv', [os.path.join(ROOT, 'kdjax', 'convert', '__main__.py')])
  assert cli.invoked_as('kdjax.convert') == 'python -m kdjax.convert'
  monkeypatch.setattr(sys, 'argv', [''])
  assert cli.invoked_as('kdjax.main') == 'python -m kdjax.main'
