"""The run plan: what ``python -m kdjax.main`` runs for a config, as an explicit list.

    plan = make_plan(config, workdir, num_seeds=None)   # validated, nothing written yet
    print(describe(plan))                               # what --dry-run prints
    results = execute(plan)                             # each run through train_and_evaluate

A plan is the ordered tuple of :class:`Run` (role, config, workdir) that one command
asks for:

1. the teacher, when the method distils from one, ``config.teacher.checkpoint`` is unset and
   ``config.teacher.train_if_missing`` (the digits presets): a vanilla run of
   ``config.teacher.model`` into ``WORKDIR/teacher``, trained once and shared by every seed;
2. per seed (``--seeds N``: seeds ``0..N-1`` into ``WORKDIR/seed_<i>``; else the config's
   seed into ``WORKDIR``): the main run, then ``config.baselines`` (each into
   ``<run>/<method>``, same pair, teacher and data), then the runs the method adds after
   itself (its ``INFO.follow_ups``: SFTN's students), each preceded by the teacher it
   trains first, if any.

Every config of the plan is validated (:func:`validate`: each block by the module that owns
it), and every workdir checked, before anything runs. :func:`execute` runs them in order
through :func:`~kdjax.train.loop.train_and_evaluate`; a run whose ``results.json`` says it
finished (the same number of epochs) is skipped, so a command can be re-run after a kill, or
with a larger N, without losing finished work. A signal stops the plan with the
:class:`~kdjax.train.loop.Interrupted` of the run it stopped. At the end a table of every
run's top-1 is printed.

One config per workdir: a run that would continue a workdir (resume its checkpoint, or skip
it as finished) under a config that differs from the workdir's ``config.json`` in a field
that changes results (:mod:`kdjax.run_fields`; e.g. ``optimizer.lr``, ``model``,
``num_epochs``) is refused by :func:`make_plan`, every differing field named with both
values, unless the plan's ``allow_change`` names the field (``--allow_change``); the
training loop then records the change in ``config_changes.jsonl`` (``config.json`` is kept;
:func:`kdjax.jsonio.read_run_config_or_why` reads the two together).
"""

from __future__ import annotations

import json
import os
from typing import NamedTuple, Optional

import ml_collections

from kdjax import cli, data, distributed, jsonio, methods, models, paths, run_fields, teachers
from kdjax.configdict import derive
from kdjax.errors import KdjaxError
from kdjax.console import say, warn
from kdjax.train import trace as trace_lib
from kdjax.train import writers
from kdjax.train.loop import Interrupted, train_and_evaluate
from kdjax.train.loop import check_config as train_checks
from kdjax.workdirs import check_workdir


__all__ = ['Interrupted', 'Run', 'describe', 'execute', 'make_plan', 'run_state',
           'seed_workdir', 'summary_table', 'teacher_config', 'validate']


class Run(NamedTuple):
  """One run of a plan: what it is (its line in the plan and the summary), its config, its
  workdir, and the config fields that may differ from the workdir's ``config.json``."""
  role: str
  config: ml_collections.ConfigDict
  workdir: str
  allow_change: tuple = ()


def teacher_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The vanilla run that trains ``config``'s teacher on the same data and recipe."""
  return derive(config, {
      'method': methods.SUPERVISED, 'model': config.teacher.model,
      'num_epochs': config.teacher.num_epochs or config.num_epochs,
      'teacher.train_if_missing': False,
      'trajectory.stages': config.teacher.trajectory_stages})


def _trains_teacher(config: ml_collections.ConfigDict) -> bool:
  return (methods.info(config.method).uses_teacher and config.teacher.checkpoint is None
          and config.teacher.train_if_missing)


