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

import flax.linen as nn
import jax
import jax.numpy as jnp


# The input size of the CIFAR zoo (and of every dataset kdjax holds on the devices).
CIFAR_IMAGE_SHAPE = (32, 32, 3)


class ModelOutput(NamedTuple):
  """What every zoo model returns (see the module docstring)."""
  logits: jax.Array
  features: Sequence[jax.Array]
  preact_features: Optional[Sequence[jax.Array]]
  embedding: jax.Array


def output_shapes(model: nn.Module, image_shape: Sequence[int], dtype=jnp.float32,
                  batch: int = 2) -> ModelOutput:
  """The model's output on a ``batch`` of images, as ``jax.ShapeDtypeStruct`` (no FLOPs).

  mdistiller's ``get_feat_shapes``: what a connector between two nets must be sized for.
  """
  x = jax.ShapeDtypeStruct((batch,) + tuple(image_shape), dtype)
  variables = jax.eval_shape(lambda x: model.init(jax.random.PRNGKey(0), x), x)
  return jax.eval_shape(lambda v, x: model.apply(v, x, train=False), variables, x)


def variable_shapes(model: nn.Module, image_shape: Sequence[int]) -> dict:
  """The variables ``model.init`` makes for images of ``image_shape``, as shapes (no FLOPs)."""
  image = jnp.zeros((1,) + tuple(image_shape), jnp.float32)
  return jax.eval_shape(lambda: model.init(jax.random.key(0), image, train=False))
