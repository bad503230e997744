"""ReviewKD: distilling knowledge via knowledge review (Chen et al., CVPR 2021), as
mdistiller's ``mdistiller/distillers/ReviewKD.py``.

The student's stage outputs and its pooled vector (as a 1x1 map), ``x_1..x_n`` from shallow
to deep, are fused from the deepest up by attention-based fusion (ABF) modules::

    (r_n, y_n) = ABF_n(x_n)                      # no fusion at the deepest level
    (r_i, y_i) = ABF_i(x_i, y_{i+1})             # i = n-1 .. 1
    loss = ce_weight * CE(y, S)
         + reviewkd_weight * min(epoch / warmup_epochs, 1) * sum_i HCL(r_i, t_i)

with ``t_1..t_n`` the teacher's pre-ReLU stage outputs after the stem and its pooled vector
(``preact_features[1:] + [embedding]``), HCL the hierarchical context loss of
:func:`kdjax.losses.hcl`, and ``epoch`` 1-based. ABF_i: 1x1 conv + BN to ``mid`` channels;
if fusing, the previous level's ``y`` is nearest-upsampled to ``x_i``'s size and mixed with
it by a 2-channel sigmoid attention (1x1 conv); the result is nearest-resized to the teacher
map's size (it is the ``y`` passed on), and a 3x3 conv + BN to the teacher's channels gives
``r_i``. ``mid = min(max_mid_channel, channels of the student's pooled vector)``: with the
default 512 that is mdistiller's ``mid_channel = min(512, in_channels[-1])`` (``ReviewKD.py``
line 45, which stores its ``MAX_MID_CHANNEL`` on line 42 but never reads it).

The per-level configuration of mdistiller's yaml (``SHAPES``, ``OUT_SHAPES``,
``IN_CHANNELS``, ``OUT_CHANNELS``) is derived from the two nets' output shapes: the student's
sizes and channels of ``x_i`` and the teacher's of ``t_i`` -- for resnet32x4 -> resnet8x4
exactly mdistiller's defaults ([1, 8, 16, 32], [64, 128, 256, 256]). With more student levels
than teacher levels the shallowest student ones are dropped: mdistiller reverses the student's
list (``ReviewKD.py`` line 80) and ``zip``s it with its ABFs (lines 84-85), one per teacher
level, then ``hcl_loss`` ``zip``s the results with the teacher's levels (line 13).
``stu_preact`` uses the student's pre-ReLU outputs instead of ``features``.

Defaults (``CFG.REVIEWKD``): CE 1.0, weight 1.0, warm-up 20 epochs, max mid channels 512,
student post-ReLU features; mdistiller's CIFAR-100 config for resnet32x4 -> resnet8x4 uses
weight 5.0 (``experiments/reviewkd.py``).
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from kdjax import losses
from kdjax.errors import KdjaxError
from kdjax.methods.base import BuildInputs, Method, MethodInfo, student_and_teacher
from kdjax.methods.connectors import kaiming_uniform, nearest_resize
from kdjax.methods.distiller import distillation_method, warmup
from kdjax.models.layers import BatchNorm, conv


class ABF(nn.Module):
  """mdistiller's ``ABF``: returns ``(conv2 output, residual passed to the next level)``."""
  in_channel: int
  mid_channel: int
  out_channel: int
  fuse: bool
  dtype: Any = jnp.float32
  bn_groups: int = 1

  @nn.compact
  def __call__(self, x, y=None, shape: Optional[int] = None, out_shape: Optional[int] = None,
               *, train: bool):
    bn = lambda name: BatchNorm(batch_groups=self.bn_groups, dtype=self.dtype, name=name)
    x = conv(self.mid_channel, 1, in_features=self.in_channel, kernel_init=kaiming_uniform(1.0),
             dtype=self.dtype, name='conv1.0')(x)
    x = bn('conv1.1')(x, train)
    if self.fuse:
      y = nearest_resize(y, (shape, shape))
      z = conv(2, 1, use_bias=True, in_features=2 * self.mid_channel, dtype=self.dtype,
               name='att_conv.0')(jnp.concatenate([x, y], axis=-1))
      z = jax.nn.sigmoid(z)
      x = x * z[..., 0:1] + y * z[..., 1:2]
    if x.shape[2] != out_shape:
      x = nearest_resize(x, (out_shape, out_shape))
    out = conv(self.out_channel, 3, in_features=self.mid_channel,
               kernel_init=kaiming_uniform(1.0), dtype=self.dtype, name='conv2.0')(x)
    return bn('conv2.1')(out, train), x


