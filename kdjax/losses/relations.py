"""Relational losses between samples of a batch: SP, RKD and PKT.

Ports of megvii-research/mdistiller's ``SP.py`` (``similarity_loss`` / ``sp_loss``),
``RKD.py`` (``_pdist`` / ``rkd_loss``) and ``PKT.py`` (``pkt_loss``). Inputs are feature
maps (NHWC) or vectors; each sample is flattened to a row, so only the batch structure
matters and student and teacher widths may differ. Reductions run in at least float32;
losses are returned in the student input's dtype.

mdistiller's default method weights (not arguments here): SP -- ``FEAT_WEIGHT`` 3000 on
``[feats[-1]]``; RKD -- ``FEAT_WEIGHT`` 1 on ``pooled_feat`` (its ``DISTANCE_WEIGHT`` 25 and
``ANGLE_WEIGHT`` 50 are arguments of :func:`rkd`); PKT -- ``FEAT_WEIGHT`` 30000 on
``pooled_feat``. CE weight 1 everywhere.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp

from kdjax.losses import _common


def _rows(f: jax.Array) -> jax.Array:
  return f.reshape(f.shape[0], -1)


def _gram(f: jax.Array) -> jax.Array:
  return jnp.matmul(f, f.T, precision=_common.HIGHEST)


def _sp_stage(f_s, f_t):
  s, t = _common.upcast(_rows(f_s), _rows(f_t))
  bsz = s.shape[0]
  g_s = _common.l2_normalize(_gram(s), axis=1)
  g_t = _common.l2_normalize(_gram(t), axis=1)
  return jnp.sum(jnp.square(g_t - g_s)) / (bsz * bsz)


def single_stage_sp(f_s: jax.Array, f_t: jax.Array) -> jax.Array:
  """Similarity-preserving loss for one pair, as mdistiller's ``SP.similarity_loss``.

  With ``F`` the ``(B, -1)``-flattened features, the batch similarity ``G = F F^T`` is
  L2-normalised row-wise (eps 1e-12) for student and teacher separately, and::

      L = 1/B^2 * sum_{i,j} (G_t[i,j] - G_s[i,j])^2

  (mdistiller returns shape ``(1,)``; this returns a scalar).

  Args:
    f_s: ``(B, ...)`` student features.
    f_t: ``(B, ...)`` teacher features.

  Returns:
    Scalar loss in ``f_s.dtype``.
  """
  return _sp_stage(f_s, f_t).astype(_common.output_dtype(f_s))


@_common.scoped
def sp(g_s: Sequence[jax.Array], g_t: Sequence[jax.Array]) -> jax.Array:
  """Similarity-preserving KD (Tung & Mori, ICCV 2019), as mdistiller's ``SP.sp_loss``.

  ``L = sum_pairs single_stage_sp(f_s, f_t)`` (the SP distiller passes only the last stage,
  ``[feats[-1]]``, with weight 3000).

  Args:
    g_s: sequence of student features.
    g_t: sequence of teacher features, paired with ``g_s``.

  Returns:
    Scalar loss in the dtype of ``g_s[0]``.
  """
  _common.check_pairs(g_s, g_t, 'sp')
  loss = sum(_sp_stage(f_s, f_t) for f_s, f_t in zip(g_s, g_t))
  return loss.astype(_common.output_dtype(g_s[0]))


def _pdist(e: jax.Array, squared: bool, eps: float) -> jax.Array:
  """mdistiller's ``RKD._pdist``: pairwise distances, clamped at ``eps``, zero diagonal."""
  e_square = jnp.sum(jnp.square(e), axis=1)
  res = e_square[:, None] + e_square[None, :] - 2.0 * _gram(e)
  res = jnp.maximum(res, eps)
  if not squared:
    res = jnp.sqrt(res)
  return jnp.where(jnp.eye(e.shape[0], dtype=bool), 0.0, res)


def _mean_positive(d: jax.Array) -> jax.Array:
  positive = d > 0
  return jnp.sum(jnp.where(positive, d, 0.0)) / jnp.sum(positive)


