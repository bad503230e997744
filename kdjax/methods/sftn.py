"""SFTN: student-friendly teacher networks (Park, Cha, Jeong, Kim, Han, "Learning
Student-Friendly Teacher Networks for Knowledge Distillation", NeurIPS 2021; kdjax's reading
of it: ``docs/sftn.md``).

SFTN trains the *teacher* (``config.model``), from scratch, together with student branches:
for every teacher stage ``i`` with ``1 <= i <= num_stages - 2`` (kdjax stage indices: stage 0
is the stem, the last stage feeds the head) a branch net ``branch{i}`` takes the teacher's
feature map ``features[i]``, maps it with a teacher-to-student transform (:class:`Transform`:
1x1 conv + BN + ReLU to the student's channel count at that depth, after an integer spatial
resampling where the sizes differ) into the space of the student's ``features[i]``, and runs
the student's (``config.sftn.student``) stages ``i + 1 ..`` and head on it -- the zoo model's
own suffix path (``start=i + 1``, :mod:`kdjax.models.base`), not a copy of the
architecture. With R_i the branch logits, T the teacher logits and y the labels::

    L = lambda_T * CE(y, T) + lambda_CE * sum_i CE(y, R_i) + lambda_KL * sum_i KL_tau(R_i, T)

every term differentiated with respect to the teacher (through T and through the features
the branches read) as well as the branches. ``KL_tau`` is, with ``kl='kd'`` (default), the KD
loss the branch would get as a student: :func:`kdjax.losses.kd` ``(R_i, T)`` =
``tau^2 KL(softmax(T / tau) || softmax(R_i / tau))``; with ``kl='reverse'`` it is
``tau^2 KL(softmax(R_i / tau) || softmax(T / tau))``. (The paper writes
``KL(q_R || q_T)``; see ``docs/sftn.md`` for why ``'kd'`` is the default.)

Nets: ``teacher`` (the zoo teacher, the run's reported accuracy) and one ``branch{i}`` per
branch, each its own parameter pytree and optimizer; nothing is frozen. Every epoch the
teacher and every branch (on the teacher's inference-mode features) are evaluated.
A finished SFTN workdir is a teacher checkpoint of its ``teacher`` net only
(``INFO.trained_net``). With ``config.sftn.distill`` the plan follows the run with
:func:`follow_ups`: the student ``config.sftn.student`` distilled from the SFTN teacher, and,
with ``compare_standard``, from a vanilla teacher trained the usual way.
"""

from __future__ import annotations

import os
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from kdjax import losses, models
from kdjax.configdict import derive
from kdjax.errors import KdjaxError
from kdjax.methods.base import BuildInputs, FollowUp, Method, MethodInfo
from kdjax.models.layers import BatchNorm, conv

KL_DIRECTIONS = ('kd', 'reverse')


def distill_config(config: ml_collections.ConfigDict,
                   teacher_checkpoint) -> ml_collections.ConfigDict:
  """The ``config.sftn.distill`` run of SFTN ``config``'s student from a teacher.

  Same data and recipe; the student ``config.sftn.student`` with lr ``sftn.student_lr``.
  Without ``teacher_checkpoint`` the teacher is a vanilla ``config.model`` trained first
  for ``config.num_epochs`` (the standard teacher SFTN is compared with).
  """
  c = config.sftn
  return derive(config, {
      'method': c.distill, 'model': c.student, 'optimizer.lr': c.student_lr,
      'teacher.model': config.model, 'teacher.checkpoint': teacher_checkpoint,
      'teacher.train_if_missing': teacher_checkpoint is None,
      'teacher.num_epochs': config.num_epochs})


def follow_ups(config: ml_collections.ConfigDict, workdir: str) -> tuple:
  """The distillation runs after the SFTN teacher (none without ``config.sftn.distill``):
  the student from it into ``workdir/student``; with ``compare_standard`` the student from a
  vanilla teacher into ``workdir/standard`` (its teacher in ``workdir/standard/teacher``)."""
  c = config.sftn
  if not c.distill:
    return ()
  runs = [FollowUp(f'{c.distill} student from the SFTN teacher', distill_config(config, workdir),
                   os.path.join(workdir, 'student'))]
  if c.compare_standard:
    runs.append(FollowUp(f'{c.distill} student from the standard teacher',
                         distill_config(config, None), os.path.join(workdir, 'standard')))
  return tuple(runs)


