"""ImageNet ResNets: port of mdistiller's ``mdistiller/models/imagenet/resnet.py``.

``ResNet18``/``ResNet34`` (:class:`~kdjax.models.resnet.BasicBlock` x [2, 2, 2, 2] /
[3, 4, 6, 3]) and ``ResNet50``/``ResNet101`` (:class:`~kdjax.models.resnet.Bottleneck` x
[3, 4, 6, 3] / [3, 4, 23, 3], stride on the 3x3 ``conv2`` as torchvision's v1.5), in the
``'imagenet'`` zoo. The variables carry torchvision's state-dict names (``conv1``, ``bn1``,
``layer1.0.conv1``, ..., ``layer2.0.downsample.0/1``, ``fc``), so torchvision's published
weights convert as well as mdistiller's. Stages: 0 = 7x7/2 ``conv1``-``bn1``-ReLU stem
(112x112 at 224x224), 1 = 3x3/2 max-pool (padding 1) + ``layer1``, 2..4 = ``layer2..4``;
then ``AvgPool2d(7)`` on the 7x7 map and ``fc``. Convs: ``kaiming_normal_(mode='fan_out')``,
BatchNorm weight 1 / bias 0, ``fc`` PyTorch's default.

Details that trip ports:

* mdistiller's blocks apply ``F.relu`` to their *input* and return the raw sum
  ``out + residual`` (the next block, or the head, applies the ReLU). That computes what
  the CIFAR blocks compute (ReLU at the end, returning ``(relu(sum), sum)``): ``layer1``'s
  input is already non-negative and ReLU is idempotent; so the blocks are shared, and
  ``features[i] = relu(preact_features[i])`` as mdistiller's ``feats``/``preact_feats``.
* ``preact_features[0]`` is the stem *after* its ReLU: mdistiller keeps ``stem = x`` and
  then applies ``nn.ReLU(inplace=True)`` to ``x``, which overwrites ``stem`` too.
* The max-pool belongs to stage 1, since ``features[0]`` is taken before it.
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from kdjax.errors import KdjaxError
from kdjax.models.registry import register
from kdjax.models.base import ModelOutput
from kdjax.models.layers import BatchNorm, at_least_float32, conv, dense, kaiming_normal_fan_out
from kdjax.models.resnet import BasicBlock, Bottleneck
from kdjax.models.resnetv2 import run_stage


def avg_pool_7x7(x: jax.Array) -> jax.Array:
  """``nn.AvgPool2d(7)`` on the last 7x7 map, flattened: the head of mdistiller's ImageNet zoo.

  On a larger map it would leave more than 1x1 and the ``fc`` would not fit, so any map but
  7x7 (what 224x224 images give) is a :class:`KdjaxError`.
  """
  if x.shape[1:3] != (7, 7):
    raise KdjaxError(f'the ImageNet models average-pool a 7x7 last feature map (224x224 '
                     f'images); got {x.shape[1]}x{x.shape[2]}')
  return jnp.mean(at_least_float32(x), axis=(1, 2))


class ImageNetResNet(nn.Module):
  """mdistiller's ImageNet ``ResNet(block, layers, num_classes)`` (see module docstring)."""
  num_classes: int
  dtype: Any = jnp.float32
  bn_groups: int = 1
  materialize_residuals: bool = False  # see kdjax.models.layers.materialize
  num_blocks: Sequence[int] = (2, 2, 2, 2)
  bottleneck: bool = False

  @nn.compact
  def __call__(self, x, train: bool = False, start: int = 0) -> ModelOutput:
    block = Bottleneck if self.bottleneck else BasicBlock
    kw = dict(dtype=self.dtype, bn_groups=self.bn_groups,
              materialize_residuals=self.materialize_residuals)
    feats, preacts = [], []
    for stage in range(start, 5):
      if stage == 0:
        x = conv(64, 7, stride=2, in_features=3, kernel_init=kaiming_normal_fan_out,
                 dtype=self.dtype, name='conv1')(x)
        x = nn.relu(BatchNorm(batch_groups=self.bn_groups, dtype=self.dtype, name='bn1')(
            x, train))
        preact = x  # mdistiller's in-place ReLU overwrites its `stem` (module docstring)
      else:
        if stage == 1:
          x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        x, preact = run_stage(block, stage, self.num_blocks[stage - 1], x, train, **kw)
      feats.append(x)
      preacts.append(preact)
    pooled = avg_pool_7x7(x).astype(self.dtype)
    logits = dense(self.num_classes, in_features=512 * block.expansion, dtype=self.dtype,
                   name='fc')(pooled)
    return ModelOutput(logits, feats, preacts, pooled)


def _register(name: str, num_blocks: Sequence[int], bottleneck: bool) -> None:
  register(name, functools.partial(ImageNetResNet, num_blocks=tuple(num_blocks),
                                   bottleneck=bottleneck), zoo='imagenet')


_register('ResNet18', (2, 2, 2, 2), bottleneck=False)
_register('ResNet34', (3, 4, 6, 3), bottleneck=False)
_register('ResNet50', (3, 4, 6, 3), bottleneck=True)
_register('ResNet101', (3, 4, 23, 3), bottleneck=True)
