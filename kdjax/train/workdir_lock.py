"""One run per workdir: an exclusive lock on ``<workdir>/.lock`` for the run's whole life.

Two runs writing into one workdir would interleave checkpoints and metrics and each resume
the other's state. :class:`WorkdirLock` takes an exclusive ``flock`` on ``<workdir>/.lock``
and writes the holder's PID, host and start time into it; a second run on the same workdir
fails at once with one :class:`~kdjax.errors.KdjaxError` line naming them. The operating
system drops the lock when its process ends, however it ends (SIGKILL, a crash, a lost
node), so a lock file left behind by a dead run never blocks the next one. The file itself
stays (removing it could let two runs lock two different files); it is emptied on release.

With several JAX processes only process 0 writes into the workdir, so only process 0 locks
(``enabled=jax.process_index() == 0``). ``flock`` works across hosts on filesystems that
support it (local disks, NFSv4, most cluster filesystems); where the filesystem refuses it,
the run goes on unlocked with one warning line.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import time
from typing import Optional

from kdjax.console import warn
from kdjax.errors import KdjaxError

LOCK_NAME = '.lock'
# How long a second run waits for the holder's PID to appear in a lock file it just took.
_OWNER_WAIT_S = 0.5


class WorkdirLock:
  """``with WorkdirLock(workdir, enabled=...):`` holds ``<workdir>/.lock`` for the block.

  Creates ``workdir`` if needed. Raises :class:`~kdjax.errors.KdjaxError` at once if another
  process holds the lock; releases it on any exit from the block. ``enabled=False`` makes
  it do nothing (the processes of a multi-process run other than 0).
  """

  def __init__(self, workdir: str, *, enabled: bool = True):
    self.workdir = workdir
    self.path = os.path.join(workdir, LOCK_NAME)
    self.enabled = enabled
    self._fd: Optional[int] = None

  def __enter__(self) -> 'WorkdirLock':
    if self.enabled:
      self.acquire()
    return self

  def __exit__(self, *exc) -> None:
    self.release()

  def acquire(self) -> None:
    """Takes the lock and records this process in the lock file (see the class)."""
    try:
      os.makedirs(self.workdir, exist_ok=True)
      fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
      raise KdjaxError(f'cannot create the lock file {self.path!r} ({e.strerror}); '
                       f'choose another --workdir') from None
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
      if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
        os.close(fd)  # the filesystem cannot lock: go on without
        warn(f'cannot lock workdir {self.workdir} ({e.strerror}); nothing stops a second run '
             f'from writing into it')
        return
      owner = _read_owner(fd)
      os.close(fd)
      raise KdjaxError(f'workdir {self.workdir} is in use by {owner}; wait for it to finish '
                       f'or choose another --workdir') from None
    owner = {'pid': os.getpid(), 'host': socket.gethostname(),
             'started': time.strftime('%Y-%m-%d %H:%M:%S %Z')}
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(owner) + '\n').encode(), 0)
    self._fd = fd

  def release(self) -> None:
    """Empties the lock file and drops the lock (nothing if not held)."""
    fd, self._fd = self._fd, None
    if fd is None:
      return
    try:
      os.ftruncate(fd, 0)
    finally:
      os.close(fd)  # closing the last descriptor drops the flock


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
