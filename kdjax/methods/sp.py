"""SP: similarity-preserving distillation (Tung & Mori, ICCV 2019), as mdistiller's
``mdistiller/distillers/SP.py``.

    loss = ce_weight * CE(y, S) + feat_weight * SP(S.features[-1], T.features[-1])

on the last stage's output only (mdistiller's ``[feats[-1]]``), with SP of
:func:`kdjax.losses.sp` (``1/B^2 ||normalize(G_t) - normalize(G_s)||_F^2``, ``G = F F^T``).
Defaults (``CFG.SP``): CE 1.0, feat 3000.0.
"""

from __future__ import annotations

import ml_collections

from kdjax import losses
from kdjax.methods.base import BuildInputs, Method, MethodInfo, student_and_teacher
from kdjax.methods.distiller import distillation_method


INFO = MethodInfo('SP', net_outputs=('features',))


def build(config: ml_collections.ConfigDict, inputs: BuildInputs) -> Method:
  student, teacher = student_and_teacher(config, inputs)
  c = config.sp

  def terms(run, out, batch, ctx):
    del run, batch
    return {'sp': c.feat_weight * losses.sp([out.features[-1]], [ctx.teacher.features[-1]])}

  return distillation_method('sp', student, teacher, ce_weight=c.ce_weight, terms=terms,
                             optimizer=inputs.optimizer)


def default_config() -> ml_collections.ConfigDict:
  """``config.sp``: mdistiller's ``CFG.SP``."""
  return ml_collections.ConfigDict({'ce_weight': 1.0, 'feat_weight': 3000.0})
