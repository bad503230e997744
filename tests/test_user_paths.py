"""Paths as users type them (kdjax/main.py ``user_path``): ``~`` expanded, a URL of a
scheme kdjax cannot reach refused with one line, the workdir's absolute path printed at the
start and under the final table."""

import pytest

from conftest import ROOT, run_cli


@pytest.mark.parametrize('workdir', ['http://example.com/runs/x', 'hdfs://host/runs/x'])
def test_a_workdir_of_an_unknown_scheme_is_one_line_and_nothing_is_written(workdir):
  done = run_cli(['--config', 'vanilla:digits', f'--workdir={workdir}'])
  assert done.returncode == 2 and not done.stdout
  scheme = workdir.split(':')[0]
  assert done.stderr == (f'kdjax: error: --workdir {workdir}: kdjax reads and writes local '
                         f'paths and gs://, s3:// URLs, not {scheme}://\n')
  assert not (ROOT / workdir.split('/')[0]).exists()


def test_a_tilde_is_the_home_folder(tmp_path):
  done = run_cli(['--config', 'kd:digits', '--workdir=~/runs/x', '--dry-run',
                  '--config.teacher.checkpoint=~/teacher'], env={'HOME': str(tmp_path)})
  assert done.returncode == 0, done.stderr
  assert done.stdout.splitlines()[0] == (f'1. kd student: kd resnet8 <- resnet20 '
                                         f'{tmp_path}/teacher, 8 epochs, seed 0 -> '
                                         f'{tmp_path}/runs/x (new)')
  assert f"     teacher.checkpoint: 'mdistiller:resnet32x4' -> '{tmp_path}/teacher'" in (
      done.stdout.splitlines())


@pytest.mark.slow
def test_a_run_names_its_workdir_absolutely_at_the_start_and_the_end(tmp_path):
  done = run_cli(['--config', 'vanilla:digits', '--workdir=~/runs/x', '--config.model=resnet8',
                  '--config.num_epochs=1', '--config.max_steps=2'], env={'HOME': str(tmp_path)})
  assert done.returncode == 0, done.stderr[-2000:]
  workdir = tmp_path / 'runs' / 'x'
  assert done.stderr.splitlines()[0] == f'kdjax: workdir {workdir}'
  assert done.stdout.splitlines()[-1] == f'workdir: {workdir}'
  assert (workdir / 'results.json').exists() and not (ROOT / '~').exists()
