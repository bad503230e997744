"""The loss layout every mdistiller distiller shares, and what sizes its connectors.

``CE_WEIGHT * CE(y, student) + weighted distillation terms`` (:func:`distillation_method`),
a term optionally warmed up over the first epochs (:func:`warmup`, mdistiller's
``min(epoch / warmup, 1)``), and the hint-layer shapes that FitNet-style regressors are
sized from (:func:`hint_shapes`, mdistiller's ``get_feat_shapes``).
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from kdjax import losses
from kdjax.errors import KdjaxError
from kdjax.methods.base import BuildInputs, Method


def hint_shapes(config, inputs: BuildInputs, student: nn.Module, teacher: nn.Module, block: str,
                hint_layer: int) -> tuple[jax.ShapeDtypeStruct, jax.ShapeDtypeStruct]:
  """Student's and teacher's feature shapes at stage ``hint_layer`` (FitNet's hint layer).

  A :class:`KdjaxError` naming ``config.<block>.hint_layer`` if it is not a stage of both.
  """
  s_feats = inputs.output_shapes(student).features
  t_feats = inputs.output_shapes(teacher).features
  if not 0 <= hint_layer < min(len(s_feats), len(t_feats)):
    raise KdjaxError(f'{block}.hint_layer {hint_layer} is not a stage of both {config.model} '
                     f'({len(s_feats)} stages) and {config.teacher.model} ({len(t_feats)})')
  return s_feats[hint_layer], t_feats[hint_layer]


def warmup(epoch, epochs: float):
  """``min(epoch / epochs, 1)``: mdistiller's linear warm-up of a loss weight (epoch 1-based)."""
  return jnp.minimum(jnp.asarray(epoch, jnp.float32) / epochs, 1.0)


def distillation_method(name: str, student: nn.Module, teacher: nn.Module, *,
                        ce_weight: float, terms: Callable, optimizer,
                        connectors: Optional[Mapping[str, tuple[nn.Module, Any]]] = None,
                        init_extra: Optional[Callable] = None) -> Method:
  """A student distilled from a frozen teacher with mdistiller's loss layout.

  ``loss = ce_weight * CE(y, student) + sum(terms(run, student_out, batch, ctx).values())``
  where ``terms`` returns the already weighted distillation terms by name (logged as
  ``loss/<name>`` next to ``loss/ce``). ``connectors`` maps a learning net's name to
  ``(module, sample_input)``; every net gets ``optimizer`` (its own state).
  """
  connectors = dict(connectors or {})
  nets = {'student': student, **{k: m for k, (m, _) in connectors.items()}}

  def loss(run, batch, ctx):
    out = run('student', batch.images)
    named = {'ce': ce_weight * losses.cross_entropy(out.logits, batch.labels)}
    named.update(terms(run, out, batch, ctx))
    return sum(named.values()), named

  return Method(name, nets, {k: optimizer for k in nets}, loss, teacher=teacher,
                sample_inputs={k: x for k, (_, x) in connectors.items()},
                init_extra=init_extra)
