"""CIFAR-10 and CIFAR-100 from the official binary archives (no TensorFlow, no pickles).

The "binary version" archives of https://www.cs.toronto.edu/~kriz/cifar.html:

* ``cifar-10-binary.tar.gz``: ``cifar-10-batches-bin/data_batch_1.bin`` .. ``data_batch_5.bin``
  (the 50,000 training images, in that order) and ``test_batch.bin`` (10,000). Each record
  is 1 label byte (0..9) and 3,072 image bytes.
* ``cifar-100-binary.tar.gz``: ``cifar-100-binary/train.bin`` (50,000) and ``test.bin``
  (10,000). Each record is 1 coarse-label byte (the 20 superclasses), 1 fine-label byte
  (0..99: the label kdjax uses, as mdistiller and RepDistiller do) and 3,072 image bytes.

The image bytes are channel-major: 1,024 red, 1,024 green, then 1,024 blue values, each a
32x32 image in row-major order (top row first, left to right). They become NHWC ``uint8``
images, ``images[n, y, x, c] = record[n][labels + c * 1024 + y * 32 + x]``, and ``int32``
labels. The official URLs, sizes and SHA-256 are those tensorflow_datasets records in
``url_checksums/cifar10.txt`` and ``cifar100.txt``.

:func:`load` downloads the archive once (:func:`kdjax.downloads.fetch`) into
``<cache>/cifar/`` and parses it with ``tarfile`` and numpy, reading the members from the
compressed stream (nothing is extracted to disk). The parsed splits are cached next to it
as ``<name>.npz`` (uncompressed, written whole or not at all (:func:`kdjax.paths.writing`),
read with ``allow_pickle=False``), which records the archive's SHA-256: another archive is
parsed anew. The cache may be a ``gs://`` URL (``KDJAX_CACHE``, ``config.data.data_dir``):
the archive and the ``.npz`` are then read and written there.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import tarfile
import zipfile

import numpy as np

from kdjax import downloads, interrupts, paths
from kdjax.errors import KdjaxError

IMAGE_BYTES = 3 * 32 * 32


@dataclasses.dataclass(frozen=True)
class Archive:
  """An official CIFAR binary archive: where it is, and how its records are laid out."""
  url: str
  size: int
  sha256: str
  splits: dict[str, tuple[str, ...]]  # 'train' / 'test' -> members, concatenated in order
  label_bytes: int  # label bytes in front of each record's image
  label_index: int  # which of them is the label
  num_classes: int

  @property
  def filename(self) -> str:
    return self.url.rsplit('/', 1)[1]


ARCHIVES = {
    'cifar10': Archive(
        url='https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz', size=170052171,
        sha256='c4a38c50a1bc5f3a1c5537f2155ab9d68f9f25eb1ed8d9ddda3db29a59bca1dd',
        splits={'train': tuple(f'cifar-10-batches-bin/data_batch_{i}.bin' for i in range(1, 6)),
                'test': ('cifar-10-batches-bin/test_batch.bin',)},
        label_bytes=1, label_index=0, num_classes=10),
    'cifar100': Archive(
        url='https://www.cs.toronto.edu/~kriz/cifar-100-binary.tar.gz', size=168513733,
        sha256='58a81ae192c23a4be8b1804d68e518ed807d710a4eb253b1f2a199162a40d8ec',
        splits={'train': ('cifar-100-binary/train.bin',),
                'test': ('cifar-100-binary/test.bin',)},
        label_bytes=2, label_index=1, num_classes=100),
}


def source(name: str, url: str | None = None,
           sha256: str | None = None) -> tuple[str, str, int | None]:
  """``(url, sha256, size or None)`` of the archive of ``name`` to download.

  None for ``url`` / ``sha256``: the official ones. Another URL (a mirror) must come with the
  SHA-256 of what it serves: data is never trusted on first use.
  """
  official = ARCHIVES[name]
  if sha256 is not None:
    sha256 = downloads.check_sha256(sha256, 'config.data.sha256')
  if url is None or url == official.url:
    if sha256 not in (None, official.sha256):
      raise KdjaxError(f'config.data.sha256 {sha256} is not the sha256 of the official '
                       f'{official.filename} ({official.sha256}); unset it, or set '
                       f'config.data.url to the file it belongs to')
    return official.url, official.sha256, official.size
  if sha256 is None:
    raise KdjaxError(f'config.data.url {url} is not the official {name} archive, so '
                     f'config.data.sha256 must name the file it serves (the official '
                     f'{official.filename} has {official.sha256})')
  return url, sha256, None


def parse_records(raw: bytes, archive: Archive, member: str) -> tuple[np.ndarray, np.ndarray]:
  """The ``(N, 32, 32, 3)`` uint8 images and ``(N,)`` int32 labels of one ``.bin`` member."""
  record = archive.label_bytes + IMAGE_BYTES
  if len(raw) % record:
    raise KdjaxError(f'{member} has {len(raw):,} bytes, not a whole number of '
                     f'{record}-byte records; the archive is damaged')
  records = np.frombuffer(raw, np.uint8).reshape(-1, record)
  labels = records[:, archive.label_index].astype(np.int32)
  if labels.size and labels.max() >= archive.num_classes:
    raise KdjaxError(f'{member} has label {labels.max()}, expected 0..'
                     f'{archive.num_classes - 1}; the archive is damaged')
  images = records[:, archive.label_bytes:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
  return np.ascontiguousarray(images), labels


def read_archive(path: str, name: str) -> dict[str, np.ndarray]:
  """``{'<split>_images': ..., '<split>_labels': ...}`` of both splits of the archive."""
  archive = ARCHIVES[name]
  wanted = {m for members in archive.splits.values() for m in members}
  raw = {}
  try:
    with paths.path(path).open('rb') as f, tarfile.open(fileobj=f, mode='r|gz') as tar:
      for member in tar:
        member_name = member.name.removeprefix('./')
        if member_name in wanted and member.isfile():
          raw[member_name] = tar.extractfile(member).read()
  except (OSError, EOFError, tarfile.TarError) as e:
    raise KdjaxError(f'{path} is not a readable {archive.filename} ({e}); delete it to '
                     f'download it again') from e
  arrays = {}
  for split, members in archive.splits.items():
    missing = [m for m in members if m not in raw]
    if missing:
      raise KdjaxError(f'{path} has no member {missing[0]}; expected the layout of the '
                       f'official {archive.filename}')
    parts = [parse_records(raw.pop(m), archive, m) for m in members]
    arrays[f'{split}_images'] = np.concatenate([images for images, _ in parts])
    arrays[f'{split}_labels'] = np.concatenate([labels for _, labels in parts])
  return arrays


def _cached_split(npz: str, sha256: str, split: str) -> tuple[np.ndarray, np.ndarray] | None:
  """The split from the parsed cache ``npz`` if it was made from the archive ``sha256``."""
  try:
    with paths.path(npz).open('rb') as f, np.load(f, allow_pickle=False) as cached:
      if str(cached['archive_sha256']) != sha256:
        return None
      return cached[f'{split}_images'], cached[f'{split}_labels']
  except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
    return None  # missing or damaged: the archive is parsed again


def write_npz(npz: str, arrays: dict[str, np.ndarray]) -> None:
  """``np.savez`` of ``arrays`` into ``npz`` (local or remote), whole or not at all
  (:func:`kdjax.paths.writing`): a killed writer leaves no half-written ``npz``."""
  with paths.writing(npz) as f:
    np.savez(f, **arrays)


def load(name: str, split: str, *, cache: str | None = None, download: bool = True,
         url: str | None = None, sha256: str | None = None) -> tuple[np.ndarray, np.ndarray]:
  """The images and labels of ``split`` (``'train'`` / ``'test'``) of ``cifar10`` / ``cifar100``.

  ``cache``: the cache folder (:func:`kdjax.downloads.cache_dir`); the archive is
  ``<cache>/cifar/<official file name>``, where it can also be put by hand. ``download``:
  whether a missing archive may be downloaded. ``url`` / ``sha256``: see :func:`source`.
  """
  if name not in ARCHIVES or split not in ('train', 'test'):
    raise KdjaxError(f'no split {split!r} of {name!r}; expected train or test of '
                     f'{" or ".join(ARCHIVES)}')
  url, sha256, size = source(name, url, sha256)
  archive = ARCHIVES[name]
  folder = paths.path(downloads.cache_dir(cache)) / 'cifar'
  path, npz = os.fspath(folder / archive.filename), os.fspath(folder / f'{name}.npz')
  cached = _cached_split(npz, sha256, split)
  if cached is not None:
    return cached
  if not download and not paths.path(path).exists():
    raise KdjaxError(f'{name} is not downloaded: put {archive.filename} (from {url}) at '
                     f'{path}, or allow the download (config.data.download=True)')
  downloads.fetch(url, path, sha256=sha256, size=size, what=archive.filename)
  print(f'kdjax: reading {path} into {npz} (once)', file=sys.stderr, flush=True)
  with interrupts.doing(f'reading {path} into {npz}', 'the archive is kept and read again '
                        'by the next run'):
    arrays = read_archive(path, name)
    try:
      write_npz(npz, {'archive_sha256': np.asarray(sha256), **arrays})
    except OSError as e:
      raise KdjaxError(f'could not write {npz} ({e.strerror or e}); choose a writable cache '
                       f'(KDJAX_CACHE or config.data.data_dir)') from e
  return arrays[f'{split}_images'], arrays[f'{split}_labels']
