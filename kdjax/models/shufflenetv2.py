"""CIFAR ShuffleNet V2: port of mdistiller's ``mdistiller/models/cifar/ShuffleNetv2.py``.

``ShuffleV2`` is ``ShuffleNetV2(net_size=1)``: out channels 116/232/464 with 3/7/3 basic
blocks, each ``layer{i}`` starting with a strided ``DownBlock`` at index 0. Stages: 0 = 1x1
``conv1``-``bn1``-ReLU stem, 1..3 = ``layer1..3``; the head is ``conv2``-``bn2``-ReLU to 1024
channels, ``F.avg_pool2d(out, 4)`` and ``linear`` (so the embedding has 1024 channels, the
last feature map 464). A stage's pre-activation feature is its last ``BasicBlock``'s
``cat([x1, bn3(...)])``, taken before the channel shuffle, as in mdistiller.
No ``_initialize_weights``: every conv and the linear keep PyTorch's default init.
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from kdjax.models.registry import register
from kdjax.models.base import ModelOutput
from kdjax.models.layers import dense
from kdjax.models.shufflenetv1 import avg_pool, channel_shuffle, conv_bn, run_stages

CONFIGS = {
    0.2: {'out_channels': (40, 80, 160, 512), 'num_blocks': (3, 3, 3)},
    0.3: {'out_channels': (40, 80, 160, 512), 'num_blocks': (3, 7, 3)},
    0.5: {'out_channels': (48, 96, 192, 1024), 'num_blocks': (3, 7, 3)},
    1: {'out_channels': (116, 232, 464, 1024), 'num_blocks': (3, 7, 3)},
    1.5: {'out_channels': (176, 352, 704, 1024), 'num_blocks': (3, 7, 3)},
    2: {'out_channels': (224, 488, 976, 2048), 'num_blocks': (3, 7, 3)},
}


class BasicBlock(nn.Module):
  """``BasicBlock``: half the channels pass through, the other half go 1x1 - dw 3x3 - 1x1.

  Returns ``(shuffle(cat([x1, relu(preact)])), cat([x1, preact]))``.
  """
  dtype: Any = jnp.float32
  bn_groups: int = 1

  @nn.compact
  def __call__(self, x, train: bool):
    c = x.shape[-1] // 2  # SplitBlock(0.5)
    x1, x2 = x[..., :c], x[..., c:]
    out = nn.relu(conv_bn(self, x2, 1, c, 1, train))
    out = conv_bn(self, out, 2, c, 3, train, groups=c)
    preact = conv_bn(self, out, 3, c, 1, train)
    out = jnp.concatenate([x1, nn.relu(preact)], axis=-1)
    return channel_shuffle(out, 2), jnp.concatenate([x1, preact], axis=-1)


class DownBlock(nn.Module):
  """``DownBlock``: two strided branches (dw 3x3 - 1x1 | 1x1 - dw 3x3 - 1x1), concat, shuffle."""
  out_channels: int
  dtype: Any = jnp.float32
  bn_groups: int = 1

  @nn.compact
  def __call__(self, x, train: bool):
    mid = self.out_channels // 2
    c = x.shape[-1]
    left = conv_bn(self, x, 1, c, 3, train, stride=2, groups=c)
    left = nn.relu(conv_bn(self, left, 2, mid, 1, train))
    right = nn.relu(conv_bn(self, x, 3, mid, 1, train))
    right = conv_bn(self, right, 4, mid, 3, train, stride=2, groups=mid)
    right = nn.relu(conv_bn(self, right, 5, mid, 1, train))
    return channel_shuffle(jnp.concatenate([left, right], axis=-1), 2)


class ShuffleNetV2(nn.Module):
  """mdistiller's ``ShuffleNetV2(net_size)`` (see the module docstring)."""
  num_classes: int
  dtype: Any = jnp.float32
  bn_groups: int = 1
  out_channels: Sequence[int] = CONFIGS[1]['out_channels']
  num_blocks: Sequence[int] = CONFIGS[1]['num_blocks']

  def layer(self, stage: int, x, train: bool):
    """``layer{stage}``: a DownBlock, then the BasicBlocks; returns (out, last preact)."""
    kw = dict(dtype=self.dtype, bn_groups=self.bn_groups)
    x = DownBlock(out_channels=self.out_channels[stage - 1], name=f'layer{stage}.0',
                  **kw)(x, train)
    preact = None
    for i in range(self.num_blocks[stage - 1]):
      x, preact = BasicBlock(name=f'layer{stage}.{i + 1}', **kw)(x, train)
    return x, preact

  @nn.compact
  def __call__(self, x, train: bool = False, start: int = 0) -> ModelOutput:
    x, feats, preacts = run_stages(self, x, train, start)
    x = nn.relu(conv_bn(self, x, 2, self.out_channels[3], 1, train))
    pooled = avg_pool(x, 4)
    pooled = pooled.reshape(pooled.shape[0], -1)
    logits = dense(self.num_classes, in_features=self.out_channels[3], dtype=self.dtype,
                   name='linear')(pooled)
    return ModelOutput(logits, feats, preacts, pooled)


register('ShuffleV2', functools.partial(ShuffleNetV2, **CONFIGS[1]))
