"""A host input pipeline with grain, for ImageNet and any data set too large for the devices.

The CIFAR path keeps the whole training set on the devices and gathers each batch there
(:mod:`kdjax.data.order`). Here the images stay encoded on the host (a source of
:mod:`kdjax.data.image_sources`), and grain worker processes read, decode (PIL) and augment
them into ``uint8`` NHWC batches, which :class:`DevicePrefetch` puts on the devices ahead of
the step that uses them. Normalisation happens on the device, as in the CIFAR path:
``data.normalize(images, IMAGENET_MEAN, IMAGENET_STD, dtype)`` (torchvision's
``ToTensor()`` then ``Normalize(mean, std)``).

**The transforms** are mdistiller's ImageNet ones, torchvision's algorithms on PIL images:

* train: ``RandomResizedCrop(224)`` (``scale=(0.08, 1)``, ``ratio=(3/4, 4/3)``, bilinear),
  then ``RandomHorizontalFlip()`` (p = 1/2);
* eval: ``Resize(256)`` (the shorter side, bilinear) then ``CenterCrop(224)``.

The sizes are parameters (``image_size``, ``resize_size``; the tests use 32 and 36).
Images are decoded as torchvision's ``datasets.folder.pil_loader`` does
(``Image.open(...).convert('RGB')``).

**The order** is the in-memory path's (:func:`kdjax.data.order.epoch_permutation`): global
step ``s`` of epoch ``e = s // steps_per_epoch`` takes the next ``batch_size`` examples of
``epoch_permutation(seed, e, len(source))``; the last incomplete batch of an epoch is
dropped. Each image's random draws come from its own generator, keyed by ``(seed, epoch,
index of the example)``, so a batch is a pure function of ``(seed, step)``: the same
whatever the number of processes, workers or threads, and after any resume. (grain's
``RandomMap`` keys its draws by the position in this process's stream instead, which
changes with the number of processes.)

**Sharding**: the global batch of every step is split into ``shard_count`` blocks of rows
(``grain.sharding.ShardOptions``; default ``ShardByJaxProcess()``: one block per JAX
process), and each process reads, decodes and puts on its devices only its own block.

**Unreadable images** (a missing, truncated or corrupt file, anything PIL cannot decode)
are never a worker crash: in training the next example of the epoch's order takes the
place of one (up to 16 in a row, then a :class:`~kdjax.errors.KdjaxError` naming the
files); in evaluation its row is masked out (``mask`` False). Either way
:attr:`HostBatches.unreadable` counts them and one warning names each file.

**Resuming**: :meth:`HostBatches.get_state` is a small JSON-able dict, ``{'step': the next
batch's step, 'seed', 'records', 'batch_size'}``, the same in every process (the order
depends on nothing else). :meth:`HostBatches.set_state` continues from there with any
number of workers; a state saved for another seed, data set or batch size is a
:class:`~kdjax.errors.KdjaxError`. With :class:`DevicePrefetch`, save *its*
``get_state()``: that of the next batch the loop will take, not of those prefetched.

How the training loop uses it (each process, in lockstep)::

    source = image_sources.imagenet(config.data.data_dir, 'train')
    train = host_pipeline.train_pipeline(source, batch_size=config.batch_size,
                                         seed=config.seed, num_epochs=config.num_epochs)
    batches = host_pipeline.DevicePrefetch(train, sharding.data_sharded(mesh))
    if restored: batches.set_state(progress['input_pipeline'])   # the checkpoint's item
    for step in range(start, last):
      batch = next(batches)   # {'images': uint8 (B, 224, 224, 3), 'labels', 'indices': int32}
      state, metrics = train_step(state, frozen, batch['images'], batch['labels'],
                                  batch['indices'])
      ...
      progress['input_pipeline'] = batches.get_state()   # before every ckpt.save(...)

The state rides in the checkpoint's JSON ``progress`` item (written by process 0, which is
right because every process's state is the same), so the checkpoint format gains no item.
"""

from __future__ import annotations

import collections
import io
import math
import os
from typing import Any, Optional, Sequence

