"""Distillation methods: a registry from name to builder (mdistiller's ``distiller_dict``).

``build(config, num_classes=..., dtype=..., bn_groups=..., optimizer_factory=...)`` returns
a :class:`~kdjax.methods.base.Method`.
"""

from __future__ import annotations

from kdjax.errors import KdjaxError
from kdjax.methods import (at, crd, dkd, fitnet, kd, ofd, pkt, reviewkd, rkd, sftn, skd, slkd,
                           sp, vanilla)
from kdjax.methods.base import Batch, Method, NetRunner, StepContext

# name -> module with ``build(config, **kwargs)`` and, if it has hyper-parameters,
# ``default_config()`` (the block ``config.<name>``).
_METHODS = {
    'vanilla': vanilla, 'kd': kd, 'slkd': slkd, 'sftn': sftn, 'dkd': dkd, 'fitnet': fitnet,
    'at': at, 'sp': sp, 'rkd': rkd, 'pkt': pkt, 'crd': crd, 'reviewkd': reviewkd, 'ofd': ofd,
    'skd': skd,
}

_WITHOUT_TEACHER = ('vanilla', 'sftn')

# The learning net a finished run delivers as a teacher (kdjax.teachers reads it from the
# run's workdir); 'student' unless listed.
_TRAINED_NET = {'sftn': 'teacher'}


def default_configs() -> dict:
  """``{method: its config block}`` for every method that has hyper-parameters."""
  return {name: module.default_config() for name, module in _METHODS.items()
          if hasattr(module, 'default_config')}


def names() -> list[str]:
  return list(_METHODS)


def uses_teacher(name: str) -> bool:
  """Whether method ``name`` distils from a frozen pre-trained teacher."""
  return name not in _WITHOUT_TEACHER


def trained_net(name: str) -> str:
  """The net of a run of method ``name`` that serves as a teacher (``'student'``; SFTN's
  ``'teacher'``)."""
  return _TRAINED_NET.get(name, 'student')


def build(config, **kwargs) -> Method:
  """Builds ``config.method``; raises :class:`KdjaxError` for an unknown name."""
  if config.method not in _METHODS:
    raise KdjaxError(f'unknown method {config.method!r} (config.method); expected one of: '
                     f'{", ".join(names())}')
  return _METHODS[config.method].build(config, **kwargs)


__all__ = ['Batch', 'Method', 'NetRunner', 'StepContext', 'build', 'names']
