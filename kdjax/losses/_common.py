"""Numerical building blocks shared by the losses (private).

They reproduce the PyTorch primitives mdistiller's losses are written with, on NHWC arrays:
``F.normalize`` (:func:`l2_normalize`), ``F.adaptive_avg_pool2d``
(:func:`adaptive_avg_pool2d`), ``F.mse_loss`` and ``F.smooth_l1_loss`` (mean reductions).
Matrix products use ``Precision.HIGHEST`` so accelerators do not silently fall back to
reduced-precision (TF32/bf16) passes, which would break agreement with the reference.
"""

from __future__ import annotations

import functools
from typing import Sequence, Tuple

import chex
import jax
import jax.numpy as jnp
import numpy as np

HIGHEST = jax.lax.Precision.HIGHEST


def compute_dtype(dtype) -> jnp.dtype:
  """The dtype reductions run in: ``dtype`` promoted to at least float32."""
  return jnp.promote_types(dtype, jnp.float32)


def upcast(*xs: jax.Array):
  """Casts arrays to their common compute dtype (at least float32)."""
  xs = [jnp.asarray(x) for x in xs]
  dtype = compute_dtype(jnp.result_type(*xs))
  out = tuple(x.astype(dtype) for x in xs)
  return out if len(out) > 1 else out[0]


def output_dtype(x) -> jnp.dtype:
  """The dtype a loss is returned in: the student input's floating dtype."""
  dtype = jnp.asarray(x).dtype
  return dtype if jnp.issubdtype(dtype, jnp.floating) else compute_dtype(dtype)


def l2_normalize(x: jax.Array, axis: int = -1, eps: float = 1e-12) -> jax.Array:
  """``torch.nn.functional.normalize(x, p=2, dim=axis, eps=eps)``: ``x / max(||x||_2, eps)``.

  Written as ``x / sqrt(max(sum x^2, eps^2))`` (the same value) so that the gradient at a zero
  vector is 0, as in PyTorch, instead of NaN.
  """
  sq = jnp.sum(jnp.square(x), axis=axis, keepdims=True)
  return x / jnp.sqrt(jnp.maximum(sq, jnp.asarray(eps, x.dtype) ** 2))


def safe_norm(x: jax.Array, axis: int = -1, keepdims: bool = True) -> jax.Array:
  """``||x||_2`` along ``axis`` with a zero (not NaN) gradient at the zero vector."""
  sq = jnp.sum(jnp.square(x), axis=axis, keepdims=keepdims)
  positive = sq > 0
  return jnp.where(positive, jnp.sqrt(jnp.where(positive, sq, 1.0)), 0.0)


def _pool_matrix(size_in: int, size_out: int) -> np.ndarray:
  """Rows average the windows ``[floor(i*n/m), ceil((i+1)*n/m))`` as PyTorch's adaptive pool."""
  mat = np.zeros((size_out, size_in), dtype=np.float64)
  for i in range(size_out):
    start = (i * size_in) // size_out
    end = -((-(i + 1) * size_in) // size_out)
    mat[i, start:end] = 1.0 / (end - start)
  return mat


def adaptive_avg_pool2d(x: jax.Array, output_size: Tuple[int, int]) -> jax.Array:
  """``F.adaptive_avg_pool2d`` on an NHWC array (same windows as PyTorch, overlapping ones too)."""
  out_h, out_w = output_size
  _, h, w, _ = x.shape
  if (out_h, out_w) == (h, w):
    return x
  if h % out_h == 0 and w % out_w == 0:
    b, _, _, c = x.shape
    return x.reshape(b, out_h, h // out_h, out_w, w // out_w, c).mean(axis=(2, 4))
  ph = jnp.asarray(_pool_matrix(h, out_h), x.dtype)
  pw = jnp.asarray(_pool_matrix(w, out_w), x.dtype)
  return jnp.einsum('oh,pw,nhwc->nopc', ph, pw, x, precision=HIGHEST)


def match_spatial(f_s: jax.Array, f_t: jax.Array) -> Tuple[jax.Array, jax.Array]:
  """Pools the spatially larger map down to the other's size (mdistiller's AT / NST rule).

  mdistiller compares heights only and pools to a square ``(H, H)``; for the square maps
  of its models that is the other map's ``(H, W)``, which is what is used here.
  """
  s_h, t_h = f_s.shape[1], f_t.shape[1]
  if s_h > t_h:
    f_s = adaptive_avg_pool2d(f_s, f_t.shape[1:3])
  elif s_h < t_h:
    f_t = adaptive_avg_pool2d(f_t, f_s.shape[1:3])
  return f_s, f_t


def mse(a: jax.Array, b: jax.Array) -> jax.Array:
  """``F.mse_loss(a, b)``: mean over all elements of ``(a - b)^2``."""
  return jnp.mean(jnp.square(a - b))


def smooth_l1(a: jax.Array, b: jax.Array) -> jax.Array:
  """``F.smooth_l1_loss(a, b)`` (beta = 1, mean over all elements)."""
  d = jnp.abs(a - b)
  return jnp.mean(jnp.where(d < 1.0, 0.5 * jnp.square(d), d - 0.5))


def check_logits(name: str, student, teacher=None, labels=None) -> None:
  """Raises ``ValueError`` naming the shapes unless ``student`` is floating ``(B, K)``,
  ``teacher`` (if given) has its shape, and ``labels`` (if given) are ``(B,)`` integers."""
  student = jnp.asarray(student)
  try:
    chex.assert_rank(student, 2)
    chex.assert_type(student, float)
  except AssertionError:
    raise ValueError(f'{name}: logits must be floating (batch, classes), got the shape '
                     f'{student.shape} ({student.dtype})') from None
  for what, other, check in (
      ('teacher logits', teacher, lambda t: chex.assert_equal_shape([student, t])),
      ('labels', labels, lambda y: (chex.assert_shape(y, student.shape[:1]),
                                    chex.assert_type(y, int)))):
    if other is None:
      continue
    other = jnp.asarray(other)
    try:
      check(other)
    except AssertionError:
      raise ValueError(f'{name}: student logits of shape {student.shape} but {what} of shape '
                       f'{other.shape} ({other.dtype}); expected '
                       f'{student.shape if what == "teacher logits" else student.shape[:1]}'
                       f'{"" if what == "teacher logits" else " integers"}') from None


def check_pairs(g_s: Sequence[jax.Array], g_t: Sequence[jax.Array], name: str) -> None:
  """Raises if the student and teacher lists of a multi-stage loss differ in length."""
  if isinstance(g_s, (jax.Array, np.ndarray)) or isinstance(g_t, (jax.Array, np.ndarray)):
    raise TypeError(f'{name} takes sequences of feature maps; for one pair use the '
                    f'single-stage function')
  if len(g_s) != len(g_t):
    raise ValueError(f'{name}: {len(g_s)} student features but {len(g_t)} teacher features')
  if not g_s:
    raise ValueError(f'{name}: no feature pairs given')


def scoped(fn):
  """``fn`` traced under ``jax.named_scope(fn.__name__)``: a loss term's operations carry its
  name in compiled programs and profiles (docs/performance.md)."""

  @functools.wraps(fn)
  def wrapper(*args, **kwargs):
    with jax.named_scope(fn.__name__):
      return fn(*args, **kwargs)

  return wrapper
