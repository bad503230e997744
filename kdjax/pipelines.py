"""What ``kdjax.main`` runs for a config: the training run and the summary it prints."""

from __future__ import annotations

import os

import ml_collections

from kdjax import config as config_lib
from kdjax import methods
from kdjax.train.loop import train_and_evaluate


def summary_table(rows: list[tuple[str, str, object]]) -> str:
  """A small aligned table of (role, model, top-1) rows."""
  lines = [('role', 'model', 'top-1 (%)')] + [
      (r, m, f'{a:.2f}' if isinstance(a, float) else str(a)) for r, m, a in rows]
  widths = [max(len(line[i]) for line in lines) for i in range(3)]
  return '\n'.join('  '.join(c.ljust(w) for c, w in zip(line, widths)) for line in lines)


def teacher_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The vanilla run that trains ``config``'s teacher on the same data and recipe."""
  teacher = ml_collections.ConfigDict(config.to_dict())
  teacher.method = 'vanilla'
  teacher.model = config.teacher.model
  teacher.num_epochs = config.teacher.num_epochs or config.num_epochs
  teacher.teacher.train_if_missing = False
  teacher.trajectory.stages = config.teacher.trajectory_stages
  return teacher


def ensure_teacher(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Trains the teacher into ``workdir/teacher`` when the config asks for that.

  Only when ``config.teacher.checkpoint`` is unset and ``config.teacher.train_if_missing``
  (the digits presets); a finished teacher there is reused, an unfinished one resumed. A
  checkpoint that is named is never replaced by a newly trained teacher.
  """
  if not methods.uses_teacher(config.method) or config.teacher.checkpoint is not None:
    return
  config_lib.validate(config)  # the student run's mistakes surface before teacher training
  teacher_dir = os.path.join(workdir, 'teacher')
  results = train_and_evaluate(teacher_config(config), teacher_dir)
  if 'stopped_by_signal' in results:
    raise Interrupted(results['stopped_by_signal'])
  config.teacher.checkpoint = teacher_dir


class Interrupted(Exception):
  """A signal stopped a stage of a pipeline; its checkpoint is saved."""


def sftn_distill_config(config: ml_collections.ConfigDict,
                        teacher_checkpoint) -> ml_collections.ConfigDict:
  """The ``config.sftn.distill`` run of SFTN ``config``'s student from a teacher.

  Same data and recipe; the student ``config.sftn.student`` with lr ``sftn.student_lr``.
  Without ``teacher_checkpoint`` the teacher is a vanilla ``config.model`` trained first
  for ``config.num_epochs`` (the standard teacher SFTN is compared with).
  """
  c = ml_collections.ConfigDict(config.to_dict())
  c.method, c.model = config.sftn.distill, config.sftn.student
  c.optimizer.lr = config.sftn.student_lr
  c.teacher.model, c.teacher.checkpoint = config.model, teacher_checkpoint
  c.teacher.train_if_missing = teacher_checkpoint is None
  c.teacher.num_epochs = config.num_epochs
  return c


def sftn_pipeline(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """SFTN: the teacher into ``workdir``; with ``config.sftn.distill`` the student from it into
  ``workdir/student``; with ``compare_standard`` the same from a vanilla teacher into
  ``workdir/standard`` (its teacher in ``workdir/standard/teacher``). Prints one table of
  last-epoch top-1 (the teachers' last epoch is what is distilled)."""
  c = config.sftn
  if c.distill:  # the distillation config's mistakes surface before any training
    config_lib.validate(sftn_distill_config(config, workdir))
  results = train_and_evaluate(config, workdir)
  if 'stopped_by_signal' in results:
    return results
  last = results['last_epoch'] or {}
  rows = [(label, config.model if net == 'teacher' else c.student, last[net]['top1'])
          for net, label in results['net_labels'].items() if net in last]
  if c.distill:
    runs = [('SFTN', workdir, os.path.join(workdir, 'student'))]
    if c.compare_standard:
      runs.append(('standard', None, os.path.join(workdir, 'standard')))
    for kind, checkpoint, student_dir in runs:
      distill = sftn_distill_config(config, checkpoint)
      try:
        ensure_teacher(distill, student_dir)
      except Interrupted:
        return {'stopped_by_signal': True}
      student = train_and_evaluate(distill, student_dir)
      if 'stopped_by_signal' in student:
        return student
      if kind == 'standard':
        rows.append(('standard teacher (vanilla)', config.model, student['teacher_top1']))
      rows.append((f'{c.distill} student from the {kind} teacher', c.student,
                   student['last_top1']))
      results[f'{kind}_student'] = student
  print(summary_table(rows))
  return results


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains ``config`` into ``workdir`` (its teacher first if needed) and prints a summary."""
  if config.method == 'sftn':
    return sftn_pipeline(config, workdir)
  try:
    ensure_teacher(config, workdir)
  except Interrupted:
    return {'stopped_by_signal': True}
  results = train_and_evaluate(config, workdir)
  if 'stopped_by_signal' in results:
    return results
  rows = []
  if results.get('teacher_top1') is not None:
    rows.append(('teacher', config.teacher.model, results['teacher_top1']))
  for net, label in list(results['net_labels'].items())[1:] if results['last_epoch'] else []:
    rows.append((label, '', results['last_epoch'][net]['top1']))
  runs = [(config.method, results)]
  for name in config.baselines:
    baseline = train_and_evaluate(baseline_config(config, name), os.path.join(workdir, name))
    if 'stopped_by_signal' in baseline:
      return baseline
    results[f'{name}_baseline'] = baseline
    runs.insert(-1, (name, baseline))
  for method, r in runs:
    if r['best_epoch'] is None:  # stopped (config.max_steps) before the first evaluation
      rows.append((f'{method} student (no epoch finished)', config.model, '-'))
      continue
    rows += [(f'{method} student (best epoch {r["best_epoch"]})', config.model, r['best_top1']),
             (f'{method} student (last epoch)', config.model, r['last_top1'])]
  print(summary_table(rows))
  return results


def baseline_config(config: ml_collections.ConfigDict, method: str) -> ml_collections.ConfigDict:
  """``config`` with ``method`` instead: same pair, teacher, data (and held-out set), recipe."""
  c = ml_collections.ConfigDict(config.to_dict())
  c.method, c.baselines = method, ()
  return c
