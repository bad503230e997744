"""Images/second of the host input pipeline alone (JPEG decode and augmentation on the CPUs;
a benchmark, not a test).

    python benchmarks/input_pipeline.py                      # 1 and 2 grain workers
    python benchmarks/input_pipeline.py --workers 1 4 8 --images 2000 --out /tmp/input.json

It writes ``--images`` synthetic ImageNet-like JPEGs (``--width`` x ``--height``, 500x375 by
default, ImageNet's most common size; smooth colour fields with grain noise, quality 90, so a
file is of the order of ImageNet's ~110 kB) as an ImageFolder of 10 classes in a temporary
folder, then times :mod:`kdjax.data.host_pipeline` on it:

* ``direct``: the transform in this process, no grain (read, decode, transform, one image
  after another): what one core does;
* ``grain``: :func:`~kdjax.data.host_pipeline.train_pipeline` (RandomResizedCrop + flip) and
  :func:`~kdjax.data.host_pipeline.eval_pipeline` (Resize + CenterCrop) with each number of
  ``--workers`` processes, batches of ``--batch``; the first ``2 x workers`` batches (worker
  start-up) are not timed.

Each line gives images/s (wall clock), that per worker process, and images per CPU-second
(the CPU time of the workers and of this process in the timed part, from ``/proc``): the
per-core rate, which a machine shared with other work does not distort
(``os.getloadavg()`` is printed to judge the wall-clock figures). Nothing goes to a device:
this is what the host can feed.
"""

from __future__ import annotations

import argparse
import io
import json
import multiprocessing
import os
import sys
import tempfile
import time

import numpy as np
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from kdjax.data import host_pipeline, image_sources  # noqa: E402


def write_folder(root: str, count: int, width: int, height: int, classes: int = 10) -> float:
  """``count`` JPEGs in ``root/<class>/``; returns their mean size in kB."""
  rng = np.random.default_rng(0)
  sizes = []
  for i in range(count):
    folder = os.path.join(root, f'n{i % classes:08d}')
    os.makedirs(folder, exist_ok=True)
    coarse = rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)
    smooth = np.asarray(Image.fromarray(coarse).resize((width, height), Image.BICUBIC))
    noisy = np.clip(smooth + rng.normal(0, 12, smooth.shape), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(noisy).save(buffer, 'JPEG', quality=90)
    with open(os.path.join(folder, f'{i}.JPEG'), 'wb') as f:
      f.write(buffer.getvalue())
    sizes.append(len(buffer.getvalue()))
  return float(np.mean(sizes)) / 1000


def direct(source, train: bool, image_size: int) -> tuple[float, float]:
  """(images/s, images per CPU-second) of read + decode + transform in this process."""
  start, cpu = time.perf_counter(), time.process_time()
  for index in range(len(source)):
    data, _ = source[index]
    image = host_pipeline.decode(data)
    if train:
      host_pipeline.train_image(image, host_pipeline.image_rng(0, 0, index), image_size)
    else:
      host_pipeline.eval_image(image, image_size, image_size * 256 // 224)
  return (len(source) / (time.perf_counter() - start),
          len(source) / (time.process_time() - cpu))


def cpu_seconds() -> float:
  """CPU time used so far by this process and its live worker processes (Linux /proc)."""
  total = time.process_time()
  for child in multiprocessing.active_children():
    try:
      with open(f'/proc/{child.pid}/stat') as f:
        fields = f.read().rsplit(')', 1)[1].split()
    except OSError:
      continue
    total += (int(fields[11]) + int(fields[12])) / os.sysconf('SC_CLK_TCK')  # utime, stime
  return total


def through_grain(source, train: bool, workers: int, batch: int,
                  image_size: int) -> tuple[float, float]:
  """(images/s, images per CPU-second) of the grain pipeline with ``workers`` processes,
  start-up left out; the CPU time is the workers' and this process's."""
  if train:
    batches = host_pipeline.train_pipeline(source, batch_size=batch, seed=0, num_epochs=1,
                                           image_size=image_size, worker_count=workers)
  else:
    batches = host_pipeline.eval_pipeline(source, batch_size=batch, image_size=image_size,
                                          resize_size=image_size * 256 // 224,
                                          worker_count=workers)
  warmup = 2 * workers
  if batches.steps < warmup + 4:
    raise SystemExit(f'--images too few: {batches.steps} batches, need {warmup + 4}')
  with batches:
    for _ in range(warmup):
      next(batches)
    start, cpu, timed = time.perf_counter(), cpu_seconds(), 0
    for _ in range(batches.steps - warmup):  # not to the end: the workers stop there
      timed += len(next(batches)['labels'])
    seconds, cpu = time.perf_counter() - start, cpu_seconds() - cpu
  return timed / seconds, timed / cpu


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--images', type=int, default=1024)
  parser.add_argument('--width', type=int, default=500)
  parser.add_argument('--height', type=int, default=375)
  parser.add_argument('--batch', type=int, default=16)
  parser.add_argument('--image-size', type=int, default=224)
  parser.add_argument('--workers', type=int, nargs='+', default=[1, 2])
  parser.add_argument('--out', help='write the results as JSON here')
  args = parser.parse_args()
  results = {'cpus': len(os.sched_getaffinity(0)), 'images': args.images,
             'size': [args.width, args.height], 'runs': []}
  with tempfile.TemporaryDirectory() as root:
    results['mean_kB'] = write_folder(root, args.images, args.width, args.height)
    source = image_sources.ImageFolder(root)
    print(f'{args.images} JPEGs of {args.width}x{args.height}, {results["mean_kB"]:.0f} kB on '
          f'average; {results["cpus"]} CPUs, load average {os.getloadavg()[0]:.2f}')
    for train in (True, False):
      mode = 'train' if train else 'eval'
      runs = [('direct', 1, *direct(source, train, args.image_size))]
      runs += [('grain', w, *through_grain(source, train, w, args.batch, args.image_size))
               for w in args.workers]
      for kind, workers, rate, per_cpu in runs:
        print(f'{mode:5s} {kind:6s} {workers} worker(s): {rate:6.1f} images/s, '
              f'{rate / workers:6.1f} per worker, {per_cpu:6.1f} per CPU-second '
              f'(load {os.getloadavg()[0]:.2f})')
        results['runs'].append({'mode': mode, 'kind': kind, 'workers': workers,
                                'images_per_second': rate, 'images_per_cpu_second': per_cpu})
  if args.out:
    with open(args.out, 'w') as f:
      json.dump(results, f, indent=1)


if __name__ == '__main__':
  main()
