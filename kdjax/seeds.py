"""Several seeds of one config, one after another, into sibling workdirs.

    python -m kdjax.main --config experiments/kd.py:digits --workdir runs/kd --seeds 3

trains seeds 0, 1, 2 (``config.seed = i``) into ``runs/kd/seed_0``, ``runs/kd/seed_1``,
``runs/kd/seed_2``. A seed whose ``results.json`` says it finished is skipped, an unfinished
one resumed from its checkpoint, so the same command can be run again (after a kill, or with
a larger N) without losing finished work. A teacher the config trains first (the digits
presets) is trained once into ``runs/kd/teacher`` and shared by every seed.
"""

from __future__ import annotations

import os
import sys
from typing import Callable, Optional

import ml_collections

from kdjax import jsonio, pipelines
from kdjax.errors import KdjaxError


def seed_workdir(workdir: str, seed: int) -> str:
  """``DIR`` -> ``DIR/seed_<seed>``."""
  return os.path.join(workdir, f'seed_{seed}')


def read_results(workdir: str) -> Optional[dict]:
  """``workdir/results.json``, or None when there is none (or it cannot be read)."""
  return jsonio.read_json(os.path.join(workdir, 'results.json'))


def is_finished(workdir: str) -> bool:
  """Whether ``workdir`` holds a finished run: its ``results.json`` says so, and so does that
  of every run nested in it (a folder with checkpoints, e.g. SFTN's ``student``)."""
  if not (read_results(workdir) or {}).get('finished'):
    return False
  return all((read_results(d) or {}).get('finished')
             for d, subdirs, _ in os.walk(workdir) if 'checkpoints' in subdirs)


def seed_config(config: ml_collections.ConfigDict, seed: int) -> ml_collections.ConfigDict:
  """A copy of ``config`` with ``config.seed = seed``."""
  c = ml_collections.ConfigDict(config.to_dict())
  c.seed = seed
  return c


def run_seeds(config: ml_collections.ConfigDict, workdir: str, num_seeds: int,
              run: Callable[[ml_collections.ConfigDict, str], dict] = pipelines.run
              ) -> list[dict]:
  """Runs seeds ``0 .. num_seeds - 1`` of ``config`` into ``workdir/seed_<i>``.

  Finished seeds are skipped (their ``results.json`` is returned as it is); a signal stops
  the loop after the seed it interrupted. Returns one results dict per seed reached.
  """
  if num_seeds < 1:
    raise KdjaxError(f'--seeds must be at least 1, got {num_seeds}')
  try:
    pipelines.ensure_teacher(config, workdir)  # once, into workdir/teacher, for every seed
  except pipelines.Interrupted:
    return [{'stopped_by_signal': True}]
  all_results = []
  for seed in range(num_seeds):
    seed_dir = seed_workdir(workdir, seed)
    if is_finished(seed_dir):
      print(f'seed {seed}: finished in {seed_dir}, skipped', file=sys.stderr, flush=True)
      all_results.append(read_results(seed_dir))
      continue
    print(f'seed {seed} of {num_seeds}: {seed_dir}', file=sys.stderr, flush=True)
    results = run(seed_config(config, seed), seed_dir)
    all_results.append(results)
    if 'stopped_by_signal' in results:
      break
  return all_results
