"""The contract every zoo model follows.

A model is a sequence of ``num_stages`` stages followed by a pooling + linear head.
``features[i]`` is the output of stage ``i`` (stage 0 is the stem), exactly mdistiller's
``feats[i]``; ``preact_features[i]`` is the same output before its final ReLU (mdistiller's
``preact_feats``, used by OFD), or ``None`` for models without them (MobileNetV2);
``embedding`` is the pooled pre-logit vector (mdistiller's ``pooled_feat``).

``module.apply(variables, x, train=False, start=k)`` runs only the suffix of stages
``k, k+1, ...`` and the head, with ``x`` the input of stage ``k``: for ``k = 0`` an NHWC
image batch, for ``k > 0`` a feature map shaped like ``features[k - 1]``. The returned
``features``/``preact_features`` then hold the outputs of the stages that ran
(``num_stages - k`` entries). SFTN's student branches and ReviewKD use this.
"""

from __future__ import annotations

from typing import NamedTuple, Optional, Sequence

import jax


class ModelOutput(NamedTuple):
  """What every zoo model returns (see the module docstring)."""
  logits: jax.Array
  features: Sequence[jax.Array]
  preact_features: Optional[Sequence[jax.Array]]
  embedding: jax.Array
