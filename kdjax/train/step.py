"""The jit-compiled train and eval steps, sharded over a one-axis ``('data',)`` mesh.

One train step is one pure function ``(state, teacher_vars, images, labels, idx) ->
(state, metrics)``: gather the batch ``idx`` from the on-device training set, augment it,
run the frozen teacher (inference mode, outside differentiation), take ONE
``jax.value_and_grad`` of the method's loss over the dict of all learning nets' params,
and apply each net's own optimizer. Parameters are replicated, the batch is split over
the ``data`` axis; BatchNorm statistics of a batch are those of the global batch unless
the nets were built with ``bn_groups = number of devices`` (per-device statistics).
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from kdjax import data
from kdjax.methods.base import Batch, Method, NetRunner, StepContext
from kdjax.train.state import TrainState


def make_mesh(devices=None) -> Mesh:
  """A one-axis mesh named ``data`` over all (or the given) devices."""
  return Mesh(np.asarray(devices if devices is not None else jax.devices()), ('data',))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def data_sharded(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P('data'))


def apply_update(method: Method, state: TrainState, teacher_vars, batch: Batch, key,
                 *, steps_per_epoch: int):
  """The fused update on a prepared batch: ONE gradient over all nets, each net's optimizer.

  For a method with sequential ``stages`` (SLKD*), one gradient per stage over that stage's
  nets, each stage seeing the nets already updated by the stages before it. Returns
  ``(new_state, metrics)``; ``metrics`` holds ``loss`` and every named loss term.
  """
  teacher_out = None
  if method.teacher is not None:
    teacher_out = jax.lax.stop_gradient(method.teacher.apply(teacher_vars, batch.images,
                                                             train=False))
  ctx = StepContext(step=state.step, epoch=state.step // steps_per_epoch + 1, rng=key,
                    teacher=teacher_out)
  params, batch_stats, opt_state = dict(state.params), dict(state.batch_stats), dict(
      state.opt_state)
  extra = state.extra
  total, metrics = 0.0, {}
  for names, stage_loss in method.update_stages():

    def loss_fn(learning, stage_loss=stage_loss):
      run = NetRunner(method.nets, {**params, **learning}, batch_stats, extra)
      loss, terms = stage_loss(run, batch, ctx)
      return loss, (run.batch_stats, jax.lax.stop_gradient(run.extra), terms)

    (loss, (batch_stats, extra, terms)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        {name: params[name] for name in names})
    for name in names:
      tx = method.optimizers[name]
      updates, opt_state[name] = tx.update(grads[name], opt_state[name], params[name])
      params[name] = optax.apply_updates(params[name], updates)
    total += loss
    metrics.update({f'loss/{k}': v for k, v in terms.items()})
  new_state = state.replace(step=state.step + 1, params=params, batch_stats=batch_stats,
                            opt_state=opt_state, extra=extra)
  return new_state, {'loss': total, **metrics}


def make_train_step(method: Method, mesh: Mesh, *, mean, std, crop_padding: int, flip: bool,
                    steps_per_epoch: int, dtype=jnp.float32) -> Callable:
  """The jitted ``(state, teacher_vars, images, labels, idx) -> (state, metrics)``.

  Gathers batch ``idx`` from the on-device training set, augments it, and applies
  :func:`apply_update`; ``state`` is donated, metrics stay on the device.
  """

  def step_fn(state: TrainState, teacher_vars, images, labels, idx):
    aug_key, loss_key = jax.random.split(jax.random.fold_in(state.rng, state.step))
    x = data.train_transform(aug_key, images[idx], mean=mean, std=std,
                             crop_padding=crop_padding, flip=flip, dtype=dtype)
    x = jax.lax.with_sharding_constraint(x, data_sharded(mesh))
    return apply_update(method, state, teacher_vars, Batch(x, labels[idx], idx), loss_key,
                        steps_per_epoch=steps_per_epoch)

  rep = replicated(mesh)
  return jax.jit(step_fn, in_shardings=(rep, rep, rep, rep, data_sharded(mesh)),
                 out_shardings=(rep, rep), donate_argnums=(0,))


def make_eval_step(method: Method, mesh: Mesh, *, mean, std, dtype=jnp.float32,
                   nets=None) -> Callable:
  """Jitted ``(variables, images, labels, idx, mask) -> {net: {loss, top1, top5} sums}``.

  ``variables[name]`` are the inference variables of each net in ``nets`` (default: the
  method's eval nets, through ``method.eval_logits`` where the method has one).
  """
  joint = method.eval_logits if nets is None else None
  nets = nets if nets is not None else {n: method.nets[n] for n in method.eval_nets}

  def eval_fn(variables, images, labels, idx, mask):
    x = data.normalize(images[idx], mean, std, dtype)
    x = jax.lax.with_sharding_constraint(x, data_sharded(mesh))
    y = labels[idx]
    out = {}
    all_logits = joint(variables, x) if joint is not None else {
        name: net.apply(variables[name], x, train=False).logits for name, net in nets.items()}
    for name, logits in all_logits.items():
      logits = logits.astype(jnp.float32)
      ce = optax.softmax_cross_entropy_with_integer_labels(logits, y)
      top5 = jax.lax.top_k(logits, min(5, logits.shape[-1]))[1]
      out[name] = {
          'loss': jnp.sum(ce * mask),
          'top1': jnp.sum((top5[:, 0] == y) * mask),
          'top5': jnp.sum(jnp.any(top5 == y[:, None], axis=-1) * mask),
      }
    return out

  rep = replicated(mesh)
  shard = data_sharded(mesh)
  return jax.jit(eval_fn, in_shardings=(rep, rep, rep, shard, shard), out_shardings=rep)


def evaluate(eval_step, variables, images, labels, *, batch_size: int, size: int) -> dict:
  """Top-1/top-5 accuracy (%) and mean loss of every eval net on the whole test set."""
  totals = None
  for idx, mask in data.eval_batches(size, batch_size):
    sums = eval_step(variables, images, labels, idx, mask.astype(np.float32))
    totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
  totals = jax.device_get(totals)
  return {name: {'top1': 100.0 * float(v['top1']) / size, 'top5': 100.0 * float(v['top5']) / size,
                 'loss': float(v['loss']) / size} for name, v in totals.items()}
