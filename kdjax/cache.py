"""Command line: ``python -m kdjax.cache --config experiments/<method>.py[:<preset>]``
(``kdjax-cache-teacher``) builds the teacher-logit caches (:mod:`kdjax.teachers.logit_cache`) of a
command's runs ahead of time, instead of training them.

    python -m kdjax.cache --config experiments/kd.py:res32x4_res8x4 \
        --config.teacher.checkpoint=mdistiller:resnet32x4

It takes the flags of ``python -m kdjax.main`` (:func:`kdjax.main.command`): ``--config``,
``--workdir``, ``--config.<field>=...``; ``--seeds`` and ``--dry-run`` change nothing (the
seeds share their teacher's cache). A run with ``config.teacher.cache`` otherwise builds (or
completes) its own cache before its first step.

It sits beside :mod:`kdjax.main` on the ladder: it reads the plan (:mod:`kdjax.plan`) and
builds each run's cache from the pieces a run loads (:mod:`kdjax.train.inputs`: the training
split, the teacher's variables), as the run itself would. The cache goes where a run's goes:
``$KDJAX_CACHE``, which may be a ``gs://`` URL shared by the machines that train.
"""

from __future__ import annotations

if __name__ == '__main__':  # run as a command: a signal from here on is one line (interrupts)
  from kdjax import interrupts
  interrupts.install()

import functools
import os

import ml_collections
from absl import app

from kdjax import interrupts, jsonio, methods, paths, sharding
from kdjax import main as main_lib
from kdjax import plan as plan_lib
from kdjax.configdict import derive
from kdjax.errors import KdjaxError
from kdjax.train import inputs


def build_for_plan(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Builds (or loads and verifies) the cache of every run of ``config``'s plan that distils
  from a teacher; a teacher the plan trains first must be trained already."""
  # A run refused for a changed config (kdjax.plan) is refused when trained; its cache stands.
  runs = plan_lib.make_plan(derive(config, {'teacher.cache': True}), workdir,
                            refuse_changes=False)
  trained_here = {run.workdir for run in runs if run.role == 'teacher'}
  done, mesh = set(), sharding.make_mesh()
  for run in runs:
    t = run.config.teacher
    if not methods.info(run.config.method).uses_teacher or (t.checkpoint, t.model) in done:
      continue
    results = jsonio.read_json(os.fspath(paths.path(t.checkpoint) / 'results.json')) or {}
    if t.checkpoint in trained_here and not results.get('finished'):
      raise KdjaxError(f'the teacher of "{run.role}" is trained by this command first, into '
                       f'{t.checkpoint}: run python -m kdjax.main with the same flags and '
                       f'--config.teacher.cache=True (it builds the cache after the teacher)')
    with interrupts.doing(f'preparing the teacher-logit cache of "{run.role}"',
                          'what its cache holds is kept'):
      train, _ = inputs.load_datasets(run.config)
      variables = inputs.load_teacher(run.config, train.num_classes,
                                      tuple(train.images.shape[1:]))
      inputs.load_logit_cache(run.config, train, variables, mesh)  # builds, or loads, verifies
    done.add((t.checkpoint, t.model))
  if not done:
    raise KdjaxError(f'no run of this command distils from a teacher (config.method '
                     f'{config.method}): there is no teacher-logit cache to build')


def run() -> None:
  """``python -m kdjax.cache`` / ``kdjax-cache-teacher``."""
  purpose = ("Builds the teacher-logit caches of a command's runs ahead of time, instead of "
             'training them.')
  app.run(lambda argv: main_lib.command(argv, build_for_plan),
          flags_parser=functools.partial(main_lib.parse_flags, purpose=purpose))


if __name__ == '__main__':
  run()
