"""Orbax checkpoints of the whole train state that lose nothing.

Each checkpoint holds two items: ``state`` (every net's params, BatchNorm statistics and
optimizer state, the step and the root key) and ``progress`` (JSON: per-epoch evaluation
history and the best epoch so far). Orbax writes each checkpoint into a temporary folder
and renames it when complete, so a kill mid-write leaves the previous checkpoint as the
latest valid one. A newest checkpoint that still fails to restore (a truncated or corrupted
file) is skipped in favour of the one before, and moved aside to
``<workdir>/checkpoints_corrupt/<step>`` (kept for inspection) with one warning line, so that
the resumed run writes that step afresh instead of falling back to the same old step at
every later restart.

A restore that fails part-way leaves Orbax's other reads of that checkpoint running after
Orbax has closed their event loop; each of them would print a traceback ("Event loop is
closed", the read's own error, or a warning that it was never awaited), thousands of lines
around the one warning. Those are dropped (:func:`_quiet_abandoned_reads`); the failure
itself is reported.

A checkpoint that cannot be written (disk full, permissions, a failing network filesystem)
stops the run with one :class:`CheckpointWriteError` line naming the step and the cause;
the previous checkpoint stays the latest valid one, and running the same command again
resumes from it. Saves are asynchronous, so a failure in the background is reported at the
next save or at the end of the run, still naming the step that failed. With several
processes every process saves and restores together (Orbax coordinates them; process 0
writes the metadata and the ``progress`` item, each process its own array shards).
"""

from __future__ import annotations

import logging
import os
import sys
import warnings
from typing import Any, Callable, Optional

import jax
import numpy as np
import orbax.checkpoint as ocp

from kdjax import paths
from kdjax.errors import KdjaxError, warn


class _OrbaxTracebacks(logging.Filter):
  """Drops Orbax's own error tracebacks: every failure they describe reaches
  :class:`Checkpointer` as an exception and is reported there in one line."""

  def filter(self, record: logging.LogRecord) -> bool:
    return not (record.levelno >= logging.ERROR and record.exc_info
                and f'{os.sep}orbax{os.sep}' in (record.pathname or ''))


logging.getLogger('absl').addFilter(_OrbaxTracebacks())


def _abandoned_read_error(unraisable) -> bool:
  """Whether an unraisable exception comes from a read Orbax gave up on: a TensorStore read
  completing after Orbax closed the event loop awaiting it, or one of Orbax's read
  coroutines failing as it is discarded."""
  exc, obj = unraisable.exc_value, unraisable.object
  if obj is None and isinstance(exc, RuntimeError) and str(exc) == 'Event loop is closed':
    tb = exc.__traceback__
    return tb is not None and tb.tb_frame.f_code.co_name == 'call_soon_threadsafe'
  code = getattr(obj, 'cr_code', None)  # a coroutine
  return code is not None and f'{os.sep}orbax{os.sep}' in code.co_filename


class _QuietAbandonedReads:
  """``sys.unraisablehook`` that drops :func:`_abandoned_read_error` and passes on the rest."""

  def __init__(self, previous):
    self.previous = previous

  def __call__(self, unraisable) -> None:
    if not _abandoned_read_error(unraisable):
      self.previous(unraisable)


def _quiet_abandoned_reads() -> None:
  """Installs :class:`_QuietAbandonedReads` (once; again if something replaced it), and
  ignores the warning about Orbax's array reads that a failed restore never started."""
  if not isinstance(sys.unraisablehook, _QuietAbandonedReads):
    sys.unraisablehook = _QuietAbandonedReads(sys.unraisablehook)
  warnings.filterwarnings('ignore', category=RuntimeWarning,
                          message="coroutine '_read_array_index_and_device_put' was never awaited")


class CheckpointWriteError(KdjaxError):
  """A checkpoint could not be written; the previous one is kept."""


def _first_line(error: BaseException, limit: Optional[int] = None) -> str:
  """``Type: first line of the message``, cut to ``limit`` characters if given (TensorStore
  puts a whole JSON spec on its first line)."""
  text = str(error).strip()
  line = f'{type(error).__name__}: {text.splitlines()[0]}' if text else type(error).__name__
  return line if limit is None or len(line) <= limit else line[:limit - 3] + '...'


