"""kdjax.losses against mdistiller: values and student gradients from the PyTorch fixtures.

Every loss with a reference in ``losses.npz`` must reproduce the value and the gradient with
respect to the student input to a relative error below 1e-5 in float64 (x64 is enabled only
inside each test) and about 1e-4 in float32. The fixtures were produced by mdistiller's own
functions (see ``../shared/fixtures/README.md``), so changing a convention (temperature power,
mean instead of sum, pooling, epsilons) breaks these tests. Gradients are also checked against
finite differences, and CRD (no fixture) against a hand-written NumPy reference.
"""

import functools
import inspect
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from conftest import fixture_path, load_fixture
from kdjax import losses
from kdjax.losses import _common

FIXTURE = load_fixture('losses.npz')
SPEC = json.loads(fixture_path('losses.json').read_text())
CASES = SPEC['cases']
DEFAULTS = SPEC['mdistiller_default_weights']
KEYS = set(FIXTURE.files)

# (dtype, tolerance on the relative error).
DTYPES = [pytest.param('float64', 1e-5, id='f64'), pytest.param('float32', 1e-4, id='f32')]


def _f64_cases(family):
  return sorted(c for c, v in CASES.items() if v['family'] == family and v['dtype'] == 'float64')


def _case(case, dtype):
  """Arrays of a fixture case for ``dtype``: inputs in that dtype, references in float64.

  ``case`` names the float64 case. For float32 the stored float32 case is used when present;
  otherwise the float64 inputs are cast (the README's float32 inputs are exactly that cast)
  and compared with the float64 references.
  """
  names = [case.replace('_f64', '_f32'), case] if dtype == 'float32' else [case]
  for name in names:
    prefix = name + '/'
    keys = [k for k in KEYS if k.startswith(prefix)]
    if keys:
      inputs = CASES[name]['inputs']
      out = {}
      for k in keys:
        short = k[len(prefix):]
        arr = FIXTURE[k]
        if short in inputs and np.issubdtype(arr.dtype, np.floating):
          arr = arr.astype(dtype)
        out[short] = arr
      return out
  pytest.skip(f'case {case!r} is listed in losses.json but absent from losses.npz')


def _nhwc(a):
  return jnp.asarray(np.asarray(a).transpose(0, 2, 3, 1))


def _nchw(a):
  return np.asarray(a).transpose(0, 3, 1, 2)


def _rel_err(actual, expected):
  actual = np.asarray(actual, np.float64).reshape(-1)
  expected = np.asarray(expected, np.float64).reshape(-1)
  assert actual.shape == expected.shape
  return float(np.max(np.abs(actual - expected)) / np.max(np.abs(expected)))


def _value_and_grad(fn, *args):
  """Jitted value and gradient of ``fn`` with respect to its first argument (the student)."""
  return jax.jit(jax.value_and_grad(fn))(*args)


def _values_and_grads(fns, *args):
  """``{name: (value, student gradient)}`` of several losses of the same inputs, one jit."""
  return jax.jit(lambda *a: {k: jax.value_and_grad(f)(*a) for k, f in fns.items()})(*args)


def _assert_close(actual, expected, tol, what):
  err = _rel_err(actual, expected)
  assert err < tol, f'{what}: relative error {err:.3g} >= {tol:g}'


# ----------------------------------------------------------------------------- logits

LOGIT_LOSSES = {
    'ce': lambda s, t, y: losses.cross_entropy(s, y),
    'kd_T1': lambda s, t, y: losses.kd(s, t, temperature=1.0),
    'kd_T2': lambda s, t, y: losses.kd(s, t, temperature=2.0),
    'kd_T4': lambda s, t, y: losses.kd(s, t),
    'dkd_a1_b8_T4': lambda s, t, y: losses.dkd(s, t, y),
    'dkd_tckd_T4': lambda s, t, y: losses.dkd(s, t, y, alpha=1.0, beta=0.0, temperature=4.0),
    'dkd_nckd_T4': lambda s, t, y: losses.dkd(s, t, y, alpha=0.0, beta=1.0, temperature=4.0),
}


