"""mdistiller's optimizer: SGD with momentum, L2 weight decay on every parameter, step lr.

PyTorch's ``SGD(lr, momentum, weight_decay)`` computes ``g <- g + wd * p``,
``buf <- momentum * buf + g`` (``buf = g`` on the first step) and ``p <- p - lr * buf``;
``optax.chain(add_decayed_weights(wd), sgd(lr, momentum))`` is the same sequence (optax's
trace starts from zero, so its first ``buf`` is ``g`` too). The learning rate is
``lr * rate ** (number of decay epochs passed)``, applied from the first step of each
decay epoch, as mdistiller's ``adjust_learning_rate`` does at each epoch start.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import optax


def lr_schedule(opt: ml_collections.ConfigDict, steps_per_epoch: int) -> optax.Schedule:
  """Step-wise decay by ``opt.lr_decay_rate`` at each of ``opt.lr_decay_epochs``."""
  return optax.piecewise_constant_schedule(
      opt.lr, {int(e) * steps_per_epoch: opt.lr_decay_rate for e in opt.lr_decay_epochs})


def lr_at_epoch(opt: ml_collections.ConfigDict, epoch) -> jax.Array:
  """The learning rate :func:`lr_schedule` gives in (1-based, possibly traced) ``epoch``."""
  passed = sum((jnp.asarray(epoch) > int(e)).astype(jnp.float32) for e in opt.lr_decay_epochs)
  return opt.lr * jnp.asarray(opt.lr_decay_rate, jnp.float32) ** passed


def sgd(opt: ml_collections.ConfigDict, steps_per_epoch: int) -> optax.GradientTransformation:
  """PyTorch-equivalent SGD with weight decay and the step schedule (see module doc)."""
  return optax.chain(
      optax.add_decayed_weights(opt.weight_decay),
      optax.sgd(lr_schedule(opt, steps_per_epoch), momentum=opt.momentum or None))
