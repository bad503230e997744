"""One run per workdir: a lock on ``<workdir>/.lock`` for the run's whole life.

Two runs writing into one workdir would interleave checkpoints and metrics and each resume
the other's state. :class:`WorkdirLock` holds ``<workdir>/.lock``, which names the holder's
PID, host and start time; a second run on the same workdir fails at once with one
:class:`~kdjax.errors.KdjaxError` line naming them. With several JAX processes only process 0
writes into the workdir, so only process 0 locks. The mechanism depends on where the workdir
is:

* A local workdir: an exclusive ``flock`` on the file. The operating system drops it when its
  process ends, however it ends (SIGKILL, a crash, a lost node), so a lock file left behind by
  a dead run never blocks the next one. The file itself stays (removing it could let two runs
  lock two different files); it is emptied on release. ``flock`` works across hosts on
  filesystems that support it (local disks, NFSv4, most cluster filesystems); where the
  filesystem refuses it, the run goes on unlocked with one warning line.

* A ``gs://`` workdir: a bucket has no ``flock``, so the lock is a lease, the JSON object
  ``.lock`` naming its owner (a random token, PID, host, start time) and a heartbeat (UTC
  epoch seconds and readable). It is created only if absent (``ifGenerationMatch=0``) and a
  daemon thread rewrites the heartbeat every ``STALE_S / 5`` seconds, each write conditional
  on the generation it read, so of two runs racing for one workdir only one write succeeds.
  Nothing deletes the lease of a killed run: a lease whose heartbeat is older than
  ``STALE_S`` (300 s; the environment variable ``KDJAX_LEASE_STALE_S`` overrides it, which
  tests use to rerun on a killed run's workdir within seconds) is taken over with one warning
  line naming the old holder, so a killed run's gs:// workdir is free again ``STALE_S`` after
  its last heartbeat. The hosts' clocks must agree to well within ``STALE_S`` (NTP does).
  Every write is read back and its token checked, and a renewal also checks the token before
  writing, so a lease lost to another run (a stall longer than ``STALE_S`` let it take over)
  is noticed: one warning line, and :meth:`WorkdirLock.check` raises from then on so the loop
  stops writing into a workdir another run owns. The lease is deleted on release if still
  ours. The tests run against a local GCS server that honours generation preconditions as
  Cloud Storage does (tests/gcs_server.py); the read-back also covers a store that does not.

* Another object store (``s3://``): no lock; one warning line says so.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import threading
import time
import uuid
from typing import Optional

from kdjax import paths
from kdjax.console import warn
from kdjax.errors import KdjaxError

LOCK_NAME = '.lock'
# How long a second run waits for the holder's PID to appear in a lock file it just took.
_OWNER_WAIT_S = 0.5
# A gs:// lease whose heartbeat is older than this many seconds is taken over; its holder
# renews it five times as often.
STALE_S = 300.0
STALE_ENV = 'KDJAX_LEASE_STALE_S'
_RENEWALS_PER_STALE = 5


class WorkdirLock:
  """``with WorkdirLock(workdir, enabled=...):`` holds ``<workdir>/.lock`` for the block.

  Creates a local ``workdir`` if needed. Raises :class:`~kdjax.errors.KdjaxError` at once if
  another process holds the lock; releases it on any exit from the block. ``enabled=False``
  makes the block do nothing (the processes of a multi-process run other than 0).
  """

  def __init__(self, workdir: paths.PathLike, *, enabled: bool = True):
    self.workdir = os.fspath(workdir)
    self.path = os.path.join(self.workdir, LOCK_NAME)
    self.enabled = enabled
    self._fd: Optional[int] = None
    self._lease: Optional[_Lease] = None

  def __enter__(self) -> 'WorkdirLock':
    if self.enabled:
      self.acquire()
    return self

  def __exit__(self, *exc) -> None:
    self.release()

  def acquire(self) -> None:
    """Takes the lock: a ``flock``, a ``gs://`` lease, or none (see the module)."""
    kind = paths.scheme(self.workdir)
    if kind == 'gs':
      lease = _Lease(self.workdir)
      lease.acquire()
      self._lease = lease
    elif kind:
      warn(f'workdir {self.workdir}: kdjax locks local and gs:// workdirs, not {kind}://; '
           f'nothing stops a second run from writing into it')
    else:
      self._fd = _flock(self.workdir, self.path)

  def check(self) -> None:
    """Raises :class:`~kdjax.errors.KdjaxError` if the gs:// lease was lost to another run
    (the loop calls it before writing); nothing otherwise."""
    if self._lease is not None and self._lease.lost:
      raise KdjaxError(self._lease.lost)

  def release(self) -> None:
    """Drops the lock (nothing if not held): empties the lock file and unlocks it, or stops
    the renewals and deletes the lease if still ours."""
    fd, self._fd = self._fd, None
    lease, self._lease = self._lease, None
    if lease is not None:
      lease.release()
    if fd is None:
      return
    try:
      os.ftruncate(fd, 0)
    finally:
      os.close(fd)  # closing the last descriptor drops the flock


