"""Layers with PyTorch semantics, so the zoo matches RepDistiller/mdistiller exactly.

* :class:`BatchNorm` normalises like ``torch.nn.BatchNorm2d``/``BatchNorm1d``: biased batch
  variance for the normalisation, *unbiased* batch variance for the running estimate,
  ``running = (1 - momentum) * running + momentum * batch`` with PyTorch's momentum 0.1,
  eps 1e-5. With ``batch_groups > 1`` the statistics are computed per group of consecutive
  examples (per device when the batch is sharded over devices), as
  ``torch.nn.DataParallel`` does; the running estimate then follows the first group, as
  DataParallel keeps replica 0's buffers. Its gradient is the closed form of
  :func:`normalize` (two passes over the activations instead of autodiff's three).
* Initialisers reproduce PyTorch's: ``torch_default_init(fan_in)`` is
  ``kaiming_uniform_(a=sqrt(5))`` i.e. U(-1/sqrt(fan_in), 1/sqrt(fan_in)) (the default of
  ``nn.Conv2d`` and ``nn.Linear`` for weights and biases); ``kaiming_normal_fan_out`` is
  ``nn.init.kaiming_normal_(w, mode='fan_out', nonlinearity='relu')``.

Variable names follow PyTorch as well: a conv's ``kernel`` is its ``weight`` (HWIO here,
OIHW there), a BatchNorm has params ``scale``/``bias`` and batch_stats ``mean``/``var``
(``weight``/``bias``/``running_mean``/``running_var`` there); :mod:`kdjax.convert` relies
on this.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp


def torch_default_init(fan_in: int):
  """U(-1/sqrt(fan_in), 1/sqrt(fan_in)): PyTorch's default Conv/Linear weight and bias init."""
  bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init


def kaiming_normal_fan_out(key, shape, dtype=jnp.float32):
  """``nn.init.kaiming_normal_(w, mode='fan_out', nonlinearity='relu')`` for an HWIO kernel."""
  fan_out = math.prod(shape[:-2]) * shape[-1]
  return jax.random.normal(key, shape, dtype) * math.sqrt(2.0 / fan_out)


def conv(features: int, kernel_size: int, *, stride: int = 1, padding: int | None = None,
         groups: int = 1, use_bias: bool = False, in_features: int, kernel_init=None,
         dtype: Any = jnp.float32, name: str | None = None) -> nn.Conv:
  """An ``nn.Conv2d(in_features, features, kernel_size, stride, padding, groups, bias)``.

  ``padding`` defaults to PyTorch's explicit symmetric ``kernel_size // 2``. The kernel
  defaults to PyTorch's own init; pass ``kernel_init`` for the models that re-initialise.
  """
  pad = kernel_size // 2 if padding is None else padding
  fan_in = in_features // groups * kernel_size * kernel_size
  return nn.Conv(
      features, (kernel_size, kernel_size), strides=(stride, stride),
      padding=((pad, pad), (pad, pad)), feature_group_count=groups, use_bias=use_bias,
      kernel_init=kernel_init or torch_default_init(fan_in),
      bias_init=torch_default_init(fan_in), dtype=dtype, name=name)


def dense(features: int, *, in_features: int, kernel_init=None, bias_init=None,
          dtype: Any = jnp.float32, name: str | None = None) -> nn.Dense:
  """An ``nn.Linear(in_features, features)`` with PyTorch's default init unless overridden."""
  return nn.Dense(features, kernel_init=kernel_init or torch_default_init(in_features),
                  bias_init=bias_init or torch_default_init(in_features), dtype=dtype,
                  name=name)


def materialize(x: jax.Array, enabled: bool = True) -> jax.Array:
  """``x``, stored once on XLA:CPU instead of recomputed inside the fusions that read it.

  Residual blocks end with this, ``enabled`` by their model's ``materialize_residuals``
  attribute (``config.platform.residual_outputs``, resolved by
  :func:`kdjax.platform_tuning.materialize_residuals` when the model is created). Disabled,
  or outside a trace, it returns ``x`` itself; under ``jit`` ``x`` passes through a
  ``lax.cond`` whose predicate XLA cannot know at compile time and whose branches both
  return ``x``. XLA does not fuse across a conditional, so the transposed copy that a
  weight-gradient convolution reads is made from the stored ``x``, not by recomputing
  BatchNorm, add and ReLU of every block since the stage began (:mod:`kdjax.platform_tuning`
  has the measurement). One branch is ``x * 1``, not ``x``: JAX drops a ``cond`` output that
  every branch forwards unchanged, and with one non-empty branch XLA's conditional
  simplifier keeps the conditional (an empty branch runs faster than a select).
  """
  if not enabled or not isinstance(x, jax.core.Tracer):
    return x  # eager (op by op) computation fuses nothing
  unknown = jnp.isfinite(x.reshape(-1)[0])
  return jax.lax.cond(unknown, lambda t: t, lambda t: t * 1, x)