from absl import flags
import grain
import jax
import numpy as np
from PIL import Image

from kdjax.data.order import epoch_permutation
from kdjax.errors import KdjaxError, warn

# torchvision's ImageNet statistics (mdistiller's ImageNet normalisation).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# What PIL raises on a file it cannot decode (UnidentifiedImageError and a truncated file
# are OSErrors); a file that cannot be read at all is an OSError too.
UNREADABLE = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)
_MAX_SUBSTITUTES = 16  # unreadable examples in a row before a training example gives up
_AUGMENT_STREAM = 7  # last word of an image's seed; nonzero, so no prefix of it is a seed


def decode(data: bytes) -> Image.Image:
  """An encoded image as an RGB PIL image (torchvision's ``pil_loader``)."""
  with Image.open(io.BytesIO(data)) as image:
    return image.convert('RGB')


def random_resized_crop_box(rng: np.random.Generator, height: int, width: int,
                            scale: Sequence[float] = (0.08, 1.0),
                            ratio: Sequence[float] = (3 / 4, 4 / 3)) -> tuple[int, int, int, int]:
  """``(top, left, h, w)``: torchvision's ``RandomResizedCrop.get_params``.

  Up to 10 draws of an area fraction in ``scale`` and a log-uniform aspect ratio in
  ``ratio``; the first box that fits is placed uniformly; if none fits, the central crop
  of the image clamped to ``ratio``.
  """
  area = height * width
  log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
  for _ in range(10):
    target_area = area * rng.uniform(scale[0], scale[1])
    aspect_ratio = math.exp(rng.uniform(log_ratio[0], log_ratio[1]))
    w = int(round(math.sqrt(target_area * aspect_ratio)))
    h = int(round(math.sqrt(target_area / aspect_ratio)))
    if 0 < w <= width and 0 < h <= height:
      top = int(rng.integers(0, height - h + 1))
      left = int(rng.integers(0, width - w + 1))
      return top, left, h, w
  in_ratio = width / height
  if in_ratio < min(ratio):
    w = width
    h = int(round(w / min(ratio)))
  elif in_ratio > max(ratio):
    h = height
    w = int(round(h * max(ratio)))
  else:
    w, h = width, height
  return (height - h) // 2, (width - w) // 2, h, w


def _resize(image: Image.Image, width: int, height: int) -> Image.Image:
  """torchvision's ``F.resize`` of a PIL image: bilinear, unchanged if already that size."""
  if image.size == (width, height):
    return image
  return image.resize((width, height), Image.Resampling.BILINEAR)


def resized_crop(image: Image.Image, box: tuple[int, int, int, int], size: int) -> Image.Image:
  """torchvision's ``F.resized_crop(image, *box, [size, size])``: crop, then bilinear resize."""
  top, left, h, w = box
  return _resize(image.crop((left, top, left + w, top + h)), size, size)


def resize_shorter(image: Image.Image, size: int) -> Image.Image:
  """torchvision's ``Resize(size)``: the shorter side to ``size``, the longer one in
  proportion (rounded down), bilinear."""
  w, h = image.size
  short, long = (w, h) if w <= h else (h, w)
  new_long = int(size * long / short)
  return _resize(image, *((size, new_long) if w <= h else (new_long, size)))


def center_crop(image: Image.Image, size: int) -> Image.Image:
  """torchvision's ``CenterCrop(size)`` of an image at least ``size`` on each side."""
  w, h = image.size
  top, left = int(round((h - size) / 2.0)), int(round((w - size) / 2.0))
  return image.crop((left, top, left + size, top + size))


def train_image(image: Image.Image, rng: np.random.Generator, size: int) -> np.ndarray:
  """``RandomResizedCrop(size)`` then ``RandomHorizontalFlip()``: ``(size, size, 3)`` uint8."""
  box = random_resized_crop_box(rng, image.height, image.width)
  pixels = np.asarray(resized_crop(image, box, size))
  if rng.random() < 0.5:
    pixels = pixels[:, ::-1]
  return np.ascontiguousarray(pixels)