INFO = MethodInfo('SFTN', uses_teacher=False, trained_net='teacher', follow_ups=follow_ups,
                  pair=lambda config: (config['model'],
                                       (config.get('sftn') or {}).get('student', '')),
                  figures=('eval_nets',), net_outputs=('features', 'start'),
                  check=lambda config: check_config(config))


class Transform(nn.Module):
  """Teacher-to-student feature transform: resample, 1x1 conv, BN, ReLU.

  ``down > 1``: average pooling ``down x down`` (the teacher's map is larger, e.g. a ResNet
  teacher's 32x32 ``layer1`` for a ShuffleNet student whose ``layer1`` is 16x16);
  ``up > 1``: nearest-neighbour upsampling (the teacher's map is smaller).
  """
  in_channels: int
  out_channels: int
  down: int = 1
  up: int = 1
  dtype: Any = jnp.float32
  bn_groups: int = 1

  @nn.compact
  def __call__(self, x, train: bool):
    if self.down > 1:
      x = nn.avg_pool(x.astype(jnp.float32), (self.down, self.down),
                      strides=(self.down, self.down)).astype(self.dtype)
    if self.up > 1:
      x = jnp.repeat(jnp.repeat(x, self.up, axis=1), self.up, axis=2)
    x = conv(self.out_channels, 1, in_features=self.in_channels, dtype=self.dtype,
             name='conv')(x)
    return nn.relu(BatchNorm(batch_groups=self.bn_groups, dtype=self.dtype, name='bn')(x, train))


class StudentBranch(nn.Module):
  """A student branch: :class:`Transform`, then ``student``'s stages ``start ..`` and head.

  ``__call__(x, train, from_teacher=True)`` takes a teacher feature map; with
  ``from_teacher=False`` it takes a map already in the student's space (shaped like the
  student's ``features[start - 1]``) -- the branch is then exactly the student network's
  suffix (tests use this). Variables: ``transform`` and ``student`` (named like the student
  network's own, for the stages that run).
  """
  student: nn.Module
  start: int
  transform: Transform

  def __call__(self, x, train: bool = False, from_teacher: bool = True):
    if from_teacher:
      x = self.transform(x, train)
    return self.student(x, train=train, start=self.start)


def _feature_shapes(net: nn.Module, image_shape) -> list[tuple[int, ...]]:
  """The shapes (without batch) of ``net``'s stage outputs on images of ``image_shape``."""
  return [tuple(f.shape[1:]) for f in models.output_shapes(net, image_shape).features]


