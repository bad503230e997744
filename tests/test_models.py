"""The zoo against mdistiller: parameter counts, feature shapes, and real outputs.

``models.json`` lists every model's parameter count and feature shapes; for the models with
``models_<name>.npz`` the PyTorch weights are converted and the eval-mode logits, stage
features, pooled embedding, train-mode logits and BN running statistics after one
train-mode forward must equal PyTorch's.
"""

import json

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kdjax import convert, models
from kdjax.teachers import torch_import
from conftest import fixture_path, load_fixture

MODELS_JSON = json.loads(fixture_path("models.json").read_text())["models"]
WITH_WEIGHTS = ['resnet8x4', 'resnet32x4', 'wrn_40_2', 'vgg13', 'ShuffleV1', 'MobileNetV2',
                'resnet56', 'resnet20']


def _nhwc(shape):
  n, c, h, w = shape
  return (n, h, w, c)


def _nchw_to_nhwc(a):
  return np.asarray(a).transpose(0, 2, 3, 1)


def test_names_are_mdistillers_cifar_zoo():
  assert sorted(models.names()) == sorted(MODELS_JSON)


@pytest.mark.parametrize('name', sorted(MODELS_JSON))
def test_parameter_count_and_feature_shapes(name):
  ref = MODELS_JSON[name]
  model = models.create(name, num_classes=100)
  x = jnp.zeros((4, 32, 32, 3))
  variables = jax.eval_shape(lambda: model.init(jax.random.key(0), x, train=False))
  count = sum(int(np.prod(v.shape)) for v in jax.tree.leaves(variables['params']))
  assert count == ref['params']
  out = jax.eval_shape(lambda v: model.apply(v, x, train=False), variables)
  assert out.logits.shape == (4, 100)
  assert [f.shape for f in out.features] == [_nhwc(s) for s in ref['feats']]
  if ref['preact_feats'] is None:
    assert out.preact_features is None
  else:
    assert [f.shape for f in out.preact_features] == [_nhwc(s) for s in ref['preact_feats']]
  assert out.embedding.shape == tuple(ref['pooled_feat'])


def _converted(name):
  weights = load_fixture(f'models_{name}.npz')
  state = {k: weights[k].astype(np.float32) for k in weights.files}
  return convert.variables_from_torch(name, state, num_classes=100)


def _assert_feature_close(actual, desired):
  # The float32 reference carries rounding error that grows with depth and magnitude:
  # resnet56's last-stage maps (|x| up to 20) differ from the float64 forward by ~2e-4,
  # so the absolute tolerance scales with the map's magnitude.
  atol = 1e-4 + 1e-5 * float(np.abs(desired).max())
  np.testing.assert_allclose(actual, desired, atol=atol, rtol=1e-4)


@pytest.mark.parametrize('name', WITH_WEIGHTS)
def test_eval_outputs_equal_pytorch(name):
  io = load_fixture(f'models_{name}_io.npz')
  variables = _converted(name)
  model = models.create(name, num_classes=100)
  out = model.apply(variables, jnp.asarray(_nchw_to_nhwc(io['input'])), train=False)
  np.testing.assert_allclose(out.logits, io['logits_eval'], atol=1e-4, rtol=0)
  for i, feat in enumerate(out.features):
    _assert_feature_close(feat, _nchw_to_nhwc(io[f'feats/{i}']))
  if out.preact_features is not None:
    for i, feat in enumerate(out.preact_features):
      _assert_feature_close(feat, _nchw_to_nhwc(io[f'preact_feats/{i}']))
  np.testing.assert_allclose(out.embedding, io['pooled_feat'], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize('name', WITH_WEIGHTS)
def test_train_mode_logits_and_running_statistics_equal_pytorch(name):
  io = load_fixture(f'models_{name}_io.npz')
  variables = _converted(name)
  model = models.create(name, num_classes=100)
  out, updates = model.apply(variables, jnp.asarray(_nchw_to_nhwc(io['input'])), train=True,
                             mutable=['batch_stats'])
  np.testing.assert_allclose(out.logits, io['logits_train'], atol=1e-4, rtol=0)
  stats = flax.traverse_util.flatten_dict(updates['batch_stats'])
  checked = 0
  for path, value in stats.items():
    key = torch_import.torch_key('batch_stats', path)
    np.testing.assert_allclose(value, io[f'train_buffers/{key}'], atol=1e-5, rtol=1e-4,
                               err_msg=key)
    checked += 1
  assert checked == sum(1 for k in io.files if k.startswith('train_buffers/')
                        and not k.endswith('num_batches_tracked'))


@pytest.mark.parametrize('name', sorted(MODELS_JSON))
def test_suffix_from_any_stage_reproduces_the_full_forward(name):
  model = models.create(name, num_classes=10)
  x = jax.random.normal(jax.random.key(1), (2, 32, 32, 3))
  variables = model.init(jax.random.key(0), x, train=False)
  full = model.apply(variables, x, train=False)
  for start in range(1, len(full.features)):
    part = model.apply(variables, full.features[start - 1], train=False, start=start)
    np.testing.assert_allclose(part.logits, full.logits, atol=1e-5, rtol=1e-5)
    assert len(part.features) == len(full.features) - start


def test_batchnorm_closed_form_gradient_equals_autodiff():
  """layers.normalize's hand-written VJP against JAX's autodiff of the same formula (float64,
  two BN groups, cotangents on y, the mean and the variance), and once more under grad."""
  from kdjax.models import layers  # pylint: disable=import-outside-toplevel

  def plain(xg, scale, bias, eps=1e-5):
    axes = tuple(range(1, xg.ndim - 1))
    mean = jnp.mean(xg, axis=axes, keepdims=True)
    var = jnp.mean(jnp.square(xg - mean), axis=axes, keepdims=True)
    return (xg - mean) * jax.lax.rsqrt(var + eps) * scale + bias, mean, var

  with jax.enable_x64():
    rng = np.random.default_rng(0)
    xg = jnp.asarray(rng.normal(2.0, 3.0, (2, 3, 4, 4, 5)))
    scale, bias = jnp.asarray(rng.normal(size=5)), jnp.asarray(rng.normal(size=5))
    weights = [jnp.asarray(rng.normal(size=s)) for s in ((2, 3, 4, 4, 5), (2, 1, 1, 1, 5),
                                                         (2, 1, 1, 1, 5))]

    def objective(fn):
      def f(xg, scale, bias):
        return sum(jnp.sum(jnp.sin(w * o)) for w, o in zip(weights, fn(xg, scale, bias)))
      return f

    for a, b in zip(layers.normalize(xg, scale, bias, 1e-5), plain(xg, scale, bias)):
      np.testing.assert_allclose(a, b, rtol=1e-12)
    ours = objective(lambda *a: layers.normalize(*a, 1e-5))
    grads = jax.grad(ours, argnums=(0, 1, 2))(xg, scale, bias)
    expected = jax.grad(objective(plain), argnums=(0, 1, 2))(xg, scale, bias)
    for a, b in zip(grads, expected):
      np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)
    # Reverse over reverse (SKD's meta-gradient): the gradient of a gradient's norm.
    second = [jax.grad(lambda s, fn=fn: jnp.sum(jax.grad(fn)(xg, s, bias) ** 2))(scale)
              for fn in (ours, objective(plain))]
    np.testing.assert_allclose(second[0], second[1], rtol=1e-9)