class ReviewFusion(nn.Module):
  """The ABF pyramid: student maps (shallow to deep) -> fused maps (shallow to deep).

  ``in_channels``/``out_channels``/``shapes``/``out_shapes`` are per level, shallow to deep
  (the student's channels and spatial size, the teacher's channels and spatial size).
  """
  in_channels: Sequence[int]
  out_channels: Sequence[int]
  shapes: Sequence[int]
  out_shapes: Sequence[int]
  mid_channel: int
  dtype: Any = jnp.float32
  bn_groups: int = 1

  @nn.compact
  def __call__(self, xs, *, train: bool):
    n = len(self.in_channels)
    abfs = [ABF(self.in_channels[i], self.mid_channel, self.out_channels[i], i < n - 1,
                dtype=self.dtype, bn_groups=self.bn_groups, name=f'abfs.{i}') for i in range(n)]
    results = [None] * n
    results[-1], res = abfs[-1](xs[-1], out_shape=self.out_shapes[-1], train=train)
    for i in range(n - 2, -1, -1):
      results[i], res = abfs[i](xs[i], res, self.shapes[i], self.out_shapes[i], train=train)
    return results


def _pyramid(out, preact: bool):
  """Stage outputs (pre-ReLU or not) and the pooled vector as a 1x1 map."""
  maps = out.preact_features if preact else out.features
  return list(maps) + [out.embedding[:, None, None, :]]


INFO = MethodInfo('ReviewKD',
                  net_outputs=('features', 'preact_features', 'embedding'))


def build(config: ml_collections.ConfigDict, inputs: BuildInputs) -> Method:
  student, teacher = student_and_teacher(config, inputs)
  c = config.reviewkd
  s_out, t_out = inputs.output_shapes(student), inputs.output_shapes(teacher)
  if t_out.preact_features is None or (c.stu_preact and s_out.preact_features is None):
    name = config.teacher.model if t_out.preact_features is None else config.model
    raise KdjaxError(f'ReviewKD needs pre-ReLU features, which {name} does not have')
  t_maps = jax.eval_shape(lambda o: _pyramid(o, True)[1:], t_out)
  n = len(t_maps)
  s_maps = jax.eval_shape(lambda o: _pyramid(o, c.stu_preact), s_out)
  if len(s_maps) < n:
    raise KdjaxError(f'ReviewKD: {config.model} has fewer feature levels than '
                     f'{config.teacher.model} ({len(s_maps)} < {n})')
  s_maps = s_maps[-n:]
  in_channels = tuple(f.shape[-1] for f in s_maps)
  fusion = ReviewFusion(
      in_channels=in_channels, out_channels=tuple(f.shape[-1] for f in t_maps),
      shapes=tuple(f.shape[1] for f in s_maps), out_shapes=tuple(f.shape[1] for f in t_maps),
      mid_channel=min(c.max_mid_channel, in_channels[-1]), dtype=inputs.dtype,
      bn_groups=inputs.bn_groups)

  def terms(run, out, batch, ctx):
    del batch
    fused = run('abfs', _pyramid(out, c.stu_preact)[-n:])
    hcl = losses.hcl(fused, _pyramid(ctx.teacher, True)[1:])
    return {'reviewkd': c.reviewkd_weight * warmup(ctx.epoch, c.warmup_epochs) * hcl}

  return distillation_method('reviewkd', student, teacher, ce_weight=c.ce_weight, terms=terms,
                             optimizer=inputs.optimizer,
                             connectors={'abfs': (fusion, s_maps)})


def default_config() -> ml_collections.ConfigDict:
  """``config.reviewkd``: mdistiller's ``CFG.REVIEWKD`` (per-level shapes derived)."""
  return ml_collections.ConfigDict({'ce_weight': 1.0, 'reviewkd_weight': 1.0,
                                    'warmup_epochs': 20, 'max_mid_channel': 512,
                                    'stu_preact': False})
