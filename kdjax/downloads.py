"""Files fetched once into a local cache and verified by size and SHA-256.

:func:`fetch` makes ``dest`` a verified copy of ``url``:

* ``dest`` already there and verified: returned with no network at all. The first
  verification hashes the whole file and records ``<sha256 hex> <size> <mtime in ns>`` in
  the sidecar ``dest + '.sha256'``; later runs compare the file's size and modification time
  with the sidecar instead of hashing it again (a file that changed is hashed again, and
  refused if it differs).
* otherwise the download goes to ``dest + '.part'``: resumed with an HTTP ``Range: bytes=N-``
  request when an interrupted run left ``N`` bytes there and the server answers
  ``206 Partial Content``, else restarted from zero. The ``.part`` is checked for size and
  SHA-256 and only then renamed (``os.replace``) to ``dest``, so a half-written file is never
  used. A resumed ``.part`` that does not verify is downloaded once more from zero.

``url`` may be ``http(s)://``, ``file://`` or a plain local path (an air-gapped mirror). A
progress bar (size, rate, ETA) goes to stderr. Concurrent fetches of one ``dest`` (several
processes of a multi-host run on a shared file system) take turns on the lock file
``dest + '.lock'``.

The cache may be in an object store (``KDJAX_CACHE=gs://bucket/cache``, :mod:`kdjax.paths`).
A ``dest`` there is verified as a local one (its sidecar stamps the object's size and
modification time); a missing one is fetched as above into a local staging file under the
system's temporary folder (``$TMPDIR``; resumed there after an interruption), verified, then
uploaded as one object, so the bucket never holds a half-written or unverified file. An
object store has no ``flock``: concurrent fetches into it each upload the same verified file.

Every failure is one :class:`~kdjax.errors.KdjaxError` line: a network failure (connection
refused, DNS, no answer within :data:`TIMEOUT_S`, a connection cut mid-file) names the URL and
where to put the file by hand; a wrong file (:class:`ChecksumError`) names the expected and
the actual SHA-256.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import http.client
import os
import pathlib
import re
import socket
import sys
import tempfile
import urllib.error
import urllib.parse
import urllib.request

from kdjax import interrupts, paths
from kdjax.errors import KdjaxError

CACHE_ENV = 'KDJAX_CACHE'
TIMEOUT_S = 15.0  # for connecting, and for each read of the response
_CHUNK = 1 << 20
_SHA256 = re.compile(r'[0-9a-f]{64}')


class ChecksumError(KdjaxError):
  """A file that is not the expected one: wrong SHA-256 or wrong size."""


def cache_dir(override: str | None = None) -> str:
  """The cache folder, created if missing: ``override``, else ``$KDJAX_CACHE``, else
  ``~/.cache/kdjax``. It may be read-only (a team's shared, prepared cache): what it holds
  is read; writing what it lacks fails with one line then. It may be a ``gs://`` URL
  (:mod:`kdjax.paths`), returned as it is: an object store has no folders to create."""
  folder = override or os.environ.get(CACHE_ENV) or os.path.join('~', '.cache', 'kdjax')
  if paths.is_remote(folder):
    return paths.text(folder, f'the cache {"folder" if override else CACHE_ENV}')
  folder = paths.text(folder)
  try:
    os.makedirs(folder, exist_ok=True)
  except OSError as e:
    raise KdjaxError(f'cannot create the cache folder {folder} ({e.strerror or e}); set '
                     f'{CACHE_ENV} or config.data.data_dir to a writable folder') from e
  return folder


def source_key(url: str) -> str:
  """A folder name for what comes from ``url``: its host (``local`` for a path or
  ``file://``) and 12 hex digits of the URL's SHA-256, so one source's files are never
  taken for another's."""
  full = _as_url(url)
  host = urllib.parse.urlsplit(full).hostname or 'local'
  return f'{host}_{hashlib.sha256(full.encode()).hexdigest()[:12]}'


def remove(*files: str) -> None:
  """Deletes each of ``files`` that exists (local or remote), with its :func:`file_sha256`
  sidecar."""
  for path in files:
    for name in (path, path + '.sha256'):
      paths.path(name).unlink(missing_ok=True)


@contextlib.contextmanager
def file_lock(path: str):
  """Holds an exclusive ``flock`` on the file ``path`` (created, with its folder, if missing)
  for the ``with`` block: processes that share the file system take turns. The holder's
  process id and host are written into it, and a process that has to wait says for whom.
  In an object store (no ``flock``) the block runs unlocked: what it writes there must be
  single uploads that are verified when read."""
  if paths.is_remote(path):
    yield
    return
  try:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    lock = open(path, 'a+', encoding='utf-8')  # pylint: disable=consider-using-with
  except OSError as e:
    raise KdjaxError(f'cannot write {path} ({e.strerror or e}); choose a writable folder '
                     f'({CACHE_ENV}, config.data.data_dir)') from e
  with lock:
    try:
      fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      lock.seek(0)
      holder = lock.read().strip() or 'another process'
      print(f'kdjax: waiting for {holder}, which holds {path}', file=sys.stderr, flush=True)
      fcntl.flock(lock, fcntl.LOCK_EX)  # released when the lock file closes
    lock.truncate(0)
    lock.write(f'process {os.getpid()} on {socket.gethostname()}\n')
    lock.flush()
    yield


def check_sha256(sha256: str, what: str = 'sha256') -> str:
  """``sha256`` in lower case; raises unless it is 64 hexadecimal digits."""
  digest = sha256.strip().lower()
  if not _SHA256.fullmatch(digest):
    raise KdjaxError(f'{what} must be 64 hexadecimal digits (what sha256sum prints), got '
                     f'{sha256!r}')
  return digest


def _hash_file(path: str) -> str:
  digest = hashlib.sha256()
  with paths.path(path).open('rb') as f:
    while chunk := f.read(_CHUNK):
      digest.update(chunk)
  return digest.hexdigest()


def stamp(path: str) -> tuple[int, int]:
  """The file's size and modification time (ns; an object's in seconds, as its store keeps
  it): what the sidecar's hash, or a cache made from the file, is valid for."""
  if paths.is_remote(path):
    stat = paths.path(path).stat()
    return stat.length, stat.mtime
  stat = os.stat(path)
  return stat.st_size, stat.st_mtime_ns


def _read_sidecar(path: str) -> tuple[str, tuple[int, int]] | None:
  try:
    digest, size, mtime_ns = paths.path(path + '.sha256').read_text().split()
    return digest, (int(size), int(mtime_ns))
  except (OSError, ValueError):
    return None


def _write_sidecar(path: str, digest: str) -> None:
  """Records ``digest`` next to ``path``; only a speed-up, so failures pass."""
  size, mtime_ns = stamp(path)
  with contextlib.suppress(OSError), paths.writing(path + '.sha256') as f:
    f.write(f'{digest} {size} {mtime_ns}\n'.encode())


def file_sha256(path: str) -> str:
  """The SHA-256 (hex) of the file at ``path``: from its sidecar when that was written for
  the file's present size and modification time, else hashed (and the sidecar written)."""
  recorded = _read_sidecar(path)
  if recorded is not None and recorded[1] == stamp(path):
    return recorded[0]
  digest = _hash_file(path)
  _write_sidecar(path, digest)
  return digest


def _as_url(url: str) -> str:
  return url if '://' in url else pathlib.Path(url).absolute().as_uri()


def _one_line(reason: object) -> str:
  return ' '.join(str(reason).split()) or type(reason).__name__


def _network_failure(what: str, url: str, dest: str, reason: object) -> KdjaxError:
  return KdjaxError(f'could not download {what} from {url} ({_one_line(reason)}); try again '
                    f'once the network works (a partial download is resumed), or put the file '
                    f'at {dest} by hand')


def _open(url: str, offset: int):
  request = urllib.request.Request(_as_url(url), headers={'User-Agent': 'kdjax'})
  if offset:
    request.add_header('Range', f'bytes={offset}-')
  return urllib.request.urlopen(request, timeout=TIMEOUT_S)  # pylint: disable=consider-using-with


def _resumes_at(response, offset: int) -> int | None:
  """The total size when ``response`` is the rest of the file from ``offset`` (a 206 whose
  ``Content-Range`` starts there); 0 when the total is not stated; None when it is no resume."""
  found = re.fullmatch(r'bytes (\d+)-\d+/(\d+|\*)',
                       (response.headers.get('Content-Range') or '').strip())
  if getattr(response, 'status', None) != 206 or not found or int(found.group(1)) != offset:
    return None
  return 0 if found.group(2) == '*' else int(found.group(2))


def _open_at(url: str, offset: int):
  """Opens ``url`` to continue a download that has ``offset`` bytes.

  Returns ``(response, where it continues, the file's size or 0 if unknown)``: at ``offset``
  when the server answers 206 with that range, else at zero (a server without ranges, a
  different range, or 416: the kept bytes are no prefix of this file).
  """
  if offset:
    try:
      response = _open(url, offset)
    except urllib.error.HTTPError as e:
      if e.code != 416:
        raise
    else:
      total = _resumes_at(response, offset)
      if total is not None:
        return response, offset, total
      if getattr(response, 'status', None) != 206:  # the whole file, from zero
        return response, 0, int(response.headers.get('Content-Length') or 0)
      response.close()
  response = _open(url, 0)
  return response, 0, int(response.headers.get('Content-Length') or 0)


def _download(url: str, part: str, size: int | None, what: str, dest: str) -> bool:
  """Downloads ``url`` into ``part``, resuming a partial one; returns whether it resumed."""
  from tqdm import tqdm  # pylint: disable=import-outside-toplevel
  kept = os.path.getsize(part) if os.path.exists(part) else 0
  try:
    response, offset, total = _open_at(url, kept)
    total = total or size
    with response, open(part, 'ab' if offset else 'wb') as out, tqdm(
        total=total, initial=offset, unit='B', unit_scale=True, unit_divisor=1024, desc=what,
        file=sys.stderr, miniters=1) as bar:
      done = offset
      while chunk := response.read(_CHUNK):
        out.write(chunk)
        done += len(chunk)
        bar.update(len(chunk))
  except urllib.error.HTTPError as e:
    raise _network_failure(what, url, dest, f'HTTP {e.code} {e.reason}') from e
  except (urllib.error.URLError, http.client.HTTPException, OSError) as e:
    raise _network_failure(what, url, dest, getattr(e, 'reason', None) or e) from e
  if total and done != total:
    raise _network_failure(what, url, dest,
                           f'the connection closed after {done:,} of {total:,} bytes, which '
                           f'are kept in {part}')
  return offset > 0


def _size_problem(path: str, size: int | None) -> str | None:
  actual = stamp(path)[0]
  return None if size is None or actual == size else f'has {actual:,} bytes, expected {size:,}'


def _sha256_problem(actual: str, sha256: str | None) -> str | None:
  if sha256 is None or actual == sha256:
    return None
  return f'has sha256 {actual}, expected {sha256}'


def _verified(dest: str, sha256: str | None, size: int | None, what: str, url: str) -> str:
  """``dest``, unless its size or SHA-256 is not the expected one."""
  problem = _size_problem(dest, size)
  if problem is None and sha256 is not None:
    problem = _sha256_problem(file_sha256(dest), sha256)
  if problem:
    raise ChecksumError(f'{dest} is not {what}: it {problem}; delete it to download '
                        f'{what} again from {url}')
  return dest


def fetch(url: str, dest: str, *, sha256: str | None, size: int | None = None,
          what: str = 'the file') -> str:
  """Makes ``dest`` a verified copy of ``url`` (see the module docstring) and returns it.

  ``sha256``: the expected SHA-256 (hex); None trusts the first download (the caller then
  records :func:`file_sha256` of it). ``size``: the expected size in bytes, if known.
  ``what``: names the file in the progress bar and in errors.
  """
  sha256 = None if sha256 is None else check_sha256(sha256)
  if paths.is_remote(dest):
    return _fetch_remote(url, dest, sha256, size, what)
  dest = os.path.abspath(dest)
  part = dest + '.part'  # local, as the lock: only a local dest reaches here
  if os.path.exists(dest):  # no lock, no write: a shared cache may be read-only
    return _verified(dest, sha256, size, what, url)
  with file_lock(dest + '.lock'):
    if os.path.exists(dest):  # another process has just downloaded it
      return _verified(dest, sha256, size, what, url)
    for _ in range(2):
      kept = os.path.getsize(part) if os.path.exists(part) else 0
      complete = kept > 0 and kept == size  # killed between downloading and renaming
      with interrupts.doing(f'downloading {what} from {url}', f'the bytes so far are kept in '
                            f'{part} and the next run resumes from them'):
        resumed = complete or _download(url, part, size, what, dest)
      problem = _size_problem(part, size)
      if problem is None:
        digest = _hash_file(part)
        problem = _sha256_problem(digest, sha256)
      if problem is None:
        os.replace(part, dest)
        _write_sidecar(dest, digest)
        return dest
      os.remove(part)
      if not resumed:  # a fresh download that is wrong: the URL serves another file
        break
    raise ChecksumError(f'{what} downloaded from {url} {problem}; it was deleted, not used')


def _fetch_remote(url: str, dest: str, sha256: str | None, size: int | None, what: str) -> str:
  """:func:`fetch` into an object store: a kept ``dest`` verified; a missing one fetched into
  a local staging file (verified there), uploaded as one object, then its sidecar."""
  if paths.path(dest).exists():
    return _verified(dest, sha256, size, what, url)
  key = hashlib.sha256(dest.encode()).hexdigest()[:16]
  staged = os.path.join(tempfile.gettempdir(), f'kdjax-{os.getuid()}', key,
                        dest.rsplit('/', 1)[-1])
  fetch(url, staged, sha256=sha256, size=size, what=what)
  digest = file_sha256(staged)
  try:
    paths.upload(staged, dest)
  except OSError as e:
    raise KdjaxError(f'could not upload {what} to {dest} ({e.strerror or e}); check the bucket '
                     f'and your credentials ({CACHE_ENV}); the verified download is kept in '
                     f'{staged}') from e
  _write_sidecar(dest, digest)
  remove(staged)
  return dest
