"""ImageNet MobileNetV1: port of mdistiller's ``mdistiller/models/imagenet/mobilenetv1.py``.

mdistiller's ``self.model`` is an ``nn.Sequential`` of 14 blocks: ``model.0`` =
``conv_bn(3, 32, 2)`` (3x3 conv ``model.0.0``, BN ``model.0.1``, ReLU) and ``model.1..13`` =
``conv_dw(inp, oup, stride)`` (3x3 depthwise conv ``.0``, BN ``.1``, ReLU, 1x1 conv ``.3``,
BN ``.4``, ReLU); all convs without bias and with PyTorch's default init (mdistiller does not
re-initialise). Then ``AvgPool2d(7)`` on the 7x7 map and ``fc`` (``nn.Linear(1024, 1000)``:
mdistiller fixes 1000 classes, ``num_classes`` here).

Stages (= mdistiller's four ``feats``; there is no separate stem feature): 0 =
``model[0..3]``, 1 = ``model[4..5]``, 2 = ``model[6..11]``, 3 = ``model[12..13]``.
``preact_features[i]`` is the stage's last block *before its last ReLU* (mdistiller runs
``model[3][:-1]`` etc.) and ``features[i]`` its ReLU; the next stage reads the ReLU.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from kdjax.models.registry import register
from kdjax.models.base import ModelOutput
from kdjax.models.imagenet_resnet import avg_pool_7x7
from kdjax.models.layers import dense
from kdjax.models.mobilenetv2 import conv_bn

# (output channels, stride) of model.0 (conv_bn) and model.1..13 (conv_dw).
LAYERS = ((32, 2), (64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2), (512, 1),
          (512, 1), (512, 1), (512, 1), (512, 1), (1024, 2), (1024, 1))
# The model.{k} of each stage.
STAGE_BLOCKS = (range(0, 4), range(4, 6), range(6, 12), range(12, 14))


class MobileNetV1(nn.Module):
  """mdistiller's ImageNet ``MobileNetV1()`` (see the module docstring)."""
  num_classes: int
  dtype: Any = jnp.float32
  bn_groups: int = 1

  def _block(self, k: int, x, train: bool):
    """``model.{k}`` without its last ReLU."""
    cb = functools.partial(conv_bn, train=train, prefix=f'model.{k}.', dtype=self.dtype,
                           bn_groups=self.bn_groups, kernel_init=None)
    features, stride = LAYERS[k]
    if k == 0:
      return cb(x, features, 3, index=0, stride=stride)
    x = nn.relu(cb(x, x.shape[-1], 3, index=0, stride=stride, groups=x.shape[-1]))
    return cb(x, features, 1, index=3)

  @nn.compact
  def __call__(self, x, train: bool = False, start: int = 0) -> ModelOutput:
    feats, preacts = [], []
    for stage in range(start, 4):
      for k in STAGE_BLOCKS[stage]:
        preact = self._block(k, x, train)
        x = nn.relu(preact)
      feats.append(x)
      preacts.append(preact)
    pooled = avg_pool_7x7(x).astype(self.dtype)
    logits = dense(self.num_classes, in_features=LAYERS[-1][0], dtype=self.dtype,
                   name='fc')(pooled)
    return ModelOutput(logits, feats, preacts, pooled)


register('MobileNetV1', MobileNetV1, zoo='imagenet')
