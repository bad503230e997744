"""SFTN: the branches are the student's own suffix, where gradients flow, the loss, and the
teacher a finished run delivers."""

import json
import os
import types

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import build_method, tiny_config
from kdjax import methods, models, plan, teachers
from kdjax.errors import KdjaxError
from kdjax.methods import sftn
from kdjax.methods.base import Batch, LearningNets, StepContext
from kdjax import checkpoints
from kdjax.train.state import init_state

B, K = 4, 10


def _config(**overrides):
  overrides = {'model': 'resnet14', 'sftn.student': 'resnet8', **overrides}
  return tiny_config('sftn', **overrides)


def _method(config):
  return build_method(config, K)


def _flat(tree):
  return flax.traverse_util.flatten_dict(flax.core.unfreeze(tree), sep='/')


def _images(seed=0):
  return jnp.asarray(np.random.default_rng(seed).normal(size=(B, 32, 32, 3)), jnp.float32)


def test_branches_and_their_inputs():
  method = _method(_config())
  assert list(method.nets) == ['teacher', 'branch1', 'branch2']
  assert method.eval_nets == ('teacher', 'branch1', 'branch2')
  assert method.teacher is None and not methods.info('sftn').uses_teacher
  assert methods.info('sftn').trained_net == 'teacher'
  assert methods.info('kd').trained_net == 'student'
  # resnet14's layer1 (32x32x16) and layer2 (16x16x32) feed the branches.
  assert {k: v.shape for k, v in method.sample_inputs.items()} == {
      'branch1': (2, 32, 32, 16), 'branch2': (2, 16, 16, 32)}


@pytest.mark.parametrize('train', [False, True])
def test_branch_is_the_student_network_itself(train):
  """Fed the student's own stage-i features, with the student's weights, a branch returns
  the student's logits: the branch path is the real student, stages i+1.. and head."""
  method = _method(_config())
  student = models.create('resnet8', K)
  full = student.init(jax.random.key(1), _images(), train=False)
  # Non-trivial running statistics, so that eval mode uses them.
  full = {'params': full['params'], 'batch_stats': jax.tree.map(
      lambda v: v + 0.1 * jax.random.uniform(jax.random.key(2), v.shape), full['batch_stats'])}
  x = _images(3)
  out = student.apply(full, x, train=train, mutable=['batch_stats'] if train else False)
  out = out[0] if train else out
  full_params = _flat(full['params'])
  for i in (1, 2):
    name = f'branch{i}'
    branch = method.nets[name]
    init = branch.init(jax.random.key(0), jnp.zeros(method.sample_inputs[name].shape),
                       train=False)
    own = _flat(init['params']['student'])
    # The branch holds the student's stages i+1.. and head, under the student's own names.
    assert set(own) < set(full_params)
    assert {k.split('/')[0] for k in own} == (
        {'layer2.0', 'layer3.0', 'fc'} if i == 1 else {'layer3.0', 'fc'})
    variables = {}
    for col in ('params', 'batch_stats'):
      full_col = _flat(full[col])
      variables[col] = {**init[col], 'student': flax.traverse_util.unflatten_dict(
          {k: full_col[k] for k in _flat(init[col]['student'])}, sep='/')}
    got = branch.apply(variables, out.features[i], train=train, from_teacher=False,
                       mutable=['batch_stats'] if train else False)
    got = got[0] if train else got
    np.testing.assert_allclose(got.logits, out.logits, rtol=1e-5, atol=1e-5)


def _grads(config):
  method = _method(config)
  state = init_state(method, 0, (32, 32, 3))
  batch = Batch(_images(), jnp.arange(B) % K)
  ctx = StepContext(step=0, epoch=1, rng=jax.random.key(0))

  def f(params):
    return method.loss(LearningNets(method.nets, params, state.batch_stats), batch, ctx)[0]

  grads = jax.grad(f)(state.params)
  return {net: {k: float(jnp.linalg.norm(v)) for k, v in _flat(g).items()}
          for net, g in grads.items()}


