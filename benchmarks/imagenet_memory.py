"""Memory per device of every ImageNet preset's train step, and the largest batch per device
that fits a 16, 40 and 80 GB chip (the table of ``docs/reproduce.md``).

    python benchmarks/imagenet_memory.py            # about 1 min per preset on 2 CPU cores

For each preset, :func:`kdjax.train.trace.trace_run` compiles the run's step on abstract
inputs (no data, no teacher download) at the preset's batch and at half of it, on one
device of the local backend, and reads XLA's memory analysis (arguments + outputs +
temporaries - donated aliases). The step's memory is ``a + b * batch``: ``a`` the state
(parameters, momentum, BatchNorm statistics, CRD's memory bank) and the frozen teacher, ``b``
the activations and batch buffers per image; the largest per-device batch fitting ``C``
bytes is ``floor((C - a) / b)``. Run on a CPU it is XLA:CPU's buffer assignment, not a
GPU's or a TPU's (other fusions, other temporaries): a guide, until measured there.
"""

from __future__ import annotations

import importlib

from kdjax import config as config_lib
from kdjax.errors import KdjaxError
from kdjax.train import trace

METHODS = ('kd', 'dkd', 'at', 'crd', 'reviewkd', 'ofd', 'slkd', 'sftn')
CHIPS_GB = (16, 40, 80)


def fit(config) -> tuple[float, float, float]:
  """``(a, b)`` of the step's memory ``a + b * batch`` per device, in bytes, and the step's
  GFLOP per image."""
  batch = config.batch_size
  full = trace.trace_run(config, compile=True)
  config.batch_size = batch // 2
  half = trace.trace_run(config, compile=True).memory_bytes
  config.batch_size = batch
  per_image = (full.memory_bytes - half) / (batch - batch // 2)
  return full.memory_bytes - per_image * batch, per_image, full.gflop_per_image


def main() -> None:
  print('| preset | GFLOP per image | batch | GiB per device at the batch | fixed GiB | '
        'MiB per image |' + ''.join(f' largest batch per device, {c} GB |' for c in CHIPS_GB))
  print('|---|---|---|---|---|---|' + '---|' * len(CHIPS_GB))
  for method in METHODS:
    for preset in config_lib.IMAGENET_PAIRS:
      try:
        config = importlib.import_module(f'kdjax.experiments.{method}').get_config(preset)
      except KdjaxError:  # no recipe for this pair
        continue
      fixed, per_image, gflop = fit(config)
      full = fixed + per_image * config.batch_size
      largest = [int((c * 1e9 - fixed) // per_image) for c in CHIPS_GB]
      print(f'| {method}:{preset} | {gflop:.2f} | {config.batch_size} | {full / 2**30:.1f} | '
            f'{fixed / 2**30:.2f} | {per_image / 2**20:.1f} |'
            + ''.join(f' {n} |' for n in largest), flush=True)


if __name__ == '__main__':
  main()
