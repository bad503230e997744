"""kdjax.plan: a config as the ordered runs it asks for, each validated before any runs;
finished runs skipped; ``--dry-run`` prints the plan and trains nothing."""

import json
import os

import pytest

from conftest import run_cli, tiny_config
from kdjax import jsonio, plan
from kdjax.errors import KdjaxError
from test_report import write_run


def test_plan_trains_the_teacher_once_and_skips_finished_runs(tmp_path, capsys):
  config = tiny_config('kd', num_epochs=3, **{'teacher.model': 'resnet20',
                                              'teacher.train_if_missing': True,
                                              'baselines': ('dkd',)})
  runs = plan.make_plan(config, str(tmp_path), num_seeds=2)
  assert [r.role for r in runs] == ['teacher', 'seed 0: kd student', 'seed 0: dkd student',
                                    'seed 1: kd student', 'seed 1: dkd student']
  assert [r.workdir for r in runs] == [str(tmp_path / d) for d in (
      'teacher', 'seed_0', 'seed_0/dkd', 'seed_1', 'seed_1/dkd')]
  teacher = runs[0].config
  assert (teacher.method, teacher.model, teacher.seed) == ('vanilla', 'resnet20', 0)
  assert {r.config.teacher.checkpoint for r in runs[1:]} == {str(tmp_path / 'teacher')}
  assert [(r.config.method, r.config.seed) for r in runs[1:]] == [
      ('kd', 0), ('dkd', 0), ('kd', 1), ('dkd', 1)]
  assert config.teacher.checkpoint is None and config.seed == 0  # the caller's config as it was
  assert [line for line in plan.describe(runs).splitlines() if line.startswith('2. ')][0] \
      .startswith('2. seed 0: kd student: kd resnet8 <- ')
  # Runs whose results.json says they finished their epochs (under the config they are
  # run with now) are not run again.
  for run in runs:
    write_run(run.workdir, run.config.method, run.config.seed, [1.0, 2.0, 3.0])
    jsonio.write_json(os.path.join(run.workdir, 'config.json'),
                      json.loads(run.config.to_json_best_effort()))
  results = plan.execute(runs)
  assert [r['seed'] for r in results] == [0, 0, 0, 1, 1] and results[1]['best_top1'] == 3.0
  assert capsys.readouterr().err.count(', skipped') == 5
  with pytest.raises(KdjaxError, match='at least 1'):
    plan.make_plan(config, str(tmp_path), num_seeds=0)


def test_sftn_adds_its_students_and_the_standard_teacher(tmp_path):
  config = tiny_config('sftn', **{'model': 'resnet20', 'sftn.student': 'resnet8',
                                  'sftn.distill': 'kd', 'sftn.compare_standard': True})
  runs = plan.make_plan(config, str(tmp_path))
  assert [(r.role, r.config.method, r.config.model) for r in runs] == [
      ('sftn teacher', 'sftn', 'resnet20'),
      ('kd student from the SFTN teacher', 'kd', 'resnet8'),
      ('teacher', 'vanilla', 'resnet20'),
      ('kd student from the standard teacher', 'kd', 'resnet8')]
  assert [r.workdir for r in runs] == [str(tmp_path / d) for d in (
      '', 'student', 'standard/teacher', 'standard')]
  assert runs[1].config.teacher.checkpoint == str(tmp_path)  # the SFTN teacher's workdir
  assert runs[3].config.teacher.checkpoint == str(tmp_path / 'standard' / 'teacher')
  assert runs[1].config.optimizer.lr == config.sftn.student_lr


def test_every_run_is_validated_before_any_runs(tmp_path):
  config = tiny_config('kd', **{'teacher.train_if_missing': True, 'baselines': ('dkd',),
                                'dkd.temperature': 0.0})
  with pytest.raises(KdjaxError, match='config.dkd.temperature must be positive'):
    plan.make_plan(config, str(tmp_path))
  assert os.listdir(tmp_path) == []


def test_dry_run_prints_the_plan_and_trains_nothing(tmp_path):
  workdir = tmp_path / 'skd'
  done = run_cli(['--config', 'experiments/skd.py:digits', f'--workdir={workdir}',
                  '--seeds=2', '--dry-run'])
  assert done.returncode == 0, done.stderr[-2000:]
  lines = [line for line in done.stdout.strip().splitlines() if line[0].isdigit()]
  assert [line.split(':')[0] for line in lines] == ['1. teacher', '2. seed 0', '3. seed 0',
                                                   '4. seed 1', '5. seed 1']
  assert lines[1].startswith(f'2. seed 0: skd student: skd resnet8 <- resnet20 '
                             f'{workdir}/teacher, 8 epochs, seed 0 -> {workdir}/seed_0')
  assert not workdir.exists()


def test_a_packaged_preset_by_name(tmp_path):
  """``kdjax --config kd:digits`` finds kdjax/experiments/kd.py, as after a pip install."""
  done = run_cli(['--config', 'kd:digits', f'--workdir={tmp_path / "kd"}', '--dry-run'])
  assert done.returncode == 0, done.stderr[-2000:]
  assert [line for line in done.stdout.splitlines() if line.startswith('2. ')][0].startswith(
      '2. kd student: kd resnet8 <- resnet20 ')
