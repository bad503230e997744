"""Orbax checkpoints of the whole train state that lose nothing.

Each checkpoint holds two items: ``state`` (every net's params, BatchNorm statistics and
optimizer state, the step and the root key) and ``progress`` (JSON: per-epoch evaluation
history and the best epoch so far). Orbax writes each checkpoint into a temporary folder
and renames it when complete, so a kill mid-write leaves the previous checkpoint as the
latest valid one; a latest checkpoint that still fails to restore (a truncated or corrupted
file) is skipped with a warning in favour of the one before.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Optional

import jax
import orbax.checkpoint as ocp

from kdjax.errors import KdjaxError


class Checkpointer:
  """Saves every ``every_steps`` (and on demand), keeps the last ``keep``, restores newest."""

  def __init__(self, directory: str, *, keep: int):
    self.directory = os.path.abspath(directory)
    self._manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True),
        item_names=('state', 'progress'))

  def save(self, step: int, state: Any, progress: dict, *, wait: bool = False) -> None:
    """Writes checkpoint ``step`` (asynchronously unless ``wait``)."""
    if step in self._manager.all_steps():
      return
    self._manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), progress=ocp.args.JsonSave(progress)))
    if wait:
      self._manager.wait_until_finished()

  def restore_latest(self, abstract_state: Any) -> Optional[tuple[Any, dict]]:
    """(state, progress) of the newest checkpoint that restores, or ``None`` if none."""
    steps = sorted(self._manager.all_steps(), reverse=True)
    for step in steps:
      try:
        restored = self._manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state), progress=ocp.args.JsonRestore()))
        return restored['state'], restored['progress']
      except Exception as e:  # pylint: disable=broad-except
        logging.warning('checkpoint at step %d in %s could not be restored (%s: %s); '
                        'trying the previous one', step, self.directory, type(e).__name__,
                        str(e).splitlines()[0] if str(e) else '')
    if steps:
      raise KdjaxError(f'no checkpoint in {self.directory} could be restored '
                       f'(steps {steps}); move the folder away to start afresh')
    return None

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.close()


def _manager(directory: str) -> ocp.CheckpointManager:
  return ocp.CheckpointManager(
      os.path.abspath(directory), item_handlers={
          'state': ocp.StandardCheckpointHandler(), 'progress': ocp.JsonCheckpointHandler()})


def restore_on_host(directory: str) -> Optional[tuple[int, Any]]:
  """``(step, state)`` of the newest checkpoint in ``directory`` as a plain nested dict.

  Needs no knowledge of the state's structure, and works whatever number of devices wrote
  it (the arrays land on the first local device). ``None`` if there is no checkpoint.
  """
  manager = _manager(directory)
  try:
    step = manager.latest_step()
    if step is None:
      return None
    metadata = manager.item_metadata(step)['state']
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
                          metadata)
    restored = manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(target)))
    return step, restored['state']
  finally:
    manager.close()


def abstract_like(state: Any) -> Any:
  """The shapes, dtypes and shardings of ``state``, as Orbax's restore target."""
  return jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