def _with_teacher(role: str, config: ml_collections.ConfigDict, workdir: str) -> list:
  """``config``'s run into ``workdir``, preceded by the teacher it trains first (if any)."""
  if not _trains_teacher(config):
    return [Run(role, config, workdir)]
  teacher_dir = os.path.join(workdir, 'teacher')
  return [Run('teacher', teacher_config(config), teacher_dir),
          Run(role, derive(config, {'teacher.checkpoint': teacher_dir}), workdir)]


def _runs_of(config: ml_collections.ConfigDict, workdir: str, prefix: str) -> list:
  """The main run of ``config`` into ``workdir``, its baselines and its follow-ups."""
  info = methods.info(config.method)
  runs = [Run(f'{prefix}{config.method} {info.trained_net}', config, workdir)]
  for name in config.baselines:
    baseline = derive(config, {'method': name, 'baselines': ()})
    runs.append(Run(f'{prefix}{name} {methods.info(name).trained_net}', baseline,
                           os.path.join(workdir, name)))
  for follow_up in info.follow_ups(config, workdir):
    runs += _with_teacher(prefix + follow_up.role, follow_up.config, follow_up.workdir)
  return runs


def seed_workdir(workdir: str, seed: int) -> str:
  """``DIR`` -> ``DIR/seed_<seed>``."""
  return os.path.join(workdir, f'seed_{seed}')


def validate(config: ml_collections.ConfigDict, *, need_data_dir: bool = True) -> None:
  """Checks every field of one run's ``config``, each block by the module that owns it;
  raises :class:`KdjaxError` on the first mistake. :func:`make_plan` runs it once for every
  run of a plan, before any of them starts; ``need_data_dir=False`` (``--dry-run --trace``,
  which reads no data) lets a host dataset's ``config.data.data_dir`` be unset."""
  methods.check_config(config)
  nets = (config.model,) + ((config.teacher.model,) if methods.info(config.method).uses_teacher
                            else ())
  models.check_config(config, nets)
  data.check_config(config, need_data_dir=need_data_dir)
  teachers.check_config(config)
  train_checks(config)
  distributed.normalize_mode(config.get('distributed', 'auto'))


def make_plan(config: ml_collections.ConfigDict, workdir: str,
              num_seeds: Optional[int] = None, *, need_data_dir: bool = True,
              allow_change: tuple = (), refuse_changes: bool = True) -> tuple:
  """The runs ``config`` asks for (see the module docstring), each config validated
  (``need_data_dir``: see :func:`validate`) and each workdir checked.

  Raises :class:`KdjaxError` for the first mistake in any of them, before anything runs; with
  ``refuse_changes`` (not for ``--dry-run``, which shows them), also for every run that would
  continue a workdir under changed result fields outside ``allow_change`` (dotted fields or
  blocks), all of them in one line.
  """
  if num_seeds is not None and num_seeds < 1:
    raise KdjaxError(f'--seeds must be at least 1, got {num_seeds}')
  _check_allowed(config, allow_change)
  runs = []
  if _trains_teacher(config):  # once, shared by every seed
    teacher_dir = os.path.join(workdir, 'teacher')
    runs.append(Run('teacher', teacher_config(config), teacher_dir))
    config = derive(config, {'teacher.checkpoint': teacher_dir})
  if num_seeds is None:
    runs += _runs_of(config, workdir, '')
  else:
    for seed in range(num_seeds):
      runs += _runs_of(derive(config, {'seed': seed}), seed_workdir(workdir, seed),
                       f'seed {seed}: ')
  runs = [run._replace(allow_change=tuple(allow_change)) for run in runs]
  for run in runs:
    validate(run.config, need_data_dir=need_data_dir)
    check_workdir(run.workdir)
  if refuse_changes:
    _refuse_changes(runs)
  return tuple(runs)


