"""Throughput and memory of kdjax's train step and training loop, per method (a benchmark,
not a test).

    python benchmarks/throughput.py --method kd --pair res32x4_res8x4 --batch 64
    python benchmarks/throughput.py --method all --out benchmarks/results/throughput.json
    python benchmarks/throughput.py --tiny --out /tmp/tiny.json   # seconds: what the test runs
    python benchmarks/throughput.py --dataset imagenet --method kd --batch 16 --workers 1 2

**The step.** For each method it builds the run the training loop would
(:func:`kdjax.train.loop.prepare`, the loop's own setup and jitted step: gather,
augmentation, teacher forward, one fused gradient, every net's optimizer) on SYNTHETIC
CIFAR-100-sized data given to it explicitly (50,000 training images of random pixels, 500
per class, 100 classes; a randomly initialised teacher and, for SKD, random trajectory
snapshots: speed does not depend on their values), and reports: compile time, steady-state
images/second (median over the timed steps after warm-up, with min and max), the step's
memory (XLA's buffers of the compiled step: arguments, outputs and temporaries less donated
aliases; also the process's high-water mark so far, host RSS on CPU or the allocator's peak
on accelerators, which covers every method run before), the step's FLOPs from XLA's cost
analysis, the achieved FLOP/s, and that as a fraction of the matrix-multiply peak measured
on the same device in the same run (a jitted square matmul of ``--dtype``, best of several;
measured before every method, the run's best is the peak).

**The teacher-logit cache.** With ``--teacher-cache`` each method (one whose losses read only
the teacher's logits: kd, dkd, slkd, skd) is timed twice in the same run: the step that runs
the teacher, then the step that gathers the teacher's logits from the cache instead
(``config.teacher.cache``, :mod:`kdjax.teachers.logit_cache`; row ``<method> (teacher cache)``, the
same fields), the cache a random ``(50,000, 162, 100)`` float32 array on the devices (speed
does not depend on its values); ``--cache-placement device,host`` adds the row ``<method>
(teacher cache in host memory)``: the cache kept on the host, each step's rows gathered there
and sent with the batch, as a run does when the cache does not fit a device. The cache's
one-off cost is measured with its own builder (:func:`kdjax.teachers.logit_cache.make_forward`,
``--cache-build-batch`` forwards per call, the median of ``--cache-build-calls`` timed calls):
teacher forwards per second, the hours to build CIFAR-100's 50,000 x 162 forwards, and how
many runs of ``config.num_epochs`` (240) epochs repay it: build time / (240 x 50,000 x
(1 / cached img/s - 1 / uncached img/s)).

**The loop.** For ``--loop-method`` it then runs the real training loop,
:func:`kdjax.train.loop.train_and_evaluate`, on the embedded digits data set (32x32x3, the
CIFAR shape) for ``--loop-steps`` steps into a temporary workdir (metrics every
``--loop-log-every`` steps, per-epoch evaluation and checkpoint as in any run), and reads
the loop's own per-window ``images_per_second`` from its ``metrics.jsonl``. The windows that
contain compilation (the first) or an epoch end's evaluation and checkpoint (those right
after an epoch end) are left out; the median of the others is set against the bare step's
images/second on the same input (same config, data and step function, timed step by step
before and after the loop). ``loop / step >= 0.95`` means the host never stalls the device.
Distillation methods get a randomly initialised teacher there (speed does not depend on its
values).

CRD's memory bank so has one row per example of a CIFAR-100-sized set; SKD's quiz batches come
from its held-out part. A method that fails is reported (``failed`` in the JSON, exit status
1) and the others still run.

XLA:CPU's convolutions run on Eigen unless ``--cpu-conv ynnpack``, and residual blocks store
their outputs on the CPU unless ``--residual-outputs fuse`` (``config.platform``,
:mod:`kdjax.platform_tuning`, applied before JAX starts its backend, as ``kdjax.main`` does);
``XLA_FLAGS`` from the environment are kept and recorded in the JSON.

**ImageNet** (``--dataset imagenet``): whether the host feeds the devices. On a folder of
``--images`` SYNTHETIC ImageNet-like JPEGs (500x375, ~110 kB, written by
``benchmarks/input_pipeline.py``'s ``write_folder``) it times the host pipeline alone,
:func:`kdjax.data.host_pipeline.train_pipeline` (read, JPEG decode, RandomResizedCrop 224,
flip) with each number of ``--workers`` grain processes: images/s and images per CPU-second
(the per-core rate); then for each method the loop's host-batch train step
(:func:`~kdjax.train.loop.prepare` of the ``--pair`` preset, ``r34_r18`` by default, on
that folder; a random teacher) on one batch of the pipeline, put on the devices: images/s as
above. ``pipeline / step`` >= 1 means the host keeps up with the step; below, the step waits
for the host (more workers, cores or hosts needed). With ``--tiny``: 48 small JPEGs, a
resnet8 of the CIFAR zoo on 32x32 crops (what the test runs).

Results go to stdout as tables and to a JSON file (``--out``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import resource
import statistics
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

from kdjax import config as config_lib
from kdjax import data, methods, models, platform_tuning, sharding, teachers
from kdjax.teachers import logit_cache, trajectory
from kdjax.config import base_config, digits_preset, distillation_config, imagenet_preset
from kdjax.data import image_sources
from kdjax.train import loop as loop_lib
from kdjax.train import trace

# config.PAIRS (teacher, student, lr) plus the digits pair, a small one for quick runs.
PAIRS = {**{name: pair[:2] for name, pair in config_lib.PAIRS.items()},
         'res20_res8': (config_lib.DIGITS_TEACHER, config_lib.DIGITS_STUDENT)}
SYNTHETIC_TRAIN_SIZE = 50000  # CIFAR-100's training set (sizes CRD's memory bank)
SYNTHETIC_CLASSES = 100


def _peak_memory_bytes() -> int:
  device = jax.local_devices()[0]
  stats = device.memory_stats() if device.platform != 'cpu' else None
  if stats and 'peak_bytes_in_use' in stats:
    return int(stats['peak_bytes_in_use'])
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _load_average() -> list[float]:
  try:
    return [round(x, 2) for x in os.getloadavg()]
  except OSError:  # pragma: no cover - no load average on this OS
    return []


def matmul_peak(dtype: str, n: int = 2048, reps: int = 5) -> float:
  """FLOP/s of a jitted ``n x n`` matmul in ``dtype`` on the first device, best of ``reps``."""
  dt = jnp.dtype(dtype)
  keys = jax.random.split(jax.random.PRNGKey(0))
  a = jax.random.normal(keys[0], (n, n), jnp.float32).astype(dt)
  b = jax.random.normal(keys[1], (n, n), jnp.float32).astype(dt)
  mm = jax.jit(lambda a, b: jnp.dot(a, b, preferred_element_type=dt))
  jax.block_until_ready(mm(a, b))
  best = math.inf
  for _ in range(reps):
    t = time.perf_counter()
    jax.block_until_ready(mm(a, b))
    best = min(best, time.perf_counter() - t)
  return 2.0 * n ** 3 / best


def _synthetic_datasets() -> tuple:
  """SYNTHETIC CIFAR-100-sized splits for timing only: random pixels, 500 images per class."""
  rng = np.random.default_rng(0)
  labels = (np.arange(SYNTHETIC_TRAIN_SIZE) % SYNTHETIC_CLASSES).astype(np.int32)
  images = rng.integers(0, 256, (SYNTHETIC_TRAIN_SIZE, 32, 32, 3), dtype=np.uint8)
  train = data.Dataset(images, labels, SYNTHETIC_CLASSES, (0.5,) * 3, (0.25,) * 3)
  return train, data.Dataset(images[:256], labels[:256], SYNTHETIC_CLASSES, train.mean,
                             train.std)


def _random_variables(model: str, num_classes: int, seed: int = 1) -> dict:
  net = models.create(model, num_classes)
  return jax.device_get(net.init(jax.random.PRNGKey(seed), jnp.zeros((1, 32, 32, 3)),
                                 train=False))


def _separate(method):
  """The method's nets as separate single-net steps (the PyTorch way: one backward per net).

  A loss term named ``<net>_...`` belongs to that net, every other term to the student; the
  monitors ``kl_*`` belong to none. Each step recomputes the forward passes it needs.
  """
  def loss_for(net):
    def loss(run, batch, ctx):
      _, terms = method.loss(run, batch, ctx)
      own = [v for k, v in terms.items() if not k.startswith('kl_') and (
          k.startswith(net + '_') if net != 'student' else
          not any(k.startswith(n + '_') for n in method.nets if n != 'student'))]
      return sum(own), {}
    return loss
  return [dataclasses.replace(method, stages=(((net,), loss_for(net)),)) for net in method.nets]


def _method_of(name: str) -> str:
  """The kdjax method a benchmark row's name runs."""
  name = name.removesuffix(':separate')
  return {'vanilla_teacher': 'vanilla', 'skd+slkd': 'skd'}.get(name, name)


