"""Losses on intermediate feature maps: FitNet, AT, NST, OFD and ReviewKD's HCL.

Ports of megvii-research/mdistiller's ``FitNet.py`` (``F.mse_loss``), ``AT.py``
(``single_stage_at_loss`` / ``at_loss``), ``NST.py`` (``single_stage_nst_loss`` /
``nst_loss``), ``OFD.py`` (``feat_loss`` and the margins of ``OFD.init_ofd_modules``) and
``ReviewKD.py`` (``hcl_loss``). Feature maps are **NHWC** (mdistiller's are NCHW; every loss
here is invariant to that layout change). Reductions run in at least float32; losses are
returned in the student features' dtype.

Learned adapters (FitNet's ConvReg regressor, OFD's connector, ReviewKD's ABF fusion) are the
methods' job: these functions take the already-transformed student features. Gradients flow
into every argument except where mdistiller's own loss function detaches (NST's teacher-teacher
kernel); a frozen teacher is the method's ``jax.lax.stop_gradient``.

mdistiller's default method weights (not arguments here): FitNet -- ``FEAT_WEIGHT`` 100 on
hint layer 2; AT -- ``FEAT_WEIGHT`` 1000 on ``feats[1:]``, ``P`` 2; NST -- ``FEAT_WEIGHT`` 50
on ``feats[1:]``; OFD -- ``FEAT_WEIGHT`` 1e-3 on ``preact_feats[1:]``, stage ``i`` of ``n``
further divided by ``2^(n-i-1)``, teacher maps pooled to the student's size; ReviewKD --
``REVIEWKD_WEIGHT`` 1 times ``min(epoch / 20, 1)``. CE weight 1 everywhere.
"""

from __future__ import annotations

import math
from typing import Sequence

import jax
import jax.numpy as jnp

from kdjax.losses import _common


@_common.scoped
def fitnet(f_s: jax.Array, f_t: jax.Array) -> jax.Array:
  """FitNets hint loss (Romero et al., ICLR 2015), as mdistiller's ``FitNet`` distiller.

  ``L = mean((f_s - f_t)^2)`` over all elements (``F.mse_loss``), where ``f_s`` is the student
  hint *after* the method's learned regressor (mdistiller's ``ConvReg``: conv + BN + ReLU).

  Args:
    f_s: regressed student feature, same shape as ``f_t``.
    f_t: teacher hint feature.

  Returns:
    Scalar loss in ``f_s.dtype``.
  """
  s, t = _common.upcast(f_s, f_t)
  return _common.mse(s, t).astype(_common.output_dtype(f_s))


def _attention(f: jax.Array, p: float) -> jax.Array:
  """mdistiller's ``_at``: ``normalize(mean_c(f^p).reshape(B, -1))`` (L2 per sample)."""
  a = jnp.mean(f**p, axis=-1).reshape(f.shape[0], -1)
  return _common.l2_normalize(a, axis=1)


def single_stage_at(f_s: jax.Array, f_t: jax.Array, p: float = 2) -> jax.Array:
  """Attention transfer for one stage, as mdistiller's ``AT.single_stage_at_loss``.

  If the spatial sizes differ, the larger map is ``adaptive_avg_pool2d``'ed to the smaller
  one's size first (student pooled when ``H_s > H_t``, teacher when ``H_s < H_t``). Then with
  the attention map ``a(f) = normalize(mean_over_channels(f^p))`` (flattened to ``(B, H*W)``,
  L2-normalised per sample with eps 1e-12)::

      L = 1/(B*H*W) * sum_{i, hw} (a(f_s)[i, hw] - a(f_t)[i, hw])^2

  Args:
    f_s: ``(B, H_s, W_s, C_s)`` student feature map.
    f_t: ``(B, H_t, W_t, C_t)`` teacher feature map (channels may differ).
    p: power of the activations (mdistiller default 2).

  Returns:
    Scalar loss in ``f_s.dtype``.
  """
  return _at_stage(f_s, f_t, p).astype(_common.output_dtype(f_s))


def _at_stage(f_s, f_t, p):
  s, t = _common.upcast(f_s, f_t)
  s, t = _common.match_spatial(s, t)
  return jnp.mean(jnp.square(_attention(s, p) - _attention(t, p)))


