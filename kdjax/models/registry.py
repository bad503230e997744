"""The model registry: each zoo's names and factories, filled by the family modules.

``kdjax.models`` re-exports :func:`register`, :func:`names` and :func:`create` and imports
the families, which call :func:`register` from here (so no family imports its package).
"""

from __future__ import annotations

import inspect
from typing import Any, Callable

import jax.numpy as jnp

from kdjax.errors import KdjaxError
from kdjax.models.base import CIFAR_IMAGE_SHAPE

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