def _config(method_name: str, pair: str, batch: int, dtype: str):
  """The method's config on ``pair``.

  ``vanilla_teacher`` trains the pair's teacher with ``vanilla``; ``sftn`` trains the teacher
  (``config.model``) with student branches of the pair's student (``config.sftn.student``);
  ``skd+slkd`` is SKD on top of SLKD (``experiments/skd.py:slkd``: the self-learning
  trajectory and SLKD's terms, all six learners in one step).
  """
  teacher, student = PAIRS[pair]
  config = base_config()
  config.method = _method_of(method_name)
  if method_name == 'skd+slkd':
    config.skd.trajectory = 'self_learning'
    config.skd.slkd_terms = True
  config.model = teacher if method_name in ('vanilla_teacher', 'sftn') else student
  config.teacher.model = teacher
  config.sftn.student = student
  config.batch_size = batch
  config.dtype = dtype
  return config


def _random_cache(config, datasets) -> np.ndarray:
  """A teacher-logit cache of the training set's shape, random float32 (timing only)."""
  train = datasets[0]
  shape = (len(train), data.num_variants(config.data.crop_padding, config.data.flip),
           train.num_classes)
  return np.random.default_rng(0).standard_normal(shape, dtype=np.float32)


def bench_cache_build(run: loop_lib.Training, teacher_vars, batch: int, calls: int) -> dict:
  """The teacher-logit cache builder's forwards per second on ``run``'s teacher and data."""
  config, train = run.config, run.inputs.train
  forward = logit_cache.make_forward(
      run.method.teacher, run.mesh, num_images=len(train), mean=train.mean, std=train.std,
      crop_padding=config.data.crop_padding, flip=config.data.flip, dtype=run.dtype,
      batch=batch)
  variables, images = sharding.put_replicated((teacher_vars, train.images), run.mesh)
  jax.block_until_ready(forward(variables, images, np.int32(0)))  # compiles
  times = []
  for i in range(calls):
    t = time.perf_counter()
    jax.block_until_ready(forward(variables, images, np.int32((i + 1) * batch)))
    times.append(time.perf_counter() - t)
  forwards = len(train) * data.num_variants(config.data.crop_padding, config.data.flip)
  rate = batch / statistics.median(times)
  return {'cache_build_batch': batch, 'cache_build_images_per_s': rate,
          'cache_build_hours': forwards / rate / 3600, 'cache_forwards': forwards,
          'cache_gb': forwards * train.num_classes * 4 / 1e9}


