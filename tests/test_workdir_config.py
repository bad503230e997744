"""One config per workdir (kdjax/plan.py): a workdir is continued (resumed, or skipped as
finished) only under the config its ``config.json`` records, up to the fields that change no
result (``kdjax.run_fields.NEUTRAL``) and those ``--allow_change`` names; anything else is one
line and status 2 before anything runs. Real digits runs through the CLI, as small as they go:
resnet8, batch 256 (5 steps per epoch), 1 epoch."""

import json
import os
import re
import shutil

import pytest

from conftest import ROOT, run_cli, tiny_config
from kdjax import jsonio, plan, run_fields

TINY = ['--config.model=resnet8', '--config.batch_size=256', '--config.num_epochs=1',
        '--config.log_every_steps=2']
VANILLA = ['--config', 'vanilla:digits', *TINY]
# KD with the teacher the plan trains first (resnet8 too), both stopped after 2 steps.
KD = ['--config', 'kd:digits', *TINY, '--config.teacher.model=resnet8', '--config.max_steps=2']


def _files(workdir) -> dict:
  """``{path: (size, mtime)}`` of every file under ``workdir``: what a run wrote."""
  found = {}
  for folder, _, names in os.walk(workdir):
    for name in names:
      stat = os.stat(os.path.join(folder, name))
      found[os.path.relpath(os.path.join(folder, name), workdir)] = (stat.st_size,
                                                                     stat.st_mtime_ns)
  return found


def _error(done) -> str:
  """The one ``kdjax: error:`` line of a refused command (status 2, nothing else said)."""
  assert done.returncode == 2, done.stderr[-2000:]
  assert done.stderr.count('\n') == 1 and done.stderr.startswith('kdjax: error: ')
  return done.stderr.strip()


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
  """A finished 1-epoch vanilla run, and a KD plan (teacher, student) stopped by max_steps."""
  root = tmp_path_factory.mktemp('cfg')
  env = {'JAX_COMPILATION_CACHE_DIR': str(root / 'jax_cache')}
  for args, name in ((VANILLA, 'vanilla'), (KD, 'kd')):
    done = run_cli(args + [f'--workdir={root / name}'], env=env)
    assert done.returncode == 0, done.stderr[-3000:]
  return {'root': root, 'env': env, 'vanilla': root / 'vanilla', 'kd': root / 'kd'}


@pytest.mark.slow
def test_a_finished_run_refuses_a_changed_result_field_and_writes_nothing(runs):
  workdir = runs['vanilla']
  before = _files(workdir)
  line = _error(run_cli(VANILLA + [f'--workdir={workdir}', '--config.optimizer.lr=0.5']))
  assert line == (f'kdjax: error: workdir {workdir}: config differs from its config.json in '
                  f'optimizer.lr (0.05 -> 0.5); choose another --workdir, or '
                  f'--allow_change=optimizer.lr to continue it under the new values')
  # Another net: its own field named, not the checkpoints' "could not be restored".
  line = _error(run_cli(VANILLA + [f'--workdir={workdir}', '--config.model=resnet20']))
  assert 'in model (resnet8 -> resnet20);' in line and 'restore' not in line
  line = _error(run_cli(VANILLA + [f'--workdir={workdir}', '--allow_change=optimizer.lrr']))
  assert line.startswith('kdjax: error: --allow_change names no field of the config: '
                         'optimizer.lrr;')
  # Fields that change no result may differ: the finished run is skipped, as before.
  done = run_cli(VANILLA + [f'--workdir={workdir}', '--config.log_every_steps=3',
                            '--config.max_steps=4', '--config.checkpoint_every_steps=7'],
                 env=runs['env'])
  assert done.returncode == 0, done.stderr[-2000:]
  assert f'finished in {workdir}, skipped' in done.stderr
  assert _files(workdir) == before


