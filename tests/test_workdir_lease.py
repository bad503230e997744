"""The lease that keeps a second run out of a gs:// workdir in use (kdjax.train.workdir_lock).

Everything is real: a local GCS server (tests/gcs_emulator.py), the lease read and written
with google-cloud-storage, a holder in a separate process killed with SIGKILL. The server
honours generation preconditions as Cloud Storage does (tests/gcs_server.py), so a race is
decided by the atomic create-if-absent; the read-back checks stand behind it.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid

import re

import pytest

import gcs_emulator
from conftest import ROOT
from kdjax.errors import KdjaxError
from kdjax.train.workdir_lock import STALE_ENV, WorkdirLock

BUCKET = 'kdjax-test'
_IN_USE_END = '); wait for it to finish or choose another --workdir'


@pytest.fixture(scope='module')
def emulator_url():
  with gcs_emulator.running_emulator(buckets=(BUCKET,)) as url:
    yield url


@pytest.fixture
def workdir(emulator_url, monkeypatch):
  """A fresh gs:// workdir on the emulator, its variables set for this test (the lease's
  client is built when a lock is taken, so setting them here is early enough)."""
  for key, value in gcs_emulator.client_env(emulator_url).items():
    monkeypatch.setenv(key, value)
  monkeypatch.delenv(STALE_ENV, raising=False)
  return f'gs://{BUCKET}/runs/{uuid.uuid4().hex}'


def _blob(workdir):
  from google.cloud import storage
  return storage.Client().bucket(BUCKET).blob(workdir[len(f'gs://{BUCKET}/'):] + '/.lock')


def _lease(workdir):
  """The lease record, or None when there is no lease object."""
  blob = _blob(workdir)
  return json.loads(blob.download_as_bytes()) if blob.exists() else None


def _heartbeat_ago(line, seconds):
  """``line`` with its 'last heartbeat N s ago' checked (N within 3 s above ``seconds``, as
  a loaded machine may be slow) and set to ``seconds``."""
  found = re.search(r'last heartbeat (\d+) s ago', line)
  assert found and seconds <= int(found.group(1)) <= seconds + 3, line
  return line.replace(found.group(0), f'last heartbeat {seconds} s ago')


def _warnings(capfd):
  return [line for line in capfd.readouterr().err.splitlines() if line.startswith('warning:')]


def test_the_lease_names_this_process_and_release_deletes_it(workdir):
  before = time.time()
  with WorkdirLock(workdir):
    lease = _lease(workdir)
    assert (lease['pid'], lease['host']) == (os.getpid(), socket.gethostname())
    assert len(lease['token']) == 32
    assert before <= lease['started'] <= lease['heartbeat'] <= time.time()
    assert lease['heartbeat_at'] == time.strftime('%Y-%m-%d %H:%M:%S UTC',
                                                  time.gmtime(lease['heartbeat']))
  assert _lease(workdir) is None


def test_the_heartbeat_advances_while_the_run_lives(workdir, monkeypatch):
  monkeypatch.setenv(STALE_ENV, '0.5')  # renewed every 0.1 s
  with WorkdirLock(workdir) as lock:
    first = _lease(workdir)
    deadline = time.monotonic() + 10
    while (latest := _lease(workdir))['heartbeat'] <= first['heartbeat']:
      assert time.monotonic() < deadline, 'the heartbeat was never renewed'
      time.sleep(0.05)
    assert {k: latest[k] for k in ('token', 'pid', 'started')} == {
        k: first[k] for k in ('token', 'pid', 'started')}
    time.sleep(1.0)  # longer than STALE_S: a live lease stays ours
    lock.check()
    assert _lease(workdir)['token'] == first['token']


@pytest.mark.parametrize('old', [
    {'token': 'f' * 32, 'pid': 4242, 'host': 'old-host', 'started': 1.0,
     'started_at': '2026-01-01 00:00:01 UTC', 'heartbeat': None},
    None])  # a lease object that is not JSON names no holder
def test_a_stale_lease_is_taken_over_with_one_warning_naming_the_old_holder(workdir, capfd,
                                                                             old):
  if old is None:
    _blob(workdir).upload_from_string(b'')
    named = 'another process (its lease names none)'
  else:
    old['heartbeat'] = time.time() - 1000
    _blob(workdir).upload_from_string(json.dumps(old))
    named = ('PID 4242 on old-host (started at 2026-01-01 00:00:01 UTC, '
             'last heartbeat 1000 s ago)')
  _warnings(capfd)
  with WorkdirLock(workdir):
    assert _lease(workdir)['pid'] == os.getpid()
  assert [_heartbeat_ago(w, 1000) if old else w for w in _warnings(capfd)] == [
      f'warning: workdir {workdir} was held by {named}, longer than the 300 s after which a '
      f'lease is stale (a killed run leaves its lease behind): taking it over']


def test_a_live_lease_of_another_run_is_refused_at_once(workdir):
  other = {'token': 'e' * 32, 'pid': 77, 'host': 'other-host', 'started': time.time() - 60,
           'started_at': '2026-05-05 05:05:05 UTC', 'heartbeat': time.time() - 200}
  _blob(workdir).upload_from_string(json.dumps(other))
  t0 = time.monotonic()
  with pytest.raises(KdjaxError) as error:
    WorkdirLock(workdir).acquire()
  assert time.monotonic() - t0 < 5
  assert _heartbeat_ago(str(error.value), 200) == (
      f'workdir {workdir} is in use by PID 77 on other-host (started at 2026-05-05 05:05:05 '
      f'UTC, last heartbeat 200 s ago{_IN_USE_END}')
  assert _lease(workdir) == other  # untouched


@pytest.mark.parametrize('taken', [True, False])  # by another run; deleted
def test_a_lease_lost_to_another_run_is_noticed_and_not_deleted(workdir, monkeypatch, capfd,
                                                                 taken):
  monkeypatch.setenv(STALE_ENV, '0.5')
  lock = WorkdirLock(workdir)
  lock.acquire()
  thief = {'token': 'd' * 32, 'pid': 99, 'host': 'thief', 'started_at': 'T',
           'heartbeat': time.time() + 5}  # stays live for the whole test
  try:
    if taken:
      _blob(workdir).upload_from_string(json.dumps(thief))
    else:
      _blob(workdir).delete()
    _warnings(capfd)
    deadline = time.monotonic() + 10
    with pytest.raises(KdjaxError) as error:
      while time.monotonic() < deadline:
        lock.check()
        time.sleep(0.05)
    to = 'PID 99 on thief (started at T, last heartbeat ' if taken else 'nobody (it was deleted)'
    assert str(error.value).startswith(f'lost the lease on workdir {workdir} to {to}')
    time.sleep(0.3)  # more renewal periods: still one warning
    assert _warnings(capfd) == [f'warning: {error.value}']
  finally:
    lock.release()
  assert _lease(workdir) == (thief if taken else None)  # not recreated, not deleted


def _keeps(lock) -> bool:
  """Whether ``lock`` still holds its lease (its check passes)."""
  try:
    lock.check()
  except KdjaxError:
    return False
  return True


def test_of_runs_racing_for_one_workdir_exactly_one_keeps_it(workdir, monkeypatch, capfd):
  # The create-if-absent lets one write through (tests/gcs_server.py, as Cloud Storage).
  monkeypatch.setenv(STALE_ENV, '0.5')
  locks = [WorkdirLock(workdir) for _ in range(6)]
  start, held, refused = threading.Barrier(len(locks)), [], []

  def race(lock):
    start.wait()
    try:
      lock.acquire()
      held.append(lock)
    except KdjaxError as e:
      refused.append(str(e))

  threads = [threading.Thread(target=race, args=(lock,)) for lock in locks]
  for t in threads:
    t.start()
  for t in threads:
    t.join()
  try:
    assert held and len(held) + len(refused) == len(locks)
    assert all(r.startswith(f'workdir {workdir} is in use by PID ') for r in refused)
    time.sleep(0.5)  # several renewals: each lock that lost the race has noticed
    assert sum(map(_keeps, held)) == 1, (len(held), refused)
  finally:
    for lock in held:
      lock.release()
  assert _lease(workdir) is None  # deleted by the one owner; the others left it alone


_HOLD = '''
import sys, time
from kdjax.train.workdir_lock import WorkdirLock
with WorkdirLock(sys.argv[1]):
  print('locked', flush=True)
  time.sleep(600)
'''


def test_a_holder_in_another_process_refuses_then_its_lease_is_taken_over_after_a_kill(
    workdir, monkeypatch, capfd):
  monkeypatch.setenv(STALE_ENV, '3')
  proc = subprocess.Popen([sys.executable, '-c', _HOLD, workdir], cwd=ROOT, env=os.environ,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  try:
    assert proc.stdout.readline() == 'locked\n', proc.stderr.read()
    with pytest.raises(KdjaxError) as error:
      WorkdirLock(workdir).acquire()
    assert str(error.value).startswith(f'workdir {workdir} is in use by PID {proc.pid} on '
                                       f'{socket.gethostname()} (started at ')
    assert str(error.value).endswith(_IN_USE_END)
  finally:
    proc.send_signal(signal.SIGKILL)
    proc.wait()
  left = _lease(workdir)
  assert left['pid'] == proc.pid  # a killed run's lease stays
  time.sleep(max(0.0, left['heartbeat'] + 3.2 - time.time()))
  _warnings(capfd)
  with WorkdirLock(workdir):
    assert _lease(workdir)['pid'] == os.getpid()
  (warning,) = _warnings(capfd)
  assert _heartbeat_ago(warning, 3).startswith(
      f'warning: workdir {workdir} was held by PID {proc.pid} on {socket.gethostname()} '
      f'(started at {left["started_at"]}, last heartbeat 3 s ago), longer than the 3 s ')


def test_a_missing_bucket_and_a_bad_stale_setting_are_one_line_errors(workdir, monkeypatch):
  with pytest.raises(KdjaxError, match=r'^cannot lock workdir gs://no-such-bucket/run: .*; '
                                       r'check that the bucket exists and that you may write'):
    WorkdirLock('gs://no-such-bucket/run').acquire()
  monkeypatch.setenv(STALE_ENV, 'soon')
  with pytest.raises(KdjaxError, match=rf"^{STALE_ENV}='soon': expected a number of seconds"):
    WorkdirLock(workdir).acquire()


def test_other_object_stores_are_not_locked_and_say_so_once(capfd):
  with WorkdirLock('s3://bucket/run') as lock:
    lock.check()
  assert _warnings(capfd) == [
      'warning: workdir s3://bucket/run: kdjax locks local and gs:// workdirs, not s3://; '
      'nothing stops a second run from writing into it']
