"""The CIFAR model zoo of RepDistiller / mdistiller, layer for layer, in Flax linen.

    >>> from kdjax import models
    >>> model = models.create('resnet8x4', num_classes=100)
    >>> out = model.apply(variables, images_nhwc, train=False)
    >>> out.logits, out.features, out.preact_features, out.embedding

Names are mdistiller's ``cifar_model_dict`` keys. Every model accepts ``dtype`` (the
computation dtype; parameters stay float32) and ``bn_groups`` (BatchNorm statistics per
group of the batch, see :class:`kdjax.models.layers.BatchNorm`); models with residual blocks
also ``materialize_residuals`` (:func:`kdjax.models.layers.materialize`, a CPU speed setting
that changes no result).
"""

from __future__ import annotations

import inspect
from typing import Any, Callable

import jax.numpy as jnp

from kdjax.errors import KdjaxError
from kdjax.models.base import CIFAR_IMAGE_SHAPE, ModelOutput, output_shapes, variable_shapes

_REGISTRY: dict[str, Callable[..., Any]] = {}


def register(name: str, factory: Callable[..., Any]) -> None:
  """Adds ``factory(num_classes=..., dtype=..., bn_groups=...) -> nn.Module`` as ``name``."""
  _REGISTRY[name] = factory


def names() -> list[str]:
  """The registered model names, in registration order."""
  return list(_REGISTRY)


def create(name: str, num_classes: int = 100, *, dtype: Any = jnp.float32,
           bn_groups: int = 1, materialize_residuals: bool = False):
  """Builds the zoo model ``name`` (an unbound Flax module).

  ``materialize_residuals`` is passed to the models that have residual blocks and ignored
  by the others (VGG, ShuffleNets), whose results it could not change either.
  """
  if name not in _REGISTRY:
    raise KdjaxError(f'unknown model {name!r}; expected one of: {", ".join(names())}')
  factory = _REGISTRY[name]
  kwargs = dict(num_classes=num_classes, dtype=dtype, bn_groups=bn_groups)
  if 'materialize_residuals' in inspect.signature(factory).parameters:
    kwargs['materialize_residuals'] = materialize_residuals
  return factory(**kwargs)


# Importing the families registers their models (order = mdistiller's listing).
from kdjax.models import resnet  # noqa: E402,F401
from kdjax.models import resnetv2  # noqa: E402,F401
from kdjax.models import wrn  # noqa: E402,F401
from kdjax.models import vgg  # noqa: E402,F401
from kdjax.models import mobilenetv2  # noqa: E402,F401
from kdjax.models import shufflenetv1  # noqa: E402,F401
from kdjax.models import shufflenetv2  # noqa: E402,F401

__all__ = ['CIFAR_IMAGE_SHAPE', 'ModelOutput', 'create', 'names', 'output_shapes', 'register',
           'variable_shapes']