@pytest.mark.parametrize('dtype,tol', DTYPES)
@pytest.mark.parametrize('case', _f64_cases('logits'))
def test_logit_losses_match_mdistiller(case, dtype, tol):
  with jax.enable_x64(dtype == 'float64'):
    d = _case(case, dtype)
    s, t = jnp.asarray(d['logits_student']), jnp.asarray(d['logits_teacher'])
    y = jnp.asarray(d['target'].astype(np.int32))
    results = _values_and_grads(LOGIT_LOSSES, s, t, y)
    for name, (value, grad) in results.items():
      assert value.shape == () and value.dtype == jnp.dtype(dtype)
      _assert_close(value, d[name], tol, f'{case} {name}')
      _assert_close(grad, d[f'{name}_grad_student'], tol, f'{case} {name} gradient')


# ----------------------------------------------------------------------------- features


def _pairs(d, n, s='s', t='t'):
  return [_nhwc(d[f'{s}{i}']) for i in range(n)], [_nhwc(d[f'{t}{i}']) for i in range(n)]


def _check_multistage(d, total, single, n, stage_key, tol, case, dtype):
  g_s, g_t = _pairs(d, n)
  for i in range(n):
    value = jax.jit(single)(g_s[i], g_t[i])
    assert value.shape == () and value.dtype == jnp.dtype(dtype)
    _assert_close(value, d[f'{stage_key}{i}'], tol, f'{case} {stage_key}{i}')
  value, grads = _value_and_grad(total, g_s, g_t)
  assert value.shape == () and value.dtype == jnp.dtype(dtype)
  _assert_close(value, d['loss'], tol, f'{case} loss')
  for i, grad in enumerate(grads):
    _assert_close(_nchw(grad), d[f'grad_s{i}'], tol, f'{case} gradient of s{i}')


@pytest.mark.parametrize('dtype,tol', DTYPES)
def test_at_matches_mdistiller(dtype, tol):
  """Stage 0 same size, stage 1 student pooled (16 -> 8), stage 2 teacher pooled (16 -> 8)."""
  with jax.enable_x64(dtype == 'float64'):
    d = _case('at_f64', dtype)
    p = CASES['at_f64']['p']
    _check_multistage(d, lambda g_s, g_t: losses.at(g_s, g_t, p=p),
                      lambda f_s, f_t: losses.single_stage_at(f_s, f_t, p=p),
                      3, 'stage', tol, 'at', dtype)


@pytest.mark.parametrize('dtype,tol', DTYPES)
def test_sp_matches_mdistiller(dtype, tol):
  with jax.enable_x64(dtype == 'float64'):
    d = _case('sp_f64', dtype)
    _check_multistage(d, losses.sp, losses.single_stage_sp, 2, 'pair', tol, 'sp', dtype)


@pytest.mark.parametrize('dtype,tol', DTYPES)
def test_nst_matches_mdistiller(dtype, tol):
  with jax.enable_x64(dtype == 'float64'):
    d = _case('nst_f64', dtype)
    _check_multistage(d, losses.nst, losses.single_stage_nst, 2, 'stage', tol, 'nst', dtype)


@pytest.mark.parametrize('dtype,tol', DTYPES)
def test_hcl_matches_mdistiller(dtype, tol):
  """Pairs at 16, 8, 4, 2 and 1 pixels exercise every branch of the pyramid."""
  with jax.enable_x64(dtype == 'float64'):
    d = _case('hcl_f64', dtype)
    _check_multistage(d, losses.hcl, losses.single_stage_hcl, 5, 'level', tol, 'hcl', dtype)


@pytest.mark.parametrize('dtype,tol', DTYPES)
def test_fitnet_matches_mdistiller(dtype, tol):
  with jax.enable_x64(dtype == 'float64'):
    d = _case('fitnet_f64', dtype)
    value, grad = _value_and_grad(losses.fitnet, _nhwc(d['s']), _nhwc(d['t']))
    assert value.dtype == jnp.dtype(dtype)
    _assert_close(value, d['loss'], tol, 'fitnet')
    _assert_close(_nchw(grad), d['grad_s'], tol, 'fitnet gradient')


