"""Contrastive representation distillation (Tian et al., ICLR 2020) with explicit memory state.

A port of megvii-research/mdistiller's ``mdistiller/distillers/CRD.py`` (itself RepDistiller's
``crd/memory.py`` and ``crd/criterion.py``): ``ContrastMemory.forward`` (scores against a
memory bank of past embeddings, normalisation constants, momentum update of the bank) and
``ContrastLoss.forward`` (the NCE objective). PyTorch keeps the banks and constants as module
buffers mutated in place; here they are a :class:`CRDMemory` value passed into the pure
function :func:`crd` and returned updated, so the whole step stays jit-able and the method
threads the state through its training state.

The learned embedding heads (mdistiller's ``Embed``: linear layer then L2 normalisation,
128 dims) are the method's job: :func:`crd` takes the already normalised embeddings.

Formulation (``N`` = dataset size = rows of each bank, ``K`` negatives per sample, ``T``
temperature, ``v_s``/``v_t`` the student/teacher embeddings of sample ``i`` with dataset index
``idx_i`` and contrast indices ``c_i = (idx_i, n_1 .. n_K)``):

* scores against the *other* model's bank (read before the update, no gradient):
  ``x_s[i, k] = exp(<M_t[c_ik], v_s_i> / T) / Z_s`` and
  ``x_t[i, k] = exp(<M_s[c_ik], v_t_i> / T) / Z_t``;
* ``Z_s``, ``Z_t`` are fixed on the first call to ``N * mean(exp(...))`` of that call's
  scores and then kept (mdistiller's ``params[2:4]``; unset is encoded as a negative value);
* NCE loss per view with noise ``P_n = 1/N`` and ``m = K``::

      L(x) = -1/B * sum_i [ log(x_i0 / (x_i0 + m P_n + eps))
                            + sum_{k>=1} log(m P_n / (x_ik + m P_n + eps)) ]

  and ``L_crd = L(x_s) + L(x_t)``;
* memory update (no gradient), for each sample ``i`` of the batch::

      M_s[idx_i] <- normalize(momentum * M_s[idx_i] + (1 - momentum) * v_s_i)

  and likewise ``M_t`` with ``v_t`` (plain L2 normalisation, no eps).

mdistiller's defaults: ``NCE.K`` 16384 negatives (the data pipeline samples them; mdistiller's
CIFAR-100 sampler draws them from the other classes), ``NCE.TEMPERATURE`` 0.07,
``NCE.MOMENTUM`` 0.5, ``FEAT.DIM`` 128, and method weights ``CE_WEIGHT`` 1, ``FEAT_WEIGHT``
0.8 on ``pooled_feat``.
"""

from __future__ import annotations

import math
from typing import NamedTuple, Tuple

import jax
import jax.numpy as jnp

from kdjax.losses import _common


class CRDMemory(NamedTuple):
  """CRD state: the two memory banks and their NCE normalisation constants.

  Attributes:
    student: ``(N, D)`` bank of student embeddings (mdistiller's ``memory_v1``); the teacher
      embeddings are scored against it.
    teacher: ``(N, D)`` bank of teacher embeddings (``memory_v2``); the student embeddings
      are scored against it.
    z_student: scalar constant ``Z`` of the student-view scores (``params[2]``, ``Z_v1``);
      negative while unset.
    z_teacher: scalar constant of the teacher-view scores (``params[3]``, ``Z_v2``).
  """
  student: jax.Array
  teacher: jax.Array
  z_student: jax.Array
  z_teacher: jax.Array


def crd_memory_init(key: jax.Array, num_data: int, feat_dim: int,
                    dtype=jnp.float32) -> CRDMemory:
  """Fresh CRD state as ``ContrastMemory.__init__``: banks ``U(-a, a)``, ``a = 1/sqrt(D/3)``.

  Args:
    key: PRNG key.
    num_data: ``N``, the number of training samples (one bank row each).
    feat_dim: ``D``, the embedding dimension.
    dtype: dtype of the banks.

  Returns:
    A :class:`CRDMemory` with unset (``-1``) normalisation constants.
  """
  stdv = 1.0 / math.sqrt(feat_dim / 3)
  k_s, k_t = jax.random.split(key)
  bank = lambda k: jax.random.uniform(k, (num_data, feat_dim), dtype, -stdv, stdv)
  unset = lambda: jnp.full((), -1.0, dtype)  # two buffers: the state may be donated
  return CRDMemory(bank(k_s), bank(k_t), unset(), unset())


