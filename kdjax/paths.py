"""Every path kdjax reads or writes, local or in an object store, as one type.

A path is what a user typed: a local path (``~`` expanded, made absolute) or a URL of an
object store that :mod:`etils.epath` serves, ``gs://bucket/folder`` (through gcsfs) or
``s3://bucket/folder`` (through s3fs). :func:`path` turns either into an
:class:`etils.epath.Path`, whose methods (``open``, ``exists``, ``iterdir``, ``mkdir``,
``rename``, ``rmtree``, ...) do the same on both, so no other module calls ``open`` or
``os.path`` on a path a user gave. Orbax writes checkpoints to the same URLs through
TensorStore's own GCS and S3 drivers.

Object stores have no folders, no ``flock`` and no atomic rename of a folder; the callers
that care (the workdir lock, :mod:`kdjax.workdirs`) ask :func:`is_remote`. :func:`writing`
writes a file whole or not at all on both (a rename locally, one upload remotely);
:func:`glob` matches files under a folder on both. gcsfs and TensorStore both retry transient
failures (HTTP 408/429/5xx, a dropped connection) with exponential backoff before an error
reaches kdjax.
"""

from __future__ import annotations

import contextlib
import glob as glob_lib
import importlib.util
import logging
import os
import re
import sys
import tempfile
import urllib.parse
from typing import BinaryIO, Iterator, Optional, Union

from etils import epath

from kdjax.errors import KdjaxError

PathLike = Union[str, os.PathLike]

# The URL schemes kdjax reads and writes, and the package that serves each to etils.epath.
CLIENTS = {'gs': ('gcsfs', 'kdjax[gcs]'), 's3': ('s3fs', 's3fs')}
_URL = re.compile(r'([A-Za-z][A-Za-z0-9+.-]*)://')


def scheme(value: PathLike) -> str:
  """``'gs'`` for ``gs://...``, ``''`` for a local path."""
  match = _URL.match(os.fspath(value))
  return match.group(1).lower() if match else ''


def is_remote(value: PathLike) -> bool:
  """Whether ``value`` names an object in a store (``gs://``, ``s3://``), not a local file."""
  return bool(scheme(value))


def path(value: PathLike, what: str = 'path') -> epath.Path:
  """``value`` as an :class:`etils.epath.Path`: a URL as it is, a local path with ``~``
  expanded and made absolute. Raises :class:`KdjaxError` (naming ``what``, e.g.
  ``--workdir``) for a scheme kdjax cannot reach, or whose client is not installed."""
  text = os.fspath(value)
  kind = scheme(text)
  if not kind:
    return epath.Path(os.path.abspath(os.path.expanduser(text)))
  if kind not in CLIENTS:
    raise KdjaxError(f'{what} {text}: kdjax reads and writes local paths and '
                     f'{", ".join(s + "://" for s in CLIENTS)} URLs, not {kind}://')
  module, package = CLIENTS[kind]
  if importlib.util.find_spec(module) is None:
    raise KdjaxError(f'{what} {text} needs the package {module}, which is not installed: '
                     f'pip install {package}')
  return epath.Path(text)


def text(value: PathLike, what: str = 'path') -> str:
  """:func:`path` as a string, for configs and messages (a URL stays a URL)."""
  return os.fspath(path(value, what))


def files_under(folder: PathLike) -> list[str]:
  """The files under ``folder``, as paths relative to it, folder by folder in sorted order,
  each folder's files sorted (torchvision's ImageFolder order). Locally ``os.walk``, links
  followed; in an object store one recursive listing (fsspec's ``find``; ``epath.Path.walk``
  would drop the ``gs://`` of the folders it yields)."""
  if is_remote(folder):
    import fsspec  # pylint: disable=import-outside-toplevel
    filesystem, root = fsspec.core.url_to_fs(text(folder))
    found = [os.path.relpath(f, root) for f in filesystem.find(root)]
  else:
    root = text(folder)
    found = [os.path.relpath(os.path.join(d, f), root)
             for d, _, files in os.walk(root, followlinks=True) for f in files]
  return sorted(found, key=lambda f: (os.path.dirname(f), os.path.basename(f)))


def copy_tree(source: PathLike, target: PathLike) -> None:
  """Copies every file under the folder ``source`` to the same relative path under
  ``target`` (either may be local or in an object store)."""
  source, target = path(source), path(target)
  for name in files_under(source):
    destination = target / name
    destination.parent.mkdir(parents=True, exist_ok=True)
    destination.write_bytes((source / name).read_bytes())


