"""SLKD: the loss terms, where gradients flow, and the fused step against separate steps."""

import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import build_method, tiny_config
from kdjax.methods.base import Batch, FrozenInputs, StepContext
from kdjax.train.state import init_state
from kdjax.train.step import apply_update

B, K = 6, 10


def _np_ce(z, y):
  z = z - z.max(-1, keepdims=True)
  logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
  return -logp[np.arange(len(y)), y].mean()


def _np_kd(zs, zt, t):
  def logsm(z):
    z = z / t
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))
  ls, lt = logsm(zs), logsm(zt)
  return (np.exp(lt) * (lt - ls)).sum(-1).mean() * t * t


def _method(**slkd):
  config = tiny_config('slkd', **{'teacher.model': 'resnet8', 'teacher.checkpoint': 'unused'})
  for k, v in slkd.items():
    config.slkd[k] = v
  return config, build_method(config, K)


def _logits():
  rng = np.random.default_rng(0)
  return {n: jnp.asarray(rng.normal(size=(B, K)) * 3) for n in ('student', 'slt1', 'slt2',
                                                               'teacher')}


def _loss_on_logits(method, logits, labels):
  """The method's loss with each net replaced by fixed (differentiable) logits."""
  def run(name, x, **kwargs):
    del x, kwargs
    return types.SimpleNamespace(logits=logits[name])
  ctx = StepContext(step=0, epoch=1, rng=jax.random.PRNGKey(0),
                    teacher=types.SimpleNamespace(logits=logits['teacher']))
  return method.loss(run, Batch(jnp.zeros((B, 32, 32, 3)), labels), ctx)


def test_loss_terms_equal_a_hand_computed_reference():
  config, method = _method(rho=0.3, eta=3.0, lambda_ts=1.0)
  c = config.slkd
  z = _logits()
  y = np.arange(B) % K
  loss, terms = _loss_on_logits(method, z, jnp.asarray(y))
  zn = {k: np.asarray(v) for k, v in z.items()}
  fused = 0.3 * zn['slt1'] + 0.7 * zn['slt2']
  t = c.temperature
  expected = {
      'ts_ce': 0.1 * _np_ce(zn['student'], y),
      'ts_kd': 0.9 * _np_kd(zn['student'], zn['teacher'], t),
      'slts_ce': 3 * 0.1 * _np_ce(zn['student'], y),
      'slts_kd': 3 * 0.9 * _np_kd(zn['student'], fused, t),
  }
  for j in ('slt1', 'slt2'):
    expected[f'{j}_ce'] = 0.1 * _np_ce(zn[j], y)
    expected[f'{j}_kd'] = 0.9 * _np_kd(zn[j], zn['teacher'], t)
  for k, v in expected.items():
    np.testing.assert_allclose(terms[k], v, rtol=1e-5, err_msg=k)
  np.testing.assert_allclose(loss, sum(expected.values()), rtol=1e-5)
  np.testing.assert_allclose(terms['kl_fused_student'], _np_kd(zn['student'], fused, t) / t**2,
                             rtol=1e-5)


@pytest.mark.parametrize('fused_target_grad', [False, True])
def test_student_terms_reach_the_sl_teachers_only_with_fused_target_grad(fused_target_grad):
  _, method = _method(fused_target_grad=fused_target_grad)
  z = _logits()
  y = jnp.arange(B) % K

  def grads_of(term_names):
    def f(z_learning):
      _, terms = _loss_on_logits(method, {**z, **z_learning}, y)
      return sum(terms[t] for t in term_names)
    return jax.grad(f)({n: z[n] for n in ('student', 'slt1', 'slt2')})

  student_terms = grads_of(['ts_ce', 'ts_kd', 'slts_ce', 'slts_kd'])
  for sl in ('slt1', 'slt2'):
    magnitude = float(jnp.abs(student_terms[sl]).max())
    if fused_target_grad:
      assert magnitude > 1e-3
    else:
      assert magnitude == 0.0
  own = grads_of(['slt1_ce', 'slt1_kd'])
  assert float(jnp.abs(own['student']).max()) == 0.0


