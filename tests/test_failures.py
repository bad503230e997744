"""Staying up: a NaN stops the run and keeps the last good checkpoint, a failed checkpoint
write is reported in one line and the previous checkpoint resumes, bf16 keeps float32 state.

(SIGTERM: save, exit 0 and exact resume are tested in test_train.py, across processes in
test_distributed.py.)
"""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import ROOT, build_method, restore_state, run_cli, tiny_config

TINY = ['--config', 'experiments/vanilla.py:digits', '--config.model=resnet8',
        '--config.batch_size=32', '--config.num_epochs=1', '--config.log_every_steps=4',
        '--config.checkpoint_every_steps=4']


def _steps(workdir):
  """The checkpoint folders of ``workdir`` (finished ones are plain step numbers)."""
  return sorted(os.listdir(workdir / 'checkpoints'))


def _all_finite(tree) -> bool:
  return all(np.all(np.isfinite(np.asarray(x))) for x in jax.tree.leaves(tree)
             if np.issubdtype(np.asarray(x).dtype, np.floating))


@pytest.mark.slow
def test_nan_stops_the_run_naming_step_and_terms_and_keeps_the_good_checkpoint(tmp_path):
  # Step 6 sees NaN images; the metrics of steps 5..8 are fetched at step 8, before the
  # step-8 checkpoint would be written: the run stops there, naming step 6.
  workdir = tmp_path / 'run'
  proc = run_cli(TINY + ['--config.max_steps=12', '--config.debug.nan_at_step=6',
                         f'--workdir={workdir}'])
  assert proc.returncode == 2, proc.stderr[-2000:]
  lines = [l for l in proc.stderr.splitlines() if l.startswith('kdjax: error:')]
  assert len(lines) == 1 and 'Traceback' not in proc.stderr, proc.stderr[-2000:]
  line = lines[0]
  assert 'became non-finite at step 6 (NaN images injected by config.debug.nan_at_step)' in line
  # The non-finite terms are named: on CPU, XLA may turn the NaN into 0 in a fused ReLU
  # (the loss then stays finite), the gradient norm never.
  assert 'grad_norm/student=nan' in line or 'loss/ce=nan' in line, line
  assert 'the checkpoint of step 4 is kept' in line
  assert _steps(workdir) == ['4'], 'no NaN checkpoint (nor a half-written one) may appear'
  state = restore_state(workdir)
  assert int(state['step']) == 4 and _all_finite(state)


_FAIL_SECOND_SAVE = '''
import errno, sys
from orbax.checkpoint._src.handlers import json_checkpoint_handler as jch
original, calls = jch.JsonCheckpointHandler._save_fn, []
async def full_disk(self, item, directory):  # the 2nd checkpoint's write fails: disk full
  calls.append(directory)
  if len(calls) == 2:
    raise OSError(errno.ENOSPC, 'No space left on device', str(directory))
  return await original(self, item, directory)
jch.JsonCheckpointHandler._save_fn = full_disk
from kdjax import main
sys.argv = ['kdjax.main'] + sys.argv[1:]
main.run()
'''


@pytest.mark.slow
def test_failed_checkpoint_write_is_one_line_and_the_previous_checkpoint_resumes(tmp_path):
  # The write fails inside Orbax's background commit, as a full disk would make it fail;
  # it surfaces at the next save and stops the run naming the step that failed.
  workdir = tmp_path / 'run'
  args = TINY + ['--config.max_steps=12', f'--workdir={workdir}']
  proc = subprocess.run([sys.executable, '-c', _FAIL_SECOND_SAVE, *args], cwd=ROOT,
                        capture_output=True, text=True, timeout=600)
  assert proc.returncode == 2, proc.stderr[-2000:]
  assert 'Traceback' not in proc.stderr, proc.stderr[-3000:]
  lines = [l for l in proc.stderr.splitlines() if l.startswith('kdjax: error:')]
  assert len(lines) == 1, proc.stderr[-2000:]
  assert 'could not write the checkpoint of step 8' in lines[0]
  assert 'No space left on device' in lines[0]
  assert 'the checkpoint of step 4 is kept' in lines[0]
  assert '4' in _steps(workdir) and '8' not in _steps(workdir)
  assert not (workdir / 'results.json').exists()
  assert int(restore_state(workdir)['step']) == 4

  resumed = run_cli(args)
  assert resumed.returncode == 0, resumed.stderr[-2000:]
  assert 'resumed from the checkpoint at step 4' in resumed.stderr
  state = restore_state(workdir)
  assert int(state['step']) == 12 and _all_finite(state)
  assert not [s for s in _steps(workdir) if not s.isdigit()], 'stale temporary folders'


def test_config_debug_and_distributed_are_validated():
  from kdjax import plan
  from kdjax.errors import KdjaxError
  with pytest.raises(KdjaxError, match='config.debug.nan_at_step must be >= 1'):
    plan.validate(tiny_config(**{'debug.nan_at_step': 0}))
  with pytest.raises(KdjaxError, match='config.distributed must be auto, true or false'):
    plan.validate(tiny_config(distributed='sometimes'))
  plan.validate(tiny_config(distributed='false'))


@pytest.mark.slow
def test_bfloat16_computes_in_bf16_and_keeps_float32_state_and_losses():
  """KD with a bf16 student and teacher: float32 parameters, BatchNorm statistics,
  optimizer state, loss terms and gradient norms, and a first loss close to float32's."""
  from kdjax.methods.base import Batch
  from kdjax.train.state import init_state
  from kdjax.train.step import apply_update, frozen_inputs

  rng = np.random.default_rng(0)
  images = jnp.asarray(rng.normal(size=(16, 32, 32, 3)), jnp.float32)
  labels = jnp.asarray(rng.integers(0, 10, 16), jnp.int32)
  config = tiny_config('kd', **{'teacher.model': 'resnet8', 'teacher.checkpoint': 'unused'})
  losses, jaxprs = {}, {}
  for dtype in (jnp.float32, jnp.bfloat16):
    method = build_method(config, 10, dtype=dtype, steps_per_epoch=44)
    teacher = method.teacher.init(jax.random.PRNGKey(1), images[:2], train=False)
    state = init_state(method, 0, images.shape[1:])
    batch = Batch(images.astype(dtype), labels, jnp.arange(16))
    frozen = frozen_inputs(method, teacher)
    step = jax.jit(lambda s, b: apply_update(method, s, frozen, b, jax.random.PRNGKey(2),
                                             steps_per_epoch=44))
    jaxprs[dtype] = str(jax.make_jaxpr(step)(state, batch))
    losses[dtype] = []
    for _ in range(2):
      state, metrics = step(state, batch)
      losses[dtype].append(float(metrics['loss']))
      assert all(v.dtype == jnp.float32 for v in metrics.values()), metrics
      assert all(np.isfinite(float(v)) for v in metrics.values()), metrics
    floats = [x for x in jax.tree.leaves((state.params, state.batch_stats, state.opt_state))
              if jnp.issubdtype(x.dtype, jnp.floating)]
    assert floats and all(x.dtype == jnp.float32 for x in floats)
  assert 'bf16[16,32,32,16]' in jaxprs[jnp.bfloat16]  # the convolutions do run in bf16
  assert 'bf16' not in jaxprs[jnp.float32]
  np.testing.assert_allclose(losses[jnp.bfloat16][0], losses[jnp.float32][0], rtol=2e-2)
  assert losses[jnp.bfloat16][0] != losses[jnp.float32][0]