def _resampling(teacher_hw: int, student_hw: int, where: str) -> dict:
  if teacher_hw % student_hw == 0:
    return {'down': teacher_hw // student_hw, 'up': 1}
  if student_hw % teacher_hw == 0:
    return {'down': 1, 'up': student_hw // teacher_hw}
  raise KdjaxError(f'SFTN: {where}: the teacher map is {teacher_hw}x{teacher_hw} and the '
                   f'student map {student_hw}x{student_hw}; their sizes must divide')


def branch_stages(num_stages: int) -> tuple[int, ...]:
  """The teacher stages that get a branch: all but the stem (0) and the last one."""
  return tuple(range(1, num_stages - 1))


def kl_term(branch_logits, teacher_logits, *, temperature: float, direction: str):
  """``tau^2 KL`` between the softened branch and teacher outputs (module docstring)."""
  if direction == 'kd':  # KL(p_T || p_R): the KD loss with the teacher as the target
    return losses.kd(branch_logits, teacher_logits, temperature=temperature)
  if direction == 'reverse':  # KL(p_R || p_T)
    return losses.kd(teacher_logits, branch_logits, temperature=temperature)
  raise KdjaxError(f'config.sftn.kl must be one of {KL_DIRECTIONS}, got {direction!r}')


def check_config(config: ml_collections.ConfigDict) -> None:
  """Raises :class:`KdjaxError` for a mistake in ``config.sftn``."""
  c = config.sftn
  if c.student not in models.names():
    raise KdjaxError(f'unknown SFTN student model {c.student!r} (config.sftn.student); '
                     f'expected one of: {", ".join(models.names())}')
  if c.kl not in KL_DIRECTIONS:
    raise KdjaxError(f'config.sftn.kl must be one of {KL_DIRECTIONS}, got {c.kl!r}')


def build(config: ml_collections.ConfigDict, inputs: BuildInputs) -> Method:
  c = config.sftn
  teacher, student = inputs.create_net(config.model), inputs.create_net(c.student)
  t_shapes = _feature_shapes(teacher, inputs.image_shape)
  s_shapes = _feature_shapes(student, inputs.image_shape)
  if len(t_shapes) != len(s_shapes):
    raise KdjaxError(f'SFTN: the teacher {config.model} has {len(t_shapes)} stages and the '
                     f'student {c.student} {len(s_shapes)}; branches map stage i to stage i, '
                     f'so they must have the same number')
  stages = branch_stages(len(t_shapes))
  if not stages:
    raise KdjaxError(f'SFTN: {config.model} has too few stages for a student branch')
  branches, sample_inputs = {}, {}
  for i in stages:
    (th, _, tc), (sh, _, sc) = t_shapes[i], s_shapes[i]
    transform = Transform(in_channels=tc, out_channels=sc, dtype=inputs.dtype,
                          bn_groups=inputs.bn_groups,
                          **_resampling(th, sh, f'stage {i}'))
    branches[f'branch{i}'] = StudentBranch(student=student, start=i + 1, transform=transform)
    sample_inputs[f'branch{i}'] = jax.ShapeDtypeStruct((2,) + t_shapes[i], jnp.float32)
  nets = {'teacher': teacher, **branches}

  def loss(run, batch, ctx):
    lambda_kl = c.lambda_kl
    if c.kl_warmup_epochs:  # DKD-style linear warm-up of the KL weight (not in the paper)
      lambda_kl = lambda_kl * jnp.minimum(ctx.epoch / c.kl_warmup_epochs, 1.0)
    t_out = run('teacher', batch.images)
    terms = {'teacher_ce': c.lambda_t * losses.cross_entropy(t_out.logits, batch.labels)}
    for i in stages:
      r = run(f'branch{i}', t_out.features[i]).logits
      terms[f'branch{i}_ce'] = c.lambda_ce * losses.cross_entropy(r, batch.labels)
      terms[f'branch{i}_kl'] = lambda_kl * kl_term(r, t_out.logits, temperature=c.temperature,
                                                     direction=c.kl)
    return sum(terms.values()), terms

  def eval_logits(variables, x):
    t_out = teacher.apply(variables['teacher'], x, train=False)
    out = {'teacher': t_out.logits}
    for i in stages:
      name = f'branch{i}'
      out[name] = branches[name].apply(variables[name], t_out.features[i], train=False).logits
    return out

  return Method('sftn', nets, {name: inputs.optimizer for name in nets}, loss,
                eval_nets=tuple(nets), sample_inputs=sample_inputs, eval_logits=eval_logits,
                labels={'teacher': 'SFTN teacher',
                        **{f'branch{i}': f'SFTN student branch at stage {i}' for i in stages}})


def default_config() -> ml_collections.ConfigDict:
  """``config.sftn`` (see ``docs/sftn.md`` for where each value comes from)."""
  return ml_collections.ConfigDict({
      'student': 'resnet8x4',  # the architecture of the branches (config.model is the teacher)
      'lambda_t': 1.0, 'lambda_ce': 1.0, 'lambda_kl': 3.0, 'temperature': 1.0,
      'kl': 'kd',  # 'kd': KL(p_T || p_R) = losses.kd(R, T); 'reverse': KL(p_R || p_T)
      'kl_warmup_epochs': 0,  # > 0: lambda_kl * min(epoch / this, 1), as DKD's warm-up
      # The runs after the teacher (follow_ups, added by kdjax.plan): a method name ('kd')
      # distils config.sftn.student from the SFTN teacher into <workdir>/student with lr
      # student_lr; compare_standard also trains a vanilla teacher and the same student from
      # it into <workdir>/standard, and prints both.
      'distill': '',
      'student_lr': 0.05,
      'compare_standard': False,
  })
