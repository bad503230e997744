"""The teacher-logit cache: a frozen teacher's logits on every augmented training image,
computed once.

CIFAR's augmentation is discrete (:mod:`kdjax.data.augment`): a zero pad of ``p`` pixels, one
of ``(2p + 1)^2`` crop offsets, a flip or not: ``V = num_variants(p, flip)`` variants of each
image (162 for ``p = 4``). A teacher in inference mode is a pure function of its input, so its
logits on every variant of every training image, an ``(N, V, classes)`` array, can be computed
once and gathered: with ``config.teacher.cache`` the train step takes row ``[i, v]`` for each
image ``i`` of its batch and the variant ``v`` it drew (:func:`kdjax.data.variant_index` of the
step's own augmentation key, :func:`kdjax.train.step.make_train_step`) instead of running the
teacher, about two thirds of a KD step's FLOPs on res32x4 -> res8x4. It serves the methods
whose losses read only the teacher's logits (``MethodInfo.teacher_logits_only``: KD, DKD,
SLKD, SKD). The run stays the same run: the same images in the same order, the same crops and
flips; the cached logits differ from the step's own teacher forward by float rounding only
(the convolutions see other batches). ``config.teacher.cache_dtype = 'bfloat16'`` halves the
cache but rounds the logits to bfloat16 (8 significant bits): close, not exact.

Where: ``<cache>/teacher_logits/<key>/``, ``<cache>`` being :func:`kdjax.downloads.cache_dir`
(``$KDJAX_CACHE``, which may be a ``gs://`` URL, else ``~/.cache/kdjax``) and ``key`` a SHA-256
of everything the logits
depend on (:func:`cache_fields`): the teacher's architecture and the bytes of its variables,
the dataset's name and split, the number of images and the SHA-256 of their bytes,
crop_padding, flip, mean and std, the computation dtype and the cache's dtype. Another teacher
or augmentation is another key, so a cache is never used for a run it was not built for.

Files: ``chunk_<k>.npy`` (``numpy``'s format, never pickle) holds the logits of images
``[k R, (k + 1) R)``, shaped ``(rows, V, classes)``, float32, or bfloat16 stored as its uint16
bits; ``manifest.json`` holds the fields, the shape, ``R`` and the SHA-256 of every chunk
done. A chunk is written whole or not at all (:func:`kdjax.paths.writing`: a temporary file
renamed into place; in a bucket one upload), then entered into the manifest (rewritten
likewise): a killed build loses at most the chunk it was computing and the next build resumes
after the chunks of the manifest. Loading checks each chunk's SHA-256, shape and dtype; a
missing, truncated or damaged chunk is named on stderr and computed again. Builders of one
local cache take turns on ``<key>.lock``; a bucket has no lock, and a chunk that a concurrent
builder replaced fails its SHA-256 and is computed again, so the cache stays exact.

Building runs the teacher's forward on jitted batches of ``config.teacher.cache_batch``
(image, variant) pairs split over the devices of :func:`kdjax.sharding.make_mesh`, with a
progress line (forwards/s, ETA) on stderr; it needs one process (a multi-process run loads a
cache built beforehand). The command :mod:`kdjax.cache` builds the caches of a command's runs
ahead of time; a run with ``config.teacher.cache`` otherwise builds (or completes) its own.

Memory: ``N V classes`` logits (CIFAR-100 in float32: 50,000 x 162 x 100 x 4 B = 3.2 GB), in
host memory while loading; then, by ``config.teacher.cache_placement`` (:func:`placement`),
replicated on every device beside the training set when it takes at most half of a device's
memory, else kept in host memory, each step's rows gathered there and sent with its batch
(:class:`HostRows`; ``batch x classes`` values a step, overlapped with the previous step).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import sys
from typing import NamedTuple

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import Mesh

from kdjax import data, downloads, interrupts, jsonio, methods, paths
from kdjax.console import say
from kdjax.errors import KdjaxError
from kdjax.sharding import data_sharded, put_replicated, put_rows, replicated, step_keys

FORMAT = 1  # of the files; a part of the key
DTYPES = ('float32', 'bfloat16')
PLACEMENTS = ('auto', 'device', 'host')  # config.teacher.cache_placement, see placement()
CHUNK_BYTES = 64 << 20  # a chunk's logits when config.teacher.cache_chunk_images is 0
MANIFEST = 'manifest.json'


def check_config(config: ml_collections.ConfigDict) -> None:
  """Raises :class:`KdjaxError` when ``config.teacher.cache`` cannot serve ``config``'s run."""
  t = config.teacher
  if t.cache_dtype not in DTYPES:
    raise KdjaxError(f'config.teacher.cache_dtype must be float32 or bfloat16, got '
                     f'{t.cache_dtype!r}')
  if t.cache_placement not in PLACEMENTS:
    raise KdjaxError(f'config.teacher.cache_placement must be one of {", ".join(PLACEMENTS)}, '
                     f'got {t.cache_placement!r}')
  if t.cache_batch <= 0 or t.cache_chunk_images < 0:
    raise KdjaxError(f'config.teacher.cache_batch must be positive and cache_chunk_images >= 0, '
                     f'got {t.cache_batch} and {t.cache_chunk_images}')
  info = methods.info(config.method)
  if t.cache and info.uses_teacher and not info.teacher_logits_only:
    usable = [n for n in methods.names() if methods.info(n).teacher_logits_only]
    raise KdjaxError(f'config.teacher.cache holds only the teacher\'s logits, and '
                     f'{config.method} reads its features: set --config.teacher.cache=False '
                     f'(the cache serves {", ".join(usable)})')


