"""PKT: probabilistic knowledge transfer (Passalis & Tefas, ECCV 2018), as mdistiller's
``mdistiller/distillers/PKT.py``.

    loss = ce_weight * CE(y, S) + feat_weight * PKT(S.embedding, T.embedding)

on the pooled pre-logit vectors (mdistiller's ``pooled_feat``), with PKT the KL between the
cosine-similarity distributions of :func:`kdjax.losses.pkt`. Defaults (``CFG.PKT``): CE 1.0,
feat 30000.0.
"""

from __future__ import annotations

import ml_collections

from kdjax import losses
from kdjax.methods.base import BuildInputs, Method, MethodInfo, student_and_teacher
from kdjax.methods.distiller import distillation_method


INFO = MethodInfo('PKT', net_outputs=('embedding',))


def build(config: ml_collections.ConfigDict, inputs: BuildInputs) -> Method:
  student, teacher = student_and_teacher(config, inputs)
  c = config.pkt

  def terms(run, out, batch, ctx):
    del run, batch
    return {'pkt': c.feat_weight * losses.pkt(out.embedding, ctx.teacher.embedding)}

  return distillation_method('pkt', student, teacher, ce_weight=c.ce_weight, terms=terms,
                             optimizer=inputs.optimizer)


def default_config() -> ml_collections.ConfigDict:
  """``config.pkt``: mdistiller's ``CFG.PKT``."""
  return ml_collections.ConfigDict({'ce_weight': 1.0, 'feat_weight': 30000.0})
