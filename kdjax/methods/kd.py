"""KD (Hinton et al., 2015) with mdistiller's defaults (``mdistiller/distillers/KD.py``).

loss = ce_weight * CE(y, S) + kd_weight * KD_T(S, T), with KD_T the temperature-scaled KL
of :func:`kdjax.losses.kd`; defaults CE 0.1, KD 0.9, T = 4 (``CFG.KD``).
"""

from __future__ import annotations

import ml_collections

from kdjax import losses
from kdjax.methods.base import BuildInputs, Method, MethodInfo, student_and_teacher


INFO = MethodInfo('KD', teacher_logits_only=True)


def build(config: ml_collections.ConfigDict, inputs: BuildInputs) -> Method:
  student, teacher = student_and_teacher(config, inputs)
  cfg = config.kd

  def loss(run, batch, ctx):
    logits = run('student', batch.images).logits
    ce = cfg.ce_weight * losses.cross_entropy(logits, batch.labels)
    kd = cfg.kd_weight * losses.kd(logits, ctx.teacher.logits, temperature=cfg.temperature)
    return ce + kd, {'ce': ce, 'kd': kd}

  return Method('kd', {'student': student}, {'student': inputs.optimizer}, loss,
                teacher=teacher)


def default_config() -> ml_collections.ConfigDict:
  """``config.kd``: mdistiller's ``CFG.KD``."""
  return ml_collections.ConfigDict({'ce_weight': 0.1, 'kd_weight': 0.9, 'temperature': 4.0})
