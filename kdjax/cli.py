"""What kdjax's commands say about themselves: their name as typed, the methods and presets,
and a run's config as a diff against its method's defaults (``kdjax --dry-run``).

It sits beside the ladder: it reads the experiment files (``kdjax/experiments``) and the
config, and imports nothing of the ladder above them.
"""

from __future__ import annotations

import importlib
import importlib.resources
import os
import sys
import textwrap

import ml_collections

from kdjax.errors import KdjaxError


def invoked_as(module: str) -> str:
  """The command's name as the user typed it: ``kdjax-report`` for the console script,
  ``python -m kdjax.report`` for a module of kdjax run with ``-m`` (``module``, the
  command's module, when ``sys.argv[0]`` says neither)."""
  argv0 = sys.argv[0] if sys.argv and sys.argv[0] else ''
  if not argv0.endswith('.py'):
    return os.path.basename(argv0) or f'python -m {module}'
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  parts = os.path.relpath(os.path.abspath(argv0), root)[:-3].split(os.sep)
  if parts[0] != 'kdjax':
    return f'python -m {module}'
  return 'python -m ' + '.'.join(parts[:-1] if parts[-1] == '__main__' else parts)


def method_names() -> list:
  """The methods that have an experiment file, ``vanilla`` first."""
  names = sorted(p.name[:-3] for p in importlib.resources.files('kdjax.experiments').iterdir()
                 if p.name.endswith('.py') and not p.name.startswith('_'))
  return sorted(names, key=lambda name: name != 'vanilla')


def experiment(method: str):
  """The experiment module of ``method`` (``kdjax.experiments.<method>``)."""
  return importlib.import_module(f'kdjax.experiments.{method}')


def _presets(method: str) -> str:
  """``method``'s presets: those of the shared ones its ``get_config`` accepts, and its
  variants (``VARIANTS``), which combine with a preset (``slkd:res32x4_shuv2,official``)."""
  from kdjax import config as config_lib  # pylint: disable=import-outside-toplevel
  module = experiment(method)
  if method == 'vanilla':
    return 'digits, or a zoo model name (resnet32x4 by default)'
  accepted = []
  for preset in ('digits', *config_lib.PAIRS, *config_lib.IMAGENET_PAIRS):
    try:
      module.get_config(preset)
      accepted.append(preset)
    except KdjaxError:
      continue
  cifar = [p for p in accepted if p in config_lib.PAIRS]
  groups = [p for p in accepted if p not in cifar]
  if cifar:
    groups.insert(1, 'every CIFAR-100 pair*' if len(cifar) == len(config_lib.PAIRS)
                  else ', '.join(cifar))
  variants = getattr(module, 'VARIANTS', ())
  return ', '.join(groups) + (f'; variants: {", ".join(variants)}' if variants else '')


def method_list() -> str:
  """The methods and their presets, as ``kdjax --list`` prints them."""
  from kdjax import config as config_lib  # pylint: disable=import-outside-toplevel
  names = method_names()
  width = max(map(len, names))
  lines = ['methods and their presets (kdjax --config METHOD[:PRESET[,VARIANT]]):']
  lines += [f'  {name.ljust(width)}  {_presets(name)}' for name in names]
  pairs = textwrap.wrap(f'* the CIFAR-100 pairs: {", ".join(config_lib.PAIRS)} (the first '
                        f'is the default). digits is embedded: no download.', 96)
  return '\n'.join(lines + pairs[:1] + ['    ' + line for line in pairs[1:]])


def _flat(config: ml_collections.ConfigDict, prefix: str = '') -> dict:
  out = {}
  for key, value in config.items():
    if isinstance(value, ml_collections.ConfigDict):
      out.update(_flat(value, f'{prefix}{key}.'))
    else:
      out[f'{prefix}{key}'] = value
  return out


def unread_blocks(config: ml_collections.ConfigDict) -> tuple:
  """The top-level blocks of ``config`` that a run of its method never reads: ``teacher``
  for a method without one; a vanilla run's (a plan's teacher) distillation blocks,
  inherited from the command's method."""
  from kdjax import methods  # pylint: disable=import-outside-toplevel
  unread = (set(method_names()) - {config.method} if config.method == methods.SUPERVISED
            else set())
  if not methods.info(config.method).uses_teacher:
    unread.add('teacher')
  return tuple(sorted(unread))


def config_diff(config: ml_collections.ConfigDict) -> list:
  """``field: default -> value`` for every field of ``config`` that differs from its
  method's defaults (``experiments/<method>.py`` without a preset), but those a run of its
  method never reads (:func:`unread_blocks`)."""
  unread = unread_blocks(config)
  defaults = _flat(experiment(config.method).get_config())
  return [f'{key}: {repr(defaults[key]) if key in defaults else "(not set)"} -> {value!r}'
          for key, value in sorted(_flat(config).items())
          if (key not in defaults or defaults[key] != value)
          and key.split('.')[0] not in unread]