def bench_method(method_name: str, pair: str, batch: int, steps: int, warmup: int,
                 dtype: str, datasets: tuple, workdir: str, cache_build: tuple | None = None,
                 cache_placement: str = 'device') -> dict:
  """Times the train step of ``method_name`` on ``pair`` with its inputs from the loop's own
  feed (each step's indices, and the cache's rows when it is kept on the host, included in
  the time); returns one result row.

  ``cache_build = (batch, calls)``: the step with the teacher-logit cache (a random one) on
  the devices or in host memory (``cache_placement``), and the cache builder's speed
  (:func:`bench_cache_build`).
  """
  separate = method_name.endswith(':separate')
  method_name = method_name.removesuffix(':separate')
  config = _config(method_name, pair, batch, dtype)
  config.teacher.cache = cache_build is not None
  config.teacher.cache_placement = cache_placement
  if method_name.startswith('skd'):  # a quiz set held out, as experiments/skd.py does
    config.data.holdout = 5000
  trajectory_stages = None
  if 'teacher_trajectory' in methods.info(config.method).inputs(config):
    trajectory_stages = trajectory.stack([
        _random_variables(config.teacher.model, SYNTHETIC_CLASSES, 10 + j)
        for j in range(config.skd.stages)])
  teacher_vars = _random_variables(config.teacher.model, SYNTHETIC_CLASSES)
  run = loop_lib.prepare(config, workdir, datasets=datasets, teacher_variables=teacher_vars,
                          teacher_trajectory=trajectory_stages,
                          teacher_logits=_random_cache(config, datasets) if cache_build else None)
  state = run.initial_state()
  feed = run.open_feed(None, 0, state.rng)
  compiled_steps, flops, step_memory, t0 = [], 0.0, 0.0, time.perf_counter()
  steps_to_time = ([run.steps_for(v).train for v in _separate(run.method)] if separate
                   else [run.steps.train])
  for train_step in steps_to_time:
    compiled = train_step.lower(state, feed.frozen, *feed.train_inputs(0)).compile()
    flops += trace.cost_flops(compiled)
    step_memory = max(step_memory, trace.step_memory_bytes(compiled))
    compiled_steps.append(compiled)
  compile_s = time.perf_counter() - t0
  times = []
  for i in range(warmup + steps):
    t = time.perf_counter()
    inputs = feed.train_inputs(i % run.steps_per_epoch)
    for compiled in compiled_steps:  # separate steps: one after another, each net's own
      state, metrics = compiled(state, feed.frozen, *inputs)
    jax.block_until_ready(metrics['loss'])
    if i >= warmup:
      times.append(time.perf_counter() - t)
  med = statistics.median(times)
  label = 'vanilla (teacher)' if method_name == 'vanilla_teacher' else method_name
  build = {}
  if cache_build is not None:
    del state, feed  # the step's buffers, before the builder's
    build = bench_cache_build(run, teacher_vars, *cache_build)
  return {
      **build,
      'method': label + (' (separate steps)' if separate else '') + _cache_label(
          cache_build and cache_placement), 'pair': pair,
      'teacher': config.teacher.model, 'net': config.model,
      'batch': batch, 'dtype': dtype, 'devices': jax.device_count(),
      'platform': jax.devices()[0].platform, 'compile_s': compile_s,
      'images_per_s': batch / med, 'images_per_s_min': batch / max(times),
      'images_per_s_max': batch / min(times), 'step_ms_median': 1000 * med,
      'timed_steps': len(times), 'step_memory_mb': step_memory / 2**20,
      'process_peak_memory_mb': _peak_memory_bytes() / 2**20,
      'step_gflops': flops / 1e9, 'achieved_gflops_per_s': flops / med / 1e9,
  }


