"""Plain supervised training of one network (a teacher, or a baseline student).

loss = CE(y, f(x)): cross-entropy, mean over the batch.
"""

from __future__ import annotations

import ml_collections

from kdjax import losses
from kdjax.methods.base import BuildInputs, Method, MethodInfo


INFO = MethodInfo('vanilla', uses_teacher=False,
                  pair=lambda config: ('', config['model']))


def build(config: ml_collections.ConfigDict, inputs: BuildInputs) -> Method:
  """The vanilla method: ``config.model`` trained with cross-entropy."""
  student = inputs.create_net(config.model)

  def loss(run, batch, ctx):
    del ctx
    ce = losses.cross_entropy(run('student', batch.images).logits, batch.labels)
    return ce, {'ce': ce}

  return Method('vanilla', {'student': student}, {'student': inputs.optimizer}, loss)
