"""Plain supervised training of one network (a teacher, or a baseline student).

loss = CE(y, f(x)): cross-entropy, mean over the batch.
"""

from __future__ import annotations

import ml_collections

from kdjax import losses, models
from kdjax.methods.base import Method


def build(config: ml_collections.ConfigDict, *, num_classes: int, dtype, bn_groups: int,
          optimizer_factory) -> Method:
  """The vanilla method: ``config.model`` trained with cross-entropy."""
  student = models.create(config.model, num_classes, dtype=dtype, bn_groups=bn_groups)

  def loss(run, batch, ctx):
    del ctx
    ce = losses.cross_entropy(run('student', batch.images).logits, batch.labels)
    return ce, {'ce': ce}

  return Method('vanilla', {'student': student}, {'student': optimizer_factory()}, loss)