def _check_allowed(config: ml_collections.ConfigDict, allow_change: tuple) -> None:
  """Raises :class:`KdjaxError` for a name in ``allow_change`` that is no field or block of
  ``config``."""
  fields = run_fields.flatten(json.loads(config.to_json_best_effort()))
  unknown = [n for n in allow_change if not any(run_fields.covered(f, (n,)) for f in fields)]
  if unknown:
    raise KdjaxError(f'--allow_change names no field of the config: {", ".join(unknown)}; '
                     f'give dotted config fields or blocks, e.g. '
                     f'--allow_change=optimizer.lr,num_epochs')


def _refuse_changes(runs: list) -> None:
  """One :class:`KdjaxError` line for every run that would continue its workdir under result
  fields that differ from its ``config.json`` and are not allowed; a warning for a workdir
  with checkpoints but no readable ``config.json`` (nothing to compare with)."""
  refused = []
  for run in runs:
    state, changes = _workdir_state(run)
    if changes is None:
      warn(f'{run.workdir} holds a run ({state}) but no readable config.json (an older '
           f'kdjax?): its config cannot be compared with this command\'s, which it is taken '
           f'for (a resume records it as its config.json)')
    elif changes[0]:
      refused.append((run, changes[0]))
  if not refused:
    return
  lines = [f'workdir {run.workdir}: config differs from its config.json in '
           + ', '.join(f'{f} ({_shown(old)} -> {_shown(new)})' for f, old, new in diffs)
           for run, diffs in refused]
  names = sorted({f for _, diffs in refused for f, _, _ in diffs})
  it = 'it' if len(refused) == 1 else 'them'
  raise KdjaxError(f'{"; ".join(lines)}; choose another --workdir, or '
                   f'--allow_change={",".join(names)} to continue {it} under the new values')


def _shown(value) -> str:
  """A config value in a message: a string as it is, anything else as JSON."""
  return value if isinstance(value, str) and value else json.dumps(value)


def describe(plan: tuple, trace: bool = False) -> str:
  """The plan as lines: ``i. role: method model [<- teacher] -> workdir (state)``, each
  followed by its config's differences from its method's defaults
  (:func:`kdjax.cli.config_diff`) and, with ``trace``, by its step traced on abstract inputs
  (:mod:`kdjax.train.trace`: parameters, GFLOP per image, compiled memory per device)."""
  lines = []
  for i, run in enumerate(plan, 1):
    c = run.config
    teacher = (f' <- {c.teacher.model} {c.teacher.checkpoint}'
               if methods.info(c.method).uses_teacher else '')
    lines.append(f'{i}. {run.role}: {c.method} {c.model}{teacher}, {c.num_epochs} epochs, '
                 f'seed {c.seed} -> {run.workdir} ({run_state(run)})')
    lines += [f'     {line}' for line in cli.config_diff(c)]
    if trace:
      lines.append('     traced step: ' + trace_lib.describe(trace_lib.trace_run(c, compile=True)))
  return '\n'.join(lines)


def run_state(run: Run) -> str:
  """``new``, ``resumable from step N`` (a checkpoint), ``finished`` (:func:`execute` skips
  it), or ``refused (field: old -> new, ...)`` (:func:`make_plan` refuses it); a run that
  continues its workdir under allowed changes, or without a ``config.json`` to compare
  with, says so. Read from the workdir's files, nothing opened for writing."""
  state, changes = _workdir_state(run)
  if changes is None:
    return state if state == 'new' else f'{state}, no config.json to compare with'
  refused, allowed = changes
  if refused:
    return 'refused (' + ', '.join(f'{f}: {_shown(a)} -> {_shown(b)}' for f, a, b in refused) + ')'
  if allowed:
    what = 'allowed changes' if state.startswith('resumable') else 'no step left to train for'
    return f'{state}, {what}: ' + ', '.join(f'{f} ({_shown(a)} -> {_shown(b)})'
                                            for f, a, b in allowed)
  return state