@_common.scoped
def at(g_s: Sequence[jax.Array], g_t: Sequence[jax.Array], p: float = 2) -> jax.Array:
  """Attention transfer (Zagoruyko & Komodakis, ICLR 2017), as mdistiller's ``AT.at_loss``.

  ``L = sum_stages single_stage_at(f_s, f_t, p)`` -- a *sum* over the stage pairs (the AT
  distiller passes ``feats[1:]`` and weights the sum by 1000).

  Args:
    g_s: sequence of student feature maps (NHWC).
    g_t: sequence of teacher feature maps, paired with ``g_s``.
    p: power of the activations (mdistiller default 2).

  Returns:
    Scalar loss in the dtype of ``g_s[0]``.
  """
  _common.check_pairs(g_s, g_t, 'at')
  loss = sum(_at_stage(f_s, f_t, p) for f_s, f_t in zip(g_s, g_t))
  return loss.astype(_common.output_dtype(g_s[0]))


def _poly_kernel_mean(a: jax.Array, b: jax.Array) -> jax.Array:
  """mdistiller's ``poly_kernel(a, b).mean()``: mean over (B, C_b, C_a) of ``<b_i, a_j>^2``."""
  gram = jnp.einsum('bdi,bdj->bij', b, a, precision=_common.HIGHEST)
  return jnp.mean(jnp.square(gram))


def single_stage_nst(f_s: jax.Array, f_t: jax.Array) -> jax.Array:
  """Neuron selectivity transfer for one stage, as mdistiller's ``NST.single_stage_nst_loss``.

  The larger map is pooled to the smaller size as in :func:`single_stage_at`. Each channel's
  activation map is flattened over ``H*W`` and L2-normalised (eps 1e-12); with the polynomial
  kernel ``k(a, b) = (a . b)^2`` between channels of the same sample, the squared MMD::

      L = mean k(t, t) + mean k(s, s) - 2 mean k(s, t)

  where each mean runs over the batch and all channel pairs. As in mdistiller the
  teacher-teacher term is detached (``stop_gradient``).

  Args:
    f_s: ``(B, H_s, W_s, C_s)`` student feature map.
    f_t: ``(B, H_t, W_t, C_t)`` teacher feature map.

  Returns:
    Scalar loss in ``f_s.dtype``.
  """
  return _nst_stage(f_s, f_t).astype(_common.output_dtype(f_s))


def _nst_stage(f_s, f_t):
  s, t = _common.upcast(f_s, f_t)
  s, t = _common.match_spatial(s, t)
  s = _common.l2_normalize(s.reshape(s.shape[0], -1, s.shape[-1]), axis=1)
  t = _common.l2_normalize(t.reshape(t.shape[0], -1, t.shape[-1]), axis=1)
  return (jax.lax.stop_gradient(_poly_kernel_mean(t, t)) + _poly_kernel_mean(s, s)
          - 2.0 * _poly_kernel_mean(s, t))


@_common.scoped
def nst(g_s: Sequence[jax.Array], g_t: Sequence[jax.Array]) -> jax.Array:
  """Neuron selectivity transfer (Huang & Wang, 2017), as mdistiller's ``NST.nst_loss``.

  ``L = sum_stages single_stage_nst(f_s, f_t)`` (the NST distiller uses ``feats[1:]``,
  weight 50).

  Args:
    g_s: sequence of student feature maps (NHWC).
    g_t: sequence of teacher feature maps, paired with ``g_s``.

  Returns:
    Scalar loss in the dtype of ``g_s[0]``.
  """
  _common.check_pairs(g_s, g_t, 'nst')
  loss = sum(_nst_stage(f_s, f_t) for f_s, f_t in zip(g_s, g_t))
  return loss.astype(_common.output_dtype(g_s[0]))


@_common.scoped
def ofd(source: jax.Array, target: jax.Array, margin: jax.Array) -> jax.Array:
  """Overhaul of feature distillation's partial L2 (Heo et al., ICCV 2019), as ``OFD.feat_loss``.

  On pre-ReLU features, with ``s`` the (connector-transformed) student, ``t`` the teacher and
  ``m`` the per-channel margin (:func:`ofd_margin`)::

      l = (s - m)^2 * [s > m and t <= m]
        + (s - t)^2 * [s > t and m < t <= 0]
        + (s - t)^2 * [t > 0]
      L = 1/B * sum_{i, h, w, c} |l|

  i.e. mean over the batch, *sum* over channels and positions (``abs(l).mean(0).sum()``).

  Args:
    source: ``(B, H, W, C)`` student pre-ReLU feature after the connector.
    target: ``(B, H, W, C)`` teacher pre-ReLU feature (the method pools it to the student's
      size).
    margin: per-channel margin, shape ``(C,)`` or broadcastable to ``source`` (mdistiller's
      ``(1, C, 1, 1)`` becomes ``(1, 1, 1, C)`` in NHWC).

  Returns:
    Scalar loss in ``source.dtype``.
  """
  s, t, m = _common.upcast(source, target, margin)
  m = jnp.broadcast_to(m, s.shape)
  below = (s > m) & (t <= m)
  between = (s > t) & (t > m) & (t <= 0)
  positive = t > 0
  l = (jnp.square(s - m) * below.astype(s.dtype)
       + jnp.square(s - t) * between.astype(s.dtype)
       + jnp.square(s - t) * positive.astype(s.dtype))
  loss = jnp.sum(jnp.abs(l)) / s.shape[0]
  return loss.astype(_common.output_dtype(source))


