"""SKD: skill-transferring KD (Yang, Xu, Zhou, Yang, Yang, Huang, IEEE TCSVT 33(11), 2023).

This is kdjax's reading of the paper's abstract, documented with every choice in
``docs/skd.md``. The student is shown how the teacher
*learned*: its trajectory, K stages of a network of the teacher's architecture, from one of

* ``snapshots``: the teacher's own variables at the end of each of K training stages,
  recorded by kdjax when it trained the teacher (:mod:`kdjax.teachers.trajectory`, loaded by
  the loop into ``BuildInputs.teacher_trajectory``); student stage k (of K equal stages of
  the run) is paired with snapshot k;
* ``self_learning``: SLKD's two self-learning teachers (:mod:`kdjax.methods.slkd`) learn
  from the teacher during the run; SL-teacher 1's variables at the last three stage
  boundaries are kept in the train state (``extra['trajectory']``).

Two meta-networks teach from it. With ``f_j`` the trajectory's hidden-layer behaviour (its
stage ``hint_layer`` feature map on the batch) at stage j, ``z_j`` its logits and ``z_T``
the final teacher's logits:

* **TBT** (behaviour teaching) ``B_phi(f_{k-1}, f_k)`` predicts ``f_{k+1}``
  (:class:`BehaviourTeacher`). It is fitted to the trajectory (regression to the real next
  behaviour: ``f_{k+1}`` for snapshots, one stage late for self-learning teachers) and, by
  the meta-gradient below, to what helps the student, whose hint layer (through a FitNet
  connector R) is pulled towards the *predicted next* behaviour.
* **TET** (experience teaching) ``E_psi(z_k, z_T, k)`` is the target the student is
  distilled towards in stage k (:class:`ExperienceTeacher`).

Student loss (stage 2 of the step, nets student and connector, + SL-teachers):

    L_S(theta) = a_ce CE(y, S) + a_kd KD_tau(S, E_psi) + beta MSE(R(S_h), B_phi(f_{k-1}, f_k))
                 [+ eta L_SLTS(S, F) + L_TSL1 + L_TSL2   with ``slkd_terms`` (the full system)]

Meta step (stage 1, nets TBT and TET; MetaDistil's look-ahead, Zhou et al., ACL 2022): a
virtual SGD step of the student on its loss, ``theta' = theta - lr * grad_theta L_S(theta;
phi, psi)``, then the cross-entropy of the virtually updated student on a quiz batch held
out from the training set, differentiated with respect to (phi, psi) through the virtual
step (``jax.grad`` inside ``jax.value_and_grad``; ``lr`` is the student's learning rate of this
update, ``StepContext.lr``, times ``virtual_lr_scale``):

    L_meta(phi, psi) = CE(y_q, S_theta'(x_q)) + gamma * MSE(B_phi(f_{k-2|k-1}, ...), f_next)

Both stages run in ONE jitted step (:func:`kdjax.train.step.apply_update`); stage 2 sees the
meta-networks stage 1 just updated. The virtual step is plain SGD at the student's current
learning rate (no momentum, no weight decay) and never changes the real student.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from kdjax import losses
from kdjax.errors import KdjaxError
from kdjax.methods import slkd
from kdjax.methods.base import BuildInputs, Method, MethodInfo, student_and_teacher
from kdjax.methods.connectors import ConvReg
from kdjax.methods.distiller import hint_shapes

SOURCES = ('snapshots', 'self_learning')


def _inputs(config) -> tuple:
  return ('teacher_trajectory',) if config.skd.trajectory == 'snapshots' else ()


# Its losses read only ctx.teacher.logits, with either trajectory: the snapshots run the
# teacher's architecture on their own variables (ctx.frozen.method['trajectory']), not ctx.teacher.


def stage_of(epoch, num_epochs: int, stages: int):
  """The 0-based stage of (1-based) ``epoch``: ``min((epoch - 1) * K // E, K - 1)``."""
  return jnp.minimum((jnp.asarray(epoch) - 1) * stages // num_epochs, stages - 1)


def snapshot(stacked: dict, j) -> dict:
  """Snapshot ``j`` (may be traced) of variables stacked on a leading (stage) axis."""
  return jax.tree.map(lambda a: jnp.asarray(a)[j], stacked)


class BehaviourTeacher(nn.Module):
  """``B_phi(f_{k-1}, f_k) = f_k + D_phi([f_{k-1}, f_k, f_k - f_{k-1}])``.

  ``D`` is conv3x3 -> ReLU -> conv3x3, its last conv zero-initialised, so an untrained
  B predicts "no further change" (``f_k``).
  """
  channels: int
  hidden: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, behaviour, *, train: bool):
    """``behaviour = (f_{k-1}, f_k)`` -> predicted ``f_{k+1}``."""
    del train
    prev, cur = behaviour
    x = jnp.concatenate([prev, cur, cur - prev], axis=-1)
    x = nn.relu(nn.Conv(self.hidden, (3, 3), padding=1, dtype=self.dtype, name='conv1')(x))
    delta = nn.Conv(self.channels, (3, 3), padding=1, kernel_init=nn.initializers.zeros,
                    dtype=self.dtype, name='conv2')(x)
    return cur + delta


class ExperienceTeacher(nn.Module):
  """``E_psi(z_k, z_T, k) = z_T + sigmoid(a_k) (z_k - z_T) + M_psi(...)``: target logits.

  ``a_k`` is a learned per-stage mix (initially ``logit(mix_init)``: the student of stage k
  starts by learning from a blend of the stage-k and the final teacher); ``M`` is an MLP on
  ``[log_softmax(z_k / tau), log_softmax(z_T / tau), embedding(k)]`` with a zero-initialised
  output layer.
  """
  num_classes: int
  num_stages: int
  hidden: int
  mix_init: float
  temperature: float

  @nn.compact
  def __call__(self, knowledge, *, train: bool):
    """``knowledge = (z_k, z_T, k)`` -> target logits."""
    del train
    stage_logits, teacher_logits, stage = knowledge
    dtype = jnp.promote_types(teacher_logits.dtype, jnp.float32)  # softmax in >= float32
    stage_logits, teacher_logits = stage_logits.astype(dtype), teacher_logits.astype(dtype)
    mix_logit = float(np.log(self.mix_init / (1.0 - self.mix_init)))
    mix = jax.nn.sigmoid(self.param('stage_mix', nn.initializers.constant(mix_logit),
                                    (self.num_stages,))[stage])
    embedding = nn.Embed(self.num_stages, 16, name='stage_embedding')(stage)
    h = jnp.concatenate([
        jax.nn.log_softmax(stage_logits / self.temperature),
        jax.nn.log_softmax(teacher_logits / self.temperature),
        jnp.broadcast_to(embedding, stage_logits.shape[:1] + embedding.shape)], axis=-1)
    h = nn.relu(nn.Dense(self.hidden, name='dense1')(h))
    delta = nn.Dense(self.num_classes, kernel_init=nn.initializers.zeros, name='dense2')(h)
    return teacher_logits + mix * (stage_logits - teacher_logits) + delta


class TrajectoryView(NamedTuple):
  """What the meta-networks read from the trajectory on the current batch."""
  stage: jax.Array  # the student's stage k (0-based)
  prev: jax.Array  # f_{k-1}: input of the prediction shown to the student
  cur: jax.Array  # f_k
  stage_logits: jax.Array  # z_k
  regression: tuple  # (f_a, f_b, f_c): B(f_a, f_b) should predict f_c
  pull_weight: jax.Array  # 0 while the trajectory has too few stages to predict from
  regression_weight: jax.Array


def virtual_step(params, grads, lr):
  """``theta' = theta - lr * g``: the look-ahead SGD step the meta-gradient goes through."""
  return jax.tree.map(lambda p, g: p - lr * g.astype(p.dtype), params, grads)


def _hint(model: nn.Module, variables, x, layer: int, train: bool = False):
  """Stage ``layer`` of ``model`` on ``x``; ``train``: normalised with the batch's statistics
  (a self-learning teacher's snapshot, whose running estimates still lag behind)."""
  if train:
    out, _ = model.apply(variables, x, train=True, mutable=['batch_stats'])
    return out.features[layer]
  return model.apply(variables, x, train=False).features[layer]


@dataclasses.dataclass(frozen=True)
class SnapshotTrajectory:
  """The teacher's recorded snapshots (``ctx.frozen.method['trajectory']``, stacked on axis 0)."""
  teacher: nn.Module
  num_stages: int
  hint_layer: int

  def view(self, run, batch, ctx, stage, stage_logits) -> TrajectoryView:
    """Student stage k is shown snapshots k-1, k (and k+1 as TBT's regression target)."""
    del run, stage_logits
    stacked, k, h = ctx.frozen.method['trajectory'], stage, self.hint_layer
    prev_v, cur_v, next_v = (snapshot(stacked, j) for j in (
        jnp.maximum(k - 1, 0), k, jnp.minimum(k + 1, self.num_stages - 1)))
    prev, next_ = (_hint(self.teacher, v, batch.images, h) for v in (prev_v, next_v))
    cur_out = self.teacher.apply(cur_v, batch.images, train=False)
    cur = cur_out.features[h]
    one = jnp.ones((), jnp.float32)
    return TrajectoryView(k, prev, cur, cur_out.logits, (prev, cur, next_), one, one)


@dataclasses.dataclass(frozen=True)
class SelfLearningTrajectory:
  """SL-teacher 1's variables at the last three stage boundaries, kept in ``run.extra``."""
  sl_net: nn.Module
  num_stages: int
  hint_layer: int

  def init_extra(self, image_shape) -> Any:
    """``init_extra(key)``: empty slots ``[s_{k-2}, s_{k-1}, s_k]`` and their count."""
    shapes = jax.eval_shape(lambda: self.sl_net.init(
        jax.random.PRNGKey(0), jnp.zeros((1,) + tuple(image_shape)), train=False))

    def init_extra(key):
      del key
      slots = jax.tree.map(lambda s: jnp.zeros((3,) + s.shape, s.dtype), shapes)
      return {'trajectory': slots, 'trajectory_count': jnp.zeros((), jnp.int32),
              'trajectory_stage': jnp.full((), -1, jnp.int32)}
    return init_extra

  def view(self, run, batch, ctx, stage, stage_logits) -> TrajectoryView:
    """Shifts SL-teacher 1's current variables into the slots at a stage boundary; shows
    the student the last two, TBT regresses the third from the two before."""
    del ctx
    k, extra = stage, dict(run.extra)
    boundary = k != extra['trajectory_stage']
    current = {'params': run.params('slt1'), 'batch_stats': run.batch_stats['slt1']}
    shifted = jax.tree.map(lambda slots, now: jnp.concatenate([slots[1:], now[None]]),
                           extra['trajectory'], current)
    slots = jax.tree.map(lambda a, b: jnp.where(boundary, a, b), shifted, extra['trajectory'])
    count = extra['trajectory_count'] + boundary.astype(jnp.int32)
    run.extra.update(trajectory=slots, trajectory_count=jnp.minimum(count, 3),
                     trajectory_stage=k)
    slots = jax.lax.stop_gradient(slots)
    f = [_hint(self.sl_net, snapshot(slots, j), batch.images, self.hint_layer, train=True)
         for j in range(3)]
    return TrajectoryView(k, f[1], f[2], stage_logits, (f[0], f[1], f[2]),
                          (count >= 2).astype(jnp.float32), (count >= 3).astype(jnp.float32))


@dataclasses.dataclass(frozen=True)
class SkdLoss:
  """SKD's two stages (module docstring): :meth:`meta_loss` (TBT, TET) and
  :meth:`student_loss` (student, connector, SL-teachers)."""
  c: ml_collections.ConfigDict  # config.skd
  slkd_config: ml_collections.ConfigDict  # config.slkd (self-learning trajectory)
  trajectory: Any  # SnapshotTrajectory or SelfLearningTrajectory
  num_epochs: int

  @property
  def self_learning(self) -> bool:
    return isinstance(self.trajectory, SelfLearningTrajectory)

  def fused(self, sl_logits):
    """The fused SL-teachers' logits F (eq. 6), a target: no gradient."""
    return jax.lax.stop_gradient(slkd.fuse(self.slkd_config, *sl_logits))

  def view(self, run, batch, ctx, fused_logits) -> TrajectoryView:
    stage = stage_of(ctx.epoch, self.num_epochs, self.trajectory.num_stages).astype(jnp.int32)
    return self.trajectory.view(run, batch, ctx, stage, fused_logits)

  def student_terms(self, run, batch, ctx, view, params=None, update_stats=True):
    """The student's SKD terms (a_ce CE + a_kd KD to E + beta behaviour) and its logits.

    Without TET the KD target is the teacher's logits; without TBT there is no behaviour term.
    """
    c = self.c
    out = run('student', batch.images, params=params, update_stats=update_stats)
    target = ctx.teacher.logits
    if c.use_tet:
      target = run('tet', (view.stage_logits, ctx.teacher.logits, view.stage))
    terms = {
        'ce': c.ce_weight * losses.cross_entropy(out.logits, batch.labels),
        'kd': c.kd_weight * losses.kd(out.logits, target, temperature=c.temperature),
    }
    if c.use_tbt:
      hint = run('connector', out.features[c.hint_layer], update_stats=update_stats)
      predicted = run('tbt', (view.prev, view.cur))
      terms['behaviour'] = (c.behaviour_weight * view.pull_weight
                            * losses.fitnet(hint, predicted))
    return terms, out.logits

  def meta_loss(self, run, batch, ctx):
    """Stage 1: quiz CE after the student's virtual step, + TBT's regression (phi, psi)."""
    c = self.c
    fused_logits = None
    if self.self_learning:  # the SL-teachers learn in stage 2: only their logits here
      fused_logits = self.fused([run(n, batch.images, update_stats=False).logits
                                 for n in slkd.SL_TEACHERS])
    view = self.view(run, batch, ctx, fused_logits)
    view = view._replace(**{f: jax.lax.stop_gradient(getattr(view, f))
                            for f in ('prev', 'cur', 'stage_logits', 'regression')})

    def inner(theta):
      terms, _ = self.student_terms(run, batch, ctx, view, params=theta, update_stats=False)
      return sum(terms.values())

    theta = run.params('student')
    lr = ctx.lr * c.virtual_lr_scale
    looked_ahead = virtual_step(theta, jax.grad(inner)(theta), lr)
    quiz_logits = run('student', batch.quiz.images, params=looked_ahead,
                      update_stats=False).logits
    quiz = losses.cross_entropy(quiz_logits, batch.quiz.labels)
    terms = {'meta_quiz': c.meta_weight * quiz}
    if c.use_tbt:
      a, b, target = view.regression
      terms['tbt_regression'] = c.regression_weight * view.regression_weight * losses.fitnet(
          run('tbt', (a, b)), target)
    return sum(terms.values()), terms

  def student_loss(self, run, batch, ctx):
    """Stage 2: the student (+ connector, + SL-teachers) with the just-updated TBT/TET."""
    c = self.c
    sl_loss, sl_terms, fused_logits = 0.0, {}, None
    if self.self_learning:
      sl_loss, sl_terms, sl_logits = slkd.sl_teacher_losses(run, batch, ctx, self.slkd_config)
      fused_logits = self.fused(sl_logits)
    view = self.view(run, batch, ctx, fused_logits)
    terms, logits = self.student_terms(run, batch, ctx, view)
    if c.slkd_terms:
      terms.update(slkd.fused_terms(logits, batch.labels, fused_logits, self.slkd_config))
    loss = sum(terms.values()) + sl_loss
    monitors = {'stage': view.stage.astype(jnp.float32),
                'kl_teacher_student': slkd.kl_monitor(logits, ctx.teacher.logits,
                                                      c.temperature)}
    return loss, {**terms, **sl_terms, **monitors}


def check_config(config: ml_collections.ConfigDict) -> None:
  """Raises :class:`KdjaxError` for a mistake in ``config.skd``, or without a quiz set."""
  c = config.skd
  if not config.data.holdout:
    raise KdjaxError(f'{config.method} meta-learns on a quiz set held out from the training '
                     f'set: set config.data.holdout (e.g. 5000 for CIFAR, 144 for digits)')
  if c.trajectory not in SOURCES:
    raise KdjaxError(f'unknown skd.trajectory {c.trajectory!r}; expected one of: '
                     f'{", ".join(SOURCES)}')
  if not 0.0 < c.tet_mix_init < 1.0:
    raise KdjaxError(f'skd.tet_mix_init must be in (0, 1), got {c.tet_mix_init}')
  if c.slkd_terms and c.trajectory != 'self_learning':
    raise KdjaxError('skd.slkd_terms needs the self-learning teachers: set '
                     'skd.trajectory=self_learning')
  if not (c.use_tbt or c.use_tet):
    raise KdjaxError('skd needs at least one of skd.use_tbt and skd.use_tet')


INFO = MethodInfo('SKD', inputs=_inputs, teacher_logits_only=True, check=check_config)


def build(config: ml_collections.ConfigDict, inputs: BuildInputs) -> Method:
  c = config.skd
  student, teacher = student_and_teacher(config, inputs)
  s_hint, t_hint = hint_shapes(config, inputs, student, teacher, 'skd', c.hint_layer)
  frozen, nets, sample_inputs, init_extra = {}, {'student': student}, {}, None
  if c.trajectory == 'self_learning':
    sl_net = inputs.create_net(config.teacher.model)
    trajectory = SelfLearningTrajectory(sl_net, c.stages, c.hint_layer)
    init_extra = trajectory.init_extra(inputs.image_shape)
  else:
    frozen['trajectory'] = inputs.teacher_trajectory
    trajectory = SnapshotTrajectory(teacher, jax.tree.leaves(frozen['trajectory'])[0].shape[0],
                                    c.hint_layer)
  if trajectory.num_stages < 2:
    raise KdjaxError(f'skd needs a trajectory of at least 2 stages, got '
                     f'{trajectory.num_stages}')

  dtype, num_classes = inputs.dtype, inputs.num_classes
  if c.use_tbt:  # the student's connector and the behaviour teacher
    hint_input = jax.ShapeDtypeStruct(t_hint.shape, dtype)
    nets['connector'] = ConvReg(s_hint.shape[1:], t_hint.shape[1:], dtype=dtype,
                                bn_groups=inputs.bn_groups)
    nets['tbt'] = BehaviourTeacher(t_hint.shape[-1], c.tbt_hidden or t_hint.shape[-1],
                                   dtype=dtype)
    sample_inputs.update(connector=jax.ShapeDtypeStruct(s_hint.shape, dtype),
                         tbt=(hint_input, hint_input))
  if c.use_tet:
    nets['tet'] = ExperienceTeacher(num_classes, trajectory.num_stages, c.tet_hidden,
                                    c.tet_mix_init, c.temperature)
    logits_input = jax.ShapeDtypeStruct((2, num_classes), jnp.float32)
    sample_inputs['tet'] = (logits_input, logits_input, jax.ShapeDtypeStruct((), jnp.int32))
  meta_nets = tuple(n for n in ('tbt', 'tet') if n in nets)
  self_learning = c.trajectory == 'self_learning'
  if self_learning:
    nets.update({name: trajectory.sl_net for name in slkd.SL_TEACHERS})

  loss = SkdLoss(c, config.slkd, trajectory, config.num_epochs)
  learners = tuple(n for n in nets if n not in meta_nets)
  optimizers = {name: inputs.optimizer for name in learners}
  optimizers.update({name: optax.adam(c.meta_lr) for name in meta_nets})
  return Method('skd', nets, optimizers, loss.student_loss,
                eval_nets=('student',) + (slkd.SL_TEACHERS if self_learning else ()),
                teacher=teacher, sample_inputs=sample_inputs, init_extra=init_extra,
                stages=((meta_nets, loss.meta_loss), (learners, loss.student_loss)),
                labels=slkd.sl_labels(config) if self_learning else {},
                frozen=frozen, needs_quiz=True)


def default_config() -> ml_collections.ConfigDict:
  """``config.skd``: kdjax's reading of SKD (docs/skd.md); KD's weights and temperature."""
  return ml_collections.ConfigDict({
      'trajectory': 'snapshots',  # or 'self_learning' (SLKD's teachers; any teacher)
      'stages': 4,  # K for self_learning; snapshots: as many as were recorded
      'slkd_terms': False,  # + SLKD's losses (needs self_learning): the full system
      'use_tbt': True, 'use_tet': True,  # the ablations tbt_only / tet_only switch one off
      'ce_weight': 0.1, 'kd_weight': 0.9, 'temperature': 4.0,  # a_ce, a_kd, tau
      'behaviour_weight': 10.0,  # beta (FitNet's 100 was worse on digits: docs/skd.md)
      'hint_layer': 2,  # the hidden layer whose behaviour TBT predicts (FitNet's)
      'regression_weight': 1.0,  # gamma
      'meta_weight': 1.0,  # weight of the quiz loss in the meta objective
      'virtual_lr_scale': 1.0,  # virtual step lr = this x the student's current lr
      'meta_lr': 1e-3,  # Adam, for TBT and TET
      'tbt_hidden': 0,  # 0: the hint layer's channels
      'tet_hidden': 128,
      'tet_mix_init': 0.5,  # initial weight of the stage-k logits in E's target
  })