@pytest.mark.parametrize('dtype,tol', DTYPES)
def test_ofd_matches_mdistiller(dtype, tol):
  with jax.enable_x64(dtype == 'float64'):
    d = _case('ofd_f64', dtype)
    target, margin = _nhwc(d['target']), _nhwc(d['margin'])
    value, grad = _value_and_grad(losses.ofd, _nhwc(d['source']), target, margin)
    assert value.dtype == jnp.dtype(dtype)
    _assert_close(value, d['loss'], tol, 'ofd')
    _assert_close(_nchw(grad), d['grad_source'], tol, 'ofd gradient')
    # A (C,) margin broadcasts like the NHWC (1, 1, 1, C) one.
    flat = jax.jit(losses.ofd)(_nhwc(d['source']), target, margin.reshape(-1))
    _assert_close(flat, d['loss'], tol, 'ofd with a (C,) margin')


# ----------------------------------------------------------------------------- relations

RKD_VARIANTS = {
    'loss_d25_a50': {},
    'distance': dict(distance_weight=1.0, angle_weight=0.0),
    'angle': dict(distance_weight=0.0, angle_weight=1.0),
}


@pytest.mark.parametrize('dtype,tol', DTYPES)
@pytest.mark.parametrize('case', _f64_cases('rkd'))
def test_rkd_matches_mdistiller(case, dtype, tol):
  with jax.enable_x64(dtype == 'float64'):
    d = _case(case, dtype)
    params = CASES[case]['params']
    fns = {name: functools.partial(losses.rkd, squared=params['squared'], eps=params['eps'],
                                   **weights)
           for name, weights in RKD_VARIANTS.items()}
    results = _values_and_grads(fns, jnp.asarray(d['s']), jnp.asarray(d['t']))
    for name, (value, grad) in results.items():
      assert value.dtype == jnp.dtype(dtype)
      _assert_close(value, d[name], tol, f'{case} {name}')
      _assert_close(grad, d[f'{name}_grad_s'], tol, f'{case} {name} gradient')


@pytest.mark.parametrize('dtype,tol', DTYPES)
@pytest.mark.parametrize('case', _f64_cases('pkt'))
def test_pkt_matches_mdistiller(case, dtype, tol):
  with jax.enable_x64(dtype == 'float64'):
    d = _case(case, dtype)
    f_t = jnp.asarray(d['t'])
    eps = CASES[case]['params']['eps']
    value, grad = _value_and_grad(lambda s, t: losses.pkt(s, t, eps=eps), jnp.asarray(d['s']), f_t)
    assert value.dtype == jnp.dtype(dtype)
    _assert_close(value, d['loss'], tol, f'{case} loss')
    _assert_close(grad, d['grad_s'], tol, f'{case} gradient')


# ----------------------------------------------------------------------------- finite differences


def _check_grads(fn, x):
  """``check_grads`` with a purely relative tolerance (the losses are small numbers)."""
  check_grads(jax.jit(fn), (x,), order=1, modes=('rev',), eps=1e-5, atol=0.0, rtol=1e-6)


def _rand(seed, *shape, dtype=jnp.float64):
  """Standard normal test input (NumPy's generator: nothing to compile)."""
  return jnp.asarray(np.random.default_rng(seed).normal(size=shape), dtype)


