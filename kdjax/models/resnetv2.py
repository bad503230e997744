"""ImageNet-style ResNets on CIFAR: port of mdistiller's ``mdistiller/models/cifar/resnetv2.py``.

``ResNet18`` (:class:`~kdjax.models.resnet.BasicBlock` x [2, 2, 2, 2]) and ``ResNet50``
(:class:`~kdjax.models.resnet.Bottleneck` x [3, 4, 6, 3]); the blocks are shared with
:mod:`kdjax.models.resnet`, their projection shortcut being named ``shortcut`` here. Stages:
0 = 3x3 ``conv1``-``bn1``-ReLU stem (64 channels, no max-pool), 1..4 = ``layer1..4``; then
adaptive average pooling and ``linear``. Convs: ``kaiming_normal_(mode='fan_out')``,
BatchNorm weight 1 / bias 0, ``linear`` PyTorch's default (``zero_init_residual=False``).
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from kdjax.models.registry import register
from kdjax.models.base import ModelOutput
from kdjax.models.layers import BatchNorm, at_least_float32, conv, dense, kaiming_normal_fan_out
from kdjax.models.resnet import BasicBlock, Bottleneck, make_layer, run_layer

_PLANES = (64, 128, 256, 512)


def run_stage(block: type[BasicBlock | Bottleneck], stage: int, num_blocks: int, x: jax.Array,
              train: bool, **kwargs):
  """Runs ``layer{stage}`` (1..4) of the ImageNet ResNet layout on ``x``.

  ``num_blocks`` blocks of ``_PLANES[stage - 1]`` planes, the first strided by 2 from
  ``layer2`` on; ``layer1`` reads 64 channels. Returns
  :func:`~kdjax.models.resnet.run_layer`'s ``(output, preact)``. Shared with
  :mod:`kdjax.models.imagenet_resnet`.
  """
  in_planes = 64 if stage == 1 else _PLANES[stage - 2] * block.expansion
  blocks = make_layer(block, f'layer{stage}', in_planes, _PLANES[stage - 1], num_blocks,
                      1 if stage == 1 else 2, **kwargs)
  return run_layer(blocks, x, train)


class ResNetV2(nn.Module):
  """mdistiller's ``resnetv2.ResNet(block, num_blocks)`` (see module docstring)."""
  num_classes: int
  dtype: Any = jnp.float32
  bn_groups: int = 1
  materialize_residuals: bool = False  # see kdjax.models.layers.materialize
  num_blocks: Sequence[int] = (2, 2, 2, 2)
  bottleneck: bool = False

  @nn.compact
  def __call__(self, x, train: bool = False, start: int = 0) -> ModelOutput:
    block = Bottleneck if self.bottleneck else BasicBlock
    kw = dict(shortcut='shortcut', dtype=self.dtype, bn_groups=self.bn_groups,
              materialize_residuals=self.materialize_residuals)
    feats, preacts = [], []
    for stage in range(start, 5):
      if stage == 0:
        x = conv(64, 3, in_features=3, kernel_init=kaiming_normal_fan_out, dtype=self.dtype,
                 name='conv1')(x)
        x = nn.relu(BatchNorm(batch_groups=self.bn_groups, dtype=self.dtype, name='bn1')(
            x, train))
        preact = x
      else:
        x, preact = run_stage(block, stage, self.num_blocks[stage - 1], x, train, **kw)
      feats.append(x)
      preacts.append(preact)
    # nn.AdaptiveAvgPool2d((1, 1)), then flatten.
    pooled = jnp.mean(at_least_float32(x), axis=(1, 2)).astype(self.dtype)
    logits = dense(self.num_classes, in_features=512 * block.expansion, dtype=self.dtype,
                   name='linear')(pooled)
    return ModelOutput(logits, feats, preacts, pooled)


register('ResNet18', functools.partial(ResNetV2, num_blocks=(2, 2, 2, 2), bottleneck=False))
register('ResNet50', functools.partial(ResNetV2, num_blocks=(3, 4, 6, 3), bottleneck=True))