def _tree_sha256(variables) -> str:
  """SHA-256 of a variable tree: every leaf's path, dtype, shape and bytes, in path order."""
  digest = hashlib.sha256()
  flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(jax.device_get(variables)), sep='/')
  for path in sorted(flat):
    leaf = np.ascontiguousarray(flat[path])
    digest.update(f'{path} {leaf.dtype.str} {leaf.shape}\n'.encode())
    digest.update(leaf.tobytes())
  return digest.hexdigest()


def cache_fields(config: ml_collections.ConfigDict, teacher_variables,
                 train: data.Dataset) -> dict:
  """Everything the cached logits of ``config``'s teacher on ``train`` depend on (the key)."""
  return {
      'format': FORMAT,
      'teacher_model': config.teacher.model,
      'teacher_sha256': _tree_sha256(teacher_variables),
      'dataset': config.data.name, 'split': 'train', 'num_images': len(train),
      'images_sha256': hashlib.sha256(np.ascontiguousarray(train.images)).hexdigest(),
      'crop_padding': int(config.data.crop_padding), 'flip': bool(config.data.flip),
      'mean': [float(m) for m in train.mean], 'std': [float(s) for s in train.std],
      'compute_dtype': str(jnp.dtype(config.dtype)), 'dtype': config.teacher.cache_dtype,
  }


def cache_key(fields: dict) -> str:
  """The folder name of the cache of ``fields``: 32 hex digits of their SHA-256."""
  return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:32]


def cache_folder(fields: dict) -> str:
  """``<cache>/teacher_logits/<key>``."""
  return os.fspath(paths.path(downloads.cache_dir()) / 'teacher_logits' / cache_key(fields))