def _fd_case(name):
  """(loss of the student input with the teacher fixed, student input) for ``name``."""
  r = _rand
  if name == 'kd':
    t = 3.0 * r(1, 4, 10)
    return lambda s: losses.kd(s, t, temperature=4.0), 2.0 * r(0, 4, 10)
  if name == 'dkd':
    t, y = 3.0 * r(1, 4, 10), jnp.array([0, 3, 9, 3])
    return lambda s: losses.dkd(s, t, y), 2.0 * r(0, 4, 10)
  if name == 'at':  # same size, student pooled 8 -> 4, teacher pooled 8 -> 4
    g_t = [r(3, 3, 4, 4, 6), r(4, 3, 4, 4, 2), r(5, 3, 8, 8, 3)]
    return (lambda g: losses.at(g, g_t),
            [r(0, 3, 4, 4, 5), r(1, 3, 8, 8, 3), r(2, 3, 4, 4, 2)])
  if name == 'sp':
    g_t = [r(3, 4, 2, 2, 6), r(4, 4, 3)]
    return lambda g: losses.sp(g, g_t), [r(0, 4, 2, 2, 5), r(1, 4, 7)]
  if name == 'rkd':
    t = r(1, 5, 7)
    return lambda s: losses.rkd(s, t), r(0, 5, 4)
  if name == 'pkt':
    t = r(1, 5, 7)
    return lambda s: losses.pkt(s, t), r(0, 5, 4)
  if name == 'nst':
    g_t = [r(2, 3, 4, 4, 6), r(3, 3, 2, 2, 3)]
    return lambda g: losses.nst(g, g_t), [r(0, 3, 4, 4, 5), r(1, 3, 4, 4, 2)]
  if name == 'hcl':
    g_t = [r(2, 2, 8, 8, 3), r(3, 2, 2, 2, 4)]
    return lambda g: losses.hcl(g, g_t), [r(0, 2, 8, 8, 3), r(1, 2, 2, 2, 4)]
  if name == 'fitnet':
    t = r(1, 2, 3, 3, 4)
    return lambda s: losses.fitnet(s, t), r(0, 2, 3, 3, 4)
  raise KeyError(name)


FD_NAMES = ['kd', 'dkd', 'at', 'sp', 'rkd', 'pkt', 'nst', 'hcl', 'fitnet']


@pytest.mark.parametrize('name', FD_NAMES)
def test_gradients_match_finite_differences(name):
  with jax.enable_x64(True):
    fn, x = _fd_case(name)
    _check_grads(fn, x)


# ----------------------------------------------------------------------------- CRD


def _np_normalize(x):
  return x / np.linalg.norm(x, axis=1, keepdims=True)


def _np_nce(x, num_data, eps=1e-7):
  """RepDistiller's ContrastLoss written out by hand."""
  bsz, m = x.shape[0], x.shape[1] - 1
  pn = 1.0 / num_data
  total = 0.0
  for i in range(bsz):
    total += math.log(x[i, 0] / (x[i, 0] + m * pn + eps))
    for k in range(1, m + 1):
      total += math.log(m * pn / (x[i, k] + m * pn + eps))
  return -total / bsz


def _np_crd(v_s, v_t, bank_s, bank_t, z_s, z_t, idx, cidx, temperature, momentum):
  """Hand reference of ContrastMemory.forward + the two ContrastLosses of mdistiller's CRD."""
  num_data = bank_s.shape[0]
  out_s = np.exp(np.einsum('bkd,bd->bk', bank_t[cidx], v_s) / temperature)
  out_t = np.exp(np.einsum('bkd,bd->bk', bank_s[cidx], v_t) / temperature)
  z_s = out_s.mean() * num_data if z_s < 0 else z_s
  z_t = out_t.mean() * num_data if z_t < 0 else z_t
  loss = _np_nce(out_s / z_s, num_data) + _np_nce(out_t / z_t, num_data)
  new_s, new_t = bank_s.copy(), bank_t.copy()
  new_s[idx] = _np_normalize(momentum * bank_s[idx] + (1 - momentum) * v_s)
  new_t[idx] = _np_normalize(momentum * bank_t[idx] + (1 - momentum) * v_t)
  return loss, new_s, new_t, z_s, z_t


def _crd_inputs(seed=0, num_data=12, dim=5, bsz=3, k=4):
  rng = np.random.default_rng(seed)
  v_s = _np_normalize(rng.normal(size=(bsz, dim)))
  v_t = _np_normalize(rng.normal(size=(bsz, dim)))
  stdv = 1.0 / math.sqrt(dim / 3)
  bank_s = rng.uniform(-stdv, stdv, size=(num_data, dim))
  bank_t = rng.uniform(-stdv, stdv, size=(num_data, dim))
  idx = rng.permutation(num_data)[:bsz]
  cidx = np.concatenate([idx[:, None], rng.integers(0, num_data, size=(bsz, k))], axis=1)
  return v_s, v_t, bank_s, bank_t, idx, cidx


