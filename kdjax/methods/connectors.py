"""What the feature-based methods share: the learned connectors and the common loss layout.

Connectors are small *learning* nets between a student's features and a teacher's (ports of
megvii-research/mdistiller's ``mdistiller/distillers/_common.py``, ``OFD.py`` and ``CRD.py``
modules). Each is a Flax module whose ``__call__`` takes ``train`` as a keyword; a method
puts it in ``Method.nets`` with its own optimizer and initialises it from
``Method.sample_inputs`` (feature shapes from :func:`output_shapes`). Layouts are NHWC.

* :class:`ConvReg` -- FitNet's regressor (``_common.ConvReg``): conv + BN + ReLU;
* :class:`ConvBN` / :class:`ConvBNs` -- OFD's per-stage connectors (``ConnectorConvBN``);
* :class:`Embed` -- CRD's embedding head (``CRD.Embed``): linear + L2 normalisation;
* :func:`nearest_resize` -- ``F.interpolate(mode='nearest')`` (ReviewKD's ABF).

The loss layout every mdistiller distiller uses -- ``CE_WEIGHT * CE(y, student) + weighted
distillation terms``, optionally warmed up over the first epochs -- is
:func:`distillation_method` and :func:`warmup`.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Mapping, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from kdjax import losses
from kdjax.errors import KdjaxError
from kdjax.methods.base import Method
from kdjax.models.base import ModelOutput
from kdjax.models.layers import BatchNorm, conv, dense, kaiming_normal_fan_out, torch_default_init

# Every kdjax dataset is 32x32 RGB (kdjax.data.sources); mdistiller probes feature shapes
# with the same input size (FITNET.INPUT_SIZE = (32, 32)).
IMAGE_SHAPE = (32, 32, 3)


def output_shapes(model: nn.Module, dtype=jnp.float32, batch: int = 2,
                  image_shape: Sequence[int] = IMAGE_SHAPE) -> ModelOutput:
  """The model's output on a ``batch`` of images, as ``jax.ShapeDtypeStruct`` (no FLOPs).

  mdistiller's ``get_feat_shapes``: what a connector between two nets must be sized for.
  """
  x = jax.ShapeDtypeStruct((batch,) + tuple(image_shape), dtype)
  variables = jax.eval_shape(lambda x: model.init(jax.random.PRNGKey(0), x), x)
  return jax.eval_shape(lambda v, x: model.apply(v, x, train=False), variables, x)


def hint_shapes(config, student: nn.Module, teacher: nn.Module, dtype, block: str,
                hint_layer: int) -> tuple[jax.ShapeDtypeStruct, jax.ShapeDtypeStruct]:
  """Student's and teacher's feature shapes at stage ``hint_layer`` (FitNet's hint layer).

  A :class:`KdjaxError` naming ``config.<block>.hint_layer`` if it is not a stage of both.
  """
  s_feats = output_shapes(student, dtype).features
  t_feats = output_shapes(teacher, dtype).features
  if not 0 <= hint_layer < min(len(s_feats), len(t_feats)):
    raise KdjaxError(f'{block}.hint_layer {hint_layer} is not a stage of both {config.model} '
                     f'({len(s_feats)} stages) and {config.teacher.model} ({len(t_feats)})')
  return s_feats[hint_layer], t_feats[hint_layer]


def warmup(epoch, epochs: float):
  """``min(epoch / epochs, 1)``: mdistiller's linear warm-up of a loss weight (epoch 1-based)."""
  return jnp.minimum(jnp.asarray(epoch, jnp.float32) / epochs, 1.0)


def distillation_method(name: str, student: nn.Module, teacher: nn.Module, *,
                        ce_weight: float, terms: Callable, optimizer_factory,
                        connectors: Optional[Mapping[str, tuple[nn.Module, Any]]] = None,
                        init_extra: Optional[Callable] = None) -> Method:
  """A student distilled from a frozen teacher with mdistiller's loss layout.

  ``loss = ce_weight * CE(y, student) + sum(terms(run, student_out, batch, ctx).values())``
  where ``terms`` returns the already weighted distillation terms by name (logged as
  ``loss/<name>`` next to ``loss/ce``). ``connectors`` maps a learning net's name to
  ``(module, sample_input)``; each gets its own optimizer from ``optimizer_factory``.
  """
  connectors = dict(connectors or {})
  nets = {'student': student, **{k: m for k, (m, _) in connectors.items()}}

  def loss(run, batch, ctx):
    out = run('student', batch.images)
    named = {'ce': ce_weight * losses.cross_entropy(out.logits, batch.labels)}
    named.update(terms(run, out, batch, ctx))
    return sum(named.values()), named

  return Method(name, nets, {k: optimizer_factory() for k in nets}, loss, teacher=teacher,
                sample_inputs={k: x for k, (_, x) in connectors.items()},
                init_extra=init_extra)


def kaiming_uniform(a: float):
  """``nn.init.kaiming_uniform_(w, a)`` (fan_in mode) for an HWIO kernel."""
  def init(key, shape, dtype=jnp.float32):
    fan_in = math.prod(shape[:-1])
    bound = math.sqrt(6.0 / ((1.0 + a * a) * fan_in))
    return jax.random.uniform(key, shape, dtype, -bound, bound)
  return init


def nearest_resize(x: jax.Array, size: Sequence[int]) -> jax.Array:
  """``F.interpolate(x, size, mode='nearest')`` on NHWC: source ``floor(i * in / out)``."""
  (h, w), (oh, ow) = x.shape[1:3], tuple(size)
  if (h, w) == (oh, ow):
    return x
  rows = np.minimum(np.floor(np.arange(oh) * (h / oh)).astype(np.int32), h - 1)
  cols = np.minimum(np.floor(np.arange(ow) * (w / ow)).astype(np.int32), w - 1)
  return x[:, rows][:, :, cols]


class ConvReg(nn.Module):
  """FitNet's convolutional regressor, mdistiller's ``_common.ConvReg``.

  Maps a student map ``s_shape = (H_s, W_s, C_s)`` onto the teacher's ``t_shape``: a 3x3
  stride-2 conv if ``H_s = 2 H_t``, a 4x4 stride-2 transposed conv if ``2 H_s = H_t``, else a
  ``(1 + H_s - H_t) x (1 + W_s - W_t)`` valid conv (1x1 for equal sizes); all with bias and
  PyTorch's default init; then BatchNorm and (``use_relu``) ReLU.
  """
  s_shape: Sequence[int]
  t_shape: Sequence[int]
  use_relu: bool = True
  dtype: Any = jnp.float32
  bn_groups: int = 1

  @nn.compact
  def __call__(self, x, *, train: bool):
    s_h, s_w, s_c = self.s_shape
    t_h, t_w, t_c = self.t_shape
    if s_h == 2 * t_h:
      layer = conv(t_c, 3, stride=2, padding=1, use_bias=True, in_features=s_c,
                   dtype=self.dtype, name='conv')
    elif 2 * s_h == t_h:
      # ConvTranspose2d(s_c, t_c, 4, stride=2, padding=1): the gradient of that conv, i.e.
      # padding k - 1 - p = 2 on each side; PyTorch's fan_in is t_c * 4 * 4 here.
      init = torch_default_init(t_c * 16)
      layer = nn.ConvTranspose(t_c, (4, 4), strides=(2, 2), padding=((2, 2), (2, 2)),
                               transpose_kernel=True, kernel_init=init, bias_init=init,
                               dtype=self.dtype, name='conv')
    elif s_h >= t_h:
      kernel = (1 + s_h - t_h, 1 + s_w - t_w)
      init = torch_default_init(s_c * kernel[0] * kernel[1])
      layer = nn.Conv(t_c, kernel, padding='VALID', kernel_init=init, bias_init=init,
                      dtype=self.dtype, name='conv')
    else:
      raise KdjaxError(f'no FitNet regressor from a {s_h}x{s_w} student map to a '
                       f'{t_h}x{t_w} teacher map (mdistiller\'s ConvReg supports H_s = 2 H_t, '
                       f'2 H_s = H_t and H_s >= H_t); choose another fitnet.hint_layer')
    x = BatchNorm(batch_groups=self.bn_groups, dtype=self.dtype, name='bn')(layer(x), train)
    return nn.relu(x) if self.use_relu else x


class ConvBN(nn.Module):
  """OFD's connector for one stage (``ConnectorConvBN._build_feature_connector``).

  ``k x k`` conv without bias (padding ``(k - 1) // 2``, init N(0, 2 / (k k C_out))) then
  BatchNorm (weight 1, bias 0).
  """
  in_channels: int
  out_channels: int
  kernel_size: int = 1
  dtype: Any = jnp.float32
  bn_groups: int = 1

  @nn.compact
  def __call__(self, x, *, train: bool):
    k = self.kernel_size
    x = conv(self.out_channels, k, padding=(k - 1) // 2, in_features=self.in_channels,
             kernel_init=kaiming_normal_fan_out, dtype=self.dtype, name='0')(x)
    return BatchNorm(batch_groups=self.bn_groups, dtype=self.dtype, name='1')(x, train)


class ConvBNs(nn.Module):
  """One :class:`ConvBN` per feature map: ``[connector_i(x_i)]`` (``ConnectorConvBN``)."""
  in_channels: Sequence[int]
  out_channels: Sequence[int]
  kernel_size: int = 1
  dtype: Any = jnp.float32
  bn_groups: int = 1

  @nn.compact
  def __call__(self, xs, *, train: bool):
    return [ConvBN(c_in, c_out, self.kernel_size, self.dtype, self.bn_groups,
                   name=f'connectors.{i}')(x, train=train)
            for i, (x, c_in, c_out) in enumerate(zip(xs, self.in_channels, self.out_channels))]


class Embed(nn.Module):
  """CRD's embedding head (``CRD.Embed``): flatten, ``Linear(dim_in, dim_out)``, L2-normalise.

  The normalisation is ``x / ||x||_2`` without epsilon, as mdistiller's ``Normalize(2)``.
  """
  dim_in: int
  dim_out: int = 128
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, *, train: bool = False):
    del train  # no BatchNorm
    x = x.reshape(x.shape[0], -1)
    x = dense(self.dim_out, in_features=self.dim_in, dtype=self.dtype, name='linear')(x)
    x = x.astype(jnp.float32)
    return x / jnp.sqrt(jnp.sum(jnp.square(x), axis=1, keepdims=True))


__all__ = ['IMAGE_SHAPE', 'ConvBN', 'ConvBNs', 'ConvReg', 'Embed', 'distillation_method',
           'kaiming_uniform', 'nearest_resize', 'output_shapes', 'warmup']