def glob(folder: PathLike, pattern: str) -> list[str]:
  """The paths under ``folder`` that match ``pattern`` (``*``, ``?``, ``[...]``), sorted; the
  folder's own name is taken literally (a ``[`` in a local folder's name is no pattern)."""
  if is_remote(folder):
    return sorted(os.fspath(p) for p in path(folder).glob(pattern))
  return sorted(glob_lib.glob(os.path.join(glob_lib.escape(text(folder)), pattern)))


@contextlib.contextmanager
def writing(value: PathLike, what: str = 'path') -> Iterator[BinaryIO]:
  """A binary file whose content becomes the file ``value`` only when the ``with`` block ends
  without an error, whole: locally a temporary file beside it (flushed to the disk) renamed
  over it; in an object store a local temporary file uploaded as one object (readers see the
  old object or the new one). A killed or failed writer leaves ``value`` as it was."""
  target = path(value, what)
  if is_remote(value):
    with tempfile.TemporaryDirectory(prefix='kdjax_upload_') as folder:
      staged = os.path.join(folder, target.name)
      with open(staged, 'wb') as f:
        yield f
      upload(staged, target)
    return
  tmp = target.with_name(f'{target.name}.{os.getpid()}.tmp')  # the user's umask, as any file
  try:
    with tmp.open('wb') as f:
      yield f
      f.flush()
      os.fsync(f.fileno())
  except BaseException:
    tmp.unlink(missing_ok=True)
    raise
  tmp.replace(target)


def upload(local: str, value: PathLike) -> None:
  """Uploads the local file ``local`` as the object ``value``, whole or not at all: the
  store's client sends it in one request, or in a resumable upload that only the last chunk
  commits and that is cancelled on an error (fsspec's ``put_file``; a file object's ``close``
  would commit what it had been given)."""
  import fsspec  # pylint: disable=import-outside-toplevel
  filesystem, remote = fsspec.core.url_to_fs(os.fspath(value))
  filesystem.put_file(local, remote)


# ------------------------------------------------------------------ storage errors, one line

# How the clients report a refused request (read in gcsfs 2026.10's retry.validate_response
# and seen from TensorStore's GCS driver): gcsfs raises FileNotFoundError(request URL) for
# HTTP 404, OSError('Forbidden: URL\nmessage') for 403, ValueError('Bad Request: URL\nmessage')
# for a 400 that says 'invalid', and HttpError (``.code``, ``.message``) for the rest, 401
# included; TensorStore raises ValueError('STATUS: message [http_response_code=N] ...').
_TENSORSTORE = re.compile(r'^[A-Z_]+: (.*?)(?: \[|$)', re.DOTALL)
_TENSORSTORE_CODE = re.compile(r"http_response_code='(\d+)'")
# gcsfs' request URL for a whole bucket (an upload, a listing), and for an object.
_BUCKET_REQUEST = re.compile(r'(?:^|/)b/([^/?]+)/o(?:\?|$)')
_OBJECT_URL = re.compile(r'(?:^|/)b/([^/?]+)/o(?:/([^?\s]+)|\?(?:.*&)?name=([^&\s]+))?')
_CREDENTIALS_HELP = ('run `gcloud auth application-default login`, or set '
                     'GOOGLE_APPLICATION_CREDENTIALS to the key file of a service account')
_RETRIED = 'after the client retried it with backoff'


class _ClientNoise(logging.Filter):
  """Drops what the storage clients log about failures kdjax reports itself, in one line
  (:func:`storage_error`): gcsfs' tracebacks of a failed request ('non-retriable
  exception', 'out of retries'), and google-auth's warnings while gcsfs tries one way of
  finding credentials after another (it goes on without when none works)."""

  def filter(self, record: logging.LogRecord) -> bool:
    if record.name == 'gcsfs':
      return not (record.levelno >= logging.ERROR and record.exc_info)
    return record.levelno >= logging.ERROR


for _logger in ('gcsfs', 'google.auth._default'):
  logging.getLogger(_logger).addFilter(_ClientNoise())


def _loaded(module: str, name: str):
  """The class ``module.name`` if ``module`` is imported, else ``()`` (which nothing is an
  instance of): an error of a client that was never imported cannot be one of its classes,
  and kdjax need not import gcsfs or google-auth to say so."""
  return getattr(sys.modules.get(module), name, ())


