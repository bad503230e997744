"""What a checkpoint costs a training step, written to a local folder or to a bucket.

    python benchmarks/checkpoint_storage.py --emulator     # a local GCS server (tests/)
    python benchmarks/checkpoint_storage.py --remote gs://BUCKET/bench   # real Cloud Storage

Two measurements, each on a local workdir and on the ``gs://`` one:

1. A whole run: ``python -m kdjax.main`` trains ``--model`` on digits with a checkpoint every
   ``--every`` steps (logged every ``--every`` steps too, so each logged window holds one
   save). The step time is the median over the logged windows after the first (which holds
   the compilation) of the window's wall time / its steps, from ``metrics.jsonl``'s
   ``images_per_second``; a save blocks the loop only for its synchronous part, since Orbax
   writes in the background.
2. :class:`kdjax.checkpoints.Checkpointer` alone, on the train state of ``--state_model``
   (parameters, BatchNorm statistics and SGD momentum of a CIFAR-100 net): the time
   ``save()`` blocks the caller, the time until the write is complete, and a restore; the
   median of ``--repeats``.

The emulator is an in-memory Python server on the same machine: its figures show kdjax's
overhead and Orbax's asynchronous writes at work, not Cloud Storage's bandwidth.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]


def run_step_ms(workdir: str, model: str, steps: int, every: int) -> float:
  """Median milliseconds per step of a digits run into ``workdir`` (see the module)."""
  done = subprocess.run(
      [sys.executable, '-m', 'kdjax.main', '--config', f'{ROOT}/experiments/vanilla.py:digits',
       f'--workdir={workdir}', f'--config.model={model}', '--config.num_epochs=10',
       f'--config.max_steps={steps}', f'--config.checkpoint_every_steps={every}',
       f'--config.log_every_steps={every}', '--config.batch_size=32'],
      capture_output=True, text=True, cwd=ROOT)
  if done.returncode:
    raise SystemExit(f'the run into {workdir} failed:\n{done.stderr[-3000:]}')
  from kdjax import paths  # pylint: disable=import-outside-toplevel
  lines = [json.loads(l) for l in (paths.path(workdir) / 'metrics.jsonl').read_text().split('\n')
           if l.strip()]
  rates = [l['images_per_second'] for l in lines if l['split'] == 'train'][1:]
  return statistics.median(32 / r * 1000 for r in rates)


def save_times(directory: str, model: str, repeats: int) -> tuple[float, float, float]:
  """Median ``(ms save() blocks, ms until written, ms to restore)`` of ``model``'s state."""
  import jax  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  from kdjax import checkpoints, models  # pylint: disable=import-outside-toplevel
  variables = models.create(model, num_classes=100).init(
      jax.random.PRNGKey(0), np.zeros((1, 32, 32, 3), np.float32), train=False)
  state = {'params': variables['params'], 'batch_stats': variables['batch_stats'],
           'momentum': jax.tree.map(np.zeros_like, variables['params'])}
  blocked, written, restored = [], [], []
  ckpt = checkpoints.Checkpointer(directory, keep=2)
  for step in range(1, repeats + 1):
    t0 = time.perf_counter()
    ckpt.save(step, state, {'step': step})
    t1 = time.perf_counter()
    ckpt.save(step + 1000, state, {'step': step}, wait=True)  # waits for the first too
    t2 = time.perf_counter()
    blocked.append(t1 - t0)
    written.append((t2 - t1) / 2)
    t3 = time.perf_counter()
    ckpt.restore_latest(checkpoints.abstract_like(state))
    restored.append(time.perf_counter() - t3)
  ckpt.close()
  return tuple(1000 * statistics.median(x) for x in (blocked, written, restored))


@contextlib.contextmanager
def emulator():
  """The tests' local GCS server, its client variables set in this process."""
  sys.path.insert(0, str(ROOT / 'tests'))
  import gcs_emulator  # pylint: disable=import-outside-toplevel
  with gcs_emulator.running_emulator(('kdjax-bench',)) as url:
    os.environ.update(gcs_emulator.client_env(url))
    yield 'gs://kdjax-bench/bench'


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  where = parser.add_mutually_exclusive_group(required=True)
  where.add_argument('--emulator', action='store_true', help='a local GCS server (tests/)')
  where.add_argument('--remote', help='a gs:// folder to write into (left there)')
  parser.add_argument('--model', default='resnet8', help='the net trained in the run')
  parser.add_argument('--steps', type=int, default=80)
  parser.add_argument('--every', type=int, default=8, help='steps between checkpoints')
  parser.add_argument('--state_model', default='resnet32x4', help='the net of measurement 2')
  parser.add_argument('--repeats', type=int, default=5)
  args = parser.parse_args()
  from absl import logging  # pylint: disable=import-outside-toplevel
  logging.set_verbosity(logging.ERROR)  # Orbax's note on each save that waits for the last
  with (emulator() if args.emulator else contextlib.nullcontext(args.remote)) as remote, \
      tempfile.TemporaryDirectory() as local:
    print(f'| workdir | ms per step, run of {args.model} (a checkpoint every {args.every}) | '
          f'{args.state_model} state: ms save() blocks | ms until written | ms to restore |')
    print('|---|---|---|---|---|')
    for name, base in (('local', local), ('gs:// ' + ('emulator' if args.emulator else ''),
                                          remote)):
      step_ms = run_step_ms(f'{base}/run_{time.time_ns()}', args.model, args.steps, args.every)
      saves = save_times(f'{base}/state_{time.time_ns()}', args.state_model, args.repeats)
      print(f'| {name} | {step_ms:.1f} | ' + ' | '.join(f'{x:.1f}' for x in saves) + ' |')


if __name__ == '__main__':
  main()
