"""SLKD: self-learning teachers (Liu, Li, Cheng, "Improving Knowledge Distillation via
Transferring Learning Ability", 2023).

Nets: the frozen pre-trained teacher T; two self-learning teachers SL1, SL2 with T's
architecture, randomly initialised with different keys; the student S. With CE the
cross-entropy and KD_tau the temperature-scaled KL of :func:`kdjax.losses.kd`:

    L_TS   = a_ce * CE(y, S)   + a_kd * KD_tau(S, T)                 (paper eq. 1)
    L_TSLj = a_ce * CE(y, SLj) + a_kd * KD_tau(SLj, T),  j = 1, 2    (eqs. 4, 5)
    F      = rho * SL1 + (1 - rho) * SL2                             (eq. 6)
    L_SLTS = b_ce * CE(y, S)   + b_kd * KD_tau(S, F)                 (eq. 3)
    student: lambda * L_TS + eta * L_SLTS;  SLj: L_TSLj              (eq. 7)

F fuses the SL-teachers' *logits* (eq. 6 mixes the networks' outputs, before any softmax),
and the student's KD term softens F at tau like any teacher's logits.

All three nets learn in ONE gradient of ``lambda L_TS + eta L_SLTS + L_TSL1 + L_TSL2``:
the terms of different nets share no parameters, so each net receives exactly the
gradient of its own objective, except through F: with ``fused_target_grad=False`` (the
paper's equations) F is a constant for the student's term; with ``True`` (the authors'
code, class ``Tech_KD``) the student's term also sends gradients into SL1 and SL2.

Defaults (the paper): a = b = (CE 0.1, KD 0.9) -- "the same weights as the original KD" --,
lambda = 1, eta = 3, tau = 4, F detached; rho = 0.5 comes from the authors' code (the paper
names rho, eq. 6, but gives no value). The ``official`` preset reproduces the authors' code:
b = (1, 1), eta = 1, F not detached.

Sequential mode (SLKD*, paper section 4.3, "Parallel and sequential learning", Tables 5 and
6; the authors' code keeps such a trainer, commented out, beside ``Tech_KD``): within every
step the SL-teachers first take their update on the batch (their own L_TSLj), then the
student takes its update towards T and towards F computed by the *updated* SL-teachers on
the same batch (training-mode BatchNorm, their running statistics not updated a second
time). F is then always a constant for the student.
"""

from __future__ import annotations

import jax
import ml_collections

from kdjax import losses
from kdjax.methods.base import BuildInputs, Method, MethodInfo, student_and_teacher

SL_TEACHERS = ('slt1', 'slt2')
INFO = MethodInfo('SLKD', teacher_logits_only=True, figures=('kl_monitors',))


def _ce_kd(logits, labels, target_logits, ce_weight, kd_weight, temperature):
  return (ce_weight * losses.cross_entropy(logits, labels),
          kd_weight * losses.kd(logits, target_logits, temperature=temperature))


def sl_teacher_losses(run, batch, ctx, c: ml_collections.ConfigDict):
  """``L_TSL1 + L_TSL2`` (eqs. 4, 5), their named terms, and the SL-teachers' logits."""
  terms, logits = {}, []
  for name in SL_TEACHERS:
    out = run(name, batch.images).logits
    terms[f'{name}_ce'], terms[f'{name}_kd'] = _ce_kd(
        out, batch.labels, ctx.teacher.logits, c.ce_weight, c.kd_weight, c.temperature)
    logits.append(out)
  return sum(terms.values()), terms, logits


def fuse(c: ml_collections.ConfigDict, sl1, sl2):
  """``F = rho * SL1 + (1 - rho) * SL2`` (eq. 6)."""
  return c.rho * sl1 + (1.0 - c.rho) * sl2


def fused_terms(logits, labels, fused, c: ml_collections.ConfigDict) -> dict:
  """``eta * L_SLTS`` (eq. 3), the student's terms towards the fused SL-teachers F."""
  ce, kd = _ce_kd(logits, labels, fused, c.fused_ce_weight, c.fused_kd_weight, c.temperature)
  return {'slts_ce': c.eta * ce, 'slts_kd': c.eta * kd}


def kl_monitor(logits, target_logits, temperature: float) -> jax.Array:
  """``KL(softmax(target / tau) || softmax(logits / tau))``, logged only (no gradient)."""
  return jax.lax.stop_gradient(losses.kd(logits, target_logits, temperature=temperature)
                               / temperature**2)


def monitors(logits, teacher_logits, fused, c: ml_collections.ConfigDict) -> dict:
  """Not loss terms (the paper's Figure 2): KL(T || S) and KL(F || S) at tau, no gradient."""
  return {name: kl_monitor(logits, target, c.temperature)
          for name, target in (('kl_teacher_student', teacher_logits),
                               ('kl_fused_student', fused))}


def build(config: ml_collections.ConfigDict, inputs: BuildInputs) -> Method:
  student, teacher = student_and_teacher(config, inputs)
  sl_net = inputs.create_net(config.teacher.model)
  c = config.slkd
  nets = {'student': student, 'slt1': sl_net, 'slt2': sl_net}

  def student_losses(run, batch, ctx, fused):
    s = run('student', batch.images).logits
    ts_ce, ts_kd = _ce_kd(s, batch.labels, ctx.teacher.logits, c.ce_weight, c.kd_weight,
                          c.temperature)
    terms = {'ts_ce': c.lambda_ts * ts_ce, 'ts_kd': c.lambda_ts * ts_kd,
             **fused_terms(s, batch.labels, fused, c)}
    return sum(terms.values()), {**terms, **monitors(s, ctx.teacher.logits, fused, c)}

  def joint_loss(run, batch, ctx):
    sl_loss, sl_terms, (sl1, sl2) = sl_teacher_losses(run, batch, ctx, c)
    fused = fuse(c, sl1, sl2)
    if not c.fused_target_grad:
      fused = jax.lax.stop_gradient(fused)
    s_loss, s_terms = student_losses(run, batch, ctx, fused)
    return s_loss + sl_loss, {**s_terms, **sl_terms}

  def sequential_sl_loss(run, batch, ctx):
    loss, terms, _ = sl_teacher_losses(run, batch, ctx, c)
    return loss, terms

  def sequential_student_loss(run, batch, ctx):
    sl1, sl2 = (jax.lax.stop_gradient(run(n, batch.images, update_stats=False).logits)
                for n in SL_TEACHERS)
    return student_losses(run, batch, ctx, fuse(c, sl1, sl2))

  stages = ()
  if c.mode == 'sequential':
    stages = ((SL_TEACHERS, sequential_sl_loss), (('student',), sequential_student_loss))
  return Method('slkd', nets, {name: inputs.optimizer for name in nets}, joint_loss,
                eval_nets=('student',) + SL_TEACHERS, teacher=teacher, stages=stages,
                labels=sl_labels(config))


def sl_labels(config) -> dict:
  """The SL-teachers' names in tables."""
  return {n: f'SL-teacher {n[-1]} ({config.teacher.model})' for n in SL_TEACHERS}


def default_config() -> ml_collections.ConfigDict:
  """``config.slkd``: the paper's equations (see the module docstring)."""
  return ml_collections.ConfigDict({
      'ce_weight': 0.1, 'kd_weight': 0.9,  # a in L_TS and L_TSLj
      'fused_ce_weight': 0.1, 'fused_kd_weight': 0.9,  # b in L_SLTS
      'lambda_ts': 1.0, 'eta': 3.0, 'temperature': 4.0, 'rho': 0.5,
      'fused_target_grad': False,
      'mode': 'joint',  # or 'sequential' (SLKD*)
  })