def test_crd_matches_hand_computed_nce_and_momentum_update():
  temperature, momentum = 0.3, 0.6
  with jax.enable_x64(True):
    v_s, v_t, bank_s, bank_t, idx, cidx = _crd_inputs()
    memory = losses.CRDMemory(jnp.asarray(bank_s), jnp.asarray(bank_t), jnp.asarray(-1.0),
                              jnp.asarray(-1.0))
    state = (bank_s, bank_t, -1.0, -1.0)
    step_fn = jax.jit(functools.partial(losses.crd, temperature=temperature, momentum=momentum))
    for step in range(2):  # the first call sets Z, the second must reuse it
      loss, memory = step_fn(jnp.asarray(v_s), jnp.asarray(v_t), memory, jnp.asarray(idx),
                             jnp.asarray(cidx))
      ref_loss, *state = _np_crd(v_s, v_t, *state, idx, cidx, temperature, momentum)
      np.testing.assert_allclose(loss, ref_loss, rtol=1e-12, err_msg=f'step {step}')
      np.testing.assert_allclose(memory.student, state[0], rtol=1e-12, atol=1e-15)
      np.testing.assert_allclose(memory.teacher, state[1], rtol=1e-12, atol=1e-15)
      np.testing.assert_allclose([memory.z_student, memory.z_teacher], state[2:], rtol=1e-12)
    # Rows outside the batch are untouched; updated rows are unit vectors.
    others = np.setdiff1d(np.arange(bank_s.shape[0]), idx)
    np.testing.assert_array_equal(memory.student[others], bank_s[others])
    np.testing.assert_allclose(np.linalg.norm(memory.teacher[idx], axis=1), 1.0, rtol=1e-12)


def test_crd_is_pure_and_jittable():
  v_s, v_t, bank_s, bank_t, idx, cidx = _crd_inputs(seed=1)
  memory = losses.CRDMemory(jnp.asarray(bank_s, jnp.float32), jnp.asarray(bank_t, jnp.float32),
                            jnp.asarray(-1.0), jnp.asarray(-1.0))
  args = (jnp.asarray(v_s, jnp.float32), jnp.asarray(v_t, jnp.float32), memory, idx, cidx)
  first = losses.crd(*args)
  second = losses.crd(*args)
  jitted = jax.jit(losses.crd)(*args)
  for other in (second, jitted):
    for a, b in zip(jax.tree.leaves(first), jax.tree.leaves(other)):
      np.testing.assert_allclose(a, b, rtol=1e-6)
  # The input state is not modified (no hidden globals, no in-place update).
  np.testing.assert_array_equal(memory.student, np.asarray(bank_s, np.float32))
  np.testing.assert_array_equal(memory.teacher, np.asarray(bank_t, np.float32))
  assert float(memory.z_student) == -1.0
  loss, new_memory = first
  assert loss.shape == () and loss.dtype == jnp.float32
  assert jax.tree.structure(new_memory) == jax.tree.structure(memory)
  assert float(new_memory.z_student) > 0 and float(new_memory.z_teacher) > 0


def test_crd_gradients():
  """No gradient reaches the banks; the embedding gradient matches finite differences."""
  with jax.enable_x64(True):
    v_s, v_t, bank_s, bank_t, idx, cidx = _crd_inputs(seed=2)
    memory = losses.CRDMemory(jnp.asarray(bank_s), jnp.asarray(bank_t), jnp.asarray(-1.0),
                              jnp.asarray(-1.0))
    crd = jax.jit(losses.crd)
    _, memory = crd(jnp.asarray(v_s), jnp.asarray(v_t), memory, idx, cidx)  # sets Z
    bank_grads = jax.jit(jax.grad(lambda m: crd(jnp.asarray(v_s), jnp.asarray(v_t), m, idx,
                                                cidx)[0]))(memory)
    for g in jax.tree.leaves(bank_grads):
      np.testing.assert_array_equal(g, 0.0)
    fn = lambda v: losses.crd(v[0], v[1], memory, idx, cidx, temperature=0.5)[0]
    x = (jnp.asarray(v_s), jnp.asarray(v_t))
    _check_grads(fn, x)