def test_gradient_reaches_the_teacher_through_the_branch_terms():
  # Only the branches' CE: the teacher learns through the features the branches read (its
  # early stages), not through its head.
  g = _grads(_config(**{'sftn.lambda_t': 0.0, 'sftn.lambda_kl': 0.0}))
  assert g['teacher']['layer1.0/conv1/kernel'] > 0
  assert g['teacher']['conv1/kernel'] > 0
  assert g['teacher']['fc/kernel'] == 0.0
  assert g['branch1']['transform/conv/kernel'] > 0 and g['branch2']['student/fc/kernel'] > 0
  # Only the KL: the teacher learns through its logits (head) and its features.
  g = _grads(_config(**{'sftn.lambda_t': 0.0, 'sftn.lambda_ce': 0.0}))
  assert g['teacher']['fc/kernel'] > 0 and g['teacher']['layer1.0/conv1/kernel'] > 0
  assert g['branch1']['student/fc/kernel'] > 0


def _np_logsoftmax(z):
  z = z - z.max(-1, keepdims=True)
  return z - np.log(np.exp(z).sum(-1, keepdims=True))


def _np_ce(z, y):
  return -_np_logsoftmax(z)[np.arange(len(y)), y].mean()


def _np_kl(p_logits, q_logits, t):
  """tau^2 * mean_batch KL(softmax(p / t) || softmax(q / t))."""
  lp, lq = _np_logsoftmax(p_logits / t), _np_logsoftmax(q_logits / t)
  return (np.exp(lp) * (lp - lq)).sum(-1).mean() * t * t


@pytest.mark.parametrize('kl,warmup,epoch,factor', [
    ('kd', 0, 1, 1.0), ('reverse', 0, 1, 1.0), ('kd', 4, 1, 0.25), ('kd', 4, 6, 1.0)])
def test_loss_matches_a_hand_computed_reference(kl, warmup, epoch, factor):
  config = _config(**{'sftn.lambda_t': 0.7, 'sftn.lambda_ce': 1.3, 'sftn.lambda_kl': 3.0,
                      'sftn.temperature': 2.0, 'sftn.kl': kl, 'sftn.kl_warmup_epochs': warmup})
  method = _method(config)
  rng = np.random.default_rng(0)
  z = {n: rng.normal(size=(B, K)) * 3 for n in ('teacher', 'branch1', 'branch2')}
  y = np.array([0, 3, 7, 9])
  feats = [f'feature{i}' for i in range(4)]
  fed = {}

  def run(name, x, **kwargs):
    del kwargs
    fed[name] = x
    return types.SimpleNamespace(logits=jnp.asarray(z[name], jnp.float32), features=feats)

  loss, terms = method.loss(run, Batch(jnp.zeros((B, 32, 32, 3)), jnp.asarray(y)),
                            StepContext(step=0, epoch=jnp.asarray(epoch),
                                        rng=jax.random.key(0)))
  assert fed['branch1'] == 'feature1' and fed['branch2'] == 'feature2'
  expected = {'teacher_ce': 0.7 * _np_ce(z['teacher'], y)}
  for b in ('branch1', 'branch2'):
    expected[f'{b}_ce'] = 1.3 * _np_ce(z[b], y)
    p, q = (z['teacher'], z[b]) if kl == 'kd' else (z[b], z['teacher'])
    expected[f'{b}_kl'] = factor * 3.0 * _np_kl(p, q, 2.0)
  assert set(terms) == set(expected)
  for k, v in expected.items():
    np.testing.assert_allclose(terms[k], v, rtol=1e-5, err_msg=k)
  np.testing.assert_allclose(loss, sum(expected.values()), rtol=1e-5)


def test_kd_loss_direction_is_kl_teacher_student():
  """``losses.kd(s, t)`` is KL(softmax(t) || softmax(s)): SFTN's 'kd' is KL(p_T || p_R)."""
  rng = np.random.default_rng(1)
  s, t = rng.normal(size=(B, K)), rng.normal(size=(B, K))
  np.testing.assert_allclose(sftn.kl_term(jnp.asarray(s), jnp.asarray(t), temperature=1.0,
                                          direction='kd'), _np_kl(t, s, 1.0), rtol=1e-5)
  np.testing.assert_allclose(sftn.kl_term(jnp.asarray(s), jnp.asarray(t), temperature=1.0,
                                          direction='reverse'), _np_kl(s, t, 1.0), rtol=1e-5)


