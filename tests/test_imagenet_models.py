"""mdistiller's ImageNet zoo (``zoo='imagenet'``) against PyTorch.

``imagenet_models.json`` gives every model's parameter count and feature shapes (checked with
``jax.eval_shape``: a 224x224 forward of ResNet101 costs too much for a test). For ResNet18
and MobileNetV1, ``imagenet_<name>.npz`` holds weights: converted, they must give PyTorch's
eval-mode logits, features and pooled embedding, its train-mode logits and BN buffers, and
the same logits from every stage suffix. No fixture has a Bottleneck network's outputs, so
ResNet50's ``layer4`` and head are checked against a PyTorch one written here with
torchvision's module names (v1.5: stride on the 3x3 conv).
"""

import functools
import json

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kdjax import convert, models
from kdjax.teachers import torch_import
from kdjax.errors import KdjaxError
from conftest import fixture_path, load_fixture

MODELS_JSON = json.loads(fixture_path('imagenet_models.json').read_text())['models']
WITH_WEIGHTS = ['ResNet18', 'MobileNetV1']
IMAGE = (224, 224, 3)


def _nhwc(a):
  return np.asarray(a).transpose(0, 2, 3, 1)


def _nhwc_shape(shape):
  n, c, h, w = shape
  return (n, h, w, c)


def _create(name):
  return models.create(name, 1000, zoo='imagenet')


def _assert_close(actual, desired):
  # float32 rounding grows with depth and magnitude (MobileNetV1's last maps reach |x| ~ 11
  # and differ from PyTorch's float32 forward by ~2e-4), so atol scales with the magnitude.
  atol = 1e-4 + 1e-5 * float(np.abs(desired).max())
  np.testing.assert_allclose(actual, desired, atol=atol, rtol=1e-4)


# --- the registry ---------------------------------------------------------------------------


def test_the_imagenet_zoo_is_mdistillers_and_the_cifar_zoo_is_unchanged():
  assert sorted(models.names(zoo='imagenet')) == sorted(MODELS_JSON)
  assert models.names() == models.names(zoo='cifar')
  assert 'ResNet18' in models.names() and 'ResNet50' in models.names()
  # The same names are different networks: CIFAR's 3x3 stem, ImageNet's 7x7 one.
  stems = [models.variable_shapes(m, shape)['params']['conv1']['kernel'].shape
           for m, shape in ((models.create('ResNet18'), (32, 32, 3)), (_create('ResNet18'), IMAGE))]
  assert stems == [(3, 3, 3, 64), (7, 7, 3, 64)]
  assert models.create('ResNet50', zoo='imagenet', materialize_residuals=True).materialize_residuals
  assert models.IMAGE_SHAPES['imagenet'] == IMAGE


def test_an_unknown_zoo_or_model_is_one_line_naming_the_choices():
  with pytest.raises(KdjaxError, match=r"^unknown model zoo 'imagent'; expected one of: "
                     r"cifar, imagenet$"):
    models.create('ResNet18', zoo='imagent')
  with pytest.raises(KdjaxError, match=r"^unknown model zoo 'tiny'"):
    models.names(zoo='tiny')
  with pytest.raises(KdjaxError, match=r"^unknown model 'resnet8' in the imagenet zoo; expected "
                     r"one of: ResNet18, ResNet34, ResNet50, ResNet101, MobileNetV1$"):
    models.create('resnet8', zoo='imagenet')
  with pytest.raises(KdjaxError, match=r"^unknown model 'MobileNetV1' in the cifar zoo; "
                     r"expected one of: resnet8, "):
    models.create('MobileNetV1')


def test_images_other_than_224x224_are_refused():
  with pytest.raises(KdjaxError, match='average-pool a 7x7 last feature map .*got 5x5'):
    models.output_shapes(_create('MobileNetV1'), (160, 160, 3))


# --- shapes of every model ------------------------------------------------------------------