class Checkpointer:
  """Saves every ``every_steps`` (and on demand), keeps the last ``keep``, restores newest."""

  def __init__(self, directory: str, *, keep: int,
               before_save: Callable[[], None] = lambda: None):
    """``before_save`` runs before each write and may raise to stop it (the workdir lock's
    check that the workdir is still this run's)."""
    _quiet_abandoned_reads()
    self._before_save = before_save
    self.directory = paths.text(directory)
    self.corrupt_directory = self.directory + '_corrupt'  # steps moved aside, see restore
    self._manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True),
        item_names=('state', 'progress'))
    self._pending: Optional[int] = None  # the step of a save that may still be writing
    self._closed = False

  def _write_error(self, step: int, error: BaseException) -> CheckpointWriteError:
    try:
      kept = max((s for s in self._manager.all_steps() if s != step), default=None)
    except Exception:  # pylint: disable=broad-except
      kept = None
    kept = (f'the checkpoint of step {kept} is kept and running the same command again '
            f'resumes from it' if kept is not None and kept != step else
            'no earlier checkpoint exists')
    known = paths.storage_error(error, f'the checkpoint of step {step} in {self.directory}')
    if known is not None:  # a bucket's refusal, in words that say what to fix
      return CheckpointWriteError(f'{known}; {kept}')
    return CheckpointWriteError(
        f'could not write the checkpoint of step {step} to {self.directory} '
        f'({_first_line(error)}); {kept}; free disk space or fix the folder, then rerun')

  def _finish_pending(self) -> None:
    """Waits for the save in flight; raises :class:`CheckpointWriteError` if it failed."""
    step, self._pending = self._pending, None
    try:
      self._manager.wait_until_finished()
    except Exception as e:  # pylint: disable=broad-except
      error = self._write_error(step if step is not None else -1, e)
      self._close_quietly(failed=True)
      raise error from None

  def save(self, step: int, state: Any, progress: dict, *, wait: bool = False) -> None:
    """Writes checkpoint ``step`` (asynchronously unless ``wait``).

    Raises :class:`CheckpointWriteError` if this save, or the previous one still writing
    in the background, failed.
    """
    if self._closed:
      raise RuntimeError(f'checkpointer of {self.directory} is closed')
    self._finish_pending()
    if step in self._manager.all_steps():
      return
    self._before_save()
    try:
      self._manager.save(step, args=ocp.args.Composite(
          state=ocp.args.StandardSave(state), progress=ocp.args.JsonSave(progress)))
    except Exception as e:  # pylint: disable=broad-except
      error = self._write_error(step, e)
      self._close_quietly(failed=True)
      raise error from None
    self._pending = step
    if wait:
      self._finish_pending()

  def restore_latest(self, abstract_state: Any) -> Optional[tuple[Any, dict]]:
    """(state, progress) of the newest checkpoint that restores, or ``None`` if none.

    Newer checkpoints that failed to restore are moved to :attr:`corrupt_directory` (one
    warning line each), so the next :meth:`save` of their step writes it afresh. If none
    restores, nothing is moved: the checkpointer is closed and a
    :class:`~kdjax.errors.KdjaxError` names the steps and the newest one's cause.
    """
    failed = []  # (step, cause), newest first
    for step in sorted(self._manager.all_steps(), reverse=True):
      try:
        restored = self._manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state), progress=ocp.args.JsonRestore()))
      except Exception as e:  # pylint: disable=broad-except
        failed.append((step, _first_line(e, limit=200)))
        continue
      if failed:
        self._move_aside(failed, restored_step=step)
      return restored['state'], restored['progress']
    if failed:
      self._close_quietly()
      raise KdjaxError(f'no checkpoint in {self.directory} could be restored (steps '
                       f'{[s for s, _ in failed]}; step {failed[0][0]}: {failed[0][1]}); '
                       f'move the folder away to start afresh')
    return None

  def _move_aside(self, failed: list, *, restored_step: int) -> None:
    """Moves the steps of ``failed`` ((step, cause) pairs) to :attr:`corrupt_directory`,
    saying so (process 0), and makes every process's manager forget them."""
    for step, cause in failed if jax.process_index() == 0 else ():
      corrupt = paths.path(self.corrupt_directory)
      target, n = corrupt / str(step), 1
      while target.exists():  # the same step went bad before: keep both
        target, n = corrupt / f'{step}.{n}', n + 1
      try:
        corrupt.mkdir(parents=True, exist_ok=True)
        (paths.path(self.directory) / str(step)).rename(target)
      except OSError as e:
        self._close_quietly()
        raise KdjaxError(f'checkpoint at step {step} in {self.directory} could not be restored '
                         f'({cause}) nor moved to {target} ({_first_line(e)}); move it away '
                         f'by hand and rerun') from None
      warn(f'checkpoint at step {step} in {self.directory} could not be restored ({cause}); '
           f'moved it to {target} and resumed from step {restored_step}')
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
      multihost_utils.sync_global_devices('kdjax_checkpoint_moved_aside')
    self._manager.reload()

  def latest_step(self) -> Optional[int]:
    """The newest checkpoint's step (``None`` if there is none)."""
    return self._manager.latest_step()

  def _close_quietly(self, *, failed: bool = False) -> None:
    """Closes the manager; a failure to close is a warning, or, after a write that
    ``failed`` (whose error already says it), nothing: it is the same failure again."""
    if self._closed:
      return
    self._closed = True
    try:
      self._manager.close()
    except Exception as e:  # pylint: disable=broad-except
      if not failed:
        warn(f'closing the checkpoint manager of {self.directory} failed ({_first_line(e)})')

  def wait(self) -> None:
    """Waits for the save in flight (see :meth:`save` for errors)."""
    self._finish_pending()

  def close(self, *, quiet: bool = False) -> None:
    """Finishes the save in flight and closes; ``quiet`` drops its errors (the run is
    already failing for another reason)."""
    if self._closed:
      return
    try:
      self._finish_pending()
    except CheckpointWriteError:
      if not quiet:
        raise
    self._close_quietly()


