"""Losses on logits: cross-entropy, KD (Hinton et al.) and DKD (Zhao et al., CVPR 2022).

Ports of ``mdistiller/distillers/KD.py::kd_loss`` and ``mdistiller/distillers/DKD.py::dkd_loss``
(megvii-research/mdistiller). Logits are ``(batch, classes)``; labels are integer class ids.
All reductions run in at least float32; the loss is returned in the student logits' dtype.

Gradients flow into both arguments. mdistiller runs the teacher under ``torch.no_grad``; a
method with a frozen teacher passes ``jax.lax.stop_gradient(logits_teacher)`` (or never
differentiates with respect to it), while a method that trains the teacher against the
student (SFTN) can differentiate through it.

Weights that multiply whole losses belong to the methods, not to these functions;
mdistiller's defaults are: KD -- ``CE_WEIGHT`` 0.1, ``KD_WEIGHT`` 0.9, ``TEMPERATURE`` 4;
DKD -- ``CE_WEIGHT`` 1.0, ``ALPHA`` 1, ``BETA`` 8, ``T`` 4, and the DKD term multiplied by
``min(epoch / WARMUP, 1)`` with ``WARMUP`` = 20 epochs.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.scipy.special import xlogy

from kdjax.losses import _common


@_common.scoped
def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Softmax cross-entropy with integer labels, averaged over the batch.

  ``CE = -1/B sum_i log_softmax(z_i)[y_i]`` -- ``F.cross_entropy(logits, target)`` as every
  mdistiller distiller computes its ``loss_ce``.

  Args:
    logits: ``(B, K)`` unnormalised scores.
    labels: ``(B,)`` integer class ids.

  Returns:
    Scalar loss in ``logits.dtype``.
  """
  _common.check_logits('cross_entropy', logits, labels=labels)
  z = _common.upcast(logits)
  log_p = jax.nn.log_softmax(z, axis=-1)
  labels = jnp.asarray(labels).astype(jnp.int32)
  nll = -jnp.take_along_axis(log_p, labels[..., None], axis=-1)[..., 0]
  return jnp.mean(nll).astype(_common.output_dtype(logits))


@_common.scoped
def kd(logits_student: jax.Array, logits_teacher: jax.Array,
       temperature: float = 4.0) -> jax.Array:
  """Knowledge distillation loss (Hinton et al., 2015), as mdistiller's ``KD.kd_loss``.

  With ``p_t = softmax(z_t / T)`` and ``log p_s = log_softmax(z_s / T)``::

      KD = T^2 * 1/B * sum_i sum_c p_t[i, c] * (log p_t[i, c] - log p_s[i, c])

  i.e. the KL divergence summed over classes, averaged over the batch (not over batch x
  classes), times ``T^2`` to keep gradient magnitudes independent of ``T``.

  Args:
    logits_student: ``(B, K)`` student logits ``z_s``.
    logits_teacher: ``(B, K)`` teacher logits ``z_t``.
    temperature: softening temperature ``T`` (mdistiller default 4).

  Returns:
    Scalar loss in ``logits_student.dtype``.
  """
  _common.check_logits('kd', logits_student, logits_teacher)
  zs, zt = _common.upcast(logits_student, logits_teacher)
  log_ps = jax.nn.log_softmax(zs / temperature, axis=-1)
  log_pt = jax.nn.log_softmax(zt / temperature, axis=-1)
  kl = jnp.sum(jnp.exp(log_pt) * (log_pt - log_ps), axis=-1)
  loss = jnp.mean(kl) * temperature**2
  return loss.astype(_common.output_dtype(logits_student))


@_common.scoped
def dkd(logits_student: jax.Array, logits_teacher: jax.Array, target: jax.Array,
        alpha: float = 1.0, beta: float = 8.0, temperature: float = 4.0) -> jax.Array:
  """Decoupled knowledge distillation (Zhao et al., CVPR 2022), as mdistiller's ``DKD.dkd_loss``.

  ``DKD = alpha * TCKD + beta * NCKD`` with ``p = softmax(z / T)`` over all classes and ``y``
  the target class:

  * target-class KD, a KL between binary distributions
    ``b = [p[y], sum_{c != y} p[c]]``::

        TCKD = T^2 / B * sum_i sum_{k in 2} b_t[i,k] * (log b_t[i,k] - log b_s[i,k])

    (``log b_s`` is the log of the summed probabilities, as in mdistiller);
  * non-target-class KD, a KL between the distributions over the non-target classes,
    obtained by subtracting 1000 from the target logit *after* dividing by ``T``::

        q = softmax(z / T - 1000 * onehot(y))
        NCKD = T^2 / B * sum_i sum_c q_t[i,c] * (log q_t[i,c] - log q_s[i,c])

  Both KLs are summed over classes and divided by the batch size (``kl_div`` with
  ``size_average=False`` then ``/ B``). The epoch warm-up factor belongs to the method.

  Args:
    logits_student: ``(B, K)`` student logits ``z_s``.
    logits_teacher: ``(B, K)`` teacher logits ``z_t``.
    target: ``(B,)`` integer ground-truth labels ``y``.
    alpha: weight of TCKD (mdistiller default 1).
    beta: weight of NCKD (mdistiller default 8).
    temperature: temperature ``T`` (mdistiller default 4).

  Returns:
    Scalar loss in ``logits_student.dtype``.
  """
  _common.check_logits('dkd', logits_student, logits_teacher, target)
  zs, zt = _common.upcast(logits_student, logits_teacher)
  target = jnp.asarray(target).astype(jnp.int32).reshape(-1)
  gt_mask = jax.nn.one_hot(target, zs.shape[-1], dtype=zs.dtype)
  other_mask = 1.0 - gt_mask
  batch = zs.shape[0]
  t2 = temperature**2

  def binary(z):
    p = jax.nn.softmax(z / temperature, axis=-1)
    return jnp.stack([jnp.sum(p * gt_mask, axis=-1), jnp.sum(p * other_mask, axis=-1)], -1)

  b_s, b_t = binary(zs), binary(zt)
  tckd = jnp.sum(xlogy(b_t, b_t) - b_t * jnp.log(b_s)) * t2 / batch

  log_qs = jax.nn.log_softmax(zs / temperature - 1000.0 * gt_mask, axis=-1)
  log_qt = jax.nn.log_softmax(zt / temperature - 1000.0 * gt_mask, axis=-1)
  nckd = jnp.sum(jnp.exp(log_qt) * (log_qt - log_qs)) * t2 / batch

  loss = alpha * tckd + beta * nckd
  return loss.astype(_common.output_dtype(logits_student))
