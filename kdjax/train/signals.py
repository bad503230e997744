"""SIGTERM / SIGINT during a run: :class:`StopFlag` remembers the signal, the loop stops after
the current step with a checkpoint and raises :class:`Interrupted`; running the same command
again resumes the run."""

from __future__ import annotations

import os
import signal
from typing import Optional

import jax

from kdjax.console import warn


class StopFlag:
  """Remembers a SIGTERM/SIGINT; the loop asks :meth:`poll` once per step.

  With several processes all must stop after the same step: a SIGTERM (a preemption
  notice, to any one process or to all) goes through JAX's preemption sync manager, which
  picks a step every process reaches, and a SIGINT is forwarded to it as a SIGTERM.
  """

  def __init__(self):
    self.signum: Optional[int] = None
    self._previous = {}
    # JAX's preemption sync manager runs in every process of a multi-process run when the
    # jax_enable_preemption_service option is on (its default).
    self._sync = jax.process_count() > 1 and bool(jax.config.jax_enable_preemption_service)
    if jax.process_count() > 1 and not self._sync:
      warn('the JAX preemption service is off (jax_enable_preemption_service); '
          'SIGTERM and SIGINT are not coordinated between processes')

  def __enter__(self):
    for sig in (signal.SIGINT,) if self._sync else (signal.SIGTERM, signal.SIGINT):
      try:
        self._previous[sig] = signal.signal(sig, self._forward if self._sync else self._handle)
      except ValueError:  # not the main thread: leave signals alone
        pass
    return self

  def _handle(self, signum, frame):
    del frame
    self.signum = signum

  @staticmethod
  def _forward(signum, frame):
    del signum, frame
    os.kill(os.getpid(), signal.SIGTERM)  # to JAX's preemption notifier

  def poll(self, step: int) -> bool:
    """Whether the run stops after update ``step``; called once per step, in order."""
    if self._sync:
      from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
      if multihost_utils.reached_preemption_sync_point(step):
        self.signum = signal.SIGTERM
    return self.signum is not None

  def __exit__(self, *exc):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)


class Interrupted(Exception):
  """A SIGTERM/SIGINT stopped the run in ``workdir`` after ``step``; its checkpoint is saved
  and ``results.json`` written, so running the same command again resumes it."""

  def __init__(self, workdir: str, step: int, signum: int):
    super().__init__(f'stopped by signal {signum} at step {step}; checkpoint saved in '
                     f'{workdir}, run the same command again to resume')
    self.workdir, self.step, self.signum = workdir, step, signum
