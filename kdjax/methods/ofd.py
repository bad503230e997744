"""OFD: a comprehensive overhaul of feature distillation (Heo et al., ICCV 2019), as
mdistiller's ``mdistiller/distillers/OFD.py``.

On the pre-ReLU stage outputs after the stem (``preact_features[1:]``, mdistiller's
``preact_feats[1:]``), paired from the deepest stage up when the two nets have different
numbers of stages (mdistiller's ``_align_list``, ``OFD.py`` lines 163-165: the last
``min(len)`` of each list, applied in ``ofd_loss``, line 143)::

    loss = ce_weight * CE(y, S)
         + feat_weight * sum_i OFD(C_i(S_i), pool(T_i), m_i) / 2^(n - i - 1),  i = 0..n-1

* ``C_i``: learned connector conv (k x k, no bias) + BN to the teacher's channels
  (:class:`~kdjax.methods.connectors.ConvBNs`, learning net ``connectors``);
* ``pool(T_i)``: the teacher map adaptively average-pooled to the student's size;
* ``m_i``: the per-channel margin :func:`kdjax.losses.ofd_margin` of the teacher BatchNorm
  right before stage ``i``'s ReLU (mdistiller's ``get_bn_before_relu``: the last block's
  last BN for ResNets, the CIFAR and the ImageNet ones, the next block's ``bn1`` / the final
  ``bn1`` for WRNs, each block's last BN for VGGs). The frozen teacher is wrapped in
  :class:`MarginTeacher`, which returns the margins computed from its own variables next
  to its outputs;
* ``OFD``: the partial L2 distance of :func:`kdjax.losses.ofd` (batch mean, channel and
  position sum).

Defaults (``CFG.OFD``): CE 1.0, feat 1e-3, connector kernel 1. ShuffleNets and MobileNetV2
are refused as teachers, as in mdistiller; MobileNetV2 has no pre-ReLU features, so it
cannot be an OFD student either.

Unlike mdistiller (whose ``OFD.train()`` puts the teacher in train mode too, so the teacher
normalises with batch statistics), the teacher runs in inference mode, as for every kdjax
method.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Sequence

import flax.linen as nn
import ml_collections

from kdjax import losses
from kdjax.errors import KdjaxError
from kdjax.losses import _common
from kdjax.methods.base import BuildInputs, Method, MethodInfo, student_and_teacher
from kdjax.methods.connectors import ConvBNs
from kdjax.methods.distiller import distillation_method
from kdjax.models.imagenet_resnet import ImageNetResNet
from kdjax.models.resnet import ResNet
from kdjax.models.resnetv2 import ResNetV2
from kdjax.models.vgg import VGG
from kdjax.models.wrn import WideResNet


class MarginTeacherOutput(NamedTuple):
  """The teacher's :class:`~kdjax.models.base.ModelOutput` fields plus OFD's margins."""
  logits: Any
  features: Any
  preact_features: Any
  embedding: Any
  margins: Sequence[Any]  # one (C,) margin per stage 1..n


def bn_before_relu(model: nn.Module) -> list[tuple[str, ...]]:
  """Param paths of the BatchNorm before each stage's ReLU (stages 1..n), as mdistiller."""
  if isinstance(model, ResNet):
    n = (model.depth - 2) // (9 if model.bottleneck else 6)
    bn = 'bn3' if model.bottleneck else 'bn2'
    return [(f'layer{i}.{n - 1}', bn) for i in (1, 2, 3)]
  if isinstance(model, (ResNetV2, ImageNetResNet)):
    # The last block's last BN of each layer. mdistiller's ImageNet ResNet lists layers 2..4
    # only (layer1's is commented out): taken from the deepest up, as build() does, the
    # margins are the same whenever at most 3 stages are paired (r50_mv1: MobileNetV1 has 3
    # after its stem); mdistiller cannot pair 4 (it has no r34_r18 OFD recipe).
    bn = 'bn3' if model.bottleneck else 'bn2'
    return [(f'layer{i}.{n - 1}', bn) for i, n in enumerate(model.num_blocks, start=1)]
  if isinstance(model, WideResNet):
    return [('block2.layer.0', 'bn1'), ('block3.layer.0', 'bn1'), ('bn1',)]
  if isinstance(model, VGG):
    return [(f'block{i}.{3 * (len(model.cfg[i]) - 1) + 1}',) for i in range(1, len(model.cfg))]
  raise KdjaxError(f'{type(model).__name__} is not supported as an OFD teacher (mdistiller '
                   f'supports ResNets, WRNs and VGGs); choose another teacher.model')


class MarginTeacher(nn.Module):
  """The frozen teacher, its variables unchanged, returning OFD's margins with its outputs."""
  model: nn.Module
  bn_paths: Sequence[tuple[str, ...]]

  def setup(self):
    nn.share_scope(self, self.model)  # the teacher's variables keep their own names

  def __call__(self, x, train: bool = False, **kwargs) -> MarginTeacherOutput:
    out = self.model(x, train=train, **kwargs)
    margins = []
    for path in self.bn_paths:
      bn = self.variables['params']
      for key in path:
        bn = bn[key]
      margins.append(losses.ofd_margin(bn['scale'], bn['bias']))
    return MarginTeacherOutput(*out, margins)


INFO = MethodInfo('OFD', net_outputs=('preact_features',))


def build(config: ml_collections.ConfigDict, inputs: BuildInputs) -> Method:
  student, teacher_model = student_and_teacher(config, inputs)
  c = config.ofd
  teacher = MarginTeacher(teacher_model, tuple(bn_before_relu(teacher_model)))
  s_pre = inputs.output_shapes(student).preact_features
  t_pre = inputs.output_shapes(teacher_model).preact_features
  if s_pre is None or t_pre is None:
    raise KdjaxError(f'OFD needs pre-ReLU features, which '
                     f'{config.model if s_pre is None else config.teacher.model} does not have')
  # Stages 1.. of each net, paired from the deepest one up (mdistiller's _align_list).
  n = min(len(s_pre), len(t_pre)) - 1
  s_pre, t_pre = s_pre[-n:], t_pre[-n:]
  connectors = ConvBNs(tuple(f.shape[-1] for f in s_pre), tuple(f.shape[-1] for f in t_pre),
                       c.connector_kernel_size, dtype=inputs.dtype, bn_groups=inputs.bn_groups)

  def terms(run, out, batch, ctx):
    del batch
    feats_s = run('connectors', out.preact_features[-n:])
    feats_t, margins = ctx.teacher.preact_features[-n:], ctx.teacher.margins[-n:]
    total = 0.0
    for i, (f_s, f_t, m) in enumerate(zip(feats_s, feats_t, margins)):
      f_t = _common.adaptive_avg_pool2d(f_t, f_s.shape[1:3])
      total = total + losses.ofd(f_s, f_t, m) / 2**(n - i - 1)
    return {'ofd': c.feat_weight * total}

  return distillation_method('ofd', student, teacher, ce_weight=c.ce_weight, terms=terms,
                             optimizer=inputs.optimizer,
                             connectors={'connectors': (connectors, s_pre)})


def default_config() -> ml_collections.ConfigDict:
  """``config.ofd``: mdistiller's ``CFG.OFD``."""
  return ml_collections.ConfigDict({'ce_weight': 1.0, 'feat_weight': 1e-3,
                                    'connector_kernel_size': 1})
