"""DKD: decoupled knowledge distillation (Zhao et al., CVPR 2022), as mdistiller's
``mdistiller/distillers/DKD.py``.

    loss = ce_weight * CE(y, S) + min(epoch / warmup, 1) * (alpha * TCKD + beta * NCKD)

with TCKD/NCKD the target-class and non-target-class KLs at temperature T of
:func:`kdjax.losses.dkd`, and ``epoch`` the 1-based epoch (``ctx.epoch``). Defaults
(``CFG.DKD``): CE 1.0, alpha 1.0, beta 8.0, T 4.0, warm-up 20 epochs; mdistiller's CIFAR-100
configs lower beta per pair (``experiments/dkd.py``).
"""

from __future__ import annotations

import ml_collections

from kdjax import losses
from kdjax.methods.base import BuildInputs, Method, MethodInfo, student_and_teacher
from kdjax.methods.distiller import distillation_method, warmup


INFO = MethodInfo('DKD', teacher_logits_only=True)


def build(config: ml_collections.ConfigDict, inputs: BuildInputs) -> Method:
  student, teacher = student_and_teacher(config, inputs)
  c = config.dkd

  def terms(run, out, batch, ctx):
    del run
    dkd = losses.dkd(out.logits, ctx.teacher.logits, batch.labels, alpha=c.alpha, beta=c.beta,
                     temperature=c.temperature)
    return {'dkd': warmup(ctx.epoch, c.warmup) * dkd}

  return distillation_method('dkd', student, teacher, ce_weight=c.ce_weight, terms=terms,
                             optimizer=inputs.optimizer)


def default_config() -> ml_collections.ConfigDict:
  """``config.dkd``: mdistiller's ``CFG.DKD``."""
  return ml_collections.ConfigDict({'ce_weight': 1.0, 'alpha': 1.0, 'beta': 8.0,
                                    'temperature': 4.0, 'warmup': 20})