@pytest.mark.parametrize('name', sorted(MODELS_JSON))
def test_parameter_count_and_feature_shapes(name):
  ref = MODELS_JSON[name]
  model = _create(name)
  variables = models.variable_shapes(model, IMAGE)
  assert sum(int(np.prod(v.shape)) for v in jax.tree.leaves(variables['params'])) == ref['params']
  batch = ref['pooled_feat'][0]
  out = models.output_shapes(model, IMAGE, batch=batch)
  assert out.logits.shape == (batch, 1000)
  assert [f.shape for f in out.features] == [_nhwc_shape(s) for s in ref['feats']]
  assert [f.shape for f in out.preact_features] == [_nhwc_shape(s) for s in ref['preact_feats']]
  assert out.embedding.shape == tuple(ref['pooled_feat'])


def test_bfloat16_computes_in_bfloat16():
  out = models.output_shapes(models.create('ResNet50', 1000, zoo='imagenet',
                                           dtype=jnp.bfloat16), IMAGE)
  assert out.logits.dtype == jnp.bfloat16 and out.features[-1].dtype == jnp.bfloat16


# --- outputs of the fixture models ------------------------------------------------------------


@functools.cache
def _converted(name):
  weights = load_fixture(f'imagenet_{name}.npz')
  state = {k: weights[k].astype(np.float32) if weights[k].dtype == np.float16 else weights[k]
           for k in weights.files}  # the float16 weights are the exact float32 ones
  return convert.variables_from_torch(name, state, num_classes=1000, zoo='imagenet')


@functools.cache
def _eval_outputs(name):
  io = load_fixture(f'imagenet_{name}_io.npz')
  return _create(name).apply(_converted(name), jnp.asarray(_nhwc(io['input'])), train=False)


