"""CIFAR VGGs with BatchNorm: port of mdistiller's ``mdistiller/models/cifar/vgg.py``.

``vgg8/11/13/16/19`` are mdistiller's ``vgg{8,11,13,16,19}_bn`` (configurations S, A, B, D,
E). Each of the five stages is a ``block{i}`` Sequential of 3x3 conv (with bias) - BN - ReLU
layers whose last ReLU is left out, so the torch indices are conv ``3j``, BN ``3j + 1``.
Stage ``i > 0`` starts with the 2x2 max-pool ``pool{i-1}``, except that ``pool3`` only runs
for 64x64 images (mdistiller checks ``h == 64``): on 32x32 inputs stages 3 and 4 are both
4x4. The head is a global average pool and ``classifier``. ``preact_features[0]`` is, as in
mdistiller, the post-ReLU stem output.

``_initialize_weights``: conv weights N(0, 2 / (k*k*out)) (= kaiming fan-out), conv biases 0,
BN weight 1 / bias 0, linear N(0, 0.01) with bias 0.
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from kdjax.models.registry import register
from kdjax.models.base import ModelOutput
from kdjax.models.layers import BatchNorm, at_least_float32, dense, kaiming_normal_fan_out

CFGS = {
    'vgg8': ((64,), (128,), (256,), (512,), (512,)),
    'vgg11': ((64,), (128,), (256, 256), (512, 512), (512, 512)),
    'vgg13': ((64, 64), (128, 128), (256, 256), (512, 512), (512, 512)),
    'vgg16': ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512)),
    'vgg19': ((64, 64), (128, 128), (256,) * 4, (512,) * 4, (512,) * 4),
}


def _max_pool(x):
  """``nn.MaxPool2d(kernel_size=2, stride=2)``."""
  return nn.max_pool(x, (2, 2), strides=(2, 2))


class VGG(nn.Module):
  """mdistiller's ``VGG(cfg, batch_norm=True)`` (see the module docstring)."""
  num_classes: int
  dtype: Any = jnp.float32
  bn_groups: int = 1
  cfg: Sequence[Sequence[int]] = CFGS['vgg13']

  def _block(self, i: int, x, train: bool):
    """``block{i}``: conv-BN-ReLU layers, the last one without its ReLU."""
    for j, width in enumerate(self.cfg[i]):
      if j:
        x = nn.relu(x)
      # nn.Conv2d(in, width, 3, padding=1) re-initialised by _initialize_weights; layers.conv
      # has no bias_init argument, hence nn.Conv directly (same padding and layout).
      x = nn.Conv(width, (3, 3), padding=((1, 1), (1, 1)), kernel_init=kaiming_normal_fan_out,
                  bias_init=nn.initializers.zeros, dtype=self.dtype,
                  name=f'block{i}.{3 * j}')(x)
      x = BatchNorm(batch_groups=self.bn_groups, dtype=self.dtype,
                    name=f'block{i}.{3 * j + 1}')(x, train)
    return x

  @nn.compact
  def __call__(self, x, train: bool = False, start: int = 0) -> ModelOutput:
    feats, preacts = [], []
    for stage in range(start, 5):
      # pool3 before block4 runs only for 64x64 images, i.e. when block3's map is 8x8.
      if 0 < stage < 4 or (stage == 4 and x.shape[1] == 8):
        x = _max_pool(x)
      preact = self._block(stage, x, train)
      x = nn.relu(preact)
      feats.append(x)
      preacts.append(x if stage == 0 else preact)
    # pool4 = nn.AdaptiveAvgPool2d((1, 1)), then flatten.
    pooled = jnp.mean(at_least_float32(x), axis=(1, 2)).astype(self.dtype)
    logits = dense(self.num_classes, in_features=512, kernel_init=nn.initializers.normal(0.01),
                   bias_init=nn.initializers.zeros, dtype=self.dtype,
                   name='classifier')(pooled)
    return ModelOutput(logits, feats, preacts, pooled)


for _name, _cfg in CFGS.items():
  register(_name, functools.partial(VGG, cfg=_cfg))
