"""tests/test_step_kd.py's two KD steps in float32 and in float64, against mdistiller's.

    python benchmarks/float64_parity.py          # needs the fixture step_kd.npz (tests/)

Prints, for each pair of {kdjax float32, kdjax float64, PyTorch float32 (the fixture)}, the
worst ratio of a weight's difference to the test's tolerance (rtol 1e-4, atol 2e-6; 1 is at
the limit) after the two steps. The float64 run is the exact answer float32 rounds: a float32
run far from it is wrong, not rounded. It decided pyproject.toml's jax floor (kdjax issue 26,
2026-12-02, 2-core x86-64 CPU: PyTorch 0.32, jax 0.10.2 0.16, jax 0.10.0 and 0.10.1 1,698).
"""

import os
import subprocess
import sys
import tempfile

import numpy as np

TESTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', 'tests')


def two_steps(mode: str, out: str) -> None:
  """Runs the test's two steps in ``mode`` ('float32' or 'float64'); saves the weights."""
  import jax  # pylint: disable=import-outside-toplevel
  jax.config.update('jax_enable_x64', mode == 'float64')
  import flax  # pylint: disable=import-outside-toplevel
  sys.path.insert(0, TESTS)
  from conftest import (  # pylint: disable=import-outside-toplevel
      build_method, load_fixture, tiny_config)
  from kdjax import convert  # pylint: disable=import-outside-toplevel
  from kdjax.methods.base import Batch  # pylint: disable=import-outside-toplevel
  from kdjax.train.state import TrainState  # pylint: disable=import-outside-toplevel
  from kdjax.train.step import apply_update  # pylint: disable=import-outside-toplevel
  ref, dtype = load_fixture('step_kd.npz'), np.dtype(mode)

  def variables(model, prefix):
    weights = {k[len(prefix):]: ref[k].astype(np.float32) for k in ref.files
               if k.startswith(prefix)}
    return jax.tree.map(lambda a: np.asarray(a, dtype), convert.variables_from_torch(model,
                                                                                      weights))
  config = tiny_config('kd', model=str(ref['student_name']))
  config.teacher.model = str(ref['teacher_name'])
  method = build_method(config, 100, dtype=dtype, steps_per_epoch=10**6)
  student = variables(config.model, 'student_before/')
  teacher = variables(config.teacher.model, 'teacher/')
  state = TrainState(np.int32(0), jax.random.PRNGKey(0), {'student': student['params']},
                     {'student': student['batch_stats']},
                     {'student': method.optimizers['student'].init(student['params'])})
  batch = Batch(ref['input'].transpose(0, 2, 3, 1).astype(dtype), ref['target'].astype(np.int32))
  update = jax.jit(lambda s: apply_update(method, s, {'teacher': teacher}, batch,
                                          jax.random.PRNGKey(0), steps_per_epoch=10**6))
  for _ in range(2):
    state, _ = update(state)
  np.savez(out, **flax.traverse_util.flatten_dict(
      {'params': state.params['student'], 'batch_stats': state.batch_stats['student']}, sep='/'))


def torch_weights() -> dict:
  sys.path.insert(0, TESTS)
  import flax  # pylint: disable=import-outside-toplevel
  from conftest import load_fixture  # pylint: disable=import-outside-toplevel
  from kdjax import convert  # pylint: disable=import-outside-toplevel
  ref = load_fixture('step_kd.npz')
  weights = {k[len('student_after2/'):]: ref[k] for k in ref.files
             if k.startswith('student_after2/')}
  return flax.traverse_util.flatten_dict(
      convert.variables_from_torch(str(ref['student_name']), weights), sep='/')


def worst(a: dict, b: dict) -> tuple:
  """(ratio to the test's tolerance, leaf) of the leaf where ``a`` is furthest from ``b``."""
  return max((float(np.max(np.abs(np.float64(a[k]) - np.float64(b[k])) /
                           (2e-6 + 1e-4 * np.abs(np.float64(b[k]))))), k) for k in b)


def main() -> None:
  if len(sys.argv) == 3:
    two_steps(*sys.argv[1:])
    return
  runs = {}
  with tempfile.TemporaryDirectory() as tmp:
    for mode in ('float32', 'float64'):
      out = os.path.join(tmp, f'{mode}.npz')
      subprocess.run([sys.executable, __file__, mode, out], check=True)
      runs[f'kdjax {mode}'] = dict(np.load(out))
  runs['PyTorch float32'] = torch_weights()
  import jax  # pylint: disable=import-outside-toplevel
  print(f'jax {jax.__version__}; worst weight after step 2, in units of the test tolerance:')
  names = list(runs)
  for i, a in enumerate(names):
    for b in names[i + 1:]:
      ratio, leaf = worst(runs[a], runs[b])
      print(f'  {a} vs {b}: {ratio:.2f} ({leaf})')


if __name__ == '__main__':
  main()