def crd_sample_indices(key: jax.Array, idx: jax.Array, num_data: int, k: int) -> jax.Array:
  """Uniform contrast indices, ``ContrastMemory``'s fallback sampler (positive in column 0).

  Returns ``(B, K + 1)`` int32 indices whose first column is ``idx`` and whose other columns
  are drawn uniformly from ``[0, num_data)`` (mdistiller's alias sampler over uniform
  unigrams). mdistiller's CIFAR data pipeline instead draws negatives among the other classes.
  """
  idx = jnp.asarray(idx, jnp.int32).reshape(-1)
  neg = jax.random.randint(key, (idx.shape[0], k), 0, num_data, dtype=jnp.int32)
  return jnp.concatenate([idx[:, None], neg], axis=1)


def _nce(x: jax.Array, num_data: int, eps: float) -> jax.Array:
  """mdistiller's ``ContrastLoss.forward`` on scores ``x`` of shape ``(B, K + 1)``."""
  bsz, m = x.shape[0], x.shape[1] - 1
  mpn = m / float(num_data)
  log_d1 = jnp.log(x[:, 0] / (x[:, 0] + mpn + eps))
  log_d0 = jnp.log(mpn / (x[:, 1:] + mpn + eps))
  return -(jnp.sum(log_d1) + jnp.sum(log_d0)) / bsz


def _momentum_update(bank: jax.Array, idx: jax.Array, v: jax.Array,
                     momentum: float) -> jax.Array:
  rows = bank[idx].astype(v.dtype) * momentum + v * (1.0 - momentum)
  rows = rows / jnp.sqrt(jnp.sum(jnp.square(rows), axis=1, keepdims=True))
  return bank.at[idx].set(rows.astype(bank.dtype))


@_common.scoped
def crd(f_s: jax.Array, f_t: jax.Array, memory: CRDMemory, idx: jax.Array,
        contrast_idx: jax.Array, temperature: float = 0.07, momentum: float = 0.5,
        eps: float = 1e-7) -> Tuple[jax.Array, CRDMemory]:
  """CRD's NCE loss and memory update, as mdistiller's ``CRD.crd_loss`` after the embeddings.

  See the module docstring for the formulas. Pure: the banks are read, and the updated
  :class:`CRDMemory` is returned; no gradient flows into ``memory`` (mdistiller detaches the
  banks, takes ``Z`` as a Python number and updates under ``no_grad``).

  Args:
    f_s: ``(B, D)`` L2-normalised student embeddings ``v_s`` (after the student ``Embed``).
    f_t: ``(B, D)`` L2-normalised teacher embeddings ``v_t``.
    memory: current :class:`CRDMemory` (banks ``(N, D)``).
    idx: ``(B,)`` dataset indices of the batch samples (rows of the banks to update; they
      should be distinct within a batch -- with repeats, which update lands is unspecified,
      as with PyTorch's ``index_copy_``).
    contrast_idx: ``(B, K + 1)`` bank rows to score against; column 0 is the positive
      (``idx``), columns ``1..K`` the sampled negatives.
    temperature: ``T`` of the exponentiated scores (mdistiller default 0.07).
    momentum: momentum of the bank update (mdistiller default 0.5).
    eps: stabiliser of the NCE ratios (mdistiller's ``ContrastLoss`` uses 1e-7).

  Returns:
    ``(loss, new_memory)``: the scalar ``L(x_s) + L(x_t)`` in ``f_s.dtype`` and the updated
    state.
  """
  v_s, v_t = _common.upcast(f_s, f_t)
  num_data = memory.student.shape[0]
  idx = jnp.asarray(idx, jnp.int32).reshape(-1)
  contrast_idx = jnp.asarray(contrast_idx, jnp.int32)
  bank_s = jax.lax.stop_gradient(memory.student).astype(v_s.dtype)
  bank_t = jax.lax.stop_gradient(memory.teacher).astype(v_s.dtype)

  # Each view is scored against the other model's bank.
  score = lambda bank, v: jnp.exp(
      jnp.einsum('bkd,bd->bk', bank[contrast_idx], v, precision=_common.HIGHEST) / temperature)
  out_s = score(bank_t, v_s)
  out_t = score(bank_s, v_t)

  def normaliser(z, out):
    z = jax.lax.stop_gradient(jnp.asarray(z).astype(out.dtype))
    first = jax.lax.stop_gradient(jnp.mean(out) * num_data)
    return jnp.where(z < 0, first, z)

  z_s = normaliser(memory.z_student, out_s)
  z_t = normaliser(memory.z_teacher, out_t)
  loss = _nce(out_s / z_s, num_data, eps) + _nce(out_t / z_t, num_data, eps)

  v_s_ng, v_t_ng = jax.lax.stop_gradient(v_s), jax.lax.stop_gradient(v_t)
  z_dtype = jnp.asarray(memory.z_student).dtype
  new_memory = CRDMemory(
      student=_momentum_update(memory.student, idx, v_s_ng, momentum),
      teacher=_momentum_update(memory.teacher, idx, v_t_ng, momentum),
      z_student=z_s.astype(z_dtype),
      z_teacher=z_t.astype(z_dtype),
  )
  return loss.astype(_common.output_dtype(f_s)), new_memory