def _angles(e: jax.Array) -> jax.Array:
  """``<normalize(e_j - e_i), normalize(e_k - e_i)>`` for all ``(i, j, k)``, flattened."""
  diff = e[None, :, :] - e[:, None, :]
  unit = _common.l2_normalize(diff, axis=2)
  return jnp.einsum('ijd,ikd->ijk', unit, unit, precision=_common.HIGHEST).reshape(-1)


@_common.scoped
def rkd(f_s: jax.Array, f_t: jax.Array, squared: bool = False, eps: float = 1e-12,
        distance_weight: float = 25.0, angle_weight: float = 50.0) -> jax.Array:
  """Relational knowledge distillation (Park et al., CVPR 2019), as mdistiller's ``rkd_loss``.

  Features are flattened to ``(B, -1)`` rows ``e_i``.

  * Distance: ``d_ij = sqrt(max(|e_i|^2 + |e_j|^2 - 2 e_i.e_j, eps))`` (no sqrt when
    ``squared``), ``d_ii = 0``, each matrix divided by the mean of its positive entries;
    ``L_d = smooth_l1(d_s, d_t)`` (beta 1, mean over the ``B^2`` entries).
  * Angle: ``u_ij = normalize(e_j - e_i)`` (eps 1e-12, so ``u_ii = 0``),
    ``A_ijk = u_ij . u_ik``; ``L_a = smooth_l1(A_s, A_t)`` (mean over the ``B^3`` entries).

  ``L = distance_weight * L_d + angle_weight * L_a``. As in mdistiller, the teacher's terms
  are computed under ``stop_gradient``.

  Args:
    f_s: ``(B, ...)`` student embeddings (mdistiller: ``pooled_feat``).
    f_t: ``(B, ...)`` teacher embeddings.
    squared: use squared distances.
    eps: clamp of the squared distances.
    distance_weight: weight of the distance term (mdistiller default 25).
    angle_weight: weight of the angle term (mdistiller default 50).

  Returns:
    Scalar loss in ``f_s.dtype``.
  """
  s, t = _common.upcast(_rows(f_s), _rows(f_t))
  t = jax.lax.stop_gradient(t)

  t_d = _pdist(t, squared, eps)
  t_d = t_d / _mean_positive(t_d)
  d = _pdist(s, squared, eps)
  d = d / _mean_positive(d)
  loss_d = _common.smooth_l1(d, t_d)

  loss_a = _common.smooth_l1(_angles(s), _angles(t))

  loss = distance_weight * loss_d + angle_weight * loss_a
  return loss.astype(_common.output_dtype(f_s))


@_common.scoped
def pkt(f_s: jax.Array, f_t: jax.Array, eps: float = 1e-7) -> jax.Array:
  """Probabilistic knowledge transfer (Passalis & Tefas, ECCV 2018), as ``PKT.pkt_loss``.

  Rows are divided by ``||f_i||_2 + eps`` (NaNs set to 0); the cosine similarities are mapped
  to ``[0, 1]`` and normalised into conditional distributions per row::

      S = (F F^T + 1) / 2,   P[i, j] = S[i, j] / sum_k S[i, k]
      L = 1/B^2 * sum_{i,j} P_t[i,j] * log((P_t[i,j] + eps) / (P_s[i,j] + eps))

  (a *mean* over the ``B x B`` entries, not a per-row sum).

  Args:
    f_s: ``(B, D_s)`` student embeddings (mdistiller: ``pooled_feat``).
    f_t: ``(B, D_t)`` teacher embeddings.
    eps: stabiliser of the norms and of the log ratio (mdistiller default 1e-7).

  Returns:
    Scalar loss in ``f_s.dtype``.
  """
  s, t = _common.upcast(_rows(f_s), _rows(f_t))

  def distribution(f):
    f = f / (_common.safe_norm(f, axis=1) + eps)
    f = jnp.where(jnp.isnan(f), 0.0, f)
    sim = (_gram(f) + 1.0) / 2.0
    return sim / jnp.sum(sim, axis=1, keepdims=True)

  p_s, p_t = distribution(s), distribution(t)
  loss = jnp.mean(p_t * jnp.log((p_t + eps) / (p_s + eps)))
  return loss.astype(_common.output_dtype(f_s))
