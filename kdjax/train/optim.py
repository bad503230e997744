"""mdistiller's optimizer: SGD with momentum, L2 weight decay on every parameter, step lr.

PyTorch's ``SGD(lr, momentum, weight_decay)`` computes ``g <- g + wd * p``,
``buf <- momentum * buf + g`` (``buf = g`` on the first step) and ``p <- p - lr * buf``;
``optax.chain(add_decayed_weights(wd), sgd(lr, momentum))`` is the same sequence (optax's
trace starts from zero, so its first ``buf`` is ``g`` too). The learning rate is
``lr * rate ** (number of decay epochs passed)``, applied from the first step of each
decay epoch, as mdistiller's ``adjust_learning_rate`` does at each epoch start
(``optimizer.schedule = 'step'``, the default); ``'cosine'`` is a warm-up + cosine decay.
Either takes the same linear warm-up over ``optimizer.warmup_epochs`` (0: none).
"""

from __future__ import annotations

import math

import jax.numpy as jnp
import ml_collections
import optax

from kdjax.errors import KdjaxError

SCHEDULES = ('step', 'cosine')  # config.optimizer.schedule


def check_config(opt: ml_collections.ConfigDict) -> None:
  """Raises :class:`KdjaxError` for a mistake in ``config.optimizer``."""
  checks = (
      (math.isfinite(opt.lr) and opt.lr > 0,
       f'config.optimizer.lr must be a positive finite number, got {opt.lr}'),
      (0 <= opt.momentum < 1, f'config.optimizer.momentum must be in [0, 1), got {opt.momentum}'),
      (opt.weight_decay >= 0,
       f'config.optimizer.weight_decay must be >= 0, got {opt.weight_decay}'),
      (isinstance(opt.lr_decay_epochs, (tuple, list))
       and all(isinstance(e, int) for e in opt.lr_decay_epochs),
       f'config.optimizer.lr_decay_epochs must be a tuple of whole epochs, e.g. '
       f'"(150,180,210)", got {opt.lr_decay_epochs!r}'),
      (math.isfinite(opt.lr_decay_rate) and opt.lr_decay_rate > 0,
       f'config.optimizer.lr_decay_rate must be a positive number, got {opt.lr_decay_rate}'),
      (opt.schedule in SCHEDULES,
       f"config.optimizer.schedule must be 'step' or 'cosine', got {opt.schedule!r}"),
      (isinstance(opt.warmup_epochs, int) and opt.warmup_epochs >= 0,
       f'config.optimizer.warmup_epochs must be a whole number of epochs >= 0, got '
       f'{opt.warmup_epochs!r}'),
  )
  for ok, message in checks:
    if not ok:
      raise KdjaxError(message)


def lr_schedule(opt: ml_collections.ConfigDict, steps_per_epoch: int,
                num_epochs: int) -> optax.Schedule:
  """The learning rate per step, by ``opt.schedule``.

  ``'step'`` (mdistiller): ``lr * lr_decay_rate ** (decay epochs passed)``, times, over the
  first ``W = warmup_epochs`` epochs of steps, the warm-up factor ``1/W + (1 - 1/W) s / W``
  of step ``s`` (the ramp below; mdistiller has none, its presets leave ``warmup_epochs`` 0).
  ``'cosine'``: a linear warm-up over ``warmup_epochs`` (``W`` steps, from ``lr / W``, so the
  first update is not wasted), then
  ``lr * (1 + cos(pi * t)) / 2`` with ``t`` going from 0 to 1 over the remaining epochs of
  ``num_epochs`` (Loshchilov & Hutter, SGDR, 2017; Goyal et al., 2017, for the warm-up).
  A run no longer than its warm-up (``--config.num_epochs=1`` of a digits preset) is all
  warm-up.
  """
  warmup = opt.warmup_epochs * steps_per_epoch
  if opt.schedule == 'cosine':
    return optax.warmup_cosine_decay_schedule(
        opt.lr / max(warmup, 1), opt.lr, warmup_steps=warmup,
        decay_steps=max(num_epochs * steps_per_epoch, warmup + 1))
  step = optax.piecewise_constant_schedule(
      opt.lr, {int(e) * steps_per_epoch: opt.lr_decay_rate for e in opt.lr_decay_epochs})
  if not warmup:
    return step
  return lambda count: step(count) * (1 / warmup + (1 - 1 / warmup) *
                                      jnp.minimum(count, warmup) / warmup)


def sgd(opt: ml_collections.ConfigDict,
        schedule: optax.Schedule) -> optax.GradientTransformation:
  """PyTorch-equivalent SGD with weight decay at the learning rates of ``schedule``
  (:func:`lr_schedule`; see the module docstring)."""
  return optax.chain(
      optax.add_decayed_weights(opt.weight_decay),
      optax.sgd(schedule, momentum=opt.momentum or None))
