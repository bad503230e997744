"""AT: attention transfer (Zagoruyko & Komodakis, ICLR 2017), as mdistiller's
``mdistiller/distillers/AT.py``.

    loss = ce_weight * CE(y, S) + feat_weight * sum_i AT_p(s_i, t_i)

over the pairs ``(s_i, t_i)`` of ``zip(S.features[1:], T.features[1:])``, the stage outputs
after the stem (mdistiller's ``feats[1:]``, ``AT.py`` line 44; its ``feats`` do not
include the pooled vector), with AT_p of :func:`kdjax.losses.at` (attention maps
``normalize(mean_c f^p)``, the larger map pooled to the smaller). ``zip`` pairs the lists
from the shallow end and stops at the shorter one (``at_loss``, ``AT.py`` line 21): on
ResNet50 -> MobileNetV1 (4 teacher and 3 student maps after the stem) the teacher's last
map is unused and each student map meets the teacher map one stage shallower, pooled down.
Defaults (``CFG.AT``): CE 1.0, feat 1000.0, p 2.
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
    g_s, g_t = out.features[1:], ctx.teacher.features[1:]
    n = min(len(g_s), len(g_t))  # mdistiller's zip(g_s, g_t)
    return {'at': c.feat_weight * losses.at(g_s[:n], g_t[:n], p=c.p)}

  return distillation_method('at', student, teacher, ce_weight=c.ce_weight, terms=terms,
                             optimizer=inputs.optimizer)


def default_config() -> ml_collections.ConfigDict:
  """``config.at``: mdistiller's ``CFG.AT``."""
  return ml_collections.ConfigDict({'ce_weight': 1.0, 'feat_weight': 1000.0, 'p': 2})
