"""The training loop: learning, exact resume after a kill, multi-device equality, bad inputs."""

import json
import os
import re
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from conftest import ROOT, kill_when, restore_state, run_cli, tiny_config
from kdjax.errors import KdjaxError
from kdjax.train import optim
from kdjax.train.loop import train_and_evaluate

TINY = ['--config', 'experiments/vanilla.py:digits', '--config.model=resnet8',
        '--config.batch_size=32', '--config.log_every_steps=4',
        '--config.checkpoint_every_steps=4']


def _leaves_equal(a, b):
  la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
  assert len(la) == len(lb)
  return all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(la, lb))


@pytest.mark.slow
def test_vanilla_learns_digits_and_reports_best_and_last(tmp_path):
  results = train_and_evaluate(tiny_config(num_epochs=3), str(tmp_path))
  assert results['finished'] and results['epochs_done'] == 3
  assert results['last_top1'] > 40.0  # chance is 10 %
  history = [json.loads(l) for l in open(tmp_path / 'metrics.jsonl')]
  tests = [h for h in history if h['split'] == 'test/student']
  assert [h['step'] for h in tests] == [44, 88, 132]
  assert results['best_top1'] == max(h['top1'] for h in tests)
  assert results['last_top1'] == tests[-1]['top1']
  train_loss = [h['loss'] for h in history if h['split'] == 'train']
  assert train_loss[-1] < train_loss[0]
  assert os.listdir(tmp_path / 'tb')


def _kill_and_resume(tmp_path, args):
  """Runs ``args`` straight, and again killed (SIGKILL) after its step-8 checkpoint and
  resumed; returns both final states."""
  straight = tmp_path / 'straight'
  done = run_cli(args + [f'--workdir={straight}'])
  assert done.returncode == 0, done.stderr[-2000:]
  killed = tmp_path / 'killed'
  kill_when(args + [f'--workdir={killed}'], (killed / 'checkpoints' / '8').exists,
            'the checkpoint of step 8')
  assert not (killed / 'results.json').exists(), 'the run must have been killed before its end'
  resumed = run_cli(args + [f'--workdir={killed}'])
  assert resumed.returncode == 0, resumed.stderr[-2000:]
  assert 'resumed from the checkpoint at step' in resumed.stderr
  return restore_state(straight), restore_state(killed)


def _checkpoint_being_written(workdir):
  """True while Orbax writes a checkpoint: its temporary folder exists (``<step>.orbax-
  checkpoint-tmp-<time>``; renamed to ``<step>`` when complete)."""
  try:
    return any('tmp' in entry.name for entry in os.scandir(workdir / 'checkpoints'))
  except FileNotFoundError:
    return False


def _evaluated(workdir):
  """True once an epoch-end evaluation line is in ``metrics.jsonl``."""
  try:
    return '"test/student"' in (workdir / 'metrics.jsonl').read_text()
  except FileNotFoundError:
    return False


# Where the fault-injection test kills the run: (what, condition on the workdir). Each kill
# is followed by a rerun of the same command, which the next point kills again.
_KILL_POINTS = (
    ('while compiling, before any checkpoint', lambda w: (w / 'config.json').exists()),
    ('right after the step-8 checkpoint', lambda w: (w / 'checkpoints' / '8').exists()),
    ('during a checkpoint write', _checkpoint_being_written),
    ('at the epoch end', _evaluated),
)


@pytest.mark.slow
def test_killed_at_every_point_resumes_bit_identical(tmp_path):
  """SIGKILL during compilation, right after a checkpoint, during a checkpoint write and at
  an epoch end, a rerun after each: the final state equals an uninterrupted run's bit for
  bit, and so does the result."""
  args = TINY + ['--config.checkpoint_every_steps=2', '--config.num_epochs=2',
                 '--config.max_steps=48']  # the epoch ends at step 44
  straight = tmp_path / 'straight'
  done = run_cli(args + [f'--workdir={straight}'])
  assert done.returncode == 0, done.stderr[-2000:]
  killed = tmp_path / 'killed'
  for where, reached in _KILL_POINTS:
    kill_when(args + [f'--workdir={killed}'], lambda: reached(killed), where)
    assert not (killed / 'results.json').exists(), f'the run ended before {where}'
  resumed = run_cli(args + [f'--workdir={killed}'])
  assert resumed.returncode == 0, resumed.stderr[-2000:]
  assert 'resumed from the checkpoint at step' in resumed.stderr
  a, b = restore_state(straight), restore_state(killed)
  assert int(a['step']) == int(b['step']) == 48
  assert _leaves_equal(a, b)
  scores = lambda w: {k: v for k, v in json.loads((w / 'results.json').read_text()).items()
                      if k in ('step', 'best_top1', 'best_epoch', 'last_top1', 'last_top5')}
  assert scores(straight) == scores(killed)


