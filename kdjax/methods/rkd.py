"""RKD: relational knowledge distillation (Park et al., CVPR 2019), as mdistiller's
``mdistiller/distillers/RKD.py``.

    loss = ce_weight * CE(y, S) + feat_weight * (distance_weight * L_dist + angle_weight * L_angle)

on the pooled pre-logit vectors (mdistiller's ``pooled_feat`` = ``ModelOutput.embedding``),
with L_dist / L_angle the smooth-L1 distance and angle terms of :func:`kdjax.losses.rkd`.
Defaults (``CFG.RKD``): CE 1.0, feat 1.0, distance 25, angle 50, pdist eps 1e-12, not squared.
"""

from __future__ import annotations

import ml_collections

from kdjax import losses
from kdjax.methods.base import BuildInputs, Method, MethodInfo, student_and_teacher
from kdjax.methods.distiller import distillation_method


INFO = MethodInfo('RKD', net_outputs=('embedding',))


def build(config: ml_collections.ConfigDict, inputs: BuildInputs) -> Method:
  student, teacher = student_and_teacher(config, inputs)
  c = config.rkd

  def terms(run, out, batch, ctx):
    del run, batch
    rkd = losses.rkd(out.embedding, ctx.teacher.embedding, squared=c.squared, eps=c.eps,
                     distance_weight=c.distance_weight, angle_weight=c.angle_weight)
    return {'rkd': c.feat_weight * rkd}

  return distillation_method('rkd', student, teacher, ce_weight=c.ce_weight, terms=terms,
                             optimizer=inputs.optimizer)


def default_config() -> ml_collections.ConfigDict:
  """``config.rkd``: mdistiller's ``CFG.RKD``."""
  return ml_collections.ConfigDict({'ce_weight': 1.0, 'feat_weight': 1.0,
                                    'distance_weight': 25.0, 'angle_weight': 50.0,
                                    'eps': 1e-12, 'squared': False})
