"""Workdirs: the folder of one run (config.json, checkpoints, metrics.jsonl, results.json)."""

from __future__ import annotations

import os
import tempfile
import uuid

from kdjax import paths
from kdjax.errors import KdjaxError


def check_workdir(workdir: str) -> None:
  """Raises :class:`KdjaxError` unless ``workdir`` exists as a folder or can be created:
  its nearest existing parent must be a folder in which a folder can really be made (probed
  and removed; permission bits say nothing of /proc or a read-only mount, or to root). In an
  object store, an empty object is written under ``workdir`` and removed: the bucket exists
  and the credentials may write there."""
  if paths.is_remote(workdir):
    _check_remote_workdir(workdir)
    return
  parent = os.path.abspath(workdir)
  while not os.path.exists(parent):
    parent = os.path.dirname(parent)
  if parent == os.path.abspath(workdir) and os.path.isdir(parent):
    return
  try:
    if not os.path.isdir(parent):
      raise NotADirectoryError(0, 'not a folder')
    os.rmdir(tempfile.mkdtemp(prefix='.kdjax_probe_', dir=parent))
  except OSError as e:
    raise KdjaxError(f'cannot create the workdir {workdir!r} ({parent!r}: '
                     f'{e.strerror or e}); choose another --workdir') from None


def _check_remote_workdir(workdir: str) -> None:
  """Writes and removes an empty object under ``workdir``; a refusal is one line
  (:func:`kdjax.paths.storage_error`: no bucket, no credentials, no permission)."""
  probe = paths.path(workdir, '--workdir') / f'.kdjax_probe_{uuid.uuid4().hex}'
  try:
    probe.write_text('')
    probe.unlink()
  except Exception as e:  # pylint: disable=broad-except
    known = paths.storage_error(e, f'the workdir {workdir}')
    if known is not None:
      raise known from None
    if not isinstance(e, OSError):
      raise
    first = (str(e.strerror or e).splitlines() or [''])[0]
    raise KdjaxError(f'cannot write into the workdir {workdir} ({type(e).__name__}: {first}); '
                     f'check the bucket and your credentials, or choose another --workdir'
                     ) from None
