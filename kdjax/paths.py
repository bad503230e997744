"""Every path kdjax reads or writes, local or in an object store, as one type.

A path is what a user typed: a local path (``~`` expanded, made absolute) or a URL of an
object store that :mod:`etils.epath` serves, ``gs://bucket/folder`` (through gcsfs) or
``s3://bucket/folder`` (through s3fs). :func:`path` turns either into an
:class:`etils.epath.Path`, whose methods (``open``, ``exists``, ``iterdir``, ``mkdir``,
``rename``, ``rmtree``, ...) do the same on both, so no other module calls ``open`` or
``os.path`` on a path a user gave. Orbax writes checkpoints to the same URLs through
TensorStore's own GCS and S3 drivers.

Object stores have no folders, no ``flock`` and no atomic rename of a folder; the callers
that care (the workdir lock, :mod:`kdjax.workdirs`) ask :func:`is_remote`. gcsfs and
TensorStore both retry transient failures (HTTP 408/429/5xx, a dropped connection) with
exponential backoff before an error reaches kdjax.
"""

from __future__ import annotations

import importlib.util
import os
import re
from typing import Union

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


def copy_tree(source: PathLike, target: PathLike) -> None:
  """Copies every file under the folder ``source`` to the same relative path under
  ``target`` (either may be local or in an object store)."""
  source, target = path(source), path(target)
  for folder, _, files in source.walk():
    for name in files:
      destination = target / (folder / name).relative_to(source)
      destination.parent.mkdir(parents=True, exist_ok=True)
      destination.write_bytes((folder / name).read_bytes())