@pytest.mark.parametrize('name', WITH_WEIGHTS)
def test_eval_outputs_equal_pytorch(name):
  io = load_fixture(f'imagenet_{name}_io.npz')
  out = _eval_outputs(name)
  np.testing.assert_allclose(out.logits, io['logits_eval'], atol=1e-4, rtol=0)
  assert len(out.features) == len(out.preact_features) == len(MODELS_JSON[name]['feats'])
  for i, (feat, preact) in enumerate(zip(out.features, out.preact_features)):
    _assert_close(feat, _nhwc(io[f'feats/{i}']))
    _assert_close(preact, _nhwc(io[f'preact_feats/{i}']))
  np.testing.assert_allclose(out.embedding, io['pooled_feat'], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize('name', WITH_WEIGHTS)
def test_suffix_from_every_stage_reproduces_the_logits(name):
  io = load_fixture(f'imagenet_{name}_io.npz')
  full = _eval_outputs(name)
  for start in range(1, len(full.features)):
    part = _create(name).apply(_converted(name), full.features[start - 1], train=False,
                               start=start)
    np.testing.assert_allclose(part.logits, io['logits_eval'], atol=1e-4, rtol=0)
    assert len(part.features) == len(full.features) - start


@pytest.mark.parametrize('name', WITH_WEIGHTS)
def test_train_mode_logits_and_running_statistics_equal_pytorch(name):
  io = load_fixture(f'imagenet_{name}_io.npz')
  out, updates = _create(name).apply(_converted(name), jnp.asarray(_nhwc(io['input'])),
                                     train=True, mutable=['batch_stats'])
  np.testing.assert_allclose(out.logits, io['logits_train'], atol=1e-4, rtol=0)
  stats = flax.traverse_util.flatten_dict(updates['batch_stats'])
  for path, value in stats.items():
    key = torch_import.torch_key('batch_stats', path)
    np.testing.assert_allclose(value, io[f'train_buffers/{key}'], atol=1e-5, rtol=1e-4,
                               err_msg=key)
  assert len(stats) == sum(1 for k in io.files if k.startswith('train_buffers/')
                           and not k.endswith('num_batches_tracked'))


def test_the_cifar_resnet18_names_the_imagenet_zoo_for_imagenet_weights():
  weights = load_fixture('imagenet_ResNet18.npz')
  with pytest.raises(KdjaxError, match=r"^state dict does not fit the cifar zoo's ResNet18 with "
                     r"1000 classes: key 'conv1.weight' has shape \(64, 3, 7, 7\), expected "
                     r"\(64, 3, 3, 3\).* \(is the checkpoint for the imagenet zoo's ResNet18\?\)$"):
    convert.variables_from_torch('ResNet18', dict(weights), num_classes=1000)


# --- Bottleneck against PyTorch ----------------------------------------------------------------


def _torch_resnet50(torch):
  """mdistiller's ImageNet ResNet50 in PyTorch, with torchvision's module names; the blocks
  apply ReLU to their input and return the raw sum, as mdistiller's do."""
  tnn = torch.nn

  class Bottleneck(tnn.Module):

    def __init__(self, inplanes, planes, stride):
      super().__init__()
      self.conv1 = tnn.Conv2d(inplanes, planes, 1, bias=False)
      self.bn1 = tnn.BatchNorm2d(planes)
      self.conv2 = tnn.Conv2d(planes, planes, 3, stride, 1, bias=False)  # v1.5: stride here
      self.bn2 = tnn.BatchNorm2d(planes)
      self.conv3 = tnn.Conv2d(planes, planes * 4, 1, bias=False)
      self.bn3 = tnn.BatchNorm2d(planes * 4)
      self.downsample = None
      if stride != 1 or inplanes != planes * 4:
        self.downsample = tnn.Sequential(tnn.Conv2d(inplanes, planes * 4, 1, stride, bias=False),
                                         tnn.BatchNorm2d(planes * 4))

    def forward(self, x):
      x = torch.relu(x)
      out = torch.relu(self.bn1(self.conv1(x)))
      out = torch.relu(self.bn2(self.conv2(out)))
      out = self.bn3(self.conv3(out))
      return out + (x if self.downsample is None else self.downsample(x))

  net = tnn.Module()
  net.conv1 = tnn.Conv2d(3, 64, 7, 2, 3, bias=False)
  net.bn1 = tnn.BatchNorm2d(64)
  inplanes = 64
  for i, (planes, blocks) in enumerate(zip((64, 128, 256, 512), (3, 4, 6, 3))):
    layer = []
    for j in range(blocks):
      layer.append(Bottleneck(inplanes, planes, 2 if i and not j else 1))
      inplanes = planes * 4
    setattr(net, f'layer{i + 1}', tnn.Sequential(*layer))
  net.fc = tnn.Linear(2048, 1000)
  with torch.no_grad():  # BN statistics and affine that are not the identity
    for m in net.modules():
      if isinstance(m, tnn.BatchNorm2d):
        for buffer, (low, high) in ((m.weight, (0.5, 1.5)), (m.bias, (-0.2, 0.2)),
                                    (m.running_mean, (-0.2, 0.2)), (m.running_var, (0.5, 1.5))):
          buffer.uniform_(low, high)
  return net.eval()


def test_resnet50_bottleneck_and_torchvision_names_equal_pytorch():
  torch = pytest.importorskip('torch')
  torch.manual_seed(0)
  net = _torch_resnet50(torch)
  variables = convert.variables_from_torch(
      'ResNet50', {k: v.numpy() for k, v in net.state_dict().items()}, 1000, zoo='imagenet')
  x = torch.relu(torch.randn(2, 1024, 14, 14))  # what layer3 hands on
  with torch.no_grad():
    preact = net.layer4(x)
    logits = net.fc(torch.relu(preact).mean((2, 3)))
  out = _create('ResNet50').apply(variables, jnp.asarray(_nhwc(x.numpy())), train=False,
                                  start=4)
  _assert_close(out.preact_features[0], _nhwc(preact.numpy()))
  _assert_close(out.features[0], _nhwc(torch.relu(preact).numpy()))
  _assert_close(out.logits, logits.numpy())
