"""FitNet: hints for thin deep nets (Romero et al., ICLR 2015), as mdistiller's
``mdistiller/distillers/FitNet.py``.

    loss = ce_weight * CE(y, S) + feat_weight * MSE(R(S.features[h]), T.features[h])

with ``h = hint_layer`` (a stage index into ``features``, as mdistiller's ``feats``) and R the
learned regressor :class:`~kdjax.methods.connectors.ConvReg` (conv + BN + ReLU, sized from
the two nets' hint shapes; learning net ``regressor`` with its own optimizer). Defaults
(``CFG.FITNET``): CE 1.0, feat 100.0, hint layer 2.
"""

from __future__ import annotations

import ml_collections

from kdjax import losses
from kdjax.methods.base import BuildInputs, Method, MethodInfo, student_and_teacher
from kdjax.methods.connectors import ConvReg
from kdjax.methods.distiller import distillation_method, hint_shapes


INFO = MethodInfo('FitNet', net_outputs=('features',))


def build(config: ml_collections.ConfigDict, inputs: BuildInputs) -> Method:
  student, teacher = student_and_teacher(config, inputs)
  c = config.fitnet
  h = c.hint_layer
  s_hint, t_hint = hint_shapes(config, inputs, student, teacher, 'fitnet', h)
  regressor = ConvReg(s_hint.shape[1:], t_hint.shape[1:], dtype=inputs.dtype,
                      bn_groups=inputs.bn_groups)

  def terms(run, out, batch, ctx):
    del batch
    hint = run('regressor', out.features[h])
    return {'fitnet': c.feat_weight * losses.fitnet(hint, ctx.teacher.features[h])}

  return distillation_method('fitnet', student, teacher, ce_weight=c.ce_weight, terms=terms,
                             optimizer=inputs.optimizer,
                             connectors={'regressor': (regressor, s_hint)})


def default_config() -> ml_collections.ConfigDict:
  """``config.fitnet``: mdistiller's ``CFG.FITNET``."""
  return ml_collections.ConfigDict({'ce_weight': 1.0, 'feat_weight': 100.0, 'hint_layer': 2})