def _cache_label(placement: str | None) -> str:
  """The row label's suffix of a step with the teacher-logit cache kept at ``placement``."""
  return {None: '', 'device': ' (teacher cache)',
          'host': ' (teacher cache in host memory)'}[placement or None]


# --------------------------------------------------------------------------- the loop


def _loop_config(method_name: str, pair: str, batch: int, dtype: str, steps: int,
                 log_every: int, teacher_dir: str):
  config = _config(method_name, pair, batch, dtype)
  digits_preset(config)
  config.log_every_steps = log_every
  config.checkpoint_every_steps = 10 ** 9  # only the per-epoch (and final) checkpoints
  config.max_steps = steps
  if methods.info(config.method).uses_teacher:
    config.teacher.checkpoint = teacher_dir
  train_size = len(data.load_split('digits', 'train').labels)
  config.num_epochs = max(1, -(-steps // (train_size // batch)))
  return config


class _BareStep:
  """The loop's own setup and step function (:func:`kdjax.train.loop.prepare`), timed step by
  step."""

  def __init__(self, run: loop_lib.Training, warmup: int):
    self.run, self.warmup = run, warmup
    self.state = run.initial_state()
    self.feed = run.open_feed(None, 0, self.state.rng)

  def times(self, steps: int, warmup: int | None = None) -> list[float]:
    """Seconds of each of ``steps`` steps after ``warmup`` untimed ones."""
    warmup = self.warmup if warmup is None else warmup
    times = []
    for i in range(warmup + steps):
      t = time.perf_counter()
      self.state, metrics = self.run.steps.train(
          self.state, self.feed.frozen, *self.feed.train_inputs(i % self.run.steps_per_epoch))
      jax.block_until_ready(metrics['loss'])
      if i >= warmup:
        times.append(time.perf_counter() - t)
    return times


def _loop_windows(metrics_path: str, steps_per_epoch: int) -> tuple[list, list]:
  """``(clean, excluded)`` training windows ``(first_step, last_step, images_per_second)``."""
  clean, excluded, previous = [], [], 0
  with open(metrics_path) as f:
    for line in f:
      row = json.loads(line)
      if row.get('split') != 'train':
        continue
      window = (previous + 1, row['step'], row['images_per_second'])
      # The first window holds the compilation; one that starts right after an epoch end
      # holds that epoch's evaluation and checkpoint.
      dirty = previous == 0 or previous % steps_per_epoch == 0
      (excluded if dirty else clean).append(window)
      previous = row['step']
  return clean, excluded


def bench_loop(method_name: str, pair: str, batch: int, dtype: str, steps: int,
               log_every: int, bare_steps: int, warmup: int) -> dict:
  """The training loop's images/second against the bare step's, on the digits data."""
  with tempfile.TemporaryDirectory(prefix='kdjax_bench_loop_') as tmp:
    teacher_dir = os.path.join(tmp, 'teacher')
    config = _loop_config(method_name, pair, batch, dtype, steps, log_every, teacher_dir)
    if methods.info(config.method).uses_teacher:  # a random teacher: speed ignores values
      num_classes = data.load_split('digits', 'train').num_classes
      teachers.save(teacher_dir, config.teacher.model, num_classes,
                    _random_variables(config.teacher.model, num_classes),
                    source='random init (throughput benchmark)')
    run = loop_lib.prepare(config, os.path.join(tmp, 'bare'))
    # Bare step before and after the loop (A/B/A): the machine's load drifts.
    bare_step = _BareStep(run, warmup)
    bare = bare_step.times(bare_steps)
    workdir = os.path.join(tmp, 'loop')
    t0 = time.perf_counter()
    results = loop_lib.train_and_evaluate(config, workdir)
    loop_s = time.perf_counter() - t0
    bare += bare_step.times(bare_steps, warmup=1)
    clean, excluded = _loop_windows(os.path.join(workdir, 'metrics.jsonl'), run.steps_per_epoch)
  bare_ips = batch / statistics.median(bare)
  loop_ips = statistics.median(w[2] for w in clean) if clean else float('nan')
  clean_steps = sum(w[1] - w[0] + 1 for w in clean)
  clean_seconds = sum((w[1] - w[0] + 1) * batch / w[2] for w in clean)
  label = 'vanilla (teacher)' if method_name == 'vanilla_teacher' else method_name
  return {
      'method': label, 'pair': pair, 'net': config.model, 'dataset': 'digits',
      'batch': batch, 'dtype': dtype, 'steps': results['step'],
      'steps_per_epoch': run.steps_per_epoch, 'log_every_steps': log_every,
      'loop_wall_s': loop_s,
      'windows_used': len(clean), 'windows_excluded': len(excluded),
      'loop_images_per_s': loop_ips,
      'loop_images_per_s_min': min((w[2] for w in clean), default=float('nan')),
      'loop_images_per_s_max': max((w[2] for w in clean), default=float('nan')),
      'loop_images_per_s_pooled': clean_steps * batch / clean_seconds if clean else float('nan'),
      'step_images_per_s': bare_ips,
      'step_images_per_s_min': batch / max(bare), 'step_images_per_s_max': batch / min(bare),
      'step_timed_steps': len(bare),
      'loop_over_step': loop_ips / bare_ips,
  }


# --------------------------------------------------------------------------- output


# --------------------------------------------------------------------------- ImageNet


def _imagenet_config(method_name: str, pair: str, batch: int, dtype: str, data_dir: str,
                     tiny: bool):
  """``method_name`` on the ImageNet preset ``pair`` (vanilla: its student) at batch ``batch``;
  ``tiny``: resnet8 of the CIFAR zoo (teacher too) on 32x32 crops."""
  if method_name == 'vanilla':
    config = imagenet_preset(base_config())
    config.model = config_lib.IMAGENET_PAIRS[pair][1]
  else:
    config = distillation_config(method_name, pair)
  config.data.data_dir, config.batch_size, config.dtype = data_dir, batch, dtype
  if tiny:
    config.zoo, config.model, config.teacher.model = 'cifar', 'resnet8', 'resnet8'
    config.data.image_size, config.data.resize_size = 32, 36
  return config


def bench_imagenet_step(method_name: str, config, steps: int, warmup: int, workdir: str) -> dict:
  """The host-batch train step of ``config``'s run, timed on one batch of its pipeline."""
  num_classes = image_sources.ImageFolder(os.path.join(config.data.data_dir, 'train')).num_classes
  teacher_vars = None
  if methods.info(config.method).uses_teacher:
    net = models.create(config.teacher.model, num_classes, zoo=config.zoo)
    teacher_vars = jax.device_get(net.init(jax.random.PRNGKey(1), jnp.zeros(
        (1, config.data.image_size, config.data.image_size, 3)), train=False))
  config.data.workers = 0
  run = loop_lib.prepare(config, workdir, teacher_variables=teacher_vars)
  state = run.initial_state()
  feed = run.open_feed(None, 0, state.rng)
  try:
    inputs = feed.train_inputs(0)
    t0 = time.perf_counter()
    compiled = run.steps.train.lower(state, feed.frozen, *inputs).compile()
    compile_s = time.perf_counter() - t0
    times = []
    for i in range(warmup + steps):
      t = time.perf_counter()
      state, metrics = compiled(state, feed.frozen, *inputs)
      jax.block_until_ready(metrics['loss'])
      if i >= warmup:
        times.append(time.perf_counter() - t)
  finally:
    feed.close()
  med = statistics.median(times)
  return {'method': method_name, 'net': config.model, 'teacher': config.teacher.model,
          'batch': config.batch_size, 'image_size': config.data.image_size,
          'compile_s': compile_s, 'step_images_per_s': config.batch_size / med,
          'step_images_per_s_min': config.batch_size / max(times),
          'step_images_per_s_max': config.batch_size / min(times),
          'step_gflops': trace.cost_flops(compiled) / 1e9, 'timed_steps': len(times)}


def bench_imagenet(args, names: list) -> tuple[list, list, dict]:
  """``(pipeline rows, step rows, folder facts)`` of ``--dataset imagenet``."""
  import input_pipeline  # pylint: disable=import-outside-toplevel  # benchmarks/, beside this
  size = 32 if args.tiny else 224
  width, height = (48, 40) if args.tiny else (500, 375)
  pipeline, steps = [], []
  with tempfile.TemporaryDirectory(prefix='kdjax_bench_imagenet_') as root:
    train = os.path.join(root, 'train')
    mean_kb = input_pipeline.write_folder(train, args.images, width, height)
    os.symlink(train, os.path.join(root, 'val'))  # prepare() opens both splits
    source = image_sources.ImageFolder(train)
    for workers in args.workers:
      rate, per_cpu = input_pipeline.through_grain(source, True, workers, args.batch, size)
      pipeline.append({'workers': workers, 'pipeline_images_per_s': rate,
                       'pipeline_images_per_cpu_s': per_cpu, 'batch': args.batch,
                       'image_size': size})
      print(f'pipeline, {workers} worker(s): {rate:.1f} img/s, {per_cpu:.1f} per CPU-second',
            file=sys.stderr, flush=True)
    for name in names:
      config = _imagenet_config(name, args.pair, args.batch, args.dtype, root, args.tiny)
      with tempfile.TemporaryDirectory(prefix='kdjax_bench_step_') as tmp:
        row = bench_imagenet_step(name, config, args.steps, args.warmup, tmp)
      best = max(p['pipeline_images_per_s'] for p in pipeline)
      row.update(pipeline_images_per_s=best,
                 pipeline_over_step=best / row['step_images_per_s'])
      steps.append(row)
      print(f'{name}: step {row["step_images_per_s"]:.1f} img/s, pipeline {best:.1f} img/s',
            file=sys.stderr, flush=True)
  return pipeline, steps, {'images': args.images, 'size': [width, height], 'mean_kB': mean_kb}


# --------------------------------------------------------------------------- output


def _format_table(rows: list[dict], cols) -> str:
  lines = ['| ' + ' | '.join(h for _, h, _ in cols) + ' |',
           '|' + '|'.join('---' for _ in cols) + '|']
  for r in rows:
    lines.append('| ' + ' | '.join(f.format(r[k]) for k, _, f in cols) + ' |')
  return '\n'.join(lines)


STEP_COLUMNS = [
    ('method', 'method', '{}'), ('net', 'net', '{}'),
    ('images_per_s', 'img/s', '{:.1f}'), ('images_per_s_min', 'min', '{:.1f}'),
    ('images_per_s_max', 'max', '{:.1f}'), ('compile_s', 'compile s', '{:.1f}'),
    ('step_memory_mb', 'step MiB', '{:.0f}'), ('step_gflops', 'GFLOP/step', '{:.1f}'),
    ('achieved_gflops_per_s', 'GFLOP/s', '{:.1f}'),
    ('fraction_of_matmul_peak', 'of matmul peak', '{:.2f}')]
CACHE_COLUMNS = [
    ('method', 'method', '{}'), ('uncached_images_per_s', 'step img/s', '{:.1f}'),
    ('images_per_s', 'cached step img/s', '{:.1f}'), ('speedup', 'speed-up', '{:.2f}x'),
    ('cache_build_images_per_s', 'build forwards/s', '{:.1f}'),
    ('cache_build_hours', 'build h (50,000 x 162)', '{:.2f}'),
    ('runs_to_repay', 'runs of 240 epochs to repay', '{:.2f}')]
PIPELINE_COLUMNS = [
    ('workers', 'grain workers', '{}'), ('pipeline_images_per_s', 'pipeline img/s', '{:.1f}'),
    ('pipeline_images_per_cpu_s', 'img per CPU-second', '{:.1f}')]
IMAGENET_COLUMNS = [
    ('method', 'method', '{}'), ('net', 'net', '{}'), ('batch', 'batch', '{}'),
    ('step_images_per_s', 'step img/s', '{:.1f}'), ('compile_s', 'compile s', '{:.1f}'),
    ('pipeline_images_per_s', 'pipeline img/s (best)', '{:.1f}'),
    ('pipeline_over_step', 'pipeline/step', '{:.2f}')]
LOOP_COLUMNS = [
    ('method', 'method', '{}'), ('net', 'net', '{}'), ('steps', 'steps', '{}'),
    ('windows_used', 'windows', '{}'), ('loop_images_per_s', 'loop img/s', '{:.1f}'),
    ('step_images_per_s', 'bare step img/s', '{:.1f}'), ('loop_over_step', 'loop/step', '{:.3f}')]


def _repay(rows: list[dict], epochs: int) -> None:
  """Sets each cached row's speed-up over, and the runs that repay its build against, the
  uncached row of its method."""
  uncached = {r['method']: r for r in rows if 'cache_build_images_per_s' not in r}
  for row in rows:
    plain = uncached.get(row['method'].split(' (teacher cache')[0])
    if 'cache_build_images_per_s' not in row or plain is None:
      continue
    images_per_run = epochs * SYNTHETIC_TRAIN_SIZE
    saved = images_per_run * (1 / plain['images_per_s'] - 1 / row['images_per_s'])
    row.update(uncached_images_per_s=plain['images_per_s'],
               speedup=row['images_per_s'] / plain['images_per_s'],
               saved_hours_per_run=saved / 3600, run_epochs=epochs,
               runs_to_repay=row['cache_build_hours'] * 3600 / saved if saved > 0 else math.inf)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--method', default='kd',
                      help="method names joined by ',' ('vanilla_teacher' trains the "
                           "teacher; '<method>:separate' runs each net's update as its own "
                           "step; 'skd+slkd' is SKD on SLKD), or 'all' (every method of "
                           "kdjax.methods.names(), the teacher and skd+slkd)")
  parser.add_argument('--dataset', default='cifar', choices=['cifar', 'imagenet'],
                      help='cifar: the steps and loop on CIFAR-sized data; imagenet: the host '
                           'pipeline beside the host-batch step (see the docstring)')
  parser.add_argument('--pair', default=None,
                      choices=sorted(PAIRS) + sorted(config_lib.IMAGENET_PAIRS),
                      help='default res32x4_res8x4 (cifar), r34_r18 (imagenet)')
  parser.add_argument('--images', type=int, default=512,
                      help='imagenet: synthetic JPEGs the pipeline reads')
  parser.add_argument('--workers', type=int, nargs='+', default=[1, 2],
                      help='imagenet: grain worker processes to time the pipeline with')
  parser.add_argument('--batch', type=int, default=64)
  parser.add_argument('--steps', type=int, default=10, help='timed steps per method')
  parser.add_argument('--warmup', type=int, default=2)
  parser.add_argument('--dtype', default='float32', choices=['float32', 'bfloat16'])
  parser.add_argument('--matmul-size', type=int, default=2048)
  parser.add_argument('--cpu-conv', default='auto', choices=platform_tuning.CPU_CONV,
                      help="XLA:CPU's convolution library (config.platform.cpu_conv; "
                           "kdjax.platform_tuning): auto = eigen")
  parser.add_argument('--residual-outputs', default='auto',
                      choices=platform_tuning.RESIDUAL_OUTPUTS,
                      help='stored or fused residual block outputs '
                           '(config.platform.residual_outputs): auto = materialize on CPU')
  parser.add_argument('--loop-method', default='vanilla',
                      help="methods whose training loop is measured (',' separated); "
                           "'none' skips the loop")
  parser.add_argument('--loop-steps', type=int, default=200)
  parser.add_argument('--loop-log-every', type=int, default=10)
  parser.add_argument('--loop-bare-steps', type=int, default=10,
                      help='bare steps timed before and after the loop each')
  parser.add_argument('--teacher-cache', action='store_true',
                      help='each method that reads only the teacher\'s logits also with the '
                           'teacher-logit cache (config.teacher.cache), and its build cost')
  parser.add_argument('--cache-placement', default='device',
                      help='with --teacher-cache: where the cache is kept, comma-separated '
                           '(device: gathered on the devices; host: rows sent with each batch)')
  parser.add_argument('--cache-build-batch', type=int, default=base_config().teacher.cache_batch,
                      help="the cache builder's teacher forwards per call")
  parser.add_argument('--cache-build-calls', type=int, default=3,
                      help="the cache builder's timed calls (after one that compiles)")
  parser.add_argument('--tiny', action='store_true',
                      help='seconds, for the test: vanilla resnet8, batch 16: 2 timed steps, '
                           'the loop for 12 steps; a 512x512 matmul')
  parser.add_argument('--out', default='benchmarks/results/throughput.json')
  args = parser.parse_args(argv)
  imagenet = args.dataset == 'imagenet'
  if args.pair is None:
    args.pair = 'r34_r18' if imagenet else 'res32x4_res8x4'
  if (args.pair in config_lib.IMAGENET_PAIRS) != imagenet:
    parser.error(f'--pair {args.pair} is not a pair of --dataset {args.dataset}')
  if imagenet and args.tiny:
    args.batch, args.steps, args.warmup, args.images, args.workers = 8, 2, 1, 48, [1]
    args.method = 'vanilla'
  elif args.tiny:
    args.pair, args.batch, args.steps, args.warmup = 'res20_res8', 16, 2, 1
    args.matmul_size = 512
    args.loop_steps, args.loop_log_every, args.loop_bare_steps = 12, 4, 2
    args.method = args.loop_method = 'vanilla'
  # Before anything starts JAX's backend: XLA reads its flags once.
  tuning = base_config()
  tuning.platform.cpu_conv = args.cpu_conv
  tuning.platform.residual_outputs = args.residual_outputs
  platform_tuning.apply(tuning)
  names = (['vanilla', 'vanilla_teacher'] + [m for m in methods.names() if m != 'vanilla']
           + ['skd+slkd']
           if args.method == 'all' else args.method.split(','))
  loop_names = [] if args.loop_method == 'none' else args.loop_method.split(',')
  load_before = _load_average()
  if imagenet:
    return _main_imagenet(args, names, load_before)
  t_start = time.perf_counter()
  peaks, rows = [], []
  failed = []
  datasets = _synthetic_datasets()
  cache_build = (args.cache_build_batch, args.cache_build_calls)
  variants = [(name, None, None) for name in names]
  if args.teacher_cache:  # the cached step of each method the cache can serve
    variants = [v for name in names
                for v in [(name, None, None)] + [(name, cache_build, placement) for placement
                                                 in args.cache_placement.split(',')]
                if v[1] is None or methods.info(_method_of(name)).teacher_logits_only]
  for name, build, placement in variants:
    peaks.append(matmul_peak(args.dtype, args.matmul_size))
    try:
      with tempfile.TemporaryDirectory(prefix='kdjax_bench_step_') as tmp:
        row = bench_method(name, args.pair, args.batch, args.steps, args.warmup, args.dtype,
                           datasets, tmp, cache_build=build,
                           cache_placement=placement or 'device')
    except Exception as e:  # pylint: disable=broad-except  # one broken method: go on
      label = name + _cache_label(placement)
      failed.append({'method': label, 'error': f'{type(e).__name__}: {e}'[:500]})
      print(f'{label}: FAILED {failed[-1]["error"]}', file=sys.stderr, flush=True)
      continue
    row['matmul_peak_gflops_here'] = peaks[-1] / 1e9
    rows.append(row)
    print(f'{row["method"]}: {row["images_per_s"]:.1f} img/s, '
          f'{row["achieved_gflops_per_s"]:.1f} GFLOP/s (matmul {peaks[-1] / 1e9:.1f} GFLOP/s '
          f'just before)', file=sys.stderr, flush=True)
  peak = max(peaks)
  for row in rows:
    row['matmul_peak_gflops'] = peak / 1e9
    row['fraction_of_matmul_peak'] = row['achieved_gflops_per_s'] * 1e9 / peak
  _repay(rows, base_config().num_epochs)
  loops = []
  for name in loop_names:
    try:
      loops.append(bench_loop(name, args.pair, args.batch, args.dtype, args.loop_steps,
                              args.loop_log_every, args.loop_bare_steps, args.warmup))
    except Exception as e:  # pylint: disable=broad-except
      failed.append({'method': f'loop {name}', 'error': f'{type(e).__name__}: {e}'[:500]})
      print(f'loop {name}: FAILED {failed[-1]["error"]}', file=sys.stderr, flush=True)
      continue
    print(f'loop {name}: {loops[-1]["loop_images_per_s"]:.1f} img/s, bare step '
          f'{loops[-1]["step_images_per_s"]:.1f}: ratio {loops[-1]["loop_over_step"]:.3f}',
          file=sys.stderr, flush=True)
  machine = {'platform': platform.platform(), 'processor': platform.processor(),
             'cpu_count': os.cpu_count(), 'jax': jax.__version__,
             'jaxlib': getattr(__import__('jaxlib'), '__version__', None),
             'devices': [str(d) for d in jax.devices()],
             'device_kind': jax.devices()[0].device_kind,
             'load_average_before': load_before, 'load_average_after': _load_average(),
             'xla_flags': os.environ.get('XLA_FLAGS', ''), 'cpu_conv': args.cpu_conv,
             'residual_outputs': args.residual_outputs,
             'wall_s': time.perf_counter() - t_start}
  print(f'matmul peak ({args.matmul_size}x{args.matmul_size} {args.dtype}, best of the run): '
        f'{peak / 1e9:.1f} GFLOP/s; load average before {load_before}, after '
        f'{machine["load_average_after"]}; XLA_FLAGS={machine["xla_flags"]!r}')
  print(_format_table(rows, STEP_COLUMNS))
  cached = [row for row in rows if 'runs_to_repay' in row]
  if cached:
    print()
    print(_format_table(cached, CACHE_COLUMNS))
  if loops:
    print()
    print(_format_table(loops, LOOP_COLUMNS))
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  with open(args.out, 'w') as f:
    json.dump({'machine': machine, 'args': vars(args),
               'matmul_peak': {'gflops_per_s': peak / 1e9, 'size': args.matmul_size,
                               'dtype': args.dtype, 'measurements': [p / 1e9 for p in peaks]},
               'results': rows, 'loop': loops, 'failed': failed}, f, indent=2)
  print(f'wrote {args.out}', file=sys.stderr)
  for fail in failed:
    print(f'FAILED {fail["method"]}: {fail["error"]}', file=sys.stderr)
  return 1 if failed else 0


def _main_imagenet(args, names: list, load_before: list) -> int:
  """``--dataset imagenet``: the tables and the JSON of :func:`bench_imagenet`."""
  t_start = time.perf_counter()
  pipeline, steps, folder = bench_imagenet(args, names)
  machine = {'platform': platform.platform(), 'cpu_count': os.cpu_count(),
             'cpus_usable': len(os.sched_getaffinity(0)), 'jax': jax.__version__,
             'devices': [str(d) for d in jax.devices()],
             'device_kind': jax.devices()[0].device_kind,
             'load_average_before': load_before, 'load_average_after': _load_average(),
             'wall_s': time.perf_counter() - t_start}
  print(f'{folder["images"]} synthetic JPEGs of {folder["size"][0]}x{folder["size"][1]} '
        f'({folder["mean_kB"]:.0f} kB on average); {machine["cpus_usable"]} CPUs; load average '
        f'before {load_before}, after {machine["load_average_after"]}')
  print(_format_table(pipeline, PIPELINE_COLUMNS))
  print()
  print(_format_table(steps, IMAGENET_COLUMNS))
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  with open(args.out, 'w') as f:
    json.dump({'machine': machine, 'args': vars(args), 'folder': folder,
               'pipeline': pipeline, 'steps': steps}, f, indent=2)
  print(f'wrote {args.out}', file=sys.stderr)
  return 0


if __name__ == '__main__':
  sys.exit(main())
