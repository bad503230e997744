"""A network's learning trajectory: its variables at the end of each of K training stages.

SKD (:mod:`kdjax.methods.skd`) shows the student how the teacher *learned*, so it needs the
teacher's variables at stage boundaries. A kdjax run with ``config.trajectory.stages = K``
divides its ``num_epochs`` into K stages and, at the end of stage j (epoch
:func:`stage_end_epochs`\\ ``[j]``), writes the trained net's inference variables as a
teacher folder ``<workdir>/trajectory/stage_<j>`` (the last one is the final net).
:func:`load_snapshots` reads them back, stacked on a leading axis of size K, for SKD
(``BuildInputs.teacher_trajectory``). The workdir and the teacher may be ``gs://`` URLs.
"""

from __future__ import annotations

import os

import jax
import numpy as np

from kdjax import models, paths
from kdjax.teachers import loading as teachers
from kdjax.errors import KdjaxError

DIRECTORY = 'trajectory'


def stage_end_epochs(num_epochs: int, stages: int) -> list[int]:
  """The (1-based) epochs that end each of ``stages`` equal stages of ``num_epochs``."""
  return [round((j + 1) * num_epochs / stages) for j in range(stages)]


def record(workdir: str, epoch: int, num_epochs: int, stages: int, model: str,
           num_classes: int, variables: dict) -> None:
  """Writes ``variables`` as stage j's snapshot if ``epoch`` ends stage j (else nothing)."""
  ends = stage_end_epochs(num_epochs, stages)
  if epoch in ends:
    teachers.save(os.fspath(paths.path(workdir) / DIRECTORY / f'stage_{ends.index(epoch)}'),
                  model, num_classes, variables, source=f'epoch {epoch} of {num_epochs}')


def load_snapshots(checkpoint, model: str, num_classes: int,
                   image_shape=models.CIFAR_IMAGE_SHAPE, zoo: str = 'cifar') -> dict:
  """The recorded snapshots of the teacher at ``checkpoint`` (a ``zoo`` model), stacked
  (leading axis K).

  Raises :class:`KdjaxError` when the teacher comes without a trajectory (an imported
  PyTorch checkpoint, or a kdjax teacher trained without ``trajectory.stages``).
  """
  root = paths.path(str(checkpoint)) / DIRECTORY
  stages = 0
  while (root / f'stage_{stages}').is_dir():
    stages += 1
  if checkpoint is None or stages < 2:
    raise KdjaxError(
        f'teacher {checkpoint!r} has no recorded trajectory ({root}/stage_<j>, at least 2): '
        f'train the teacher with kdjax and --config.trajectory.stages=K (the digits preset '
        f'does this), or use --config.skd.trajectory=self_learning')
  return stack([teachers.load_variables(os.fspath(root / f'stage_{j}'), model, num_classes,
                                        image_shape, zoo) for j in range(stages)])


def stack(snapshots: list) -> dict:
  """Variables of the same net, stacked on a new leading (stage) axis, on the host."""
  return jax.tree.map(lambda *xs: np.stack(xs), *snapshots)
