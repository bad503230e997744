"""SKD: the meta-gradient through the virtual step, the stages, the trajectory (docs/skd.md)."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest


from conftest import build_method, run_cli, tiny_config
from kdjax import models
from kdjax.teachers import trajectory
from kdjax.methods import skd
from kdjax.methods.base import Batch, Method, LearningNets, StepContext
from kdjax.train import optim
from kdjax.train.state import init_state
from kdjax.train.step import apply_update, frozen_inputs

K = 10  # digits classes
# The student's learning rate per step (StepContext.lr): the tiny configs' SGD schedule.
LR = optim.lr_schedule(tiny_config().optimizer, 100, tiny_config().num_epochs)


def _batch(seed, n=8):
  rng = np.random.default_rng(seed)
  return Batch(jnp.asarray(rng.normal(size=(n, 32, 32, 3)), jnp.float32),
               jnp.asarray(rng.integers(0, K, n), jnp.int32))


def _snapshots(teacher, stages=3):
  variables = [teacher.init(jax.random.PRNGKey(10 + j), jnp.zeros((1, 32, 32, 3)), train=False)
               for j in range(stages)]
  return jax.tree.map(lambda *xs: np.stack(xs), *variables)


def _build(monkeypatch=None, dtype=jnp.float32, **overrides):
  """SKD on resnet8 -> resnet8 (a snapshot trajectory of 3 random teachers unless
  self_learning), with its frozen inputs and a batch carrying a quiz batch."""
  config = tiny_config('skd', **{'teacher.model': 'resnet8', **overrides})
  snapshots = None
  if config.skd.trajectory == 'snapshots':
    snapshots = _snapshots(models.create('resnet8', K))
  method = build_method(config, K, dtype=dtype, teacher_trajectory=snapshots)
  teacher_vars = method.teacher.init(jax.random.PRNGKey(5), jnp.zeros((1, 32, 32, 3)),
                                     train=False)
  return method, frozen_inputs(method, teacher_vars), _batch(0)._replace(quiz=_batch(1))


def _changed(a, b):
  return any(not np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def _one_stage(method, i):
  return Method(**{**method.__dict__, 'stages': (method.stages[i],)})


def test_meta_gradient_equals_finite_differences_of_the_quiz_loss(monkeypatch):
  """d/d(phi, psi) of CE(quiz, student after the virtual step), float64, vs central
  differences along random directions of each meta-network."""
  with jax.enable_x64(True):
    method, frozen, batch = _build(monkeypatch, dtype=jnp.float64,
                                   **{'skd.regression_weight': 0.0})
    to64 = lambda tree: jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), tree)
    frozen, batch = to64(frozen), to64(batch)._replace(labels=batch.labels,
                                                        quiz=to64(batch.quiz)._replace(
                                                            labels=batch.quiz.labels))
    state = init_state(method, 0, (32, 32, 3))
    params, batch_stats = to64(state.params), to64(state.batch_stats)
    # Away from the zero-initialised output layers, so every path of the meta-nets matters.
    rng = np.random.default_rng(3)
    for name in ('tbt', 'tet'):
      params[name] = jax.tree.map(lambda p: p + 0.05 * rng.normal(size=p.shape), params[name])
    meta_names, meta_loss = method.stages[0]
    assert meta_names == ('tbt', 'tet')
    teacher_out = method.teacher.apply(frozen.teacher, batch.images, train=False)
    ctx = StepContext(jnp.int32(0), jnp.int32(3), jax.random.PRNGKey(0), teacher_out, frozen,
                      lr=LR(3))

    def quiz_after_virtual_step(meta):
      run = LearningNets(method.nets, {**params, **meta}, batch_stats, state.extra)
      loss, terms = meta_loss(run, batch, ctx)
      return loss

    meta = {n: params[n] for n in meta_names}
    grad = jax.jit(jax.grad(quiz_after_virtual_step))(meta)
    f = jax.jit(quiz_after_virtual_step)
    for name in meta_names:
      direction = jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape)), meta[name])
      eps = 1e-7  # small: fewer ReLU kinks crossed; float64 keeps the rounding at ~1e-9
      shifted = lambda s: {**meta, name: jax.tree.map(lambda p, d: p + s * d, meta[name],
                                                      direction)}
      numeric = (f(shifted(eps)) - f(shifted(-eps))) / (2 * eps)
      analytic = sum(jnp.vdot(g, d) for g, d in zip(jax.tree.leaves(grad[name]),
                                                     jax.tree.leaves(direction)))
      assert abs(float(analytic)) > 1e-7, name  # the meta-gradient reaches this net
      np.testing.assert_allclose(float(analytic), float(numeric), rtol=1e-4, err_msg=name)


def test_virtual_step_leaves_the_real_student_alone(monkeypatch):
  method, frozen, batch = _build(monkeypatch)
  state = init_state(method, 0, (32, 32, 3))
  new, metrics = jax.jit(lambda s: apply_update(_one_stage(method, 0), s, frozen, batch,
                                                jax.random.PRNGKey(0), steps_per_epoch=100,
                                                learning_rate=LR))(
                                                    state)
  for name in ('student', 'connector'):
    assert not _changed(state.params[name], new.params[name]), name
    assert not _changed(state.batch_stats[name], new.batch_stats[name]), name
    assert not _changed(state.opt_state[name], new.opt_state[name]), name
  assert _changed(state.params['tbt'], new.params['tbt'])
  assert _changed(state.params['tet'], new.params['tet'])
  assert np.isfinite(metrics['loss/meta_quiz'])


def test_fused_step_equals_the_stages_one_after_another(monkeypatch):
  method, frozen, batch = _build(monkeypatch)
  state = init_state(method, 0, (32, 32, 3))
  key = jax.random.PRNGKey(0)
  update = lambda m: jax.jit(lambda s: apply_update(m, s, frozen, batch, key,
                                                    steps_per_epoch=100, learning_rate=LR)[0])
  fused = update(method)(state)
  separate = update(_one_stage(method, 1))(update(_one_stage(method, 0))(state))
  for name in method.nets:
    for a, b in zip(jax.tree.leaves(fused.params[name]), jax.tree.leaves(separate.params[name])):
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6, err_msg=name)
  # ... and the student's stage really used the updated meta-nets: the same stage on the
  # meta-nets from before the meta step gives another student.
  stale = update(_one_stage(method, 1))(state)
  assert _changed(stale.params['student'], fused.params['student'])


def test_full_system_updates_all_learners_and_never_the_teacher(monkeypatch):
  method, frozen, batch = _build(monkeypatch, **{'skd.trajectory': 'self_learning',
                                                 'skd.slkd_terms': True})
  assert set(method.nets) == {'student', 'connector', 'tbt', 'tet', 'slt1', 'slt2'}
  state = init_state(method, 0, (32, 32, 3))
  teacher_before = jax.tree.map(np.array, frozen.teacher)

  def step(state, frozen):
    def loss_of_frozen(fr):
      new, metrics = apply_update(method, state, fr, batch, jax.random.PRNGKey(0),
                                  steps_per_epoch=1, learning_rate=LR)
      return metrics['loss'], new
    (_, new), frozen_grad = jax.value_and_grad(loss_of_frozen, has_aux=True)(frozen)
    return new, frozen_grad

  step = jax.jit(step)
  first, frozen_grad = step(state, frozen)
  # Step 1 is in epoch 2 (1 step per epoch), stage 2 of 4: a second boundary is recorded,
  # so the behaviour term (and TBT's meta-gradient) is on from then.
  second, _ = step(first, frozen)
  for name in method.nets:
    assert _changed(state.params[name], second.params[name]), name
  for g in jax.tree.leaves(frozen_grad.teacher):
    assert not np.any(g)
  jax.tree.map(np.testing.assert_array_equal, frozen.teacher, teacher_before)
  # The slots hold SL-teacher 1 as it was when each stage began: [-, step 0's, step 1's].
  assert int(second.extra['trajectory_count']) == 2
  assert int(second.extra['trajectory_stage']) == 2
  slots = second.extra['trajectory']['params']
  jax.tree.map(np.testing.assert_array_equal, skd.snapshot(slots, 1),
               state.params['slt1'])
  jax.tree.map(np.testing.assert_array_equal, skd.snapshot(slots, 2),
               first.params['slt1'])


@pytest.mark.slow
def test_recorded_trajectory_and_tbt_regression(tmp_path):
  """A teacher run records K snapshots (the last = the final net); TBT's regression on that
  trajectory falls when TBT alone learns it."""
  from kdjax.train.loop import train_and_evaluate
  from conftest import restore_state
  config = tiny_config('vanilla', num_epochs=3, max_steps=None, **{'trajectory.stages': 3})
  train_and_evaluate(config, str(tmp_path / 'teacher'))
  assert sorted(os.listdir(tmp_path / 'teacher' / 'trajectory')) == [
      'stage_0', 'stage_1', 'stage_2']
  stacked = trajectory.load_snapshots(str(tmp_path / 'teacher'), 'resnet8', K)
  final = restore_state(tmp_path / 'teacher')
  jax.tree.map(np.testing.assert_array_equal, skd.snapshot(stacked, 2)['params'],
               final['params']['student'])
  assert _changed(skd.snapshot(stacked, 0)['params'],
                  skd.snapshot(stacked, 1)['params'])

  skd_config = tiny_config('skd', **{'teacher.model': 'resnet8', 'teacher.checkpoint':
                              str(tmp_path / 'teacher'), 'skd.meta_weight': 0.0,
                              'skd.meta_lr': 3e-3, 'num_epochs': 3})
  method = build_method(skd_config, K, teacher_trajectory=stacked)
  from kdjax import data
  train = data.load_split('digits', 'train')
  x = data.normalize(train.images[:32], train.mean, train.std, jnp.float32)
  batch = Batch(x, jnp.asarray(train.labels[:32]))._replace(
      quiz=Batch(x, jnp.asarray(train.labels[:32])))
  frozen = frozen_inputs(method, skd.snapshot(stacked, 2))
  meta_only = _one_stage(method, 0)
  state = init_state(method, 0, (32, 32, 3))
  # Epoch 2 of 3: stage 1, regression B(f_0, f_1) -> f_2 on the recorded snapshots.
  step = jax.jit(lambda s: apply_update(meta_only, s.replace(step=jnp.int32(1)), frozen,
                                        batch, jax.random.PRNGKey(0), steps_per_epoch=1,
                                        learning_rate=LR))
  losses = []
  for _ in range(30):
    state, metrics = step(state)
    losses.append(float(metrics['loss/tbt_regression']))
  assert losses[-1] < 0.5 * losses[0], losses


def test_snapshots_without_a_recorded_trajectory_is_a_clear_error(tmp_path):
  teacher_dir = tmp_path / 'teacher'
  from kdjax import teachers
  net = models.create('resnet8', K)
  teachers.save(str(teacher_dir), 'resnet8', K,
                net.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)), train=False))
  result = run_cli(['--config', 'experiments/skd.py:digits', '--workdir', str(tmp_path / 'w'),
                    f'--config.teacher.checkpoint={teacher_dir}', '--config.teacher.model=resnet8'])
  assert result.returncode == 2
  lines = result.stderr.strip().splitlines()
  assert lines[-1].startswith('kdjax: error: teacher') and 'no recorded trajectory' in lines[-1]
  assert 'trajectory.stages' in lines[-1] and 'self_learning' in lines[-1]
  assert 'Traceback' not in result.stderr
  assert not (tmp_path / 'w').exists()


@pytest.mark.slow
def test_digits_pipeline_end_to_end(tmp_path):
  """The digits preset, shrunk: a teacher recording 2 snapshots, the KD baseline, SKD."""
  small = ['--config.teacher.model=resnet8', '--config.num_epochs=2',
           '--config.teacher.num_epochs=2', '--config.teacher.trajectory_stages=2',
           '--config.data.holdout=1000', '--config.log_every_steps=2']
  result = run_cli(['--config', 'experiments/skd.py:digits', '--workdir', str(tmp_path)] + small)
  assert result.returncode == 0, result.stderr[-2000:]
  assert sorted(os.listdir(tmp_path / 'teacher' / 'trajectory')) == ['stage_0', 'stage_1']
  assert '437 train + 1000 held out' in result.stderr
  table = result.stdout
  assert 'kd student (last epoch)' in table and 'skd student (last epoch)' in table
  import json
  skd = json.loads((tmp_path / 'results.json').read_text())
  kd = json.loads((tmp_path / 'kd' / 'results.json').read_text())
  assert skd['finished'] and kd['finished'] and skd['method'] == 'skd' and kd['method'] == 'kd'
  assert f'{skd["last_top1"]:.2f}' in table and f'{kd["last_top1"]:.2f}' in table