# ------------------------------------------------------------------------------- local: flock

def _flock(workdir: str, path: str) -> Optional[int]:
  """The descriptor of ``path`` under an exclusive ``flock``, this process recorded in it;
  ``None`` where the filesystem cannot lock (with a warning)."""
  try:
    os.makedirs(workdir, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
  except OSError as e:
    raise KdjaxError(f'cannot create the lock file {path!r} ({e.strerror}); '
                     f'choose another --workdir') from None
  try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except OSError as e:
    if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
      os.close(fd)  # the filesystem cannot lock: go on without
      warn(f'cannot lock workdir {workdir} ({e.strerror}); nothing stops a second run '
           f'from writing into it')
      return None
    owner = _read_owner(fd)
    os.close(fd)
    raise KdjaxError(f'workdir {workdir} is in use by {owner}; wait for it to finish '
                     f'or choose another --workdir') from None
  owner = {'pid': os.getpid(), 'host': socket.gethostname(),
           'started': time.strftime('%Y-%m-%d %H:%M:%S %Z')}
  os.ftruncate(fd, 0)
  os.pwrite(fd, (json.dumps(owner) + '\n').encode(), 0)
  return fd


def _read_owner(fd: int) -> str:
  """'PID N on HOST (started at T)' from the lock file of another process."""
  deadline = time.monotonic() + _OWNER_WAIT_S
  while True:  # the holder writes its record right after taking the lock
    try:
      owner = json.loads(os.pread(fd, 4096, 0))
      return f'PID {owner["pid"]} on {owner["host"]} (started at {owner["started"]})'
    except (ValueError, TypeError, KeyError):
      if time.monotonic() > deadline:
        return 'another process (its lock file names none)'
      time.sleep(0.02)


# ----------------------------------------------------------------------------- gs://: a lease

def _stale_s() -> float:
  """``STALE_S``, or ``$KDJAX_LEASE_STALE_S`` where set."""
  text = os.environ.get(STALE_ENV)
  if text is None:
    return STALE_S
  try:
    value = float(text)
  except ValueError:
    value = 0.0
  if not value > 0:
    raise KdjaxError(f'{STALE_ENV}={text!r}: expected a number of seconds above 0 '
                     f'(default {STALE_S:g})')
  return value


def _utc(epoch: float) -> str:
  return time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime(epoch))


def _holder(record: dict, now: float) -> str:
  """'PID N on HOST (started at T, last heartbeat S s ago)' from a lease record."""
  try:
    return (f'PID {record["pid"]} on {record["host"]} (started at {record["started_at"]}, '
            f'last heartbeat {now - float(record["heartbeat"]):.0f} s ago)')
  except (KeyError, TypeError, ValueError):
    return 'another process (its lease names none)'


def _heartbeat_age(record: dict, now: float) -> float:
  """Seconds since the lease's last heartbeat; infinite for a record that names none."""
  try:
    return now - float(record['heartbeat'])
  except (KeyError, TypeError, ValueError):
    return float('inf')


