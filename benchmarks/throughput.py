"""Throughput and memory of kdjax's train step, per method (a benchmark, not a test).

    python benchmarks/throughput.py --method kd --pair res32x4_res8x4 --batch 64
    python benchmarks/throughput.py --method all --out benchmarks/results/cpu.json

For each method it builds the real train step (the same jitted function the training loop
runs: gather, augmentation, teacher forward, one fused gradient, every net's optimizer) on
random CIFAR-shaped uint8 data, and reports: compile time, steady-state images/second
(median over timed steps after warm-up, with min and max), peak memory (host RSS on CPU,
the allocator's peak on accelerators), the step's FLOPs from XLA's cost analysis, and the
achieved FLOP/s. Results go to stdout as a table and to a JSON file.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import resource
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from kdjax import methods
from kdjax import config as config_lib
from kdjax.config import base_config
from kdjax.train import optim, step as step_lib
from kdjax.train.state import init_state

# config.PAIRS (teacher, student, lr) plus the digits pair, a small one for quick runs.
PAIRS = {**{name: pair[:2] for name, pair in config_lib.PAIRS.items()},
         'res20_res8': (config_lib.DIGITS_TEACHER, config_lib.DIGITS_STUDENT)}


def _peak_memory_bytes() -> int:
  device = jax.local_devices()[0]
  stats = device.memory_stats() if device.platform != 'cpu' else None
  if stats and 'peak_bytes_in_use' in stats:
    return int(stats['peak_bytes_in_use'])
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


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


def bench_method(method_name: str, pair: str, batch: int, steps: int, warmup: int,
                 dtype: str) -> dict:
  """Times the train step of ``method_name`` on ``pair``; returns one result row."""
  teacher, student = PAIRS[pair]
  separate = method_name.endswith(':separate')
  method_name = method_name.removesuffix(':separate')
  config = base_config()
  config.method = method_name
  config.model = student if method_name != 'vanilla_teacher' else teacher
  if method_name == 'vanilla_teacher':
    config.method = 'vanilla'
  config.teacher.model = teacher
  config.batch_size = batch
  config.dtype = dtype
  steps_per_epoch = 50000 // batch
  method = methods.build(config, num_classes=100, dtype=jnp.dtype(dtype), bn_groups=1,
                         optimizer_factory=lambda opt=None: optim.sgd(opt or config.optimizer,
                                                                      steps_per_epoch))
  mesh = step_lib.make_mesh()
  rep = step_lib.replicated(mesh)
  state = jax.device_put(init_state(method, 0, (32, 32, 3)), rep)
  teacher_vars = {}
  if method.teacher is not None:
    teacher_vars = jax.device_put(method.teacher.init(
        jax.random.PRNGKey(1), jnp.zeros((1, 32, 32, 3)), train=False), rep)
  rng = np.random.default_rng(0)
  images = jax.device_put(rng.integers(0, 256, (batch * 4, 32, 32, 3), dtype=np.uint8), rep)
  labels = jax.device_put(rng.integers(0, 100, (batch * 4,), dtype=np.int32), rep)
  idx = [jax.device_put(np.arange(i * batch, (i + 1) * batch, dtype=np.int32) % (batch * 4),
                        step_lib.data_sharded(mesh)) for i in range(4)]
  compiled_steps, flops, t0 = [], 0.0, time.perf_counter()
  for variant in (_separate(method) if separate else [method]):
    train_step = step_lib.make_train_step(variant, mesh, mean=(0.5,) * 3, std=(0.25,) * 3,
                                          crop_padding=4, flip=True,
                                          steps_per_epoch=steps_per_epoch,
                                          dtype=jnp.dtype(dtype))
    compiled = train_step.lower(state, teacher_vars, images, labels, idx[0]).compile()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    flops += float(cost.get('flops', float('nan'))) if cost else float('nan')
    compiled_steps.append(compiled)
  compile_s = time.perf_counter() - t0
  times = []
  for i in range(warmup + steps):
    t = time.perf_counter()
    for compiled in compiled_steps:  # separate steps: one after another, each net's own
      state, metrics = compiled(state, teacher_vars, images, labels, idx[i % 4])
    jax.block_until_ready(metrics['loss'])
    if i >= warmup:
      times.append(time.perf_counter() - t)
  med = statistics.median(times)
  return {
      'method': method_name + (' (separate steps)' if separate else ''), 'pair': pair, 'teacher': teacher, 'student': config.model,
      'batch': batch, 'dtype': dtype, 'devices': jax.device_count(),
      'platform': jax.devices()[0].platform, 'compile_s': compile_s,
      'images_per_s': batch / med, 'images_per_s_min': batch / max(times),
      'images_per_s_max': batch / min(times), 'step_ms_median': 1000 * med,
      'timed_steps': len(times), 'peak_memory_mb': _peak_memory_bytes() / 2**20,
      'step_gflops': flops / 1e9, 'achieved_gflops_per_s': flops / med / 1e9,
  }


def _table(rows: list[dict]) -> str:
  cols = [('method', 'method', '{}'), ('pair', 'pair', '{}'), ('student', 'net', '{}'),
          ('images_per_s', 'img/s', '{:.1f}'), ('images_per_s_min', 'min', '{:.1f}'),
          ('images_per_s_max', 'max', '{:.1f}'), ('compile_s', 'compile s', '{:.1f}'),
          ('peak_memory_mb', 'peak MiB', '{:.0f}'), ('step_gflops', 'GFLOP/step', '{:.1f}'),
          ('achieved_gflops_per_s', 'GFLOP/s', '{:.1f}')]
  lines = ['| ' + ' | '.join(h for _, h, _ in cols) + ' |',
           '|' + '|'.join('---' for _ in cols) + '|']
  for r in rows:
    lines.append('| ' + ' | '.join(f.format(r[k]) for k, _, f in cols) + ' |')
  return '\n'.join(lines)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--method', default='kd',
                      help="method names joined by ',' ('vanilla_teacher' trains the "
                           "teacher; '<method>:separate' runs each net's update as its own "
                           "step), or 'all'")
  parser.add_argument('--pair', default='res32x4_res8x4', choices=sorted(PAIRS))
  parser.add_argument('--batch', type=int, default=64)
  parser.add_argument('--steps', type=int, default=10, help='timed steps')
  parser.add_argument('--warmup', type=int, default=2)
  parser.add_argument('--dtype', default='float32', choices=['float32', 'bfloat16'])
  parser.add_argument('--out', default='benchmarks/results/throughput.json')
  args = parser.parse_args(argv)
  names = (['vanilla', 'vanilla_teacher'] + [m for m in methods.names() if m != 'vanilla']
           if args.method == 'all' else args.method.split(','))
  rows = []
  for name in names:
    rows.append(bench_method(name, args.pair, args.batch, args.steps, args.warmup, args.dtype))
    print(_table(rows[-1:]).splitlines()[-1], file=sys.stderr, flush=True)
  print(_table(rows))
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  with open(args.out, 'w') as f:
    json.dump({'machine': {'platform': platform.platform(), 'cpu_count': os.cpu_count(),
                           'jax': jax.__version__, 'devices': [str(d) for d in jax.devices()]},
               'results': rows}, f, indent=2)
  print(f'wrote {args.out}', file=sys.stderr)
  return 0


if __name__ == '__main__':
  sys.exit(main())
