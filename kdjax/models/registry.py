"""The model registry: each zoo's names and factories, filled by the family modules.

``kdjax.models`` re-exports :func:`register`, :func:`names`, :func:`check` and :func:`create`
and imports the families, which call :func:`register` from here (so no family imports its
package). A name ``module.path:factory`` is the user's own net (:mod:`kdjax.models.user`),
in no zoo.
"""

from __future__ import annotations

from typing import Any, Callable

import jax.numpy as jnp

from kdjax.errors import KdjaxError
from kdjax.models import user
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


def check(name: str, zoo: str, field: str) -> None:
  """Raises one line unless ``name`` (the value of config ``field``) is a model of ``zoo`` or a
  user factory ``module.path:factory`` that imports."""
  if user.is_spec(name):
    user.factory(name, field)
  elif name not in _zoo(zoo):
    raise KdjaxError(f'unknown model {name!r} in the {zoo} zoo ({field}); expected one of: '
                     f'{", ".join(_zoo(zoo))}, or your own net as module.path:factory')


def create(name: str, num_classes: int = 100, *, zoo: str = 'cifar', dtype: Any = jnp.float32,
           bn_groups: int = 1, materialize_residuals: bool = False):
  """Builds the model ``name`` of ``zoo`` (an unbound Flax module), or the user's net
  ``module.path:factory`` (:func:`kdjax.models.user.create`; ``zoo`` unused).

  ``materialize_residuals`` is passed to the models that have residual blocks and ignored
  by the others (VGG, ShuffleNets, MobileNetV1), whose results it could not change either.
  """
  kwargs = dict(num_classes=num_classes, dtype=dtype, bn_groups=bn_groups,
                materialize_residuals=materialize_residuals)
  if user.is_spec(name):
    return user.create(name, kwargs)
  registry = _zoo(zoo)
  if name not in registry:
    raise KdjaxError(f'unknown model {name!r} in the {zoo} zoo; expected one of: '
                     f'{", ".join(registry)}')
  return user.call_factory(registry[name], kwargs)
