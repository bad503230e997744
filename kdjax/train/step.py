"""The jit-compiled train and eval steps, sharded over a one-axis ``('data',)`` mesh.

One train step is one pure function ``(state, frozen, images, labels, idx) ->
(state, metrics)``: gather the batch ``idx`` from the on-device training set, augment it,
run the frozen teacher (inference mode, outside differentiation; or gather its logits from
the teacher-logit cache, :mod:`kdjax.teachers.logit_cache`), take ONE
``jax.value_and_grad`` of the method's loss over the dict of all learning nets' params,
and apply each net's own optimizer (:func:`make_host_train_step`: the same on a batch
already augmented on the host, e.g. ImageNet's). Parameters are replicated, the batch is
split over the ``data`` axis; BatchNorm statistics of a batch are those of the global batch
unless the nets were built with ``bn_groups = number of devices`` (per-device statistics).

Mixed precision (``dtype = bfloat16``): images and activations are bfloat16, parameters,
BatchNorm statistics, gradients and optimizer state float32; logits are cast to float32
before any loss, so softmax, KL, cross-entropy and the loss sum run in float32. With
several processes (:mod:`kdjax.distributed`) the mesh spans every process's devices and
each process feeds only its own rows of a batch (:func:`put_rows`).
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.sharding import Mesh

from kdjax import data
from kdjax.sharding import data_sharded, put_rows, replicated, step_keys
from kdjax.teachers.logit_cache import cache_variants
from kdjax.methods.base import Batch, FrozenInputs, Method, LearningNets, StepContext
from kdjax.models.base import ModelOutput
from kdjax.train.state import TrainState


class _Float32Logits:
  """A net whose ``ModelOutput.logits`` come out in float32 (computed in bfloat16).

  The losses compute softmax/KL/CE in float32 but return their scalar in the logits'
  dtype; with float32 logits every loss term, their weighted sum and the logged metrics
  stay float32 under ``config.dtype = 'bfloat16'``. A float32 net is left untouched.
  """

  def __init__(self, net):
    self._net = net

  def apply(self, *args, **kwargs):
    out = self._net.apply(*args, **kwargs)
    if kwargs.get('mutable'):
      return _float32_logits(out[0]), out[1]
    return _float32_logits(out)

  def __getattr__(self, name):
    return getattr(self._net, name)


def _float32_logits(out):
  if isinstance(out, ModelOutput) and jnp.issubdtype(out.logits.dtype, jnp.floating) and \
      jnp.dtype(out.logits.dtype).itemsize < 4:
    return out._replace(logits=out.logits.astype(jnp.float32))
  return out


def frozen_inputs(method: Method, teacher_vars=None, **extra) -> FrozenInputs:
  """What a step reads and never learns: the teacher's variables (for a method with a
  teacher), the method's own frozen arrays, and ``extra`` fields of :class:`FrozenInputs`
  (the teacher-logit cache, the quiz pool)."""
  return FrozenInputs(teacher=teacher_vars if method.teacher is not None else None,
                      method=dict(method.frozen), **extra)


def apply_update(method: Method, state: TrainState, frozen, batch: Batch, key,
                 *, steps_per_epoch: int, learning_rate: Callable | None = None,
                 teacher_logits: jax.Array | None = None):
  """The fused update on a prepared batch: ONE gradient over all nets, each net's optimizer.

  ``frozen`` is :func:`frozen_inputs`: the teacher's variables and the method's frozen
  arrays. For a method with sequential ``stages`` (SLKD*, SKD's meta step), one gradient
  per stage over that stage's nets, each stage seeing the nets already updated by the
  stages before it. ``learning_rate(step)`` is the run's optimizer's schedule (the learning
  rate of this update); losses read it as ``ctx.lr`` (SKD's virtual step). ``teacher_logits``:
  the teacher's logits on ``batch.images`` when they are known already (the teacher-logit
  cache, :mod:`kdjax.teachers.logit_cache`); the teacher then does not run and ``ctx.teacher`` is
  ``ModelOutput(teacher_logits in float32, None, None, None)``. Returns
  ``(new_state, metrics)``; ``metrics`` holds ``loss``, every named loss term
  (``loss/<term>``) and each learning net's gradient norm (``grad_norm/<net>``).
  """
  teacher_out = None
  if teacher_logits is not None:
    teacher_out = ModelOutput(jax.lax.stop_gradient(teacher_logits.astype(jnp.float32)), None,
                              None, None)
  elif method.teacher is not None:
    with jax.named_scope('teacher'):
      teacher_out = jax.lax.stop_gradient(_float32_logits(
          method.teacher.apply(frozen.teacher, batch.images, train=False)))
  epoch = state.step // steps_per_epoch + 1
  ctx = StepContext(step=state.step, epoch=epoch, rng=key, teacher=teacher_out, frozen=frozen,
                    lr=None if learning_rate is None else learning_rate(state.step))
  params, batch_stats, opt_state = dict(state.params), dict(state.batch_stats), dict(
      state.opt_state)
  extra = state.extra
  nets = {name: _Float32Logits(net) for name, net in method.nets.items()}
  total, metrics = 0.0, {}
  for names, stage_loss in method.update_stages():

    def loss_fn(learning, stage_loss=stage_loss):
      run = LearningNets(nets, {**params, **learning}, batch_stats, extra)
      loss, terms = stage_loss(run, batch, ctx)
      return loss, (run.batch_stats, jax.lax.stop_gradient(run.extra), terms)

    (loss, (batch_stats, extra, terms)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        {name: params[name] for name in names})
    for name in names:
      with jax.named_scope(f'{name}/update'):
        # Also the run's NaN guard: XLA on CPU may turn a NaN into 0 inside a fused ReLU,
        # so a NaN model can show a finite loss, but never a finite gradient norm.
        metrics[f'grad_norm/{name}'] = optax.tree.norm(grads[name])
        tx = method.optimizers[name]
        updates, opt_state[name] = tx.update(grads[name], opt_state[name], params[name])
        params[name] = optax.apply_updates(params[name], updates)
    total += loss
    metrics.update({f'loss/{k}': v for k, v in terms.items()})
  new_state = state.replace(step=state.step + 1, params=params, batch_stats=batch_stats,
                            opt_state=opt_state, extra=extra)
  return new_state, {'loss': total, **metrics}


def _step_images(x: jax.Array, state: TrainState, nan_at_step: int | None,
                 mesh: Mesh) -> jax.Array:
  """A step's normalised images, NaN at update ``nan_at_step`` (``config.debug``), split by
  rows over the mesh."""
  if nan_at_step is not None:
    x = jnp.where(state.step + 1 == nan_at_step, jnp.asarray(jnp.nan, x.dtype), x)
  return jax.lax.with_sharding_constraint(x, data_sharded(mesh))


def make_train_step(method: Method, mesh: Mesh, *, mean, std, crop_padding: int, flip: bool,
                    steps_per_epoch: int, learning_rate: Callable | None = None,
                    dtype=jnp.float32, nan_at_step: int | None = None,
                    teacher_cache: str | None = None) -> Callable:
  """The jitted ``(state, frozen, images, labels, idx) -> (state, metrics)``.

  Gathers batch ``idx`` from the on-device training set, augments it, and applies
  :func:`apply_update` (``frozen``: :func:`frozen_inputs`, plus ``quiz_pool``, the held-out
  training indices, for a method that ``needs_quiz``); ``state`` is donated, metrics stay
  on the device.
  ``teacher_cache`` (:mod:`kdjax.teachers.logit_cache`) replaces the teacher's forward by its cached
  logits of the crop and flip the step drew (:func:`cache_variants` of the step's own
  augmentation key): ``'device'``: ``frozen.teacher_logits`` is the whole cache, ``(N, V,
  classes)``, and the step gathers row ``[i, v]`` of each image ``i``; ``'host'``: the step
  takes a sixth argument, those ``(batch, classes)`` rows, gathered on the host.
  ``nan_at_step = k`` (``config.debug.nan_at_step``, a test and diagnosis hook) turns the
  images of the k-th update (1-based, the step numbering of logs and checkpoints) into
  NaN; with ``None`` nothing of it is in the compiled step.
  """

  def step_fn(state: TrainState, frozen, images, labels, idx, teacher_rows=None):
    aug_key, loss_key = step_keys(state.rng, state.step)
    x = data.train_transform(aug_key, images[idx], mean=mean, std=std,
                             crop_padding=crop_padding, flip=flip, dtype=dtype)
    x = _step_images(x, state, nan_at_step, mesh)
    quiz = None
    if method.needs_quiz:  # drawn with replacement from the held-out training indices
      pool = frozen.quiz_pool
      quiz_key = jax.random.fold_in(aug_key, 1)
      qidx = pool[jax.random.randint(quiz_key, idx.shape, 0, pool.shape[0])]
      qx = jax.lax.with_sharding_constraint(data.normalize(images[qidx], mean, std, dtype),
                                            data_sharded(mesh))
      quiz = Batch(qx, labels[qidx], qidx)
    teacher_logits = teacher_rows
    if teacher_cache == 'device':
      variants = cache_variants(aug_key, idx.shape[0], crop_padding=crop_padding, flip=flip)
      teacher_logits = frozen.teacher_logits[idx, variants]
    return apply_update(method, state, frozen, Batch(x, labels[idx], idx, quiz), loss_key,
                        steps_per_epoch=steps_per_epoch, learning_rate=learning_rate,
                        teacher_logits=teacher_logits)

  if teacher_cache not in (None, 'device', 'host'):
    raise ValueError(f'teacher_cache must be None, device or host, got {teacher_cache!r}')
  rep, shard = replicated(mesh), data_sharded(mesh)
  return jax.jit(step_fn, in_shardings=(rep, rep, rep, rep, shard)
                 + ((shard,) if teacher_cache == 'host' else ()),
                 out_shardings=(rep, rep), donate_argnums=(0,))


def make_host_train_step(method: Method, mesh: Mesh, *, mean, std, steps_per_epoch: int,
                         learning_rate: Callable | None = None, dtype=jnp.float32,
                         nan_at_step: int | None = None) -> Callable:
  """The jitted ``(state, frozen, images, labels, indices) -> (state, metrics)`` of a batch
  augmented on the host (:mod:`kdjax.data.host_pipeline`: uint8 ``images``, rows split over
  the devices, ``indices`` the examples' indices in the training set).

  :func:`make_train_step` without the gather and the augmentation: the images are only
  normalised; the loss's key is the one that step derives (the augmentation key unused).
  No quiz set and no teacher-logit cache (refused by :func:`kdjax.plan.validate`).
  """

  def step_fn(state: TrainState, frozen, images, labels, indices):
    _, loss_key = step_keys(state.rng, state.step)
    x = _step_images(data.normalize(images, mean, std, dtype), state, nan_at_step, mesh)
    return apply_update(method, state, frozen, Batch(x, labels, indices), loss_key,
                        steps_per_epoch=steps_per_epoch, learning_rate=learning_rate)

  rep, shard = replicated(mesh), data_sharded(mesh)
  return jax.jit(step_fn, in_shardings=(rep, rep, shard, shard, shard),
                 out_shardings=(rep, rep), donate_argnums=(0,))


def make_eval_step(method: Method, mesh: Mesh, *, mean, std, dtype=jnp.float32,
                   nets=None, host_batches: bool = False) -> Callable:
  """Jitted ``(variables, images, labels, idx, mask) -> {net: {loss, top1, top5} sums}``.

  ``variables[name]`` are the inference variables of each net in ``nets`` (default: the
  method's eval nets, through ``method.eval_logits`` where the method has one).
  ``host_batches``: ``(variables, images, labels, mask)`` instead, of a batch made on the
  host (:func:`kdjax.data.host_pipeline.eval_pipeline`, rows split over the devices).
  """
  joint = method.eval_logits if nets is None else None
  nets = nets if nets is not None else {n: method.nets[n] for n in method.eval_nets}

  def eval_fn(variables, images, labels, idx, mask):
    return batch_sums(variables, images[idx], labels[idx], mask)

  def batch_sums(variables, images, y, mask):
    x = data.normalize(images, mean, std, dtype)
    x = jax.lax.with_sharding_constraint(x, data_sharded(mesh))
    out = {}
    all_logits = joint(variables, x) if joint is not None else {
        name: _inference_logits(name, net, variables[name], x) for name, net in nets.items()}
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
  if host_batches:
    return jax.jit(batch_sums, in_shardings=(rep, shard, shard, shard), out_shardings=rep)
  return jax.jit(eval_fn, in_shardings=(rep, rep, rep, shard, shard), out_shardings=rep)


def _inference_logits(name: str, net, variables, x) -> jax.Array:
  with jax.named_scope(name):
    return net.apply(variables, x, train=False).logits


def evaluate(eval_step, variables, images, labels, *, batch_size: int, size: int,
             mesh: Mesh | None = None) -> dict:
  """Top-1/top-5 accuracy (%) and mean loss of every eval net on the whole test set.

  With ``mesh`` (needed with several processes) each process feeds only its own rows of
  every batch's indices and mask.
  """
  totals = None
  shard = data_sharded(mesh) if mesh is not None else None
  for idx, mask in data.eval_batches(size, batch_size):
    mask = mask.astype(np.float32)
    if shard is not None:
      idx, mask = put_rows(idx, shard), put_rows(mask, shard)
    sums = eval_step(variables, images, labels, idx, mask)
    totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
  return _accuracies(totals, size)


def evaluate_batches(eval_step, variables, batches, *, size: int) -> dict:
  """:func:`evaluate` over host batches (``{'images', 'labels', 'mask'}`` on the devices,
  e.g. a :class:`kdjax.data.host_pipeline.DevicePrefetch` of an eval pipeline) of a test
  set of ``size`` examples; ``eval_step`` from ``make_eval_step(..., host_batches=True)``.
  Masked rows (padding, unreadable images) count as misses."""
  totals = None
  for batch in batches:
    sums = eval_step(variables, batch['images'], batch['labels'],
                     batch['mask'].astype(jnp.float32))
    totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
  return _accuracies(totals, size)


def _accuracies(totals, size: int) -> dict:
  """Summed eval-step counts -> top-1/top-5 (%) and mean loss of every net."""
  totals = jax.device_get(totals)
  return {name: {'top1': 100.0 * float(v['top1']) / size, 'top5': 100.0 * float(v['top5']) / size,
                 'loss': float(v['loss']) / size} for name, v in totals.items()}


class Steps(NamedTuple):
  """A run's jitted steps: ``train`` (:func:`make_train_step` or :func:`make_host_train_step`),
  ``eval`` of its eval nets and ``teacher_eval`` of its frozen teacher (None without one)."""
  train: Callable
  eval: Callable
  teacher_eval: Callable | None


def make_run_train_step(config: ml_collections.ConfigDict, method: Method, mesh: Mesh, *,
                        mean, std, on_host: bool, steps_per_epoch: int,
                        learning_rate: Callable, teacher_cache: str | None = None) -> Callable:
  """The jitted train step of a run of ``config`` (its loop's, and ``--dry-run --trace``'s):
  :func:`make_host_train_step` on a host dataset's batches (``on_host``), else
  :func:`make_train_step` with the config's augmentation; with the config's dtype and
  ``config.debug.nan_at_step``; ``teacher_cache`` as :func:`make_train_step` takes it."""
  common = dict(mean=mean, std=std, dtype=jnp.dtype(config.dtype),
                steps_per_epoch=steps_per_epoch, learning_rate=learning_rate,
                nan_at_step=(config.get('debug') or {}).get('nan_at_step'))
  if on_host:
    return make_host_train_step(method, mesh, **common)
  return make_train_step(method, mesh, crop_padding=config.data.crop_padding,
                         flip=config.data.flip, teacher_cache=teacher_cache, **common)


def make_steps(config: ml_collections.ConfigDict, method: Method, mesh: Mesh, *, mean, std,
               on_host: bool, steps_per_epoch: int, learning_rate: Callable,
               teacher_cache: str | None = None) -> Steps:
  """The jitted steps of ``method`` on a run's data (normalised by ``mean`` / ``std``; a host
  dataset's batches when ``on_host``): :func:`make_run_train_step`, the eval step of its
  eval nets and of its teacher."""
  train = make_run_train_step(config, method, mesh, mean=mean, std=std, on_host=on_host,
                              steps_per_epoch=steps_per_epoch, learning_rate=learning_rate,
                              teacher_cache=teacher_cache)
  norm = dict(mean=mean, std=std, dtype=jnp.dtype(config.dtype), host_batches=on_host)
  teacher_eval = None
  if method.teacher is not None:
    teacher_eval = make_eval_step(method, mesh, nets={'teacher': method.teacher}, **norm)
  return Steps(train, make_eval_step(method, mesh, **norm), teacher_eval)
