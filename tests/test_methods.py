"""The mdistiller methods (DKD, FitNet, AT, SP, RKD, PKT, CRD, ReviewKD, OFD) as kdjax methods.

Every method, on a fixed batch: a few jitted updates lower the loss, every learning net
moves, the frozen teacher neither changes nor receives a gradient. Then the method-specific
parts: warm-ups, CRD's memory bank and negatives, OFD's margins, the connectors against
PyTorch.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import build_method, tiny_config
from kdjax import data, losses
from kdjax.methods import connectors, crd
from kdjax.methods.base import Batch, FrozenInputs, LearningNets, StepContext
from kdjax.train.state import init_state
from kdjax.train.step import apply_update

K = 10  # digits classes
CONNECTORS = {'dkd': (), 'at': (), 'sp': (), 'rkd': (), 'pkt': (), 'fitnet': ('regressor',),
              'crd': ('embed_s', 'embed_t'), 'reviewkd': ('abfs',), 'ofd': ('connectors',)}
HEAVY = ('crd', 'reviewkd', 'ofd', 'fitnet')  # longer compilations (tens of seconds on CPU)


def _build(name, **overrides):
  config = tiny_config(name, **{'teacher.model': 'resnet8', 'teacher.checkpoint': 'unused',
                                'crd.nce_k': 32, **overrides})
  return build_method(config, K, train_labels=data.load_split('digits', 'train').labels)


def _batch(n=8):
  rng = np.random.default_rng(1)
  return Batch(jnp.asarray(rng.normal(size=(n, 32, 32, 3)), jnp.float32),
               jnp.asarray(rng.integers(0, K, n), jnp.int32),
               jnp.asarray(rng.choice(1000, n, replace=False), jnp.int32))


def _teacher_vars(method):
  return method.teacher.init(jax.random.PRNGKey(5), jnp.zeros((1, 32, 32, 3)))


def _changed(a, b):
  return any(not np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


@pytest.mark.parametrize('name', [pytest.param(n, marks=pytest.mark.slow) if n in HEAVY else n
                                  for n in CONNECTORS])
def test_updates_lower_the_loss_and_leave_the_teacher_alone(name):
  method = _build(name)
  assert set(method.nets) == {'student', *CONNECTORS[name]}
  assert method.eval_nets == ('student',)
  teacher_vars = _teacher_vars(method)
  teacher_copy = jax.tree.map(np.array, teacher_vars)
  state = init_state(method, 0, (32, 32, 3))
  assert set(state.params) == set(method.nets)
  batch, key = _batch(), jax.random.PRNGKey(0)

  @jax.jit
  def step(state, teacher_vars):
    def loss_of_teacher(tv):
      new, metrics = apply_update(method, state, FrozenInputs(teacher=tv), batch, key,
                                  steps_per_epoch=100)
      return metrics['loss'], (new, metrics)
    (_, (new, metrics)), teacher_grad = jax.value_and_grad(loss_of_teacher, has_aux=True)(
        teacher_vars)
    return new, metrics, teacher_grad

  first, losses_seen = state, []
  for _ in range(5):
    state, metrics, teacher_grad = step(state, teacher_vars)
    losses_seen.append(float(metrics['loss']))
    assert all(float(jnp.abs(g).max()) == 0.0 for g in jax.tree.leaves(teacher_grad))
  assert all(np.isfinite(losses_seen)), losses_seen
  assert losses_seen[-1] < losses_seen[0], losses_seen
  assert {'loss/ce', f'loss/{name}'} <= set(metrics)
  for net in method.nets:
    assert _changed(state.params[net], first.params[net]), net
  jax.tree.map(np.testing.assert_array_equal, teacher_vars, teacher_copy)


def _term(method, state, batch, epoch, name):
  """Term ``name`` of the loss at ``epoch`` (same nets, batch and teacher)."""
  teacher_out = method.teacher.apply(_teacher_vars(method), batch.images, train=False)
  run = LearningNets(method.nets, state.params, state.batch_stats, state.extra)
  ctx = StepContext(step=jnp.asarray(0), epoch=jnp.asarray(epoch), rng=jax.random.PRNGKey(0),
                    teacher=teacher_out)
  return float(method.loss(run, batch, ctx)[1][name])


@pytest.mark.parametrize('name', ['dkd', pytest.param('reviewkd', marks=pytest.mark.slow)])
def test_warmup_scales_the_distillation_term_over_20_epochs(name):
  method = _build(name)
  state = init_state(method, 0, (32, 32, 3))
  batch = _batch()
  full = _term(method, state, batch, 25, name)
  assert full > 0
  for epoch in (1, 10, 20):
    np.testing.assert_allclose(_term(method, state, batch, epoch, name), full * epoch / 20,
                               rtol=1e-5)
  if name == 'dkd':  # mdistiller's defaults: beta 8, T 4, weight 1 once warm
    s = method.nets['student'].apply({'params': state.params['student'],
                                      'batch_stats': state.batch_stats['student']},
                                     batch.images, train=True, mutable=['batch_stats'])[0]
    t = method.teacher.apply(_teacher_vars(method), batch.images, train=False)
    np.testing.assert_allclose(full, losses.dkd(s.logits, t.logits, batch.labels, beta=8.0),
                               rtol=1e-5)


@pytest.mark.slow
def test_crd_updates_the_memory_bank_rows_of_the_batch():
  method = _build('crd')
  state = init_state(method, 0, (32, 32, 3))
  bank = jax.tree.map(np.array, state.extra['crd'])
  assert bank['student'].shape == (1437, 128) and float(bank['z_student']) < 0
  batch = _batch()
  # The expected rows: normalize(0.5 * old + 0.5 * v_s), v_s from the pre-update nets.
  run = LearningNets(method.nets, state.params, state.batch_stats)
  v_s = run('embed_s', run('student', batch.images).embedding)
  expected = 0.5 * bank['student'][batch.indices] + 0.5 * v_s
  expected = expected / jnp.linalg.norm(expected, axis=1, keepdims=True)
  # Donated, as the train loop's step: every state leaf must be its own buffer.
  frozen = FrozenInputs(teacher=_teacher_vars(method))
  step = jax.jit(lambda s: apply_update(method, s, frozen, batch,
                                        jax.random.PRNGKey(0), steps_per_epoch=100),
                 donate_argnums=(0,))
  updated = step(state)[0].extra['crd']
  np.testing.assert_allclose(updated['student'][batch.indices], expected, rtol=1e-4, atol=1e-5)
  others = np.setdiff1d(np.arange(1437), np.asarray(batch.indices))
  np.testing.assert_array_equal(updated['student'][others], bank['student'][others])
  np.testing.assert_array_equal(updated['teacher'][others], bank['teacher'][others])
  assert _changed(updated['teacher'][batch.indices], bank['teacher'][batch.indices])
  assert float(updated['z_student']) > 0 and float(updated['z_teacher']) > 0


def test_crd_negatives_come_from_other_classes_without_replacement():
  """As mdistiller's CIFAR100InstanceSample: k distinct other-class examples per row while
  every class has at least k of them, each about equally often over many draws."""
  labels = np.repeat(np.arange(4), [3, 5, 2, 6])
  sample = jax.jit(crd.other_class_sampler(labels, 4), static_argnums=3)
  idx = jnp.asarray([0, 3, 8, 10], jnp.int32)
  y = jnp.asarray(labels[idx])
  drawn = {int(i): [] for i in idx}
  for seed in range(300):
    out = np.asarray(sample(jax.random.PRNGKey(seed), idx, y, 7))
    np.testing.assert_array_equal(out[:, 0], idx)
    for row, label in zip(out, labels[idx]):
      negatives = row[1:]
      assert len(set(negatives)) == 7  # no example twice
      assert not np.any(labels[negatives] == label)
      drawn[int(row[0])].extend(negatives)
  for i, negatives in drawn.items():
    allowed = np.flatnonzero(labels != labels[i])
    counts = np.bincount(negatives, minlength=len(labels))[allowed]
    assert counts.min() > 0.8 * counts.mean()  # uniform over every other-class example


def test_crd_draws_with_replacement_only_when_a_class_has_too_few_negatives():
  labels = np.repeat(np.arange(4), [3, 5, 2, 6])  # class 3 has 10 other-class examples
  sample = crd.other_class_sampler(labels, 4)
  idx = jnp.asarray([0, 3, 8, 10], jnp.int32)
  out = np.asarray(sample(jax.random.PRNGKey(0), idx, jnp.asarray(labels[idx]), 4000))
  np.testing.assert_array_equal(out[:, 0], idx)
  for row, y in zip(out, labels[idx]):
    negatives = row[1:]
    assert not np.any(labels[negatives] == y)
    assert set(negatives) == set(np.flatnonzero(labels != y))


def test_crd_with_replacement_draws_every_row_with_replacement():
  """As mdistiller's ImageNetInstanceSample (replace=True): other-class examples only,
  repeats within a row even where k distinct ones exist, every one drawn about as often."""
  labels = np.repeat(np.arange(4), [30, 50, 20, 60])
  sample = jax.jit(crd.other_class_sampler(labels, 4, with_replacement=True),
                   static_argnums=3)
  idx = jnp.asarray([0, 35, 85, 110], jnp.int32)
  out = np.asarray(sample(jax.random.PRNGKey(0), idx, jnp.asarray(labels[idx]), 20000))
  np.testing.assert_array_equal(out[:, 0], idx)
  for row, y in zip(out, labels[idx]):
    negatives = row[1:]
    assert not np.any(labels[negatives] == y)
    counts = np.bincount(negatives, minlength=len(labels))[labels != y]
    assert counts.min() > 0.7 * counts.mean()  # uniform over the other-class examples
  # 20 distinct draws among 80 or more: without replacement a row never repeats.
  rows = np.asarray(sample(jax.random.PRNGKey(1), idx, jnp.asarray(labels[idx]), 20))[:, 1:]
  assert any(len(set(row)) < 20 for row in rows)


def test_ofd_teacher_keeps_the_zoo_variables_and_returns_the_bn_margins():
  method = _build('ofd')
  zoo = method.teacher.model
  variables = zoo.init(jax.random.PRNGKey(3), jnp.zeros((1, 32, 32, 3)))
  variables = jax.tree.map(lambda v: v + jax.random.normal(jax.random.PRNGKey(4), v.shape),
                           variables)
  assert jax.tree.structure(_teacher_vars(method)) == jax.tree.structure(variables)
  out = method.teacher.apply(variables, _batch(2).images, train=False)
  plain = zoo.apply(variables, _batch(2).images, train=False)
  np.testing.assert_array_equal(out.logits, plain.logits)
  # resnet8: one BasicBlock per stage; its bn2 comes right before the stage's ReLU.
  assert method.teacher.bn_paths == (('layer1.0', 'bn2'), ('layer2.0', 'bn2'),
                                     ('layer3.0', 'bn2'))
  for (block, bn), margin in zip(method.teacher.bn_paths, out.margins):
    p = variables['params'][block][bn]
    np.testing.assert_allclose(margin, losses.ofd_margin(p['scale'], p['bias']))
  assert len(out.margins) == len(plain.preact_features) - 1


def test_connectors_match_pytorch():
  torch = pytest.importorskip('torch')
  f = torch.nn.functional
  rng = np.random.default_rng(0)
  # FitNet's regressor in its three forms (BN in inference mode with fresh statistics).
  for s_shape, t_shape, kind in (((4, 4, 3), (8, 8, 5), 'transpose'),
                                 ((8, 8, 3), (4, 4, 5), 'stride2'),
                                 ((6, 6, 3), (4, 4, 5), 'valid')):
    reg = connectors.ConvReg(s_shape, t_shape)
    x = rng.normal(size=(2,) + s_shape).astype(np.float32)
    v = reg.init(jax.random.PRNGKey(0), jnp.asarray(x), train=False)
    kernel = torch.tensor(np.asarray(v['params']['conv']['kernel']))
    bias = torch.tensor(np.asarray(v['params']['conv']['bias']))
    xt = torch.tensor(x).permute(0, 3, 1, 2)
    if kind == 'transpose':  # torch weight (in, out, kh, kw)
      ref = f.conv_transpose2d(xt, kernel.permute(3, 2, 0, 1), bias, stride=2, padding=1)
    else:
      ref = f.conv2d(xt, kernel.permute(3, 2, 0, 1), bias, stride=2 if kind == 'stride2' else 1,
                     padding=1 if kind == 'stride2' else 0)
    ref = f.relu(ref / np.sqrt(1 + 1e-5)).permute(0, 2, 3, 1).numpy()
    np.testing.assert_allclose(reg.apply(v, jnp.asarray(x), train=False), ref, atol=1e-5)
  # ReviewKD's nearest resizing, up and down, integer and fractional factors.
  for size_in, size_out in ((2, 8), (3, 8), (8, 3), (5, 7)):
    x = rng.normal(size=(2, size_in, size_in, 3)).astype(np.float32)
    ref = f.interpolate(torch.tensor(x).permute(0, 3, 1, 2), (size_out, size_out),
                        mode='nearest').permute(0, 2, 3, 1).numpy()
    np.testing.assert_array_equal(connectors.nearest_resize(jnp.asarray(x), (size_out,) * 2),
                                  ref)


def _experiment(name):
  """``experiments/<name>.py`` as a module (the folder is not a package)."""
  import importlib.util
  import pathlib
  path = pathlib.Path(__file__).resolve().parents[1] / 'experiments' / f'{name}.py'
  spec = importlib.util.spec_from_file_location(f'experiment_{name}', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_experiment_presets_carry_mdistillers_per_pair_values():
  dkd_exp, reviewkd_exp = _experiment('dkd'), _experiment('reviewkd')
  assert dkd_exp.get_config('res56_res20').dkd.beta == 2.0
  assert dkd_exp.get_config('vgg13_vgg8').dkd.beta == 6.0
  assert dkd_exp.get_config('res32x4_res8x4').dkd.beta == 8.0
  assert dkd_exp.get_config('res32x4_shuv2').optimizer.lr == 0.01
  assert reviewkd_exp.get_config(None).reviewkd.reviewkd_weight == 5.0
  assert reviewkd_exp.get_config('res56_res20').reviewkd.reviewkd_weight == 1.0
  for name in CONNECTORS:
    config = _experiment(name).get_config('digits')
    assert (config.method, config.model, config.teacher.model) == (name, 'resnet8', 'resnet20')
    assert config.teacher.train_if_missing
