"""CIFAR ResNets: port of mdistiller's ``mdistiller/models/cifar/resnet.py``.

``resnet{8,14,20,32,44,56,110}`` (filters 16/16/32/64) and ``resnet8x4``/``resnet32x4``
(filters 32/64/128/256). Stages: 0 = ``conv1``-``bn1``-ReLU stem, 1..3 = ``layer1..3``.
Every conv is initialised with ``kaiming_normal_(mode='fan_out')``, BatchNorm with weight 1
and bias 0; the ``fc`` keeps PyTorch's default init, as in mdistiller.

:class:`BasicBlock` and :class:`Bottleneck` are shared with :mod:`kdjax.models.resnetv2`,
whose blocks are the same layers with the projection shortcut called ``shortcut``
instead of ``downsample``.
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from kdjax.models.registry import register
from kdjax.models.base import ModelOutput
from kdjax.models.layers import (BatchNorm, at_least_float32, conv, dense,
                                 kaiming_normal_fan_out, materialize)


class _Block(nn.Module):
  """Common fields of the residual blocks; ``__call__`` returns ``(relu(out), out)``.

  The ``relu(out)`` that the next block reads goes through :func:`layers.materialize` when
  ``materialize_residuals``.
  """
  in_planes: int
  planes: int
  stride: int = 1
  shortcut: str = 'downsample'  # torch name of the projection Sequential(conv1x1, BN)
  dtype: Any = jnp.float32
  bn_groups: int = 1
  materialize_residuals: bool = False
  expansion = 1

  def _conv(self, features, kernel_size, in_features, name, stride=1):
    return conv(features, kernel_size, stride=stride, in_features=in_features,
                kernel_init=kaiming_normal_fan_out, dtype=self.dtype, name=name)

  def _bn(self, name):
    return BatchNorm(batch_groups=self.bn_groups, dtype=self.dtype, name=name)

  def _residual(self, x, train):
    """``x``, or the 1x1 conv + BN projection where the shape changes (as in PyTorch)."""
    out_planes = self.planes * self.expansion
    if self.stride == 1 and self.in_planes == out_planes:
      return x
    y = self._conv(out_planes, 1, self.in_planes, f'{self.shortcut}.0', stride=self.stride)(x)
    return self._bn(f'{self.shortcut}.1')(y, train)


class BasicBlock(_Block):
  """Two 3x3 conv-BN layers and the residual; ``BasicBlock`` of resnet.py/resnetv2.py."""
  expansion = 1

  @nn.compact
  def __call__(self, x, train: bool):
    out = self._conv(self.planes, 3, self.in_planes, 'conv1', stride=self.stride)(x)
    out = nn.relu(self._bn('bn1')(out, train))
    out = self._bn('bn2')(self._conv(self.planes, 3, self.planes, 'conv2')(out), train)
    preact = out + self._residual(x, train)
    return materialize(nn.relu(preact), self.materialize_residuals), preact


class Bottleneck(_Block):
  """1x1 - 3x3 (strided) - 1x1 conv-BN layers, 4x expansion; ``Bottleneck`` of both files."""
  expansion = 4

  @nn.compact
  def __call__(self, x, train: bool):
    out = nn.relu(self._bn('bn1')(self._conv(self.planes, 1, self.in_planes, 'conv1')(x),
                                  train))
    out = self._conv(self.planes, 3, self.planes, 'conv2', stride=self.stride)(out)
    out = nn.relu(self._bn('bn2')(out, train))
    out = self._conv(self.planes * 4, 1, self.planes, 'conv3')(out)
    preact = self._bn('bn3')(out, train) + self._residual(x, train)
    return materialize(nn.relu(preact), self.materialize_residuals), preact


def make_layer(block: type[_Block], name: str, in_planes: int, planes: int, num_blocks: int,
               stride: int, **kwargs) -> list[_Block]:
  """The blocks of ``_make_layer``, named ``{name}.{i}`` like PyTorch's Sequential."""
  blocks = []
  for i in range(num_blocks):
    blocks.append(block(in_planes=in_planes, planes=planes, stride=stride if i == 0 else 1,
                        name=f'{name}.{i}', **kwargs))
    in_planes = planes * block.expansion
  return blocks


def run_layer(blocks: Sequence[_Block], x: jax.Array, train: bool):
  """Runs the blocks; returns the output and the last block's pre-ReLU output."""
  preact = None
  for blk in blocks:
    x, preact = blk(x, train)
  return x, preact


class ResNet(nn.Module):
  """mdistiller's CIFAR ``ResNet(depth, num_filters, 'basicblock')`` (see module docstring).

  ``depth`` is 6n+2 for :class:`BasicBlock` (``bottleneck=False``), 9n+2 for
  :class:`Bottleneck`; ``n`` blocks per stage.
  """
  num_classes: int
  dtype: Any = jnp.float32
  bn_groups: int = 1
  materialize_residuals: bool = False  # see kdjax.models.layers.materialize
  depth: int = 20
  num_filters: Sequence[int] = (16, 16, 32, 64)
  bottleneck: bool = False

  @nn.compact
  def __call__(self, x, train: bool = False, start: int = 0) -> ModelOutput:
    block = Bottleneck if self.bottleneck else BasicBlock
    n = (self.depth - 2) // (9 if self.bottleneck else 6)
    kw = dict(dtype=self.dtype, bn_groups=self.bn_groups,
              materialize_residuals=self.materialize_residuals)
    feats, preacts = [], []
    for stage in range(start, 4):
      if stage == 0:
        x = conv(self.num_filters[0], 3, in_features=3, kernel_init=kaiming_normal_fan_out,
                 dtype=self.dtype, name='conv1')(x)
        x = nn.relu(BatchNorm(batch_groups=self.bn_groups, dtype=self.dtype, name='bn1')(
            x, train))
        preact = x
      else:
        in_planes = self.num_filters[0] if stage == 1 else (
            self.num_filters[stage - 1] * block.expansion)
        blocks = make_layer(block, f'layer{stage}', in_planes, self.num_filters[stage], n,
                            1 if stage == 1 else 2, **kw)
        x, preact = run_layer(blocks, x, train)
      feats.append(x)
      preacts.append(preact)
    # nn.AvgPool2d(8), then flatten.
    pooled = nn.avg_pool(at_least_float32(x), (8, 8), strides=(8, 8)).astype(self.dtype)
    pooled = pooled.reshape(pooled.shape[0], -1)
    logits = dense(self.num_classes, in_features=self.num_filters[3] * block.expansion,
                   dtype=self.dtype, name='fc')(pooled)
    return ModelOutput(logits, feats, preacts, pooled)


def _register(name: str, depth: int, num_filters: Sequence[int]) -> None:
  register(name, functools.partial(ResNet, depth=depth, num_filters=tuple(num_filters)))


for _depth in (8, 14, 20, 32, 44, 56, 110):
  _register(f'resnet{_depth}', _depth, (16, 16, 32, 64))
_register('resnet8x4', 8, (32, 64, 128, 256))
_register('resnet32x4', 32, (32, 64, 128, 256))
