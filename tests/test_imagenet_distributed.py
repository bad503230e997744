"""The host pipeline with 2 processes on 127.0.0.1 (CPU, gloo) equals 1 process.

Each process reads, decodes and feeds only its rows of every global batch (grain sharding by
JAX process): if the shards overlapped or missed rows, the two-process run would train on
other batches than the one-process run with the same two devices, and evaluate other images.
"""

import json

import jax
import numpy as np
import pytest

from conftest import restore_state
from test_distributed import launch
from test_imagenet_run import SHRUNK, VAL_PER_CLASS, TRAIN_PER_CLASS, _write_split


@pytest.mark.slow
def test_two_processes_feed_disjoint_shards_and_equal_one_process(tmp_path):
  rng = np.random.default_rng(0)
  _write_split(tmp_path / 'data' / 'train', rng, TRAIN_PER_CLASS)
  _write_split(tmp_path / 'data' / 'val', rng, VAL_PER_CLASS)
  args = ['--config=experiments/vanilla.py', f'--config.data.data_dir={tmp_path / "data"}',
          '--config.data.name=imagenet', *SHRUNK, '--config.data.workers=0',
          '--config.num_epochs=1', '--config.optimizer.lr=0.05']
  multi, single = tmp_path / 'multi', tmp_path / 'single'
  results = launch(args + [f'--workdir={multi}'], processes=2, devices=1)
  for rc, err in results:
    assert rc == 0, err
  assert '2 cpu device(s) in 2 processes, global batch 8 = 4 per device' in results[0][1]
  (rc, err), = launch(args + [f'--workdir={single}'], processes=1, devices=2)
  assert rc == 0, err
  a, b = restore_state(single), restore_state(multi)
  assert int(a['step']) == int(b['step']) == 4
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-8)
  ra, rb = (json.loads((w / 'results.json').read_text()) for w in (single, multi))
  # Every val image once in either: the same top-1 and, to rounding, the same mean loss.
  assert ra['last_top1'] == rb['last_top1']
  assert ra['last_epoch']['student']['loss'] == pytest.approx(rb['last_epoch']['student']['loss'],
                                                              rel=1e-6)
