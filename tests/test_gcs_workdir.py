"""``--workdir gs://...``: whole runs against a real local GCS server (tests/gcs_emulator.py).

Every run is a ``python -m kdjax.main`` subprocess pointed at the server by the standard
variables; what the run left in the bucket is read back through the server's JSON API, not
through kdjax's own clients.
"""

import json
import subprocess
import sys
import time
import uuid

import jax
import numpy as np
import pytest

import gcs_emulator
from conftest import ROOT, restore_state
from test_distributed import KD, launch, random_teacher  # noqa: F401  (a fixture)

BUCKET = 'kdjax-test'
TINY = ['--config', f'{ROOT}/experiments/vanilla.py:digits', '--config.model=resnet8',
        '--config.batch_size=32', '--config.log_every_steps=4',
        '--config.checkpoint_every_steps=4', '--config.num_epochs=1']


@pytest.fixture(scope='module')
def server():
  with gcs_emulator.running_emulator((BUCKET,)) as url:
    yield url


@pytest.fixture
def gcs(server, monkeypatch):
  """The server's URL, with the client variables set for this test's subprocesses."""
  for key, value in gcs_emulator.client_env(server).items():
    monkeypatch.setenv(key, value)
  return server


def _prefix() -> str:
  return f'runs/{uuid.uuid4().hex[:8]}'


def _run(args, cwd=ROOT, timeout=600):
  return subprocess.run([sys.executable, '-m', 'kdjax.main', *args], cwd=cwd,
                        capture_output=True, text=True, timeout=timeout)


def _json(url, name):
  return json.loads(gcs_emulator.read_object(url, BUCKET, name))


def _metrics(text):
  return [json.loads(line) for line in text.splitlines()]


def _same_numbers(a: dict, b: dict) -> None:
  keep = lambda r: {k: v for k, v in r.items() if k != 'images_per_second'}
  assert keep(a) == keep(b)


@pytest.mark.slow
def test_a_run_writes_its_workdir_into_the_bucket_and_nothing_locally(gcs, tmp_path):
  prefix, cwd = _prefix(), tmp_path / 'cwd'
  cwd.mkdir()
  done = _run([*TINY, f'--workdir=gs://{BUCKET}/{prefix}'], cwd=cwd)
  assert done.returncode == 0, done.stderr[-3000:]
  assert done.stdout.splitlines()[-1] == f'workdir: gs://{BUCKET}/{prefix}'
  assert list(cwd.iterdir()) == [], 'nothing is written under the current folder'
  names = gcs_emulator.list_objects(gcs, BUCKET, prefix + '/')
  relative = {n[len(prefix) + 1:] for n in names}
  assert {'config.json', 'results.json', 'metrics.jsonl'} <= relative
  assert 'checkpoints/44/commit_success.txt' in relative  # the last step's checkpoint
  assert any(n.startswith('tb/events.out.tfevents.') for n in relative)
  assert not any(n.startswith(('.lock', '.kdjax_probe')) for n in relative), relative
  results = _json(gcs, f'{prefix}/results.json')
  assert results['finished'] and results['step'] == 44
  assert _json(gcs, f'{prefix}/config.json')['model'] == 'resnet8'
  lines = _metrics(gcs_emulator.read_object(gcs, BUCKET, f'{prefix}/metrics.jsonl').decode())
  assert [l['step'] for l in lines if l['split'] == 'train'] == list(range(4, 45, 4))
  assert [l['top1'] for l in lines if l['split'] == 'test/student'] == [results['last_top1']]


def _wait_for_object(url, name, proc, timeout=300):
  deadline = time.time() + timeout
  while name not in gcs_emulator.list_objects(url, BUCKET, name):
    assert proc.poll() is None, f'the run ended before {name} appeared'
    assert time.time() < deadline, f'{name} did not appear in {timeout} s'
    time.sleep(0.05)