def ofd_margin(scale: jax.Array, bias: jax.Array) -> jax.Array:
  """OFD's per-channel margin from the teacher BN before the ReLU (``OFD.init_ofd_modules``).

  Treating the pre-ReLU response of a channel as ``N(m, s^2)`` with ``s = |gamma|`` and
  ``m = beta`` (the BN scale and shift), the margin is the expectation of its negative part::

      margin = m - s * phi(m / s) / Phi(-m / s)    if Phi(-m / s) > 0.001
      margin = -3 s                                 otherwise

  with ``phi``, ``Phi`` the standard normal density and CDF. Returns an array shaped like
  ``scale`` (``(C,)``), usable as :func:`ofd`'s ``margin``; mdistiller computes it in float32.
  """
  s = jnp.abs(jnp.asarray(scale, jnp.float32))
  m = jnp.asarray(bias, jnp.float32)
  cdf = jax.scipy.stats.norm.cdf(-m / s)
  ok = cdf > 0.001
  safe_cdf = jnp.where(ok, cdf, 1.0)
  gauss = -s * jnp.exp(-((m / s)**2) / 2) / math.sqrt(2 * math.pi) / safe_cdf + m
  return jnp.where(ok, gauss, -3.0 * s)


def single_stage_hcl(fs: jax.Array, ft: jax.Array) -> jax.Array:
  """ReviewKD's hierarchical context loss for one feature pair (one term of ``hcl_loss``).

  ``L = (mse(fs, ft) + sum_k w_k * mse(pool_l(fs), pool_l(ft))) / (1 + sum_k w_k)`` over the
  pyramid levels ``l`` in ``(4, 2, 1)`` with ``l < H`` (``pool_l`` = adaptive average pooling
  to ``l x l``; ``mse`` = mean of squares), the weights halving at each level used:
  ``w = 1/2, 1/4, 1/8``. So ``H >= 8``: levels 4, 2, 1 (total weight 1.875); ``H = 4``: 2, 1;
  ``H = 2``: 1; ``H = 1``: plain MSE.

  Args:
    fs: ``(B, H, W, C)`` student (fused) feature.
    ft: ``(B, H, W, C)`` teacher feature of the same shape.

  Returns:
    Scalar loss in ``fs.dtype``.
  """
  return _hcl_stage(fs, ft).astype(_common.output_dtype(fs))


def _hcl_stage(fs, ft):
  s, t = _common.upcast(fs, ft)
  h = s.shape[1]
  loss = _common.mse(s, t)
  cnt, tot = 1.0, 1.0
  for level in (4, 2, 1):
    if level >= h:
      continue
    cnt /= 2.0
    pooled_s = _common.adaptive_avg_pool2d(s, (level, level))
    pooled_t = _common.adaptive_avg_pool2d(t, (level, level))
    loss = loss + cnt * _common.mse(pooled_s, pooled_t)
    tot += cnt
  return loss / tot


@_common.scoped
def hcl(fstudent: Sequence[jax.Array], fteacher: Sequence[jax.Array]) -> jax.Array:
  """Hierarchical context loss of ReviewKD (Chen et al., CVPR 2021), as ``ReviewKD.hcl_loss``.

  ``L = sum_pairs single_stage_hcl(fs, ft)`` -- a *sum* over the pyramid of (fused student,
  teacher) pairs. In mdistiller the pairs are the ABF outputs against the teacher's
  ``preact_feats[1:]`` plus its pooled feature as a ``1 x 1`` map.

  Args:
    fstudent: sequence of student feature maps (NHWC).
    fteacher: sequence of teacher feature maps of the same shapes.

  Returns:
    Scalar loss in the dtype of ``fstudent[0]``.
  """
  _common.check_pairs(fstudent, fteacher, 'hcl')
  loss = sum(_hcl_stage(fs, ft) for fs, ft in zip(fstudent, fteacher))
  return loss.astype(_common.output_dtype(fstudent[0]))