def test_crd_state_helpers():
  memory = losses.crd_memory_init(jax.random.key(0), num_data=50, feat_dim=12)
  stdv = 1.0 / math.sqrt(12 / 3)
  for bank in (memory.student, memory.teacher):
    assert bank.shape == (50, 12) and bank.dtype == jnp.float32
    assert float(jnp.max(jnp.abs(bank))) <= stdv
  assert not np.array_equal(memory.student, memory.teacher)
  assert float(memory.z_student) < 0 and float(memory.z_teacher) < 0
  idx = jnp.array([3, 7, 11])
  cidx = losses.crd_sample_indices(jax.random.key(1), idx, num_data=50, k=8)
  assert cidx.shape == (3, 9)
  np.testing.assert_array_equal(cidx[:, 0], idx)
  assert int(cidx.min()) >= 0 and int(cidx.max()) < 50


# ----------------------------------------------------------------------------- API and dtypes


def _default(fn, name):
  return inspect.signature(fn).parameters[name].default


def test_defaults_are_mdistillers():
  assert _default(losses.kd, 'temperature') == DEFAULTS['KD']['TEMPERATURE']
  assert _default(losses.dkd, 'alpha') == DEFAULTS['DKD']['ALPHA']
  assert _default(losses.dkd, 'beta') == DEFAULTS['DKD']['BETA']
  assert _default(losses.dkd, 'temperature') == DEFAULTS['DKD']['T']
  assert _default(losses.at, 'p') == DEFAULTS['AT']['P']
  assert _default(losses.single_stage_at, 'p') == DEFAULTS['AT']['P']
  assert _default(losses.rkd, 'distance_weight') == DEFAULTS['RKD']['DISTANCE_WEIGHT']
  assert _default(losses.rkd, 'angle_weight') == DEFAULTS['RKD']['ANGLE_WEIGHT']
  assert _default(losses.rkd, 'eps') == DEFAULTS['RKD']['EPSILON']
  assert _default(losses.rkd, 'squared') == DEFAULTS['RKD']['SQUARED']
  assert _default(losses.pkt, 'eps') == CASES['pkt_b8_f64']['params']['eps']
  assert _default(losses.crd, 'temperature') == 0.07
  assert _default(losses.crd, 'momentum') == 0.5


def test_public_names_and_argument_order():
  for name in ['kd', 'dkd', 'fitnet', 'at', 'sp', 'rkd', 'pkt', 'nst', 'ofd', 'hcl', 'crd',
               'cross_entropy']:
    assert name in losses.__all__ and callable(getattr(losses, name))
  first_two = {name: list(inspect.signature(getattr(losses, name)).parameters)[:2]
               for name in ['kd', 'dkd', 'fitnet', 'at', 'sp', 'rkd', 'pkt', 'nst', 'hcl', 'crd']}
  for name, (student, teacher) in first_two.items():
    assert 's' in student and 't' in teacher, (name, student, teacher)
  assert list(inspect.signature(losses.dkd).parameters) == [
      'logits_student', 'logits_teacher', 'target', 'alpha', 'beta', 'temperature']
  assert list(inspect.signature(losses.ofd).parameters) == ['source', 'target', 'margin']


def _small_inputs():
  r = lambda k, *s: _rand(k, *s, dtype=jnp.float32)
  y = jnp.array([1, 0, 4, 2])
  return {
      'cross_entropy': (r(0, 4, 5), y),
      'kd': (r(0, 4, 5), r(1, 4, 5)),
      'dkd': (r(0, 4, 5), r(1, 4, 5), y),
      'fitnet': (r(0, 4, 3, 3, 2), r(1, 4, 3, 3, 2)),
      'at': ([r(0, 4, 4, 4, 2)], [r(1, 4, 8, 8, 3)]),
      'sp': ([r(0, 4, 4, 4, 2)], [r(1, 4, 8, 8, 3)]),
      'nst': ([r(0, 4, 4, 4, 2)], [r(1, 4, 8, 8, 3)]),
      'hcl': ([r(0, 4, 8, 8, 2)], [r(1, 4, 8, 8, 2)]),
      'rkd': (r(0, 4, 6), r(1, 4, 3)),
      'pkt': (r(0, 4, 6), r(1, 4, 3)),
      'ofd': (r(0, 4, 3, 3, 2), r(1, 4, 3, 3, 2), -jnp.abs(r(2, 2))),
  }