def test_workdir_is_a_teacher_checkpoint_without_branches(tmp_path):
  config = _config()
  method = _method(config)
  state = init_state(method, 0, (32, 32, 3))
  workdir = tmp_path / 'sftn'
  ckpt = checkpoints.Checkpointer(os.fspath(workdir / 'checkpoints'), keep=1)
  ckpt.save(5, state, {'history': []}, wait=True)
  ckpt.close()
  (workdir / 'config.json').write_text(json.dumps(json.loads(config.to_json_best_effort())))
  assert set(state.params) == {'teacher', 'branch1', 'branch2'}
  loaded = teachers.load_variables(os.fspath(workdir), 'resnet14', K)
  bare = jax.eval_shape(lambda: models.create('resnet14', K).init(
      jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False))
  assert set(_flat(loaded)) == set(_flat(bare))  # no transform/branch variables
  assert not any('transform' in k or 'branch' in k for k in _flat(loaded))
  for col in ('params', 'batch_stats'):
    for k, v in _flat(getattr(state, col)['teacher']).items():
      np.testing.assert_array_equal(_flat(loaded[col])[k], v)


def test_heterogeneous_pair_resamples_the_teacher_features():
  """resnet32x4 -> ShuffleV2: the teacher's maps are twice the student's size."""
  config = _config(model='resnet32x4', **{'sftn.student': 'ShuffleV2'})
  method = _method(config)
  for i, (shape, (down, cin, cout)) in enumerate(
      zip([(32, 32, 64), (16, 16, 128)], [(2, 64, 116), (2, 128, 232)]), start=1):
    branch = method.nets[f'branch{i}']
    assert method.sample_inputs[f'branch{i}'].shape[1:] == shape
    assert (branch.transform.down, branch.transform.in_channels,
            branch.transform.out_channels) == (down, cin, cout)
    out = jax.eval_shape(lambda b=branch, s=shape: b.init_with_output(
        jax.random.key(0), jnp.zeros((2,) + s), train=False)[0])
    assert out.logits.shape == (2, K)


def test_build_and_config_errors():
  with pytest.raises(KdjaxError, match='same number'):
    _method(_config(model='vgg13'))
  with pytest.raises(KdjaxError, match='config.sftn.student'):
    plan.validate(_config(**{'sftn.student': 'resnet9'}))
  with pytest.raises(KdjaxError, match='config.sftn.kl'):
    plan.validate(_config(**{'sftn.kl': 'forward'}))


def test_experiment_presets():
  import importlib.util
  spec = importlib.util.spec_from_file_location(
      'sftn_experiment', os.path.join(os.path.dirname(__file__), '..', 'experiments', 'sftn.py'))
  experiment = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(experiment)
  for preset, (teacher, student) in {
      'res32x4_res8x4': ('resnet32x4', 'resnet8x4'), 'wrn40_2_wrn16_2': ('wrn_40_2', 'wrn_16_2'),
      'vgg13_vgg8': ('vgg13', 'vgg8'), 'res32x4_shuv2': ('resnet32x4', 'ShuffleV2'),
      'wrn40_2_shuv1': ('wrn_40_2', 'ShuffleV1'), 'digits': ('resnet20', 'resnet8')}.items():
    config = experiment.get_config(preset)
    plan.validate(config)
    assert (config.method, config.model, config.sftn.student) == ('sftn', teacher, student)
    assert config.optimizer.lr == 0.05  # the teacher's vanilla recipe
  digits = experiment.get_config('digits')
  assert digits.sftn.distill == 'kd' and digits.sftn.compare_standard
  distill = sftn.distill_config(digits, '/x')
  assert (distill.method, distill.model, distill.teacher.model, distill.teacher.checkpoint) == (
      'kd', 'resnet8', 'resnet20', '/x')
  assert experiment.get_config('res32x4_shuv2').sftn.student_lr == 0.01


@pytest.mark.slow
def test_one_epoch_logs_teacher_and_branch_accuracy(tmp_path):
  from kdjax.train.loop import train_and_evaluate
  config = _config(model='resnet8', num_epochs=1, batch_size=128)
  results = train_and_evaluate(config, os.fspath(tmp_path / 'run'))
  assert results['finished']
  assert set(results['last_epoch']) >= {'teacher', 'branch1', 'branch2'}
  lines = [json.loads(l) for l in (tmp_path / 'run' / 'metrics.jsonl').read_text().splitlines()]
  splits = {l['split'] for l in lines}
  assert {'test/teacher', 'test/branch1', 'test/branch2'} <= splits
  assert 'loss/branch1_kl' in next(l for l in lines if l['split'] == 'train')
  teachers.load_variables(os.fspath(tmp_path / 'run'), 'resnet8', K)