def _http_status(error: BaseException) -> tuple:
  """``(HTTP status or None, the server's message)`` of a refused request, as gcsfs and
  TensorStore report it (see above)."""
  text = str(error)
  if isinstance(error, _loaded('gcsfs.retry', 'HttpError')):
    return error.code, str(error.message).removesuffix(f', {error.code}')
  for status, kind, start in ((403, OSError, 'Forbidden: '), (400, ValueError, 'Bad Request: ')):
    if type(error) is kind and text.startswith(start):  # pylint: disable=unidiomatic-typecheck
      return status, ' '.join(text.split('\n')[1:]).strip()
  code = _TENSORSTORE_CODE.search(text)
  if isinstance(error, ValueError) and code:
    match = _TENSORSTORE.match(text)
    return int(code.group(1)), match.group(1) if match else text
  return None, text


def _storage_url(text: str) -> str:
  """The ``gs://bucket/object`` a gcsfs request URL in ``text`` names, '' if none."""
  match = _OBJECT_URL.search(text)
  if not match:
    return ''
  bucket, key = match.group(1), urllib.parse.unquote(match.group(2) or match.group(3) or '')
  return f'gs://{bucket}/{key}'.rstrip('/')


def _credentials_error(error: BaseException, status: Optional[int]) -> bool:
  """Whether ``error`` (or its cause) says the credentials are missing, wrong or expired:
  HTTP 401, google-auth finding none (DefaultCredentialsError) or failing to refresh them
  (RefreshError; gcsfs turns that into HttpError 401 'Invalid Credentials')."""
  auth = (_loaded('google.auth.exceptions', 'DefaultCredentialsError'),
          _loaded('google.auth.exceptions', 'RefreshError'))
  return (status == 401 or str(error).startswith('UNAUTHENTICATED:')
          or any(isinstance(e, a) for e in (error, error.__cause__) for a in auth))


def _unreachable(error: BaseException) -> bool:
  """Whether ``error`` is a connection that failed (refused, dropped, timed out) after the
  client's retries: aiohttp's (gcsfs), requests' (google-auth) or TensorStore's UNAVAILABLE."""
  return (isinstance(error, (_loaded('aiohttp.client_exceptions', 'ClientError'),
                             _loaded('requests.exceptions', 'ConnectionError')))
          or (isinstance(error, ValueError) and str(error).startswith('UNAVAILABLE:')))


def storage_error(error: BaseException, what: str = '') -> Optional[KdjaxError]:
  """One :class:`KdjaxError` line for an object store's refusal, or None for any other
  error: a bucket that does not exist, missing or bad credentials (and how to provide
  them), no permission, or a request that kept failing (HTTP 408/429/5xx, a dropped
  connection) after the client's own retries. ``what`` names what was being read or
  written (``the workdir gs://b/run``); without it, the object of the failed request."""
  status, message = _http_status(error)
  subject = what or _storage_url(str(error)) or 'cloud storage'
  detail = f'HTTP {status}: {message}' if status else f'{type(error).__name__}: {message}'
  detail = detail.strip().splitlines()[0] if detail.strip() else type(error).__name__
  local = isinstance(error, OSError) and error.filename and not is_remote(error.filename)
  bucket = None if local else _BUCKET_REQUEST.search(str(error))
  if isinstance(error, FileNotFoundError) and bucket:  # an upload or a listing found no bucket
    return KdjaxError(f'{subject}: bucket gs://{bucket.group(1)} does not exist; create it '
                      f'(gcloud storage buckets create gs://{bucket.group(1)}) or name another')
  if _credentials_error(error, status):
    return KdjaxError(f'{subject}: no valid Google Cloud credentials ({detail}); '
                      f'{_CREDENTIALS_HELP}')
  if status == 403 or (isinstance(error, PermissionError) and not local):  # s3fs: 403
    return KdjaxError(f'{subject}: permission denied ({detail}); grant the account access '
                      f'to the bucket (e.g. roles/storage.objectAdmin) or choose another path')
  if status is not None:
    transient = status in (408, 429) or status >= 500
    return KdjaxError(f'{subject}: the storage service answered {detail}' + (
        f' {_RETRIED}; try again later (a training run resumes from its last checkpoint)'
        if transient else ''))
  if _unreachable(error):
    return KdjaxError(f'{subject}: the storage service could not be reached ({detail}) '
                      f'{_RETRIED}; check the network and try again')
  return None


def io_error(error: BaseException) -> Optional[KdjaxError]:
  """:func:`storage_error`, or for another :class:`OSError` (a disk or a folder failing)
  its reason and file in one line; None for any other error (a bug: its traceback)."""
  known = storage_error(error)
  if known is not None or not isinstance(error, OSError):
    return known
  where = f' ({error.filename})' if error.filename else ''
  return KdjaxError(f'{(str(error.strerror or error).splitlines() or [""])[0]}{where}')