def at_least_float32(x: jax.Array) -> jax.Array:
  """``x`` in float32, or wider if it already is (statistics and pooling never in bf16)."""
  return x.astype(jnp.promote_types(x.dtype, jnp.float32))


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def normalize(xg: jax.Array, scale: jax.Array, bias: jax.Array, epsilon: float):
  """Training-mode BatchNorm of ``xg`` (groups, examples, ..., features) per group.

  Returns ``(y, mean, var)``: ``y = (xg - mean) / sqrt(var + epsilon) * scale + bias`` with
  the statistics over all axes but the first and last (keepdims), the variance biased. The
  gradient is BatchNorm's closed form (Ioffe & Szegedy 2015, as ``torch.nn.BatchNorm2d``'s
  backward)::

      dx = scale * rstd / n * (n * dy - sum(dy) - xhat * sum(dy * xhat))
           + (dmean + 2 * dvar * (xg - mean)) / n

  with ``xhat = (xg - mean) * rstd``; it reads the activations in two passes where the
  autodiff of the forward formula takes three (10% of BatchNorm networks' steps on a CPU,
  ``benchmarks/throughput.py``). Reverse mode only (the train steps and SKD's meta-gradient
  are reverse over reverse).
  """
  return _normalize_fwd(xg, scale, bias, epsilon)[0]


def _axes(xg):
  return tuple(range(1, xg.ndim - 1))


def _normalize_fwd(xg, scale, bias, epsilon):
  mean = jnp.mean(xg, axis=_axes(xg), keepdims=True)
  var = jnp.mean(jnp.square(xg - mean), axis=_axes(xg), keepdims=True)
  rstd = jax.lax.rsqrt(var + epsilon)
  y = (xg - mean) * rstd * scale + bias
  return (y, mean, var), (xg, mean, rstd, scale)


def _normalize_bwd(epsilon, residuals, cotangents):
  del epsilon  # in rstd already
  xg, mean, rstd, scale = residuals
  dy, dmean, dvar = cotangents
  n = math.prod(xg.shape[1:-1])
  xhat = (xg - mean) * rstd
  dbias = jnp.sum(dy, axis=_axes(xg), keepdims=True)
  dscale = jnp.sum(dy * xhat, axis=_axes(xg), keepdims=True)
  dx = (scale * rstd / n) * (n * dy - dbias - xhat * dscale)
  dx = dx + (dmean + 2.0 * dvar * (xg - mean)) / n
  per_feature = tuple(range(xg.ndim - 1))
  return dx, jnp.sum(dscale, axis=per_feature), jnp.sum(dbias, axis=per_feature)


normalize.defvjp(_normalize_fwd, _normalize_bwd)


class BatchNorm(nn.Module):
  """``torch.nn.BatchNorm{1,2}d`` over the last axis (see the module docstring).

  Attributes:
    momentum: PyTorch convention: weight of the *new* batch statistic (0.1).
    epsilon: added to the variance (1e-5).
    batch_groups: compute statistics per group of ``batch / batch_groups`` examples.
    dtype: computation dtype of the output; statistics are always float32.
  """
  momentum: float = 0.1
  epsilon: float = 1e-5
  batch_groups: int = 1
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    features = x.shape[-1]
    scale = self.param('scale', nn.initializers.ones, (features,), jnp.float32)
    bias = self.param('bias', nn.initializers.zeros, (features,), jnp.float32)
    ra_mean = self.variable('batch_stats', 'mean', jnp.zeros, (features,), jnp.float32)
    ra_var = self.variable('batch_stats', 'var', jnp.ones, (features,), jnp.float32)
    x32 = at_least_float32(x)
    if not train:
      y = (x32 - ra_mean.value) * jax.lax.rsqrt(ra_var.value + self.epsilon) * scale + bias
      return y.astype(self.dtype)
    groups = self.batch_groups
    if x.shape[0] % groups:
      raise ValueError(f'batch {x.shape[0]} is not divisible into {groups} BN groups')
    xg = x32.reshape((groups, x.shape[0] // groups) + x.shape[1:])
    y, mean, var = normalize(xg, scale, bias, self.epsilon)
    if not self.is_initializing():
      n = x.size // (groups * features)
      mean, var = jax.lax.stop_gradient((mean[0].reshape(features), var[0].reshape(features)))
      ra_mean.value = (1 - self.momentum) * ra_mean.value + self.momentum * mean
      ra_var.value = (1 - self.momentum) * ra_var.value + self.momentum * var * (n / max(n - 1, 1))
    return y.reshape(x.shape).astype(self.dtype)
