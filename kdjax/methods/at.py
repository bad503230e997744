"""AT: attention transfer (Zagoruyko & Komodakis, ICLR 2017), as mdistiller's
``mdistiller/distillers/AT.py``.

    loss = ce_weight * CE(y, S) + feat_weight * sum_{i >= 1} AT_p(S.features[i], T.features[i])

over the stage outputs after the stem (mdistiller's ``feats[1:]``; its ``feats`` do not
include the pooled vector), with AT_p of :func:`kdjax.losses.at` (attention maps
``normalize(mean_c f^p)``, the larger map pooled to the smaller). Defaults (``CFG.AT``):
CE 1.0, feat 1000.0, p 2.
"""

from __future__ import annotations

import ml_collections

from kdjax import losses
from kdjax.methods.base import BuildInputs, Method, MethodInfo, student_and_teacher
from kdjax.methods.distiller import distillation_method


INFO = MethodInfo('AT', net_outputs=('features',))


def build(config: ml_collections.ConfigDict, inputs: BuildInputs) -> Method:
  student, teacher = student_and_teacher(config, inputs)
  c = config.at

  def terms(run, out, batch, ctx):
    del run, batch
    return {'at': c.feat_weight * losses.at(out.features[1:], ctx.teacher.features[1:], p=c.p)}

  return distillation_method('at', student, teacher, ce_weight=c.ce_weight, terms=terms,
                             optimizer=inputs.optimizer)


def default_config() -> ml_collections.ConfigDict:
  """``config.at``: mdistiller's ``CFG.AT``."""
  return ml_collections.ConfigDict({'ce_weight': 1.0, 'feat_weight': 1000.0, 'p': 2})
