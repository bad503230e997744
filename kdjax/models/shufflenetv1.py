"""CIFAR ShuffleNet V1: port of mdistiller's ``mdistiller/models/cifar/ShuffleNetv1.py``.

``ShuffleV1``: out planes 240/480/960, 4/8/4 bottlenecks, 3 groups. Stages: 0 = 1x1
``conv1``-``bn1``-ReLU stem, 1..3 = ``layer1..3``; the head is ``F.avg_pool2d(out, 4)`` and
``linear``. A stage's pre-activation feature is its last block's output before the ReLU.
No ``_initialize_weights``: every conv and the linear keep PyTorch's default init.

:func:`channel_shuffle`, :func:`avg_pool`, :func:`conv_bn` and :func:`run_stages` are shared
with :mod:`kdjax.models.shufflenetv2`.
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from kdjax.models.registry import register
from kdjax.models.base import ModelOutput
from kdjax.models.layers import BatchNorm, at_least_float32, conv, dense


def channel_shuffle(x: jax.Array, groups: int) -> jax.Array:
  """``ShuffleBlock``: channels (g, C/g) -> (C/g, g), on the last (channel) axis."""
  *lead, c = x.shape
  x = x.reshape(*lead, groups, c // groups)
  return jnp.swapaxes(x, -1, -2).reshape(*lead, c)


def avg_pool(x: jax.Array, size: int, stride: int | None = None, padding: int = 0):
  """``F.avg_pool2d(x, size, stride, padding)`` (zero padding counted, floor mode)."""
  stride = stride or size
  out = nn.avg_pool(at_least_float32(x), (size, size), strides=(stride, stride),
                    padding=((padding, padding), (padding, padding)), count_include_pad=True)
  return out.astype(x.dtype)


def conv_bn(module: nn.Module, x: jax.Array, index: int, features: int, kernel_size: int,
            train: bool, stride: int = 1, groups: int = 1) -> jax.Array:
  """``bn{index}(conv{index}(x))``: a bias-free conv with PyTorch's default init, then BN.

  Called from ``module``'s compact method, whose ``dtype`` and ``bn_groups`` it uses.
  """
  x = conv(features, kernel_size, stride=stride, groups=groups, in_features=x.shape[-1],
           dtype=module.dtype, name=f'conv{index}')(x)
  return BatchNorm(batch_groups=module.bn_groups, dtype=module.dtype, name=f'bn{index}')(
      x, train)


def run_stages(module: nn.Module, x: jax.Array, train: bool, start: int):
  """Stages ``start..3`` of a CIFAR ShuffleNet: the 1x1 ``conv1``-``bn1``-ReLU stem (24
  channels), then ``module.layer(stage, x, train)``; returns ``(x, features, preacts)``."""
  feats, preacts = [], []
  for stage in range(start, 4):
    if stage == 0:
      x = preact = nn.relu(conv_bn(module, x, 1, 24, 1, train))
    else:
      x, preact = module.layer(stage, x, train)
    feats.append(x)
    preacts.append(preact)
  return x, feats, preacts


class Bottleneck(nn.Module):
  """``Bottleneck``: grouped 1x1, shuffle, depthwise 3x3 (strided), grouped 1x1.

  The shortcut is the identity, or for ``stride == 2`` a 3x3/2 average pool whose output
  is concatenated after the branch. Returns ``(relu(preact), preact)``.
  """
  in_planes: int
  out_planes: int
  stride: int
  groups: int
  dtype: Any = jnp.float32
  bn_groups: int = 1

  @nn.compact
  def __call__(self, x, train: bool):
    mid = self.out_planes // 4
    g = 1 if self.in_planes == 24 else self.groups
    out = nn.relu(conv_bn(self, x, 1, mid, 1, train, groups=g))
    out = channel_shuffle(out, g)
    out = nn.relu(conv_bn(self, out, 2, mid, 3, train, stride=self.stride, groups=mid))
    out = conv_bn(self, out, 3, self.out_planes, 1, train, groups=self.groups)
    if self.stride == 2:
      preact = jnp.concatenate([out, avg_pool(x, 3, stride=2, padding=1)], axis=-1)
    else:
      preact = out + x
    return nn.relu(preact), preact


class ShuffleNet(nn.Module):
  """mdistiller's ``ShuffleNet(cfg)`` (see the module docstring)."""
  num_classes: int
  dtype: Any = jnp.float32
  bn_groups: int = 1
  out_planes: Sequence[int] = (240, 480, 960)
  num_blocks: Sequence[int] = (4, 8, 4)
  groups: int = 3

  def layer(self, stage: int, x, train: bool):
    """``layer{stage}``: the first block is strided and concatenates its input back."""
    out_planes, preact = self.out_planes[stage - 1], None
    for i in range(self.num_blocks[stage - 1]):
      in_planes = x.shape[-1]
      x, preact = Bottleneck(in_planes, out_planes - (in_planes if i == 0 else 0),
                             stride=2 if i == 0 else 1, groups=self.groups, dtype=self.dtype,
                             bn_groups=self.bn_groups, name=f'layer{stage}.{i}')(x, train)
    return x, preact

  @nn.compact
  def __call__(self, x, train: bool = False, start: int = 0) -> ModelOutput:
    x, feats, preacts = run_stages(self, x, train, start)
    pooled = avg_pool(x, 4)
    pooled = pooled.reshape(pooled.shape[0], -1)
    logits = dense(self.num_classes, in_features=self.out_planes[-1], dtype=self.dtype,
                   name='linear')(pooled)
    return ModelOutput(logits, feats, preacts, pooled)


register('ShuffleV1', functools.partial(ShuffleNet, out_planes=(240, 480, 960),
                                        num_blocks=(4, 8, 4), groups=3))