def eval_image(image: Image.Image, size: int, resize_size: int) -> np.ndarray:
  """``Resize(resize_size)`` then ``CenterCrop(size)``: ``(size, size, 3)`` uint8."""
  return np.asarray(center_crop(resize_shorter(image, resize_size), size))


def image_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
  """The generator of example ``index``'s augmentation in ``epoch`` (0-based)."""
  return np.random.default_rng([seed, epoch, index, _AUGMENT_STREAM])


def _read(source, index: int) -> tuple[Optional[Image.Image], int]:
  """``(decoded image or None if unreadable, label)`` of example ``index``."""
  try:
    data, label = source[index]
    return decode(data), label
  except UNREADABLE:
    return None, -1


class _TrainExample(grain.transforms.Map):
  """Position ``p`` of this shard's stream -> the augmented example it holds.

  ``p = step * local_batch + row``; the example is row ``shard_index * local_batch + row``
  of the global batch of ``step``.
  """

  def __init__(self, source, *, seed: int, batch_size: int, local_batch: int, shard_index: int,
               image_size: int):
    self.source, self.seed, self.image_size = source, seed, image_size
    self.batch_size, self.local_batch, self.shard_index = batch_size, local_batch, shard_index
    self.steps_per_epoch = len(source) // batch_size

  def map(self, element: int) -> dict[str, Any]:
    step, row = divmod(int(element), self.local_batch)
    epoch, position = divmod(step, self.steps_per_epoch)
    n = len(self.source)
    order = epoch_permutation(self.seed, epoch, n)
    first = position * self.batch_size + self.shard_index * self.local_batch + row
    tried = []
    for k in range(_MAX_SUBSTITUTES + 1):
      index = int(order[(first + k) % n])
      image, label = _read(self.source, index)
      if image is not None:
        return {'image': train_image(image, image_rng(self.seed, epoch, index), self.image_size),
                'label': np.int32(label), 'index': np.int32(index),
                'unreadable': np.int32(len(tried)),
                'first_unreadable': np.int64(tried[0] if tried else -1)}
      tried.append(index)
    raise KdjaxError(f'{len(tried)} unreadable images in a row, e.g. '
                     f'{self.source.describe(tried[0])} and {self.source.describe(tried[-1])}; '
                     f'check the data set')


class _EvalExample(grain.transforms.Map):
  """Position ``p`` of this shard's stream -> the example it holds, or a masked blank row
  (past the end of the split, or unreadable)."""

  def __init__(self, source, *, batch_size: int, local_batch: int, shard_index: int,
               image_size: int, resize_size: int):
    self.source, self.image_size, self.resize_size = source, image_size, resize_size
    self.batch_size, self.local_batch, self.shard_index = batch_size, local_batch, shard_index

  def map(self, element: int) -> dict[str, Any]:
    step, row = divmod(int(element), self.local_batch)
    index = step * self.batch_size + self.shard_index * self.local_batch + row
    image, label = (None, -1) if index >= len(self.source) else _read(self.source, index)
    unreadable = image is None and index < len(self.source)
    pixels = (np.zeros((self.image_size,) * 2 + (3,), np.uint8) if image is None
              else eval_image(image, self.image_size, self.resize_size))
    return {'image': pixels, 'label': np.int32(max(label, 0)), 'mask': np.bool_(image is not None),
            'unreadable': np.int32(unreadable),
            'first_unreadable': np.int64(index if unreadable else -1)}


