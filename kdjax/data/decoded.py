"""A source of encoded images decoded once into ``uint8`` arrays, cached: data held on the devices.

:func:`decode` turns a source of :mod:`kdjax.data.image_sources` (your folder of images, a
TFDS dataset) into ``(N, S, S, 3)`` ``uint8`` images and ``int32`` labels: each image decoded
as the host pipeline decodes it (PIL, RGB), its shorter side resized to ``S`` (bilinear) and
the centre ``S x S`` kept (:func:`kdjax.data.host_pipeline.eval_image`), in a few threads with
a progress bar. The arrays are cached in ``<cache>/decoded/<key>.npz`` (``<cache>`` as
:func:`kdjax.downloads.cache_dir`), keyed by the source's ``fingerprint()`` (every file's
name, size and modification time) and ``S``; written whole or not at all
(:func:`kdjax.paths.writing`), so a killed run leaves no half-made cache, and a changed folder
is decoded anew. A ``gs://`` cache (``KDJAX_CACHE``) holds them as objects.

An image PIL cannot read (a corrupt or truncated file) stops the decoding with one line
naming it, unless ``skip_unreadable``: then such images are left out, and counted.
:func:`sample_stats` computes a source's per-channel mean and std from a sample of it (the
host path's normalisation), cached likewise.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import sys
import zipfile

import jax
import numpy as np
import PIL

from kdjax import downloads, jsonio, paths
from kdjax.data import cifar, host_pipeline
from kdjax.errors import KdjaxError

FORMAT = 1  # bump when the decoding changes: older caches are then decoded anew
_THREADS = 8  # PIL decodes outside the GIL
_PROGRESS_FROM = 1000  # images: smaller sources decode without a progress bar


def _unreadable(why: str) -> KdjaxError:
  return KdjaxError(f'cannot read the image {why}; remove or replace it, or set '
                    f'--config.data.skip_unreadable=true to leave such images out')


def _decode_one(source, index: int, size: int):
  """``(pixels, label, None)`` of example ``index``, or ``(None, -1, why)`` if unreadable."""
  try:
    data, label = source[index]
    return host_pipeline.eval_image(host_pipeline.decode(data), size, size), label, None
  except host_pipeline.UNREADABLE as e:
    reason = ('not an image Pillow reads' if isinstance(e, PIL.UnidentifiedImageError)
              else (str(e).strip().splitlines() or [type(e).__name__])[0][:120])
    return None, -1, f'{source.describe(index)} ({reason})'


def _decode_all(source, indices, size: int, skip_unreadable: bool, what: str):
  """Decodes the examples ``indices`` of ``source`` (see the module docstring)."""
  from tqdm import tqdm  # pylint: disable=import-outside-toplevel
  n = len(indices)
  images, labels, unreadable = np.empty((n, size, size, 3), np.uint8), [], []
  pool = concurrent.futures.ThreadPoolExecutor(_THREADS)
  bar = tqdm(total=n, unit='img', desc=f'decoding {what}', file=sys.stderr, leave=False,
             disable=n < _PROGRESS_FROM or jax.process_index() != 0)
  try:
    for pixels, label, why in pool.map(lambda i: _decode_one(source, i, size), indices):
      bar.update()
      if why is not None:
        if not skip_unreadable:
          raise _unreadable(why)
        unreadable.append(why)
        continue
      images[len(labels)] = pixels
      labels.append(label)
  finally:
    bar.close()
    pool.shutdown(cancel_futures=True)
  return images[:len(labels)], np.asarray(labels, np.int32), unreadable


def _cache_file(source, size: int, suffix: str, **extra) -> str:
  """``<cache>/decoded/<key><suffix>``, the key a hash of the source's fingerprint, ``size``
  and ``extra``; the folder is created."""
  fields = {'format': FORMAT, 'size': size, 'fingerprint': source.fingerprint(), **extra}
  key = hashlib.sha256(json.dumps(fields).encode()).hexdigest()[:32]
  folder = paths.path(downloads.cache_dir()) / 'decoded'
  folder.mkdir(parents=True, exist_ok=True)
  return str(folder / (key + suffix))


def decode(source, size: int, *, skip_unreadable: bool, what: str):
  """``(images, labels, unreadable)``: ``source`` decoded at ``size`` x ``size`` (cached), and
  the images left out as unreadable (``'path (why)'``); see the module docstring. ``what``
  names the source in the progress bar."""
  npz = _cache_file(source, size, '.npz')
  try:
    with paths.path(npz).open('rb') as f, np.load(f, allow_pickle=False) as cached:
      images, labels, unreadable = cached['images'], cached['labels'], list(cached['unreadable'])
  except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):  # none or damaged
    images, labels, unreadable = _decode_all(source, range(len(source)), size, skip_unreadable,
                                             what)
    cifar.write_npz(npz, {'images': images, 'labels': labels,
                          'unreadable': np.asarray(unreadable, dtype=str)})
  if unreadable and not skip_unreadable:  # cached by a run that skipped them
    raise _unreadable(unreadable[0])
  if not len(labels):
    raise KdjaxError(f'no image of {what} could be read (e.g. {unreadable[0]})')
  return images, labels, unreadable


def sample_stats(source, size: int, count: int, what: str) -> tuple[tuple, tuple]:
  """:func:`channel_stats` of at most ``count`` images of ``source``, evenly spaced, decoded
  at ``size`` (unreadable ones left out); cached as JSON beside the decoded arrays."""
  indices = np.unique(np.linspace(0, len(source) - 1, min(count, len(source))).astype(int))
  path = _cache_file(source, size, '.stats.json', sample=len(indices))
  cached = jsonio.read_json(path)
  if cached is None:
    images, _, _ = _decode_all(source, indices.tolist(), size, True, f'{what} (mean and std)')
    if not len(images):
      raise KdjaxError(f'no image of {what} could be read to compute its mean and std')
    mean, std = channel_stats(images)
    cached = {'mean': mean, 'std': std}
    jsonio.write_json(path, cached)
  return tuple(cached['mean']), tuple(cached['std'])


def channel_stats(images: np.ndarray) -> tuple[tuple, tuple]:
  """Per-channel mean and std of ``uint8`` NHWC ``images`` scaled to [0, 1] (float64 sums over
  chunks of images, so no float copy of the whole array is made)."""
  total, squares = np.zeros(3), np.zeros(3)
  for start in range(0, len(images), 1024):
    x = images[start:start + 1024].reshape(-1, 3).astype(np.float64) / 255.0
    total += x.sum(axis=0)
    squares += np.square(x).sum(axis=0)
  count = images.size // 3
  mean = total / count
  std = np.sqrt(np.maximum(squares / count - np.square(mean), 0.0))
  return tuple(float(m) for m in mean), tuple(float(s) for s in std)