class _Lease:
  """The lease object ``<workdir>/.lock`` of a gs:// workdir (see the module)."""

  def __init__(self, workdir: str):
    self.workdir = workdir
    self.stale_s = _stale_s()
    bucket, _, folder = workdir[len('gs://'):].partition('/')
    self._bucket = _gcs_client(workdir).bucket(bucket)
    self._name = f'{folder.strip("/")}/{LOCK_NAME}'.lstrip('/')
    now = time.time()
    self.record = {'token': uuid.uuid4().hex, 'pid': os.getpid(),
                   'host': socket.gethostname(), 'started': now, 'started_at': _utc(now)}
    self.lost: Optional[str] = None  # why, once another run holds the lease
    self._stop = threading.Event()
    self._thread = threading.Thread(target=self._renew_loop, daemon=True,
                                    name='kdjax-workdir-lease')

  def acquire(self) -> None:
    """Creates the lease, or takes over a stale one; raises if a live one is another's."""
    with _gcs_errors(self.workdir):
      for _ in range(3):  # a precondition failure means another run wrote meanwhile: re-read
        old, generation = self._read()
        if old is not None and _heartbeat_age(old, time.time()) < self.stale_s:
          raise self._in_use(old)
        if self._write(generation or 0):
          break
      else:
        raise self._in_use(self._read()[0] or {})
      mine, _ = self._read()
      if not self._ours(mine):  # only where a store ignores preconditions
        raise self._in_use(mine or {})
    if old is not None:
      warn(f'workdir {self.workdir} was held by {_holder(old, time.time())}, longer than '
           f'the {self.stale_s:g} s after which a lease is stale (a killed run leaves its '
           f'lease behind): taking it over')
    self._thread.start()

  def release(self) -> None:
    """Stops the renewals; deletes the lease if it is still ours."""
    self._stop.set()
    if self._thread.is_alive():
      self._thread.join()
    from google.api_core import exceptions  # pylint: disable=import-outside-toplevel
    try:
      record, generation = self._read()
      if self._ours(record):
        self._blob().delete(if_generation_match=generation)
    except (exceptions.NotFound, exceptions.PreconditionFailed):
      pass  # gone, or rewritten by another run since the read: not ours to delete
    except (exceptions.GoogleAPIError, OSError) as e:
      warn(f'cannot delete the lease on workdir {self.workdir} ({e}); the next run takes '
           f'it over {self.stale_s:g} s after its last heartbeat')

  def _renew_loop(self) -> None:
    """Renews the heartbeat every ``stale_s / 5`` s until released or lost."""
    from google.api_core import exceptions  # pylint: disable=import-outside-toplevel
    while not self._stop.wait(self.stale_s / _RENEWALS_PER_STALE):
      try:
        self._renew()
      except (exceptions.GoogleAPIError, OSError) as e:  # after the client's own retries
        warn(f'cannot renew the lease on workdir {self.workdir} ({e}); retrying')
      if self.lost:
        warn(self.lost)
        return

  def _renew(self) -> None:
    """One heartbeat: checks the lease is ours, rewrites it on its generation, reads it back;
    sets :attr:`lost` where another run holds it."""
    record, generation = self._read()
    if self._ours(record):
      self._write(generation)  # refused if another run wrote since the read: the read-back says
      record, _ = self._read()
    if not self._ours(record):
      to = 'nobody (it was deleted)' if record is None else _holder(record, time.time())
      self.lost = (f'lost the lease on workdir {self.workdir} to {to}; stopping so that two '
                   f'runs do not write into one workdir')

  def _ours(self, record: Optional[dict]) -> bool:
    return record is not None and record.get('token') == self.record['token']

  def _in_use(self, record: dict) -> KdjaxError:
    return KdjaxError(f'workdir {self.workdir} is in use by {_holder(record, time.time())}; '
                      f'wait for it to finish or choose another --workdir')

  def _blob(self):
    return self._bucket.blob(self._name)

  def _read(self) -> tuple[Optional[dict], Optional[int]]:
    """The lease record (``{}`` if not JSON) and its generation; ``(None, None)`` if absent."""
    from google.api_core import exceptions  # pylint: disable=import-outside-toplevel
    blob = self._blob()
    try:
      data = blob.download_as_bytes()
      if blob.generation is None:  # a server that sends no X-Goog-Generation header
        blob.reload()
    except exceptions.NotFound:
      return None, None
    try:
      record = json.loads(data)
    except ValueError:
      record = {}
    return (record if isinstance(record, dict) else {}), blob.generation

  def _write(self, generation: int) -> bool:
    """Writes our record with a fresh heartbeat if the object's generation is still
    ``generation`` (0: absent); whether it was."""
    from google.api_core import exceptions  # pylint: disable=import-outside-toplevel
    now = time.time()
    self.record.update(heartbeat=now, heartbeat_at=_utc(now))
    try:
      self._blob().upload_from_string(json.dumps(self.record), content_type='application/json',
                                      if_generation_match=generation)
    except exceptions.PreconditionFailed:
      return False
    return True


def _gcs_client(workdir: str):
  """A google-cloud-storage client: anonymous against ``$STORAGE_EMULATOR_HOST`` (the
  library's own rule), else with the application-default credentials gcsfs also uses."""
  # pylint: disable=import-outside-toplevel
  try:
    import google.auth
    from google.auth import exceptions
    from google.cloud import storage
  except ImportError:
    raise KdjaxError(f'workdir {workdir} needs google-cloud-storage (a dependency of gcsfs), '
                     f'which is not installed: pip install kdjax[gcs]') from None
  if os.environ.get('STORAGE_EMULATOR_HOST'):
    return storage.Client()
  try:
    credentials, project = google.auth.default()
  except exceptions.DefaultCredentialsError as e:
    raise KdjaxError(f'workdir {workdir}: no Google Cloud credentials ({e}); run '
                     f'`gcloud auth application-default login` or set '
                     f'GOOGLE_APPLICATION_CREDENTIALS') from None
  # A project is needed only to list or create buckets, never for the lease object.
  return storage.Client(project=project or '<none>', credentials=credentials)


@contextlib.contextmanager
def _gcs_errors(workdir: str):
  """Turns a failed request to Cloud Storage in the block (a missing bucket, no permission,
  no network after the client's retries) into one KdjaxError line."""
  from google.api_core import exceptions  # pylint: disable=import-outside-toplevel
  from google.auth import exceptions as auth  # pylint: disable=import-outside-toplevel
  try:
    yield
  except (exceptions.GoogleAPIError, auth.GoogleAuthError, OSError) as e:
    message = (getattr(e, 'message', None) or str(e)).splitlines()[0]
    raise KdjaxError(f'cannot lock workdir {workdir}: {message}; check that the bucket '
                     f'exists and that you may write into it') from None
