"""Which config fields change a run's results, and how two runs' configs differ in them.

Two configs that agree on every field outside :data:`NEUTRAL` train the same nets to the
same numbers (the data order, the initialisation and the updates are functions of the
config alone). The fields in :data:`NEUTRAL` change how a run is carried out or reported,
never what it computes: logging, evaluation and checkpoint cadence, an early stop for tests,
the platform and worker settings, where the teacher-logit cache is kept and how it is built,
the runs planned beside this one, the permission to use a teacher of other data.
``kdjax.report`` groups runs with this module (one row:
configs that differ in ``seed`` alone); ``kdjax.plan`` refuses to continue a workdir under a
config that differs from its ``config.json`` (:func:`recorded_changes`) outside
:data:`NEUTRAL` and the fields a user allows to change (``--allow_change``).
"""

from __future__ import annotations

from typing import Any, Mapping

# Dotted names; a block's name covers every field below it.
NEUTRAL = (
    'log_every_steps', 'checkpoint_every_steps', 'keep_checkpoints', 'max_steps',
    'eval_batch_size', 'restart', 'distributed', 'platform', 'profile_steps',
    'reference_top1', 'baselines',
    'data.workers', 'data.download',
    'teacher.cache_placement', 'teacher.cache_batch', 'teacher.cache_chunk_images',
    'teacher.other_data',
)


def flatten(config: Mapping[str, Any], prefix: str = '') -> dict:
  """``{'optimizer': {'lr': 0.1}}`` -> ``{'optimizer.lr': 0.1}`` (lists become tuples)."""
  flat = {}
  for key, value in config.items():
    name = f'{prefix}{key}'
    if isinstance(value, Mapping):
      flat.update(flatten(value, f'{name}.'))
    else:
      flat[name] = tuple(value) if isinstance(value, list) else value
  return flat


def covered(field: str, names) -> bool:
  """Whether ``field`` (dotted) is, or lies inside, one of ``names`` (fields or blocks)."""
  return any(field == n or field.startswith(f'{n}.') for n in names)


def is_neutral(field: str) -> bool:
  """Whether ``field`` (dotted) is, or lies inside, one of :data:`NEUTRAL`."""
  return covered(field, NEUTRAL)


def result_fields(config: Mapping[str, Any], ignore: tuple = ()) -> dict:
  """The flattened fields of ``config`` that change results, less those in ``ignore``."""
  return {k: v for k, v in flatten(config).items()
          if not is_neutral(k) and k not in ignore}


def differing(a: Mapping[str, Any], b: Mapping[str, Any], ignore: tuple = ()) -> list:
  """``[(field, value in a, value in b)]`` for every result field in which two configs
  differ, sorted by field; a field one of them lacks reads ``None`` there."""
  fa, fb = result_fields(a, ignore), result_fields(b, ignore)
  return [(k, fa.get(k), fb.get(k)) for k in sorted(fa.keys() | fb.keys())
          if fa.get(k) != fb.get(k)]


def recorded_changes(recorded: Mapping[str, Any], config: Mapping[str, Any]) -> list:
  """``[(field, recorded value, value in config)]``: :func:`differing` over the fields both
  have. Both are a config's JSON form (``json.loads(config.to_json_best_effort())``, a
  workdir's ``config.json``), so tuples and floats compare as they read back. A field only
  one of them has was added to kdjax or removed from it since the record was written: it is
  not compared, so a workdir of an older kdjax is continued as it was."""
  fr, fc = flatten(recorded), flatten(config)
  return differing(recorded, config, ignore=tuple(fr.keys() ^ fc.keys()))
