"""Wide ResNets: port of mdistiller's ``mdistiller/models/cifar/wrn.py``.

``wrn_{depth}_{widen}``: depth 6n+4, channels 16 / 16k / 32k / 64k, pre-activation blocks
(BN-ReLU-conv) without dropout (``dropRate=0``). Stages: 0 = ``conv1`` alone (no BN, no
ReLU), 1..3 = ``block1..3`` (``blockI.layer.J`` in PyTorch); then ``bn1``-ReLU, 8x8 average
pooling and ``fc``. Convs are initialised N(0, 2 / (k*k*out_channels)) (kaiming fan-out),
BatchNorm weight 1 / bias 0, ``fc`` weight PyTorch's default and bias 0.

Pre-activation features, as in mdistiller: stage ``s``'s is its output passed through the
BatchNorm that the next stage applies first (``block{s+1}.layer.0.bn1``, the top-level
``bn1`` for the last stage). Those three BatchNorms therefore run twice per forward pass,
and in train mode their running statistics are updated twice, as in PyTorch.
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


class WRNBlock(nn.Module):
  """``wrn.BasicBlock``: BN-ReLU-conv3x3 (strided)-BN-ReLU-conv3x3 plus the residual.

  When the channel count changes, the residual is ``convShortcut`` (1x1, strided) of the
  *activated* input ``relu(bn1(x))``, as in PyTorch. With ``bn1_only`` the call returns just
  ``bn1(x)`` (the same BatchNorm, so its statistics update again in train mode). The sum
  goes through :func:`layers.materialize`.
  """
  in_planes: int
  out_planes: int
  stride: int = 1
  dtype: Any = jnp.float32
  bn_groups: int = 1
  materialize_residuals: bool = False

  def _conv(self, features, kernel_size, in_features, name, stride=1):
    return conv(features, kernel_size, stride=stride, in_features=in_features,
                kernel_init=kaiming_normal_fan_out, dtype=self.dtype, name=name)

  @nn.compact
  def __call__(self, x, train: bool, bn1_only: bool = False):
    bn1 = BatchNorm(batch_groups=self.bn_groups, dtype=self.dtype, name='bn1')
    if bn1_only:
      return bn1(x, train)
    act = nn.relu(bn1(x, train))
    out = self._conv(self.out_planes, 3, self.in_planes, 'conv1', stride=self.stride)(act)
    out = nn.relu(BatchNorm(batch_groups=self.bn_groups, dtype=self.dtype, name='bn2')(
        out, train))
    out = self._conv(self.out_planes, 3, self.out_planes, 'conv2')(out)
    if self.in_planes == self.out_planes:
      return materialize(x + out, self.materialize_residuals)
    shortcut = self._conv(self.out_planes, 1, self.in_planes, 'convShortcut',
                          stride=self.stride)(act)
    return materialize(shortcut + out, self.materialize_residuals)


class WideResNet(nn.Module):
  """mdistiller's ``WideResNet(depth, num_classes, widen_factor)`` (see module docstring)."""
  num_classes: int
  dtype: Any = jnp.float32
  bn_groups: int = 1
  materialize_residuals: bool = False  # see kdjax.models.layers.materialize
  depth: int = 40
  widen_factor: int = 2

  @nn.compact
  def __call__(self, x, train: bool = False, start: int = 0) -> ModelOutput:
    n = (self.depth - 4) // 6
    channels = (16, 16 * self.widen_factor, 32 * self.widen_factor, 64 * self.widen_factor)
    bn1 = BatchNorm(batch_groups=self.bn_groups, dtype=self.dtype, name='bn1')
    feats, first_blocks = [], {}
    for stage in range(start, 4):
      if stage == 0:
        x = conv(channels[0], 3, in_features=3, kernel_init=kaiming_normal_fan_out,
                 dtype=self.dtype, name='conv1')(x)
      else:
        for i in range(n):
          blk = WRNBlock(in_planes=channels[stage - 1] if i == 0 else channels[stage],
                         out_planes=channels[stage], stride=(1 if stage == 1 else 2) if i == 0
                         else 1, dtype=self.dtype, bn_groups=self.bn_groups,
                         materialize_residuals=self.materialize_residuals,
                         name=f'block{stage}.layer.{i}')
          first_blocks.setdefault(stage, blk)
          x = blk(x, train)
      feats.append(x)
    out = nn.relu(bn1(x, train))
    # F.avg_pool2d(out, 8), then reshape(-1, nChannels).
    pooled = nn.avg_pool(at_least_float32(out), (8, 8), strides=(8, 8)).astype(self.dtype)
    pooled = pooled.reshape(-1, channels[3])
    logits = dense(self.num_classes, in_features=channels[3], bias_init=nn.initializers.zeros,
                   dtype=self.dtype, name='fc')(pooled)
    # mdistiller computes the pre-activation features after the head, re-applying the BNs.
    preacts = []
    for stage, feat in zip(range(start, 4), feats):
      if stage == 0:
        preacts.append(feat)
      elif stage < 3:
        preacts.append(first_blocks[stage + 1](feat, train, bn1_only=True))
      else:
        preacts.append(bn1(feat, train))
    return ModelOutput(logits, feats, preacts, pooled)


for _depth, _widen in ((16, 1), (16, 2), (40, 1), (40, 2)):
  register(f'wrn_{_depth}_{_widen}',
           functools.partial(WideResNet, depth=_depth, widen_factor=_widen))