class HostBatches:
  """This process's batches: ``{'images': uint8 (L, S, S, 3), 'labels': int32 (L,)}`` and,
  for training, ``'indices'``, int32 (L,), each image's index in the source (CRD's memory
  bank is indexed by it), or for evaluation ``'mask'``, bool (L,); ``L = batch_size /
  shard_count``; made by
  :func:`train_pipeline` or :func:`eval_pipeline`.

  An iterator over batches ``step, step + 1, ..., steps - 1``; :meth:`get_state` /
  :meth:`set_state` save and restore the position. The grain workers start at the first
  ``next`` and stop at :meth:`close` (also a context manager).
  """

  def __init__(self, source, example: grain.transforms.Map, *, steps: int,
               steps_per_epoch: int, local_batch: int, shard_count: int, identity: dict,
               worker_count: Optional[int], read_threads: int, with_mask: bool):
    self.source = source
    self.steps, self.steps_per_epoch = steps, steps_per_epoch
    self.local_batch, self.shard_count = local_batch, shard_count
    self.unreadable = 0  # unreadable images met so far (a file once per epoch it is met)
    if worker_count is None:
      worker_count = max(1, len(os.sched_getaffinity(0)) - 1)
    self._example, self._identity, self._with_mask = example, identity, with_mask
    self._workers, self._threads = worker_count, read_threads
    self._step, self._iterator, self._warned = 0, None, set()

  def _start(self) -> None:
    ds = grain.MapDataset.range(self._step * self.local_batch, self.steps * self.local_batch)
    ds = ds.map(self._example).batch(self.local_batch, drop_remainder=True)
    # Elements here are whole batches: a few in flight per worker, not grain's default 500.
    it = ds.to_iter_dataset(grain.ReadOptions(num_threads=self._threads,
                                              prefetch_buffer_size=self._threads))
    if self._workers:
      _flags_at_defaults()
      it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=self._workers))
    self._iterator = iter(it)

  def __iter__(self):
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    if self._iterator is None:
      self._start()
    # Plain arrays: copied out of grain's shared memory, which is freed at once.
    batch = {name: np.array(value) for name, value in next(self._iterator).items()}
    self._step += 1
    self._note_unreadable(batch['unreadable'], batch['first_unreadable'])
    out = {'images': batch['image'], 'labels': batch['label']}
    if self._with_mask:
      out['mask'] = batch['mask']
    else:
      out['indices'] = batch['index']
    return out

  def _note_unreadable(self, counts: np.ndarray, first: np.ndarray) -> None:
    self.unreadable += int(counts.sum())
    for index in first[first >= 0].tolist():
      if index not in self._warned:
        self._warned.add(index)
        warn(f'skipped the unreadable image {self.source.describe(index)} ('
             f'{"masked out" if self._with_mask else "the next image took its place"}); '
             f'{self.unreadable} unreadable so far')

  def get_state(self) -> dict:
    """The position of the next batch, JSON-able: ``{'step', 'seed', 'records', ...}``."""
    return {'step': self._step, **self._identity}

  def set_state(self, state: dict) -> None:
    """Continues with the batch of ``state['step']`` (a :meth:`get_state` of this pipeline)."""
    for key, value in self._identity.items():
      if state.get(key) != value:
        raise KdjaxError(f'the saved input pipeline state has {key}={state.get(key)}, this run '
                         f'{value}: the checkpoint belongs to another configuration')
    step = state.get('step')
    if not isinstance(step, int) or not 0 <= step <= self.steps:
      raise KdjaxError(f'the saved input pipeline state is at step {step}, not one of this '
                       f'pipeline\'s steps 0..{self.steps}')
    self.close()
    self._step = step

  def close(self) -> None:
    """Stops the workers (the next ``next`` starts them again)."""
    if self._iterator is not None:
      close = getattr(self._iterator, 'close', None)
      if close is not None:
        close()
      self._iterator = None

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()


def _flags_at_defaults() -> None:
  """Lets grain read its absl flags outside an absl app (tests, notebooks, benchmarks).

  Starting workers, grain 0.2.18 reads the absl flag ``grain_enable_multiprocess_worker_profiling``,
  which raises ``UnparsedFlagAccessError`` until the flags are parsed; ``kdjax.main`` parses
  them, elsewhere every flag keeps its default.
  """
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()


def _local_batch(batch_size: int, source, shard) -> tuple[int, Any]:
  shard = shard if shard is not None else grain.sharding.ShardByJaxProcess()
  if batch_size <= 0 or batch_size % shard.shard_count:
    raise KdjaxError(f'batch size {batch_size} is not a positive multiple of the '
                     f'{shard.shard_count} input shards (JAX processes)')
  if len(source) == 0:
    raise KdjaxError('the image source is empty')
  return batch_size // shard.shard_count, shard