@pytest.mark.slow
def test_slkd_run_killed_mid_training_resumes_bit_identical(tmp_path):
  teacher = tmp_path / 'teacher'
  assert run_cli(TINY + ['--config.max_steps=4', f'--workdir={teacher}']).returncode == 0
  a, b = _kill_and_resume(tmp_path, [
      '--config', 'experiments/slkd.py:digits', '--config.model=resnet8',
      '--config.teacher.model=resnet8', f'--config.teacher.checkpoint={teacher}',
      '--config.batch_size=32', '--config.checkpoint_every_steps=4', '--config.max_steps=12',
      '--config.num_epochs=1'])
  assert int(a['step']) == int(b['step']) == 12
  assert set(a['params']) == {'student', 'slt1', 'slt2'}
  assert _leaves_equal(a, b)


@pytest.mark.slow
def test_sigterm_saves_and_a_rerun_continues_exactly(tmp_path):
  steps = ['--config.max_steps=12', '--config.num_epochs=1']
  straight = tmp_path / 'straight'
  assert run_cli(TINY + steps + [f'--workdir={straight}']).returncode == 0
  stopped = tmp_path / 'stopped'
  proc = subprocess.Popen([sys.executable, '-m', 'kdjax.main', *TINY, *steps,
                           f'--workdir={stopped}'], cwd=ROOT, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)
  deadline = time.time() + 300
  while not (stopped / 'checkpoints' / '4').exists():
    assert proc.poll() is None and time.time() < deadline
    time.sleep(0.2)
  proc.send_signal(signal.SIGTERM)
  _, err = proc.communicate(timeout=300)
  assert proc.returncode == 0, err[-2000:]
  stopped_at = re.search(r'stopped by signal \d+ at step (\d+)', err)
  if stopped_at:  # (a signal that lands in the last step stops it at 12: also a stop)
    assert int(restore_state(stopped)['step']) == int(stopped_at.group(1))
  assert run_cli(TINY + steps + [f'--workdir={stopped}']).returncode == 0
  assert _leaves_equal(restore_state(straight), restore_state(stopped))


@pytest.mark.slow
def test_eight_devices_match_one_device(tmp_path):
  # The first step's loss must agree to float rounding. After that, rounding differences of
  # the 1- and 8-device reductions (1e-5 relative in a weight gradient) are amplified by
  # ReLU/BatchNorm at a fresh init, so the state after two steps is compared more loosely;
  # per-device BatchNorm statistics (4 images instead of 32) would miss both by far.
  steps = ['--config.max_steps=2', '--config.num_epochs=1', '--config.log_every_steps=1',
           '--config.optimizer.lr=0.01']
  one = run_cli(TINY + steps + [f'--workdir={tmp_path / "one"}'])
  eight = run_cli(TINY + steps + [f'--workdir={tmp_path / "eight"}'],
                  env={'XLA_FLAGS': '--xla_force_host_platform_device_count=8'})
  assert one.returncode == 0 and eight.returncode == 0, eight.stderr[-2000:]
  assert '8 cpu device(s), global batch 32 = 4 per device' in eight.stderr
  a, b = restore_state(tmp_path / 'one'), restore_state(tmp_path / 'eight')
  assert int(a['step']) == int(b['step']) == 2
  losses = [[json.loads(l)['loss'] for l in open(tmp_path / run / 'metrics.jsonl')
             if json.loads(l)['split'] == 'train'] for run in ('one', 'eight')]
  np.testing.assert_allclose(losses[0][0], losses[1][0], rtol=1e-6)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(x, y, rtol=2e-2, atol=1e-4)
  per_device = run_cli(TINY + steps + [f'--workdir={tmp_path / "per_device"}',
                                       '--config.bn_stats=per_device'],
                       env={'XLA_FLAGS': '--xla_force_host_platform_device_count=8'})
  assert per_device.returncode == 0, per_device.stderr[-2000:]
  first = json.loads(open(tmp_path / 'per_device' / 'metrics.jsonl').readline())['loss']
  assert abs(first - losses[0][0]) > 1e-3, 'per-device BN statistics must change the loss'