def _workdir_state(run: Run) -> tuple:
  """``(state, changes)``: ``state`` is ``new``, ``finished`` or ``resumable from step N``;
  ``changes`` is ``([refused], [allowed])`` (each ``(field, recorded, new)``,
  :func:`kdjax.run_fields.recorded_changes`) for a run that would continue its workdir,
  ``([], [])`` for a new one, None for one whose workdir has no readable config.json."""
  if _finished_results(run) is not None:
    state = 'finished'
  else:
    folder = paths.path(run.workdir, '--workdir') / 'checkpoints'
    steps = [int(p.name) for p in (folder.iterdir() if folder.is_dir() else ())
             if p.name.isdigit()]
    state = f'resumable from step {max(steps)}' if steps else 'new'
  if state == 'new':  # the run starts at step 0 (and writes its config.json then)
    return state, ([], [])
  recorded, _ = jsonio.read_run_config_or_why(run.workdir)
  if recorded is None:
    return state, None
  unread = cli.unread_blocks(run.config)  # e.g. a plan's teacher reads no kd.temperature
  changes = [c for c in run_fields.recorded_changes(
      recorded, json.loads(run.config.to_json_best_effort()))
             if not run_fields.covered(c[0], unread)]
  allowed = [c for c in changes if run_fields.covered(c[0], run.allow_change)]
  return state, ([c for c in changes if c not in allowed], allowed)


def _finished_results(run: Run) -> Optional[dict]:
  """``run``'s ``results.json`` if it says the run finished its ``num_epochs``."""
  results = jsonio.read_json(os.path.join(run.workdir, 'results.json'))
  if results and results.get('finished') and results.get('num_epochs') == run.config.num_epochs:
    return results
  return None


def execute(plan: tuple) -> list:
  """Runs the plan in order (finished runs skipped); returns each run's results; prints the
  summary table. A signal raises the stopped run's ``Interrupted`` (checkpoint saved)."""
  all_results = []
  for i, run in enumerate(plan, 1):
    where = f'[{i}/{len(plan)}] {run.role}: ' if len(plan) > 1 else ''
    results = _finished_results(run)
    if results is not None:
      say(f'{where}finished in {run.workdir}, skipped')
      _, changes = _workdir_state(run)
      if changes and changes[1]:
        warn(f'its results are those of its config.json: no step is left to train under '
             f'--allow_change={",".join(f for f, _, _ in changes[1])}')
    else:
      if where:
        say(f'{where}{run.workdir}')
      later = [r for r in plan[i:] if _finished_results(r) is None]
      with writers.later_in_plan(len(later), sum(r.config.num_epochs for r in later)):
        results = train_and_evaluate(run.config, run.workdir)
    all_results.append(results)
  print(summary_table(plan, all_results))
  return all_results


def _top1(value) -> str:
  return '-' if value is None else f'{value:.2f}'


def summary_table(plan: tuple, all_results: list) -> str:
  """An aligned table of every run's top-1 (%): a teacher's last epoch; a run's best and last
  epoch of its trained net, the last epoch of its other eval nets (SL-teachers, branches)."""
  rows = [('run', 'model', 'top-1 (%)')]
  for run, results in zip(plan, all_results):
    model = run.config.model
    last = results.get('last_epoch') or {}
    if run.role == 'teacher':
      rows.append((run.role, model, _top1(results.get('last_top1'))))
      continue
    if results.get('best_epoch') is None:  # stopped (config.max_steps) before an evaluation
      rows.append((f'{run.role} (no epoch finished)', model, '-'))
      continue
    rows += [(f'{run.role} (best epoch {results["best_epoch"]})', model,
              _top1(results['best_top1'])),
             (f'{run.role} (last epoch)', model, _top1(results['last_top1']))]
    labels = results.get('net_labels') or {}
    for net in list(labels)[1:]:
      rows.append((f'  {labels[net]}', '', _top1((last.get(net) or {}).get('top1'))))
  widths = [max(len(row[i]) for row in rows) for i in range(3)]
  return '\n'.join('  '.join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows)
