"""Distillation methods: a registry from name to module (mdistiller's ``distiller_dict``).

Every method module states its facts in ``INFO`` (:class:`~kdjax.methods.base.MethodInfo`:
whether it uses a teacher, which net a run delivers, the inputs its builder needs, the runs
that follow it, its report figures) and builds with ``build(config, inputs)``
(:class:`~kdjax.methods.base.BuildInputs`) into a :class:`~kdjax.methods.base.Method`. The
plan, the loop and the report read the facts through :func:`info`; no method name is tested
outside this package. The registry's order is the order of rows in reports.
"""

from __future__ import annotations

import math

import ml_collections

from kdjax import models
from kdjax.errors import KdjaxError
from kdjax.methods import (at, crd, dkd, fitnet, kd, ofd, pkt, reviewkd, rkd, sftn, skd, slkd,
                           sp, vanilla)
from kdjax.methods.base import (Batch, BuildInputs, FollowUp, FrozenInputs, LearningNets,
                                Method, MethodInfo, StepContext)

# name -> module with ``INFO``, ``build(config, inputs)`` and, if it has hyper-parameters,
# ``default_config()`` (the block ``config.<name>``).
_METHODS = {
    'vanilla': vanilla, 'kd': kd, 'dkd': dkd, 'fitnet': fitnet, 'at': at, 'sp': sp, 'rkd': rkd,
    'pkt': pkt, 'crd': crd, 'reviewkd': reviewkd, 'ofd': ofd, 'sftn': sftn, 'slkd': slkd,
    'skd': skd,
}

# The method that trains one net on the labels alone: teachers and scratch baselines.
SUPERVISED = 'vanilla'


def default_configs() -> dict:
  """``{method: its config block}`` for every method that has hyper-parameters."""
  return {name: module.default_config() for name, module in _METHODS.items()
          if hasattr(module, 'default_config')}


def names() -> list[str]:
  """The registered methods, in report order."""
  return list(_METHODS)


def info(name: str) -> MethodInfo:
  """The facts of method ``name``; raises :class:`KdjaxError` for an unknown name."""
  if name not in _METHODS:
    raise KdjaxError(f'unknown method {name!r} (config.method); expected one of: '
                     f'{", ".join(names())}')
  return _METHODS[name].INFO


def check_config(config: ml_collections.ConfigDict) -> None:
  """Raises :class:`KdjaxError` for a mistake in the method fields: ``config.method``, the
  softmax temperatures of every method block (they divide logits: > 0),
  ``config.baselines``, and the method's own block (its ``INFO.check``)."""
  method = info(config.method)
  for block in default_configs():
    for field, value in config[block].items():
      if field.endswith('temperature') and not (math.isfinite(value) and value > 0):
        raise KdjaxError(f'config.{block}.{field} must be positive, got {value}')
  distillers = [n for n in names() if info(n).uses_teacher]
  for name in config.baselines:
    if name not in distillers:
      raise KdjaxError(f'unknown baseline {name!r} in config.baselines; expected '
                       f'distillation methods of: {", ".join(distillers)}')
  method.check(config)


def build(config: ml_collections.ConfigDict, inputs: BuildInputs) -> Method:
  """Builds ``config.method`` from the run's ``inputs``, after :func:`check_user_nets`."""
  check_user_nets(config, inputs)
  return _METHODS[config.method].build(config, inputs)


def check_user_nets(config: ml_collections.ConfigDict, inputs: BuildInputs) -> None:
  """Refuses, with one line, a user's net (``module.path:factory``, :mod:`kdjax.models.user`)
  of the run that cannot take its images or lacks an output the method reads
  (``INFO.net_outputs``)."""
  method = info(config.method)
  specs = [config.model] + ([config.teacher.model] if method.uses_teacher else [])
  for spec in filter(models.user.is_spec, specs):
    models.user.check_outputs(inputs.create_net(spec), spec, inputs.image_shape,
                              inputs.num_classes, method.net_outputs, method.label)


__all__ = ['Batch', 'BuildInputs', 'FollowUp', 'FrozenInputs', 'LearningNets', 'Method',
           'MethodInfo', 'SUPERVISED', 'StepContext', 'build', 'check_config', 'check_user_nets',
           'default_configs', 'info', 'names']