def make_forward(teacher: nn.Module, mesh: Mesh, *, num_images: int, mean, std,
                 crop_padding: int, flip: bool, dtype, batch: int):
  """Jitted ``(variables, images, start) -> (batch, classes)`` float32 teacher logits.

  Row ``j`` is pair ``p = start + j``: image ``p // V`` (the last image past the end) under
  variant ``p % V`` (:func:`kdjax.data.variant_augmentation`), augmented and normalised by
  the train step's own functions. ``batch`` must divide over the mesh's devices; the pairs
  are split over them, the variables and images replicated.
  """
  per_image = data.num_variants(crop_padding, flip)
  shard = data_sharded(mesh)

  def forward(variables, images, start):
    pairs = jax.lax.with_sharding_constraint(start + jnp.arange(batch, dtype=jnp.int32), shard)
    aug = data.variant_augmentation(pairs % per_image, crop_padding=crop_padding, flip=flip)
    x = data.augment(images[jnp.minimum(pairs // per_image, num_images - 1)], aug,
                     crop_padding=crop_padding, flip=flip)
    out = teacher.apply(variables, data.normalize(x, mean, std, dtype), train=False)
    return out.logits.astype(jnp.float32)

  rep = replicated(mesh)
  return jax.jit(forward, in_shardings=(rep, rep, rep), out_shardings=shard)


def _npy_bytes(array: np.ndarray) -> bytes:
  buffer = io.BytesIO()
  np.save(buffer, array, allow_pickle=False)
  return buffer.getvalue()


class _Layout(NamedTuple):
  """The cache's shape, dtypes and chunks."""
  shape: tuple  # (N, V, classes)
  dtype: np.dtype  # of the logits
  stored: np.dtype  # in the files: bfloat16 as its uint16 bits (.npy has no bfloat16)
  chunk_images: int

  @property
  def num_chunks(self) -> int:
    return -(-self.shape[0] // self.chunk_images)

  def rows(self, k: int) -> slice:
    """The images of chunk ``k``."""
    return slice(k * self.chunk_images, min((k + 1) * self.chunk_images, self.shape[0]))


def _layout(fields: dict, num_classes: int, chunk_images: int) -> _Layout:
  """``chunk_images`` 0: as many images as hold about :data:`CHUNK_BYTES` of logits."""
  shape = (fields['num_images'], data.num_variants(fields['crop_padding'], fields['flip']),
           num_classes)
  stored = np.dtype(np.uint16 if fields['dtype'] == 'bfloat16' else np.float32)
  chunk_images = chunk_images or max(1, CHUNK_BYTES // (shape[1] * shape[2] * stored.itemsize))
  return _Layout(shape, jnp.dtype(fields['dtype']), stored, chunk_images)


def _file(folder: str, name: str) -> str:
  """The file ``name`` of the cache ``folder`` (local or remote)."""
  return os.fspath(paths.path(folder) / name)


def _read_chunk(path: str, sha256: str, shape: tuple, dtype: np.dtype) -> np.ndarray | str:
  """The verified chunk at ``path``, or why it is unusable."""
  try:
    content = paths.path(path).read_bytes()
  except OSError as e:
    return f'unreadable ({e.strerror or e})'
  if hashlib.sha256(content).hexdigest() != sha256:
    return f'damaged ({len(content):,} bytes, not the SHA-256 of the manifest)'
  try:
    array = np.load(io.BytesIO(content), allow_pickle=False)
  except ValueError as e:
    return f'not a .npy file ({e})'
  if array.shape != shape or array.dtype != dtype:
    return f'of shape {array.shape} {array.dtype}, expected {shape} {dtype}'
  return array


def _manifest(folder: str, fields: dict, layout: _Layout) -> dict:
  """The folder's manifest when it describes this cache (with its own chunk size: a resumed
  build continues its chunks), else a new one with no chunk done."""
  manifest = jsonio.read_json(_file(folder, MANIFEST))
  described = {'fields': fields, 'shape': list(layout.shape), 'stored_as': layout.stored.name}
  if (isinstance(manifest, dict) and all(manifest.get(k) == v for k, v in described.items())
      and isinstance(manifest.get('chunk_images'), int) and manifest['chunk_images'] > 0
      and isinstance(manifest.get('chunks'), dict)):
    return manifest
  return {**described, 'chunk_images': layout.chunk_images, 'chunks': {}}


def _of(layout: _Layout, manifest: dict) -> _Layout:
  """``layout`` with the chunk size of ``manifest`` (a resumed build continues its chunks)."""
  return layout._replace(chunk_images=manifest['chunk_images'])


def _read_chunks(folder: str, manifest: dict, layout: _Layout, *,
                 report: bool) -> tuple[np.ndarray, list]:
  """``(logits, missing chunks)``: the verified chunks of ``manifest`` read into ``logits``;
  a damaged one is dropped from the manifest (and named on stderr if ``report``)."""
  logits = np.empty(layout.shape, layout.stored)
  missing = []
  for k in range(layout.num_chunks):
    rows, sha256 = layout.rows(k), manifest['chunks'].get(str(k))
    path = _file(folder, f'chunk_{k:05d}.npy')
    chunk = None if sha256 is None else _read_chunk(
        path, sha256, (rows.stop - rows.start,) + layout.shape[1:], layout.stored)
    if isinstance(chunk, np.ndarray):
      logits[rows] = chunk
      continue
    if chunk is not None:
      if report:
        say(f'teacher cache: {path} is {chunk}; computing it again')
      del manifest['chunks'][str(k)]
    missing.append(k)
  return logits, missing


def teacher_logits(config: ml_collections.ConfigDict, teacher: nn.Module, teacher_variables,
                   train: data.Dataset, mesh: Mesh) -> np.ndarray:
  """The cache of ``config``'s teacher on ``train`` (module docstring): ``(N, V, classes)``
  in ``config.teacher.cache_dtype``, loaded and verified, its missing chunks computed first.

  ``teacher`` is the run's frozen teacher module (``Method.teacher``, the computation dtype
  of the run), ``teacher_variables`` its variables.
  """
  fields = cache_fields(config, teacher_variables, train)
  folder = cache_folder(fields)
  layout = _layout(fields, train.num_classes, config.teacher.cache_chunk_images)
  manifest = _manifest(folder, fields, layout)
  if len(manifest['chunks']) == _of(layout, manifest).num_chunks:  # complete: only read, so
    logits, missing = _read_chunks(folder, manifest, _of(layout, manifest), report=False)
    if not missing:  # a shared cache may be read-only: no lock taken
      return logits.view(layout.dtype)
  with downloads.file_lock(folder + '.lock'):
    paths.path(folder).mkdir(parents=True, exist_ok=True)
    manifest = _manifest(folder, fields, layout)
    layout = _of(layout, manifest)
    logits, missing = _read_chunks(folder, manifest, layout, report=True)
    if missing:
      with interrupts.doing(f'building the teacher-logit cache {folder}', 'the chunks done '
                            'are kept and the next run computes only the others'):
        _build(config, teacher, teacher_variables, train, mesh, folder, manifest, layout,
               missing, logits)
  return logits.view(layout.dtype)


def _build(config, teacher, teacher_variables, train, mesh, folder, manifest, layout,
           missing, logits) -> None:
  """Computes the ``missing`` chunks into ``logits`` and their files, each entered in the
  manifest once written."""
  from tqdm import tqdm  # pylint: disable=import-outside-toplevel
  if jax.process_count() > 1:
    raise KdjaxError(f'the teacher-logit cache {folder} is not complete, and a multi-process '
                     f'run cannot build it: run `python -m kdjax.cache` with the same '
                     f'flags in one process first')
  num_images, per_image, num_classes = layout.shape
  n_dev = mesh.devices.size  # batches divide over the devices, and exceed no chunk
  batch = -(-min(config.teacher.cache_batch, layout.chunk_images * per_image) // n_dev) * n_dev
  forward = make_forward(teacher, mesh, num_images=num_images, mean=train.mean, std=train.std,
                         crop_padding=config.data.crop_padding, flip=config.data.flip,
                         dtype=jnp.dtype(config.dtype), batch=batch)
  variables, images = put_replicated((teacher_variables, train.images), mesh)
  say(f'teacher cache: {len(missing)} of {layout.num_chunks} chunks of {folder} to compute '
       f'({num_images} images x {per_image} augmentations, teacher {config.teacher.model})')
  total = num_images * per_image
  todo = sum(layout.rows(k).stop - layout.rows(k).start for k in missing) * per_image
  with tqdm(total=total, initial=total - todo, unit='img', unit_scale=True, file=sys.stderr,
            desc='teacher logits', disable=jax.process_index() != 0) as bar:
    for k in missing:
      rows = layout.rows(k)
      first, count = rows.start * per_image, (rows.stop - rows.start) * per_image
      outs = [forward(variables, images, np.int32(start))
              for start in range(first, first + count, batch)]  # dispatched, then collected
      parts = []
      for j, out in enumerate(outs):
        parts.append(np.asarray(out)[:count - j * batch])
        bar.update(len(parts[-1]))
      chunk = np.concatenate(parts).reshape(-1, per_image, num_classes)
      chunk = chunk.astype(layout.dtype).view(layout.stored)
      content = _npy_bytes(chunk)
      with paths.writing(_file(folder, f'chunk_{k:05d}.npy')) as f:
        f.write(content)
      manifest['chunks'][str(k)] = hashlib.sha256(content).hexdigest()
      jsonio.write_json(_file(folder, MANIFEST), manifest)
      logits[rows] = chunk


def cache_variants(aug_key: jax.Array, n: int, *, crop_padding: int, flip: bool) -> jax.Array:
  """The teacher-cache variant (:func:`kdjax.data.variant_index`) of each of the ``n``
  images a step augments with ``aug_key``."""
  aug = data.draw_augmentation(aug_key, n, crop_padding=crop_padding, flip=flip)
  return data.variant_index(aug, crop_padding=crop_padding, flip=flip)



def placement(config: ml_collections.ConfigDict, nbytes: int, device_bytes: int | None) -> str:
  """Where a run keeps its cache of ``nbytes``: ``'device'`` (replicated beside the training
  set; each step gathers its rows there) or ``'host'`` (:class:`HostRows`).

  ``config.teacher.cache_placement``: ``'auto'`` takes the device when the cache is at most
  half of ``device_bytes`` (a device's memory; ``None``: unknown, as on the CPU, where host
  and device memory are one), else the host; ``'device'`` refuses a cache over that half
  (one line); ``'host'`` always takes the host."""
  where = config.teacher.cache_placement
  fits = device_bytes is None or nbytes <= device_bytes // 2
  if where == 'device' and not fits:
    raise KdjaxError(f'the teacher-logit cache takes {nbytes / 2**30:.1f} GiB, over half of '
                     f'the {device_bytes / 2**30:.1f} GiB of a device: set '
                     f'--config.teacher.cache_placement=host (or auto), or '
                     f'--config.teacher.cache_dtype=bfloat16')
  return 'device' if where == 'device' or (where == 'auto' and fits) else 'host'


def device_memory_bytes(device=None) -> int | None:
  """The memory of ``device`` (default: the first local one) as its runtime reports it;
  ``None`` where it reports none (the CPU)."""
  device = device or jax.local_devices()[0]
  stats = device.memory_stats() if device.platform != 'cpu' else None
  return (stats or {}).get('bytes_limit')


class HostRows:
  """The cache held in host memory: each step's rows gathered on the host, sent with its batch.

  For update ``step`` of a run whose ``state.rng`` is ``rng``, the rows are
  ``logits[idx, v]`` with ``v`` the variants of the crops and flips that step draws
  (:func:`cache_variants` of :func:`kdjax.sharding.step_keys`, the step's
  own derivation), computed on the host's CPU device. The loop asks for them after it has
  dispatched the previous update, so the gather overlaps that update's compute. Every process
  gathers the whole batch's rows (``batch x classes`` values) and sends its own devices' rows.
  """

  def __init__(self, logits: np.ndarray, rng, *, batch_size: int, crop_padding: int,
               flip: bool, sharding):
    cpu = jax.devices('cpu')[0]
    self._logits, self._sharding = logits, sharding
    self._rng = jax.device_put(np.asarray(jax.device_get(rng)), cpu)
    self._variants = jax.jit(lambda rng, step: cache_variants(
        step_keys(rng, step)[0], batch_size, crop_padding=crop_padding, flip=flip))

  def rows(self, step: int, idx: np.ndarray) -> jax.Array:
    """The cached teacher logits of update ``step``'s images ``idx``, split by rows."""
    variants = np.asarray(self._variants(self._rng, np.int32(step)))
    return put_rows(self._logits[np.asarray(idx), variants], self._sharding)