@pytest.mark.slow
def test_allow_change_num_epochs_extends_a_finished_run_and_records_it(runs, tmp_path):
  workdir = tmp_path / 'vanilla'
  shutil.copytree(runs['vanilla'], workdir)
  two = VANILLA + [f'--workdir={workdir}', '--config.num_epochs=2']
  assert 'in num_epochs (1 -> 2);' in _error(run_cli(two))
  done = run_cli(two + ['--allow_change=num_epochs'], env=runs['env'])
  assert done.returncode == 0, done.stderr[-2000:]
  assert f'resumed from the checkpoint at step 5 in {workdir}' in done.stderr
  results = json.load(open(workdir / 'results.json'))
  assert results['finished'] and (results['num_epochs'], results['epochs_done'],
                                  results['step']) == (2, 2, 10)
  assert json.load(open(workdir / 'config.json'))['num_epochs'] == 1  # as the run began
  assert jsonio.read_run_config_or_why(workdir)[0]['num_epochs'] == 2  # as it continued
  changes = [json.loads(line) for line in open(workdir / 'config_changes.jsonl')]
  assert [{k: c[k] for k in ('step', 'field', 'old', 'new')} for c in changes] == [
      {'step': 5, 'field': 'num_epochs', 'old': 1, 'new': 2}]
  assert re.fullmatch(r'\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d{4}', changes[0]['time'])
  # With its recorded change it is a 2-epoch run: the same command finds it finished, and
  # the 1-epoch command is refused.
  again = run_cli(two, env=runs['env'])
  assert again.returncode == 0 and f'finished in {workdir}, skipped' in again.stderr
  assert 'in num_epochs (2 -> 1);' in _error(run_cli(two[:-1]))


@pytest.mark.slow
def test_a_plan_refuses_each_changed_run_and_dry_run_shows_why(runs):
  workdir = runs['kd']
  before = _files(workdir)
  # The student, stopped by max_steps, distils at another temperature: refused. The teacher
  # (vanilla) reads no kd block, so it is not.
  line = _error(run_cli(KD + [f'--workdir={workdir}', '--config.kd.temperature=2']))
  assert line == (f'kdjax: error: workdir {workdir}: config differs from its config.json in '
                  f'kd.temperature (4.0 -> 2.0); choose another --workdir, or '
                  f'--allow_change=kd.temperature to continue it under the new values')
  # A longer teacher: refused for the teacher's run, and for the student it taught.
  line = _error(run_cli(KD + [f'--workdir={workdir}', '--config.teacher.num_epochs=2']))
  assert line.startswith(f'kdjax: error: workdir {workdir}/teacher: config differs from its '
                         f'config.json in num_epochs (1 -> 2); workdir {workdir}: config '
                         f'differs from its config.json in teacher.num_epochs (null -> 2); ')
  assert line.endswith('--allow_change=num_epochs,teacher.num_epochs to continue them under '
                       'the new values')
  # --dry-run shows the states (and exits 0): resumable, refused, new; finished below.
  done = run_cli(KD + [f'--workdir={workdir}', '--config.kd.temperature=2', '--dry-run',
                       "--config.baselines=('dkd',)"])
  assert done.returncode == 0, done.stderr[-2000:]
  states = [re.search(r', seed \d+ -> (.*)$', line).group(1)
            for line in done.stdout.splitlines() if line[0].isdigit()]
  assert states == [f'{workdir}/teacher (resumable from step 2)',
                    f'{workdir} (refused (kd.temperature: 4.0 -> 2.0))',
                    f'{workdir}/dkd (new)']
  done = run_cli(VANILLA + [f'--workdir={runs["vanilla"]}', '--dry-run'])
  assert done.stdout.splitlines()[0].endswith(f'-> {runs["vanilla"]} (finished)')
  assert _files(workdir) == before


@pytest.mark.slow
def test_a_workdir_without_config_json_is_continued_with_a_warning(runs, tmp_path, capsys):
  """An older kdjax's workdir whose config.json is lost: nothing to compare with."""
  workdir = tmp_path / 'old'
  shutil.copytree(runs['vanilla'], workdir)
  os.remove(workdir / 'config.json')
  config = tiny_config(num_epochs=1, **{'optimizer.lr': 0.5})
  (run,) = plan.make_plan(config, str(workdir))
  assert 'holds a run (finished) but no readable config.json' in capsys.readouterr().err
  assert plan.run_state(run) == 'finished, no config.json to compare with'


def test_the_usage_doc_lists_the_neutral_fields():
  text = open(ROOT / 'docs' / 'usage.md').read()
  listed = text.split('<!-- neutral fields -->')[1].split('<!-- end -->')[0]
  assert tuple(re.findall(r'`([a-z0-9_.]+)`', listed)) == run_fields.NEUTRAL
