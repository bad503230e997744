"""Multi-process training: 2 processes on 127.0.0.1 (CPU, gloo) equal 1 process.

Each process is a ``python -m kdjax.main`` started with the ``KDJAX_*`` variables of
:mod:`kdjax.distributed`; they share one workdir, as hosts share a filesystem. Every
subprocess runs in its own session and is killed (with its group) whatever happens, under a
hard time limit, so a hung collective cannot outlive the test or keep its port.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time

import jax
import numpy as np
import pytest

from conftest import ROOT, restore_state

TIME_LIMIT = 240  # seconds for all processes of one launch, compile included

KD = ['--config', 'experiments/kd.py:digits', '--config.model=resnet8',
      '--config.teacher.model=resnet8', '--config.batch_size=32', '--config.num_epochs=1',
      '--config.log_every_steps=1', '--config.checkpoint_every_steps=2',
      '--config.optimizer.lr=0.01']


def _free_port() -> int:
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def _env(devices: int, extra=None) -> dict:
  env = {k: v for k, v in os.environ.items() if not k.startswith(('KDJAX_', 'JAX_', 'SLURM_'))}
  env.update({'JAX_PLATFORMS': 'cpu',
              'XLA_FLAGS': f'--xla_force_host_platform_device_count={devices}'})
  env.update(extra or {})
  return env


def _kill(procs) -> None:
  for p in procs:
    if p.poll() is None:
      try:
        os.killpg(p.pid, signal.SIGKILL)
      except ProcessLookupError:
        pass
  for p in procs:
    try:
      p.wait(timeout=30)
    except subprocess.TimeoutExpired:
      pass


def launch(args, *, processes: int, devices: int, timeout: float = TIME_LIMIT,
           on_start=None, env=None) -> list:
  """Runs ``python -m kdjax.main ARGS`` as ``processes`` processes of ``devices`` CPU
  devices each (one process: no distributed runtime); returns ``[(returncode, stderr)]``.

  ``on_start(procs)`` may act on the running processes (send a signal). All processes are
  killed at the end, on an exception or when ``timeout`` passes.
  """
  port = _free_port()
  procs, logs = [], []
  try:
    for i in range(processes):
      extra = {} if processes == 1 else {
          'KDJAX_COORDINATOR_ADDRESS': f'127.0.0.1:{port}',
          'KDJAX_NUM_PROCESSES': str(processes), 'KDJAX_PROCESS_ID': str(i)}
      log = tempfile.TemporaryFile('w+')  # stderr: read back for the assertions
      logs.append(log)
      procs.append(subprocess.Popen([sys.executable, '-m', 'kdjax.main', *args], cwd=ROOT,
                                    env=_env(devices, {**(env or {}), **extra}),
                                    stdout=subprocess.DEVNULL,
                                    stderr=log, start_new_session=True))
    if on_start is not None:
      on_start(procs)
    deadline = time.time() + timeout
    for p in procs:
      try:
        p.wait(timeout=max(1.0, deadline - time.time()))
      except subprocess.TimeoutExpired:
        pytest.fail(f'{processes} processes did not finish in {timeout} s: '
                    + ' | '.join(_tail(log) for log in logs))
    return [(p.returncode, _tail(log, 4000)) for p, log in zip(procs, logs)]
  finally:
    _kill(procs)
    for log in logs:
      log.close()


def _tail(log, n=1500) -> str:
  log.flush()
  log.seek(0)
  return log.read()[-n:]


@pytest.fixture(scope='module')
def random_teacher(tmp_path_factory):
  """A resnet8 teacher folder with random weights: cheap, and as good as any for equality."""
  from kdjax import models, teachers
  net = models.create('resnet8', num_classes=10)
  variables = net.init(jax.random.PRNGKey(7), np.zeros((2, 32, 32, 3), np.float32), train=False)
  path = tmp_path_factory.mktemp('teacher') / 'resnet8'
  teachers.save(str(path), 'resnet8', 10, variables, source='random (test)')
  return str(path)


def _train_lines(workdir):
  return [json.loads(line) for line in open(workdir / 'metrics.jsonl')
          if json.loads(line)['split'] == 'train']


def _wait_for(path, procs, timeout=TIME_LIMIT):
  deadline = time.time() + timeout
  while not path.exists():
    assert all(p.poll() is None for p in procs), f'a process ended before {path} appeared'
    assert time.time() < deadline, f'{path} did not appear in {timeout} s'
    time.sleep(0.1)


@pytest.mark.slow
def test_two_processes_equal_one_process_and_stop_together_on_sigterm(tmp_path,
                                                                      random_teacher):
  # 2 processes x 1 CPU device against 1 process x 2 devices: the same 2-device mesh and
  # global batch of 32; each process feeds only its 16 rows of every batch. A sum of two
  # partial results is the same in either order, so gloo's all-reduce and the in-process
  # one agree and the states match to float rounding (in practice bit for bit). On the way
  # the 2-process run is preempted: SIGTERM to process 1 only, after the step-2 checkpoint.
  args = KD + ['--config.max_steps=10', f'--config.teacher.checkpoint={random_teacher}']
  multi, single = tmp_path / 'multi', tmp_path / 'single'

  def preempt_process_1(procs):
    _wait_for(multi / 'checkpoints' / '2', procs)
    procs[1].send_signal(signal.SIGTERM)

  t0 = time.time()
  results = launch(args + [f'--workdir={multi}'], processes=2, devices=1,
                   on_start=preempt_process_1)
  print(f'2 processes: {time.time() - t0:.0f} s')
  for rc, err in results:
    assert rc == 0, err  # both stop cleanly: the signal reached process 0 through JAX
  assert '2 cpu device(s) in 2 processes, global batch 32 = 16 per device' in results[0][1]
  assert 'epoch 1 step 2/10' not in results[1][1], 'only process 0 prints progress'
  stopped = json.loads((multi / 'results.json').read_text())
  if stopped['step'] < 10:  # (a slow machine may reach max_steps before the processes agree)
    assert 'stopped by signal 15 at step' in results[0][1]
    assert str(stopped['step']) in os.listdir(multi / 'checkpoints')
    print(f'stopped by SIGTERM after step {stopped["step"]}')
    t0 = time.time()
    resumed = launch(args + [f'--workdir={multi}'], processes=2, devices=1)
    print(f'2 processes, resumed: {time.time() - t0:.0f} s')
    for rc, err in resumed:
      assert rc == 0, err
    assert f'resumed from the checkpoint at step {stopped["step"]}' in resumed[0][1]
  t0 = time.time()
  (rc, err), = launch(args + [f'--workdir={single}'], processes=1, devices=2)
  print(f'1 process: {time.time() - t0:.0f} s')
  assert rc == 0, err

  a, b = restore_state(single), restore_state(multi)
  assert int(a['step']) == int(b['step']) == 10
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-8)
  # Process 0 alone wrote the logs: each step once, with one process's values.
  la, lb = _train_lines(single), _train_lines(multi)
  assert [l['step'] for l in lb] == list(range(1, 11))
  np.testing.assert_allclose([l['loss'] for l in lb], [l['loss'] for l in la], rtol=1e-6)
  assert json.loads((multi / 'results.json').read_text())['devices'] == 2


_AUTO_SINGLE = """
from kdjax import distributed
import jax
print(distributed.initialize('auto'), jax.distributed.is_initialized(), jax.device_count())
"""


def test_auto_without_a_launcher_is_one_process():
  """'auto' asks JAX to detect the launch (SLURM, Open MPI, Kubernetes, a TPU pod slice);
  where JAX finds none, the run is a single process and the devices still work."""
  env = {k: v for k, v in os.environ.items()
         if not k.startswith(('SLURM_', 'OMPI_', 'KDJAX_', 'JAX_COORDINATOR'))}
  proc = subprocess.run([sys.executable, '-c', _AUTO_SINGLE], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=120)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert proc.stdout.split() == ['False', 'False', '1']


def test_distributed_mistakes_are_one_line(monkeypatch):
  from kdjax import distributed
  from kdjax.errors import KdjaxError
  assert distributed.normalize_mode(True) == 'true' and distributed.normalize_mode('Off') == 'false'
  with pytest.raises(KdjaxError, match='must be auto, true or false'):
    distributed.normalize_mode('maybe')
  monkeypatch.setenv('KDJAX_COORDINATOR_ADDRESS', '127.0.0.1:1234')
  monkeypatch.delenv('KDJAX_PROCESS_ID', raising=False)
  monkeypatch.setenv('KDJAX_NUM_PROCESSES', '2')
  with pytest.raises(KdjaxError, match='KDJAX_PROCESS_ID is not'):
    distributed.initialize('auto')
  monkeypatch.setenv('KDJAX_PROCESS_ID', '2')
  with pytest.raises(KdjaxError,
                     match=r'KDJAX_PROCESS_ID=2 must be in \[0, KDJAX_NUM_PROCESSES=2\)'):
    distributed.initialize('auto')


def test_distributed_true_without_a_launch_is_refused(tmp_path):
  from conftest import run_cli
  proc = run_cli(['--config', 'experiments/vanilla.py:digits', '--config.distributed=true',
                  f'--workdir={tmp_path / "run"}'], env=_env(1))
  assert proc.returncode == 2
  assert 'kdjax: error: config.distributed is true but no multi-process launch' in proc.stderr
  assert 'Traceback' not in proc.stderr and not (tmp_path / 'run').exists()
