"""The model zoos of RepDistiller / mdistiller, layer for layer, in Flax linen.

    >>> from kdjax import models
    >>> model = models.create('resnet8x4', num_classes=100)
    >>> out = model.apply(variables, images_nhwc, train=False)
    >>> out.logits, out.features, out.preact_features, out.embedding

Two zoos, as in mdistiller: ``'cifar'`` (the default; names are ``cifar_model_dict``'s keys,
32x32 images) and ``'imagenet'`` (``imagenet_model_dict``'s ``ResNet18``, ``ResNet34``,
``ResNet50``, ``ResNet101`` and ``MobileNetV1``, 224x224 images), e.g.
``models.create('ResNet50', 1000, zoo='imagenet')``. The zoos share names (``ResNet18``,
``ResNet50``) for different networks, so the zoo is part of a model's identity.
:data:`IMAGE_SHAPES` gives each zoo's image shape.

Every model accepts ``dtype`` (the computation dtype; parameters stay float32) and
``bn_groups`` (BatchNorm statistics per group of the batch, see
:class:`kdjax.models.layers.BatchNorm`); models with residual blocks also
``materialize_residuals`` (:func:`kdjax.models.layers.materialize`, a CPU speed setting that
changes no result).
"""

from __future__ import annotations

import inspect
from typing import Any, Callable

import jax.numpy as jnp

from kdjax.errors import KdjaxError
from kdjax.models.base import CIFAR_IMAGE_SHAPE, ModelOutput, output_shapes, variable_shapes

# (H, W, C) of the images each zoo's models are built for; its keys are the zoos.
IMAGE_SHAPES = {'cifar': CIFAR_IMAGE_SHAPE, 'imagenet': (224, 224, 3)}

_REGISTRY: dict[str, dict[str, Callable[..., Any]]] = {zoo: {} for zoo in IMAGE_SHAPES}


def _zoo(zoo: str) -> dict[str, Callable[..., Any]]:
  if zoo not in _REGISTRY:
    raise KdjaxError(f'unknown model zoo {zoo!r}; expected one of: {", ".join(_REGISTRY)}')
  return _REGISTRY[zoo]


def register(name: str, factory: Callable[..., Any], zoo: str = 'cifar') -> None:
  """Adds ``factory(num_classes=..., dtype=..., bn_groups=...) -> nn.Module`` as ``name``."""
  _zoo(zoo)[name] = factory


def names(zoo: str = 'cifar') -> list[str]:
  """The model names registered in ``zoo``, in registration order."""
  return list(_zoo(zoo))


def create(name: str, num_classes: int = 100, *, zoo: str = 'cifar', dtype: Any = jnp.float32,
           bn_groups: int = 1, materialize_residuals: bool = False):
  """Builds the model ``name`` of ``zoo`` (an unbound Flax module).

  ``materialize_residuals`` is passed to the models that have residual blocks and ignored
  by the others (VGG, ShuffleNets, MobileNetV1), whose results it could not change either.
  """
  registry = _zoo(zoo)
  if name not in registry:
    raise KdjaxError(f'unknown model {name!r} in the {zoo} zoo; expected one of: '
                     f'{", ".join(registry)}')
  factory = registry[name]
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
from kdjax.models import imagenet_resnet  # noqa: E402,F401
from kdjax.models import mobilenetv1  # noqa: E402,F401

__all__ = ['CIFAR_IMAGE_SHAPE', 'IMAGE_SHAPES', 'ModelOutput', 'create', 'names', 'output_shapes',
           'register', 'variable_shapes']