@pytest.mark.parametrize('name', sorted(_small_inputs()))
def test_jit_and_dtypes(name):
  fn = jax.jit(getattr(losses, name))
  args = _small_inputs()[name]
  value = fn(*args)
  assert value.shape == () and value.dtype == jnp.float32 and np.isfinite(value)
  # bfloat16 in, bfloat16 out; computed in float32 so it is the float32 value rounded.
  cast = jax.tree.map(lambda a: a.astype(jnp.bfloat16) if a.dtype == jnp.float32 else a, args)
  low = fn(*cast)
  assert low.shape == () and low.dtype == jnp.bfloat16
  reference = fn(*jax.tree.map(
      lambda a: a.astype(jnp.float32) if a.dtype == jnp.bfloat16 else a, cast))
  np.testing.assert_allclose(np.float32(low), reference, rtol=1e-2)


def test_usable_on_its_own():
  s = jnp.array([[1.0, 2.0, 3.0]])
  assert float(losses.kd(s, s, temperature=4.0)) == pytest.approx(0.0, abs=1e-6)
  assert float(losses.kd(s, -s, temperature=4.0)) > 0


def test_adaptive_pool_matches_pytorch_windows():
  """Non-divisible sizes use PyTorch's overlapping windows [floor(i n/m), ceil((i+1) n/m))."""
  x = np.random.default_rng(0).normal(size=(2, 7, 5, 3))
  out = np.asarray(_common.adaptive_avg_pool2d(jnp.asarray(x, jnp.float32), (4, 3)))
  ref = np.zeros((2, 4, 3, 3))
  for i in range(4):
    h0, h1 = (i * 7) // 4, math.ceil((i + 1) * 7 / 4)
    for j in range(3):
      w0, w1 = (j * 5) // 3, math.ceil((j + 1) * 5 / 3)
      ref[:, i, j] = x[:, h0:h1, w0:w1].mean(axis=(1, 2))
  np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-6)


def test_ofd_margin_formula():
  scale = np.array([1.0, -0.5, 2.0, 0.1])
  bias = np.array([0.0, 0.3, -1.0, 1.0])  # the last channel has cdf(-10) < 0.001
  ref = []
  for g, b in zip(scale, bias):
    s, m = abs(g), b
    cdf = 0.5 * (1 + math.erf(-m / s / math.sqrt(2)))
    ref.append(-s * math.exp(-(m / s)**2 / 2) / math.sqrt(2 * math.pi) / cdf + m
               if cdf > 0.001 else -3 * s)
  np.testing.assert_allclose(losses.ofd_margin(scale, bias), ref, rtol=1e-5)


def test_multistage_losses_reject_mismatched_lists():
  a = jnp.ones((2, 4, 4, 3))
  with pytest.raises(ValueError):
    losses.at([a, a], [a])
  with pytest.raises(TypeError):
    losses.sp(a, a)


@pytest.mark.parametrize('call, shapes', [
    (lambda: losses.kd(np.zeros((4, 10)), np.zeros((4, 100))), ['(4, 10)', '(4, 100)']),
    (lambda: losses.kd(np.zeros((4, 10)), np.zeros((4, 10, 1))), ['(4, 10)', '(4, 10, 1)']),
    (lambda: losses.dkd(np.zeros((4, 10)), np.zeros((5, 10)), np.zeros(4, int)),
     ['(4, 10)', '(5, 10)']),
    (lambda: losses.cross_entropy(np.zeros((4, 10)), np.zeros(3, int)), ['(4, 10)', '(3,)']),
    (lambda: losses.cross_entropy(np.zeros((4, 10)), np.zeros(4)), ['(4, 10)', 'float']),
    (lambda: losses.kd(np.zeros(10), np.zeros(10)), ['(10,)']),
    (lambda: losses.kd(np.zeros((2, 4, 10)), np.zeros((2, 4, 10))), ['(2, 4, 10)']),
])
def test_a_wrong_shape_is_a_value_error_naming_the_shapes(call, shapes):
  """Not silently reduced over a wrong axis, nor a raw broadcasting error (issue 26)."""
  with pytest.raises(ValueError) as raised:
    call()
  for shape in shapes:
    assert shape in str(raised.value), str(raised.value)