@pytest.mark.parametrize('args, message', [
    (['--config.model=resnet9'], "unknown model 'resnet9'"),
    (['--config.data.name=mnist'], "unknown dataset 'mnist'"),
    (['--config.optimizer.lr=-0.1'], 'config.optimizer.lr must be a positive'),
    (['--config.no_such_key=1'], 'unknown config field'),
    (['--config=experiments/no_such_method.py'], 'could not load the config file'),
])
def test_bad_input_is_one_line_and_leaves_no_workdir(tmp_path, args, message):
  workdir = tmp_path / 'run'
  proc = run_cli(TINY + args + [f'--workdir={workdir}'])
  assert proc.returncode != 0
  assert message in proc.stderr
  assert 'Traceback' not in proc.stderr
  assert not workdir.exists()


def test_non_writable_workdir_is_refused(tmp_path):
  locked = tmp_path / 'locked'
  locked.mkdir()
  locked.chmod(0o500)
  try:
    if os.access(locked, os.W_OK):
      pytest.skip('running as a user that can write anywhere (root)')
    proc = run_cli(TINY + [f'--workdir={locked / "run"}'])
    assert proc.returncode == 2 and 'is not writable' in proc.stderr
    assert 'Traceback' not in proc.stderr
  finally:
    locked.chmod(0o700)


def test_workdir_under_a_file_is_refused(tmp_path):
  blocker = tmp_path / 'file'
  blocker.write_text('')
  with pytest.raises(KdjaxError, match='cannot create the workdir'):
    train_and_evaluate(tiny_config(), str(blocker / 'run'))


def test_schedules_follow_their_formulas():
  """'step': mdistiller's adjust_learning_rate (lr * 0.1 ** (decay epochs passed), from the
  first step of the decay epoch); 'cosine': linear warm-up, then lr * (1 + cos(pi t)) / 2."""
  config = tiny_config(num_epochs=10, **{'optimizer.lr': 0.1, 'optimizer.schedule': 'step',
                                         'optimizer.lr_decay_epochs': (3, 6)})
  step = optim.lr_schedule(config.optimizer, 5, 10)
  assert [float(step(i)) for i in (0, 14, 15, 29, 30, 49)] == pytest.approx(
      [0.1, 0.1, 0.01, 0.01, 0.001, 0.001])
  config.optimizer.schedule, config.optimizer.warmup_epochs = 'cosine', 2
  cosine = optim.lr_schedule(config.optimizer, 5, 10)
  t = lambda i: (i - 10) / 40
  assert [float(cosine(i)) for i in (0, 5, 10, 30, 49)] == pytest.approx(
      [0.01, 0.055] + [0.05 * (1 + np.cos(np.pi * t(i))) for i in (10, 30, 49)], abs=1e-7)
  # a run no longer than its warm-up (a digits preset with --config.num_epochs=1) is warm-up
  short = optim.lr_schedule(config.optimizer, 5, 2)
  assert [float(short(i)) for i in (0, 5, 9)] == pytest.approx([0.01, 0.055, 0.091], abs=1e-7)
  # 'step' with a warm-up: the same ramp, times the step schedule (a decay inside it too)
  config.optimizer.schedule, config.optimizer.lr_decay_epochs = 'step', (1, 6)
  warm = optim.lr_schedule(config.optimizer, 5, 10)
  assert [float(warm(i)) for i in (0, 4, 5, 9, 10, 29, 30)] == pytest.approx(
      [0.01, 0.046, 0.0055, 0.0091, 0.01, 0.01, 0.001], abs=1e-7)


@pytest.mark.slow
def test_profile_steps_write_a_trace_of_those_steps_and_change_nothing(tmp_path):
  """config.profile_steps=(2, 3): a jax.profiler trace in <workdir>/profile (TensorBoard's
  profile plugin reads plugins/profile/<run>/*.xplane.pb), the same metrics as without."""
  plain = train_and_evaluate(tiny_config(max_steps=4), str(tmp_path / 'plain'))
  profiled = train_and_evaluate(tiny_config(max_steps=4, profile_steps=(2, 3)),
                                str(tmp_path / 'profiled'))
  traces = list((tmp_path / 'profiled' / 'profile').rglob('*.xplane.pb'))
  assert len(traces) == 1 and traces[0].stat().st_size > 0
  assert not (tmp_path / 'plain' / 'profile').exists()
  rows = [[{k: v for k, v in json.loads(line).items() if k != 'images_per_second'}
           for line in open(tmp_path / run / 'metrics.jsonl')] for run in ('plain', 'profiled')]
  assert rows[0] == rows[1] and plain['step'] == profiled['step'] == 4


def test_bad_profile_steps_are_one_line():
  from kdjax import plan
  for bad in ((3, 2), (0, 2), (5,)):
    with pytest.raises(KdjaxError, match='config.profile_steps must be'):
      plan.validate(tiny_config(profile_steps=bad))
