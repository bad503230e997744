"""Convolution variants for XLA:CPU, timed on a real train step (issue: the CPU gap).

    python benchmarks/cpu_conv_experiments.py --model resnet8x4 --batch 64 --rounds 3

kdjax's CPU train steps trail PyTorch's (README, Benchmark), and XLA's profile puts the gap
outside the convolutions' arithmetic: in the transposed copies XLA:CPU makes of a
convolution's input to compute its weight gradient, and in BatchNorm/ReLU passes. This script
swaps the function every ``flax.linen.Conv`` of a zoo model calls (its
``conv_general_dilated`` field, set through ``flax.linen.intercept_methods`` while the step is
traced; nothing in kdjax changes) and times the whole step of each variant:

* ``xla``: ``lax.conv_general_dilated``, what kdjax runs.
* ``dot_1x1``: 1x1 convolutions (the shortcut projections) as a strided slice and a
  ``dot_general`` over channels; XLA then differentiates a matmul, not a convolution.
* ``wgrad_s2`` / ``wgrad_all``: a ``jax.custom_vjp`` for the stride-2 (or every) convolution
  whose weight gradient is an explicit im2col matmul, ``dW = patches(x)^T dy``
  (``lax.conv_general_dilated_patches``), instead of XLA's weight-gradient convolution and its
  transposed input copy; the input gradient stays XLA's.
* ``nchw``: each convolution computed in NCHW/OIHW with transposes around it, so XLA's layout
  assignment may keep the activations channel-major.

The step is ``vanilla``'s: cross-entropy, one gradient, SGD with momentum and weight decay,
on random images (the speed does not depend on values), with kdjax's CPU settings
(``platform_tuning.apply()``, stored residual outputs). The variants run in turns, ``--rounds``
times, each round the median of ``--steps`` steps after 2 warm-up, so the machine's drift
spreads over all; the table gives each variant's median over rounds and its gradient's
largest relative difference from ``xla`` (float rounding only, or the variant is wrong).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

from kdjax import platform_tuning

platform_tuning.apply()  # before JAX starts its backend, as kdjax.main does

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from jax import lax  # noqa: E402

from kdjax import models  # noqa: E402


def _is_1x1(rhs, padding, groups) -> bool:
  return rhs.shape[:2] == (1, 1) and groups == 1 and all(p == (0, 0) for p in padding)


def dot_1x1(lhs, rhs, window_strides, padding, **kw):
  """1x1 convolutions as ``x[:, ::s, ::s] @ W``; the others unchanged."""
  if not _is_1x1(rhs, padding, kw.get('feature_group_count', 1)):
    return lax.conv_general_dilated(lhs, rhs, window_strides, padding, **kw)
  sy, sx = window_strides
  return jnp.einsum('nhwc,co->nhwo', lhs[:, ::sy, ::sx, :], rhs[0, 0])


def _im2col_conv(stride: tuple, padding: tuple, groups: int):
  """A convolution (NHWC, HWIO) whose weight gradient is ``patches(x)^T dy``."""
  dn = ('NHWC', 'HWIO', 'NHWC')

  def forward(x, w):
    return lax.conv_general_dilated(x, w, stride, padding, dimension_numbers=dn,
                                    feature_group_count=groups)

  @jax.custom_vjp
  def conv(x, w):
    return forward(x, w)

  def fwd(x, w):
    return forward(x, w), (x, w)

  def bwd(res, dy):
    x, w = res
    _, x_vjp = jax.vjp(lambda x_: forward(x_, w), x)
    (dx,) = x_vjp(dy)
    kh, kw, cin, cout = w.shape
    patches = lax.conv_general_dilated_patches(x, (kh, kw), stride, padding,
                                               dimension_numbers=dn)  # (..., C kh kw), C major
    dw = jnp.einsum('nhwk,nhwo->ko', patches, dy).reshape(cin, kh, kw, cout)
    return dx, dw.transpose(1, 2, 0, 3)

  conv.defvjp(fwd, bwd)
  return conv


def _wgrad(only_stride_2: bool):
  def conv_fn(lhs, rhs, window_strides, padding, **kw):
    groups = kw.get('feature_group_count', 1)
    if groups != 1 or (only_stride_2 and tuple(window_strides) == (1, 1)):
      return lax.conv_general_dilated(lhs, rhs, window_strides, padding, **kw)
    return _im2col_conv(tuple(window_strides), tuple(map(tuple, padding)), groups)(lhs, rhs)
  return conv_fn


def nchw(lhs, rhs, window_strides, padding, **kw):
  """The convolution in NCHW / OIHW, transposed in and out."""
  kw = {k: v for k, v in kw.items() if k != 'dimension_numbers'}
  y = lax.conv_general_dilated(lhs.transpose(0, 3, 1, 2), rhs.transpose(3, 2, 0, 1),
                               window_strides, padding, dimension_numbers=('NCHW', 'OIHW', 'NCHW'),
                               **kw)
  return y.transpose(0, 2, 3, 1)


VARIANTS = {'xla': lax.conv_general_dilated, 'dot_1x1': dot_1x1,
            'wgrad_s2': _wgrad(only_stride_2=True), 'wgrad_all': _wgrad(only_stride_2=False),
            'nchw': nchw}


def _with_conv(conv_fn):
  """An interceptor that makes every ``nn.Conv`` call ``conv_fn``."""

  def interceptor(next_fun, args, kwargs, context):
    if isinstance(context.module, nn.Conv) and context.method_name == '__call__':
      object.__setattr__(context.module, 'conv_general_dilated', conv_fn)
    return next_fun(*args, **kwargs)

  return nn.intercept_methods(interceptor)


def make_step(model, tx, conv_fn, images, labels, variables):
  """The compiled vanilla train step with every convolution through ``conv_fn``, and its
  gradient at ``variables``."""

  def loss_fn(params, batch_stats):
    with _with_conv(conv_fn):
      out, new = model.apply({'params': params, 'batch_stats': batch_stats}, images,
                             train=True, mutable=['batch_stats'])
    loss = optax.softmax_cross_entropy_with_integer_labels(out.logits, labels).mean()
    return loss, new['batch_stats']

  def step(params, batch_stats, opt_state):
    (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, batch_stats)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), batch_stats, opt_state, loss

  grad = jax.jit(jax.grad(lambda p, b: loss_fn(p, b)[0]))(variables['params'],
                                                          variables['batch_stats'])
  opt_state = tx.init(variables['params'])
  compiled = jax.jit(step, donate_argnums=(0, 1, 2)).lower(
      variables['params'], variables['batch_stats'], opt_state).compile()
  return compiled, grad


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--model', default='resnet8x4')
  parser.add_argument('--batch', type=int, default=64)
  parser.add_argument('--steps', type=int, default=8)
  parser.add_argument('--rounds', type=int, default=3)
  parser.add_argument('--variants', default=','.join(VARIANTS))
  args = parser.parse_args(argv)
  names = args.variants.split(',')
  model = models.create(args.model, 100, materialize_residuals=True)
  rng = np.random.default_rng(0)
  images = jnp.asarray(rng.standard_normal((args.batch, 32, 32, 3)), jnp.float32)
  labels = jnp.asarray(rng.integers(0, 100, args.batch))
  variables = jax.jit(lambda k: model.init(k, images[:2], train=False))(jax.random.PRNGKey(0))
  tx = optax.chain(optax.add_decayed_weights(5e-4), optax.sgd(0.05, momentum=0.9))
  steps, grads = {}, {}
  for name in names:
    steps[name], grads[name] = make_step(model, tx, VARIANTS[name], images, labels, variables)
  times = {name: [] for name in names}
  for _ in range(args.rounds):
    for name in names:
      state = jax.tree.map(jnp.copy, (variables['params'], variables['batch_stats'],
                                      tx.init(variables['params'])))
      per_step = []
      for i in range(2 + args.steps):
        t = time.perf_counter()
        *state, loss = steps[name](*state)
        jax.block_until_ready(loss)
        if i >= 2:
          per_step.append(time.perf_counter() - t)
      times[name].append(args.batch / statistics.median(per_step))
      print(f'{name}: {times[name][-1]:.1f} img/s', file=sys.stderr, flush=True)
  base = jax.tree.leaves(grads[names[0]])
  print(f'| variant ({args.model}, batch {args.batch}) | img/s (median of {args.rounds} rounds) '
        f'| rounds | vs {names[0]} | gradient: max relative difference |')
  print('|---|---|---|---|---|')
  ref = statistics.median(times[names[0]])
  for name in names:
    diff = max(float(jnp.max(jnp.abs(a - b)) / (jnp.max(jnp.abs(a)) + 1e-30))
               for a, b in zip(base, jax.tree.leaves(grads[name])))
    med = statistics.median(times[name])
    rounds = ', '.join(f'{t:.1f}' for t in times[name])
    print(f'| {name} | {med:.1f} | {rounds} | {med / ref:.2f}x | {diff:.1e} |')
  return 0


if __name__ == '__main__':
  sys.exit(main())