@pytest.mark.slow
def test_sigkill_after_a_checkpoint_then_the_same_command_ends_as_an_uninterrupted_run(
    gcs, tmp_path, monkeypatch):
  monkeypatch.setenv('KDJAX_LEASE_STALE_S', '1')  # the killed run's lease is taken over
  prefix, local = _prefix(), tmp_path / 'local'
  args = [*TINY, '--config.max_steps=16']
  straight = _run(args + [f'--workdir={local}'])
  assert straight.returncode == 0, straight.stderr[-3000:]
  workdir = f'gs://{BUCKET}/{prefix}'
  proc = subprocess.Popen([sys.executable, '-m', 'kdjax.main', *args, f'--workdir={workdir}'],
                          cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  try:
    _wait_for_object(gcs, f'{prefix}/checkpoints/8/commit_success.txt', proc)
  finally:
    proc.kill()
    proc.wait()
  assert f'{prefix}/results.json' not in gcs_emulator.list_objects(gcs, BUCKET, prefix)
  time.sleep(1.5)  # the lease goes stale
  resumed = _run(args + [f'--workdir={workdir}'])
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert 'resumed from the checkpoint at step' in resumed.stderr
  _same_numbers(_json(gcs, f'{prefix}/results.json'),
                json.loads((local / 'results.json').read_text()))
  a = _metrics((local / 'metrics.jsonl').read_text())
  b = _metrics(gcs_emulator.read_object(gcs, BUCKET, f'{prefix}/metrics.jsonl').decode())
  assert [{k: v for k, v in l.items() if k != 'images_per_second'} for l in a] == [
      {k: v for k, v in l.items() if k != 'images_per_second'} for l in b]
  state_a, state_b = restore_state(local), restore_state(workdir)
  assert int(state_b['step']) == 16
  for x, y in zip(jax.tree.leaves(state_a), jax.tree.leaves(state_b)):
    np.testing.assert_array_equal(x, y)


@pytest.mark.slow
def test_two_processes_write_one_checkpoint_to_the_bucket_and_resume_from_it(
    gcs, tmp_path, random_teacher):  # noqa: F811
  prefix = _prefix()
  workdir = f'gs://{BUCKET}/{prefix}'
  args = KD + [f'--config.teacher.checkpoint={random_teacher}']
  client = gcs_emulator.client_env(gcs)
  for rc, err in launch(args + ['--config.max_steps=4', f'--workdir={workdir}'],
                        processes=2, devices=1, env=client):
    assert rc == 0, err
  assert f'{prefix}/checkpoints/4/commit_success.txt' in gcs_emulator.list_objects(
      gcs, BUCKET, prefix)
  resumed = launch(args + ['--config.max_steps=8', f'--workdir={workdir}'], processes=2,
                   devices=1, env=client)
  for rc, err in resumed:
    assert rc == 0, err
  assert 'resumed from the checkpoint at step 4' in resumed[0][1]
  (rc, err), = launch(args + ['--config.max_steps=8', f'--workdir={tmp_path / "single"}'],
                      processes=1, devices=2)
  assert rc == 0, err
  a, b = restore_state(tmp_path / 'single'), restore_state(workdir)
  assert int(a['step']) == int(b['step']) == 8
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-8)



def _start(args, workdir):
  return subprocess.Popen([sys.executable, '-m', 'kdjax.main', *args, f'--workdir={workdir}'],
                          cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                          text=True)


@pytest.mark.slow
def test_a_second_run_is_refused_at_once_while_the_first_holds_the_lease(gcs):
  prefix = _prefix()
  workdir = f'gs://{BUCKET}/{prefix}'
  first = _start([*TINY, '--config.num_epochs=5'], workdir)
  try:
    _wait_for_object(gcs, f'{prefix}/.lock', first)
    second = _run([*TINY, f'--workdir={workdir}'], timeout=120)
    assert first.poll() is None, 'the first run holds the workdir all along'
  finally:
    first.kill()
    first.wait()
  assert second.returncode == 2 and not second.stdout
  line = second.stderr.splitlines()[-1]  # after the lines that name the run
  assert line.startswith(f'kdjax: error: workdir {workdir} is in use by PID {first.pid} on ')
  assert line.endswith('; wait for it to finish or choose another --workdir')


@pytest.mark.slow
def test_a_run_that_loses_its_lease_stops_before_its_next_checkpoint(gcs, monkeypatch):
  monkeypatch.setenv('KDJAX_LEASE_STALE_S', '2')  # renewed every 0.4 s
  prefix = _prefix()
  workdir = f'gs://{BUCKET}/{prefix}'
  run = _start([*TINY, '--config.num_epochs=5'], workdir)
  try:
    _wait_for_object(gcs, f'{prefix}/checkpoints/4/commit_success.txt', run)
    other = {'token': 'another-run', 'pid': 4321, 'host': 'elsewhere', 'started': time.time(),
             'started_at': 'now', 'heartbeat': time.time() + 3600}
    gcs_emulator.write_object(gcs, BUCKET, f'{prefix}/.lock', json.dumps(other).encode())
    _, err = run.communicate(timeout=300)
  finally:
    run.kill()
    run.wait()
  assert run.returncode == 2
  assert err.splitlines()[-1].startswith(
      f'kdjax: error: lost the lease on workdir {workdir} to PID 4321 on elsewhere ')
  saved = gcs_emulator.list_objects(gcs, BUCKET, f'{prefix}/checkpoints/')
  steps = {n.split('/')[3] for n in saved}
  assert f'{prefix}/results.json' not in gcs_emulator.list_objects(gcs, BUCKET, prefix)
  assert json.loads(gcs_emulator.read_object(gcs, BUCKET, f'{prefix}/.lock'))['pid'] == 4321
  assert max(int(s) for s in steps if s.isdigit()) < 44, steps
