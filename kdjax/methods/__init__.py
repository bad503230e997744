"""Distillation methods: a registry from name to builder (mdistiller's ``distiller_dict``).

``build(config, num_classes=..., dtype=..., bn_groups=..., optimizer_factory=...)`` returns
a :class:`~kdjax.methods.base.Method`.
"""

from __future__ import annotations

from kdjax.errors import KdjaxError
from kdjax.methods import kd, slkd, vanilla
from kdjax.methods.base import Batch, Method, NetRunner, StepContext

_BUILDERS = {
    'vanilla': vanilla.build,
    'kd': kd.build,
    'slkd': slkd.build,
}


_WITHOUT_TEACHER = ('vanilla',)


def names() -> list[str]:
  return list(_BUILDERS)


def uses_teacher(name: str) -> bool:
  """Whether method ``name`` distils from a frozen pre-trained teacher."""
  return name not in _WITHOUT_TEACHER


def build(config, **kwargs) -> Method:
  """Builds ``config.method``; raises :class:`KdjaxError` for an unknown name."""
  if config.method not in _BUILDERS:
    raise KdjaxError(f'unknown method {config.method!r} (config.method); expected one of: '
                     f'{", ".join(names())}')
  return _BUILDERS[config.method](config, **kwargs)


__all__ = ['Batch', 'Method', 'NetRunner', 'StepContext', 'build', 'names']
