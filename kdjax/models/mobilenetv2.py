"""CIFAR MobileNetV2: port of mdistiller's ``mdistiller/models/cifar/mobilenetv2.py``.

``MobileNetV2`` is mdistiller's ``mobile_half`` = ``mobilenetv2_T_w(T=6, W=0.5)``: a stride-2
``conv1`` (3x3 conv-BN-ReLU), seven ``blocks.{k}`` of inverted residuals, ``conv2`` (1x1
conv-BN-ReLU to 1280 channels), ``AvgPool2d(2, ceil_mode=True)`` and ``classifier.0``.
Stages (= mdistiller's ``feats``): 0 = ``conv1``, 1 = blocks 0-1, 2 = block 2, 3 = blocks
3-4, 4 = blocks 5-6; the head is ``conv2`` + pool + classifier. There are no
pre-activation features (``preact_features`` is ``None``).

``_initialize_weights``: conv weights N(0, 2 / (k*k*out)) (= kaiming fan-out), BN weight 1 /
bias 0, linear N(0, 0.01) with bias 0.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from kdjax.models.registry import register
from kdjax.models.base import ModelOutput
from kdjax.models.layers import (BatchNorm, at_least_float32, conv, dense,
                                 kaiming_normal_fan_out, materialize)

# (expansion t, channels c, blocks n, stride s); t = None stands for the model's T.
SETTING = ((1, 16, 1, 1), (None, 24, 2, 1), (None, 32, 3, 2), (None, 64, 4, 2),
           (None, 96, 3, 1), (None, 160, 3, 2), (None, 320, 1, 1))
# The ``blocks.{k}`` of stages 1..4.
STAGE_BLOCKS = ((0, 1), (2,), (3, 4), (5, 6))


def conv_bn(x, features, kernel_size, train, prefix, index, *, dtype, bn_groups, stride=1,
            groups=1, kernel_init=kaiming_normal_fan_out):
  """Conv (no bias) + BN, the torch modules ``{prefix}{index}``/``{index+1}``.

  The kernel is initialised fan-out as here, or by ``kernel_init`` (``None``: PyTorch's
  default, which :mod:`kdjax.models.mobilenetv1` keeps).
  """
  x = conv(features, kernel_size, stride=stride, groups=groups, in_features=x.shape[-1],
           kernel_init=kernel_init, dtype=dtype, name=f'{prefix}{index}')(x)
  return BatchNorm(batch_groups=bn_groups, dtype=dtype, name=f'{prefix}{index + 1}')(x, train)


class InvertedResidual(nn.Module):
  """``InvertedResidual``: 1x1 expand, 3x3 depthwise (strided), 1x1 linear projection.

  The layers are the torch Sequential ``conv`` (indices 0..7); the input is added back when
  ``stride == 1`` and the channel count is unchanged (that sum through
  :func:`layers.materialize`).
  """
  oup: int
  stride: int
  expand_ratio: int
  dtype: Any = jnp.float32
  bn_groups: int = 1
  materialize_residuals: bool = False

  @nn.compact
  def __call__(self, x, train: bool):
    cb = functools.partial(conv_bn, train=train, prefix='conv.', dtype=self.dtype,
                           bn_groups=self.bn_groups)
    hidden = x.shape[-1] * self.expand_ratio
    out = nn.relu(cb(x, hidden, 1, index=0))
    out = nn.relu(cb(out, hidden, 3, index=3, stride=self.stride, groups=hidden))
    out = cb(out, self.oup, 1, index=6)
    if self.stride == 1 and x.shape[-1] == self.oup:
      return materialize(x + out, self.materialize_residuals)
    return out


class MobileNetV2(nn.Module):
  """mdistiller's ``MobileNetV2(T, feature_dim, width_mult)`` (see the module docstring)."""
  num_classes: int
  dtype: Any = jnp.float32
  bn_groups: int = 1
  materialize_residuals: bool = False  # see kdjax.models.layers.materialize
  expansion: int = 6
  width_mult: float = 0.5

  def _run_blocks(self, k: int, x, train: bool):
    """Runs ``blocks.{k}``, the InvertedResidual modules ``blocks.{k}.{j}``."""
    t, c, n, s = SETTING[k]
    for j in range(n):
      x = InvertedResidual(oup=int(c * self.width_mult), stride=s if j == 0 else 1,
                           expand_ratio=self.expansion if t is None else t, dtype=self.dtype,
                           bn_groups=self.bn_groups,
                           materialize_residuals=self.materialize_residuals,
                           name=f'blocks.{k}.{j}')(x, train)
    return x

  @nn.compact
  def __call__(self, x, train: bool = False, start: int = 0) -> ModelOutput:
    cb = functools.partial(conv_bn, train=train, index=0, dtype=self.dtype,
                           bn_groups=self.bn_groups)
    feats = []
    for stage in range(start, 5):
      if stage == 0:
        x = nn.relu(cb(x, int(32 * self.width_mult), 3, prefix='conv1.', stride=2))
      for k in STAGE_BLOCKS[stage - 1] if stage else ():
        x = self._run_blocks(k, x, train)
      feats.append(x)
    last_channel = int(1280 * self.width_mult) if self.width_mult > 1.0 else 1280
    x = nn.relu(cb(x, last_channel, 1, prefix='conv2.'))
    # nn.AvgPool2d(2, ceil_mode=True): a partial last window averages its valid inputs only.
    pad = [(0, -d % 2) for d in x.shape[1:3]]
    pooled = nn.avg_pool(at_least_float32(x), (2, 2), strides=(2, 2), padding=pad,
                         count_include_pad=False).astype(self.dtype)
    pooled = pooled.reshape(pooled.shape[0], -1)
    logits = dense(self.num_classes, in_features=last_channel,
                   kernel_init=nn.initializers.normal(0.01), bias_init=nn.initializers.zeros,
                   dtype=self.dtype, name='classifier.0')(pooled)
    return ModelOutput(logits, feats, None, pooled)


register('MobileNetV2', functools.partial(MobileNetV2, expansion=6, width_mult=0.5))
