"""The learned connectors of the feature-based methods.

Connectors are small *learning* nets between a student's features and a teacher's (ports of
megvii-research/mdistiller's ``mdistiller/distillers/_common.py``, ``OFD.py`` and ``CRD.py``
modules). Each is a Flax module whose ``__call__`` takes ``train`` as a keyword; a method
puts it in ``Method.nets`` with its own optimizer and initialises it from
``Method.sample_inputs`` (feature shapes from :meth:`BuildInputs.output_shapes
<kdjax.methods.base.BuildInputs.output_shapes>`). Layouts are NHWC.

* :class:`ConvReg` -- FitNet's regressor (``_common.ConvReg``): conv + BN + ReLU;
* :class:`ConvBN` / :class:`ConvBNs` -- OFD's per-stage connectors (``ConnectorConvBN``);
* :class:`Embed` -- CRD's embedding head (``CRD.Embed``): linear + L2 normalisation;
* :func:`nearest_resize` -- ``F.interpolate(mode='nearest')`` (ReviewKD's ABF).
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from kdjax.errors import KdjaxError
from kdjax.models.layers import BatchNorm, conv, dense, kaiming_normal_fan_out, torch_default_init


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


__all__ = ['ConvBN', 'ConvBNs', 'ConvReg', 'Embed', 'kaiming_uniform', 'nearest_resize']