def train_pipeline(source, *, batch_size: int, seed: int, num_epochs: int,
                   image_size: int = 224, shard: Optional[grain.sharding.ShardOptions] = None,
                   worker_count: Optional[int] = None, read_threads: int = 1) -> HostBatches:
  """The training batches of ``num_epochs`` epochs of ``source`` (see the module docstring).

  ``batch_size`` is the global batch; ``shard`` which rows of it this process reads
  (default: ``ShardByJaxProcess()``). ``worker_count`` grain worker processes (None: one
  per CPU this process may use, less one; 0: decode in this process) with
  ``read_threads`` threads each.
  """
  local, shard = _local_batch(batch_size, source, shard)
  steps_per_epoch = len(source) // batch_size
  if steps_per_epoch == 0:
    raise KdjaxError(f'batch size {batch_size} is larger than the training set '
                     f'({len(source)} images)')
  example = _TrainExample(source, seed=seed, batch_size=batch_size, local_batch=local,
                          shard_index=shard.shard_index, image_size=image_size)
  return HostBatches(source, example, steps=num_epochs * steps_per_epoch,
                     steps_per_epoch=steps_per_epoch, local_batch=local,
                     shard_count=shard.shard_count,
                     identity={'seed': seed, 'records': len(source), 'batch_size': batch_size},
                     worker_count=worker_count, read_threads=read_threads, with_mask=False)


def eval_pipeline(source, *, batch_size: int, image_size: int = 224, resize_size: int = 256,
                  shard: Optional[grain.sharding.ShardOptions] = None,
                  worker_count: Optional[int] = None, read_threads: int = 1) -> HostBatches:
  """Every example of ``source`` once, in order, in batches of ``batch_size`` (global); the
  last batch is padded with masked rows. Arguments as :func:`train_pipeline`."""
  if resize_size < image_size:
    raise KdjaxError(f'resize size {resize_size} is smaller than the crop {image_size}')
  local, shard = _local_batch(batch_size, source, shard)
  steps = -(-len(source) // batch_size)
  example = _EvalExample(source, batch_size=batch_size, local_batch=local,
                         shard_index=shard.shard_index, image_size=image_size,
                         resize_size=resize_size)
  return HostBatches(source, example, steps=steps, steps_per_epoch=steps, local_batch=local,
                     shard_count=shard.shard_count,
                     identity={'records': len(source), 'batch_size': batch_size},
                     worker_count=worker_count, read_threads=read_threads, with_mask=True)


class DevicePrefetch:
  """The batches of ``batches`` as global arrays on ``sharding`` (rows over the devices),
  ``size`` of them put on the devices before they are used.

  ``next`` returns the oldest batch already on its way and puts the next one: its
  transfer (asynchronous) overlaps the step the loop dispatches with the returned one.
  Each process contributes its own rows (``jax.make_array_from_process_local_data``).
  """

  def __init__(self, batches: HostBatches, sharding: jax.sharding.Sharding, size: int = 2):
    self.batches, self.sharding, self.size = batches, sharding, size
    self._queue = collections.deque()  # (host state before the batch, the batch on devices)

  def __iter__(self):
    return self

  def _put(self, batch: dict) -> dict:
    return {name: jax.make_array_from_process_local_data(
        self.sharding, rows, (len(rows) * jax.process_count(),) + rows.shape[1:])
            for name, rows in batch.items()}

  def __next__(self) -> dict[str, jax.Array]:
    while len(self._queue) < self.size:
      state = self.batches.get_state()
      try:
        batch = next(self.batches)
      except StopIteration:
        break
      self._queue.append((state, self._put(batch)))
    if not self._queue:
      raise StopIteration
    return self._queue.popleft()[1]

  def get_state(self) -> dict:
    """The state of the next batch ``next`` returns (see :meth:`HostBatches.get_state`)."""
    return self._queue[0][0] if self._queue else self.batches.get_state()

  def set_state(self, state: dict) -> None:
    self._queue.clear()
    self.batches.set_state(state)

  def close(self) -> None:
    self._queue.clear()
    self.batches.close()

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()