@pytest.mark.slow
def test_fused_step_equals_three_separate_single_net_steps():
  config, method = _method()
  teacher_vars = method.teacher.init(jax.random.PRNGKey(5), jnp.zeros((1, 32, 32, 3)))
  state = init_state(method, 0, (32, 32, 3))
  rng = np.random.default_rng(1)
  batch = Batch(jnp.asarray(rng.normal(size=(8, 32, 32, 3)), jnp.float32),
                jnp.asarray(rng.integers(0, K, 8), jnp.int32))
  key = jax.random.PRNGKey(0)
  frozen = FrozenInputs(teacher=teacher_vars)
  fused, _ = jax.jit(lambda s: apply_update(method, s, frozen, batch, key,
                                            steps_per_epoch=100))(state)

  groups = {'student': ['ts_ce', 'ts_kd', 'slts_ce', 'slts_kd'],
            'slt1': ['slt1_ce', 'slt1_kd'], 'slt2': ['slt2_ce', 'slt2_kd']}
  for net, term_names in groups.items():
    def net_loss(run, batch, ctx, term_names=term_names):
      _, terms = method.loss(run, batch, ctx)
      return sum(terms[t] for t in term_names), {}
    single = method.__class__(**{**method.__dict__, 'stages': (((net,), net_loss),)})
    separate, _ = jax.jit(lambda s: apply_update(single, s, frozen, batch, key,
                                                 steps_per_epoch=100))(state)
    for a, b in zip(jax.tree.leaves(fused.params[net]), jax.tree.leaves(separate.params[net])):
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    for a, b in zip(jax.tree.leaves(fused.batch_stats[net]),
                    jax.tree.leaves(separate.batch_stats[net])):
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  assert set(fused.params) == {'student', 'slt1', 'slt2'}, 'the teacher is not a learning net'
  teacher_before = jax.tree.map(np.array, teacher_vars)
  jax.jit(lambda s: apply_update(method, s, FrozenInputs(teacher=teacher_vars), batch, key,
                                 steps_per_epoch=100))(state)
  for a, b in zip(jax.tree.leaves(teacher_vars), jax.tree.leaves(teacher_before)):
    np.testing.assert_array_equal(a, b)
  for net in groups:  # every net really moved
    assert any(not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(fused.params[net]),
                                                        jax.tree.leaves(state.params[net])))


@pytest.mark.slow
def test_sequential_mode_updates_sl_teachers_before_the_student_sees_them():
  config, method = _method(mode='sequential')
  teacher_vars = method.teacher.init(jax.random.PRNGKey(5), jnp.zeros((1, 32, 32, 3)))
  state = init_state(method, 0, (32, 32, 3))
  rng = np.random.default_rng(1)
  batch = Batch(jnp.asarray(rng.normal(size=(8, 32, 32, 3)), jnp.float32),
                jnp.asarray(rng.integers(0, K, 8), jnp.int32))
  frozen = FrozenInputs(teacher=teacher_vars)
  new, metrics = jax.jit(lambda s: apply_update(method, s, frozen, batch,
                                                jax.random.PRNGKey(0), steps_per_epoch=100))(state)
  # The student's fused target came from the updated SL-teachers: recompute it.
  def logits(name, params):
    return method.nets[name].apply({'params': params, 'batch_stats': state.batch_stats[name]},
                                   batch.images, train=True, mutable=['batch_stats'])[0].logits
  fused_after = 0.5 * logits('slt1', new.params['slt1']) + 0.5 * logits('slt2', new.params['slt2'])
  s_logits = logits('student', state.params['student'])
  from kdjax import losses
  np.testing.assert_allclose(metrics['loss/slts_kd'],
                             3 * 0.9 * losses.kd(s_logits, fused_after, temperature=4.0),
                             rtol=1e-5)
  # and the SL-teachers' running statistics were updated once, as in the joint mode
  _, joint = _method()
  joint_new, _ = jax.jit(lambda s: apply_update(joint, s, FrozenInputs(teacher=teacher_vars), batch,
                                                jax.random.PRNGKey(0), steps_per_epoch=100))(state)
  for a, b in zip(jax.tree.leaves(new.batch_stats['slt1']),
                  jax.tree.leaves(joint_new.batch_stats['slt1'])):
    np.testing.assert_allclose(a, b, rtol=1e-6)