def _manager(directory: str) -> ocp.CheckpointManager:
  _quiet_abandoned_reads()
  return ocp.CheckpointManager(
      paths.text(directory), item_handlers={
          'state': ocp.StandardCheckpointHandler(), 'progress': ocp.JsonCheckpointHandler()})


def restore_on_host(directory: str) -> Optional[tuple[int, Any]]:
  """``(step, state)`` of the newest checkpoint in ``directory`` that restores, as a plain
  nested dict (a newer one that fails is skipped with a warning, and left in place: this
  reads another run's workdir).

  Needs no knowledge of the state's structure, and works whatever number of devices wrote
  it (the arrays land on the first local device). ``None`` if there is no checkpoint;
  :class:`KdjaxError` if none restores.
  """
  _quiet_abandoned_reads()
  manager = _manager(directory)
  try:
    steps = sorted(manager.all_steps(), reverse=True)
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    for step in steps:
      try:
        metadata = manager.item_metadata(step)['state']
        target = jax.tree.map(
            lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), metadata)
        restored = manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(target)))
        return step, restored['state']
      except Exception as e:  # pylint: disable=broad-except
        warn(f'checkpoint at step {step} in {directory} could not be restored '
             f'({_first_line(e)}); trying the previous one')
    if steps:
      raise KdjaxError(f'no checkpoint in {directory} could be restored (steps {steps})')
    return None
  finally:
    manager.close()


def save_tree(path: str, tree: Any) -> None:
  """Writes a pytree of host arrays as one Orbax checkpoint at ``path`` (a teacher folder's
  variables), replacing what is there."""
  with ocp.PyTreeCheckpointer() as checkpointer:
    checkpointer.save(path, jax.tree.map(np.asarray, tree), force=True)


def restore_tree(path: str) -> Any:
  """The pytree :func:`save_tree` wrote at ``path``; a damaged one raises the read's error
  without the tracebacks of Orbax's abandoned reads (see the module docstring)."""
  _quiet_abandoned_reads()
  with ocp.PyTreeCheckpointer() as checkpointer:
    return checkpointer.restore(path)


def abstract_like(state: Any) -> Any:
  """The shapes, dtypes and shardings of ``state``, as Orbax's restore target."""
  return jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
