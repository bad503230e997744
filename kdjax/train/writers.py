"""Where metrics go: JSON lines, TensorBoard, and a progress line for people.

``metrics.jsonl`` gets one object per logging point (``{"step": ..., "split": "train" |
"test", ...}``); TensorBoard event files get the same scalars. :class:`Progress` shows steps/s,
the ETA, the latest loss and the plan's remaining time through tqdm: a live bar on a terminal,
a rare log line elsewhere.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import sys
import time
from typing import Mapping

import tqdm

from kdjax import jsonio, paths

# A non-finite value is logged as is (the loop then stops with its own message naming it);
# tensorboardX's own warning about it would only repeat that.
logging.getLogger('tensorboardX.x2num').setLevel(logging.ERROR)


class MetricWriter:
  """Appends metrics to ``workdir/metrics.jsonl`` and TensorBoard events in ``workdir/tb``.

  A local ``metrics.jsonl`` is appended to line by line. An object in a store cannot be
  appended to: its lines are kept here and the whole object uploaded again after an
  evaluation, at most every :data:`REMOTE_FLUSH_S` seconds for training lines, at
  :meth:`flush` (the loop calls it before each checkpoint, so the lines of the steps a
  checkpoint holds are never lost) and at :meth:`close`.
  """

  REMOTE_FLUSH_S = 30.0

  def __init__(self, workdir: str, *, resume_step: int, enabled: bool = True):
    self.enabled = enabled
    self.path = paths.path(workdir) / 'metrics.jsonl'
    if not enabled:
      return
    existed = self.path.exists()
    self._lines = _lines_up_to(self.path, resume_step) if existed else []
    if existed:  # a resumed run writes the later lines again
      jsonio.write_text(self.path, ''.join(self._lines))
    self._remote, self._flushed_at = paths.is_remote(workdir), time.monotonic()
    from tensorboardX import SummaryWriter  # pylint: disable=import-outside-toplevel
    self._tb = SummaryWriter(str(paths.path(workdir) / 'tb'), purge_step=resume_step or None)

  def write(self, step: int, split: str, scalars: Mapping[str, float]) -> None:
    if not self.enabled:
      return
    line = json.dumps({'step': step, 'split': split, **scalars}) + '\n'
    if self._remote:
      self._lines.append(line)
      if split != 'train' or time.monotonic() - self._flushed_at > self.REMOTE_FLUSH_S:
        self.flush()
    else:
      with self.path.open('a') as f:
        f.write(line)
    for k, v in scalars.items():
      if isinstance(v, (int, float)):
        self._tb.add_scalar(f'{split}/{k}', v, step)

  def flush(self) -> None:
    """Uploads a remote ``metrics.jsonl`` whole (nothing to do for a local one)."""
    if self.enabled and self._remote:
      jsonio.write_text(self.path, ''.join(self._lines))
      self._flushed_at = time.monotonic()

  def close(self) -> None:
    if self.enabled:
      self.flush()
      self._tb.close()


def _lines_up_to(path, step: int) -> list:
  """The lines of ``path`` (an :class:`etils.epath.Path`) up to ``step`` (a resumed run
  writes the later ones again).

  A line that is not a JSON object with a ``step`` (the half-written last line of a run
  killed mid-write, or the zeros a full disk or a crash can leave) is dropped too, with one
  warning line on stderr naming the file and how many lines went.
  """
  kept, dropped = [], 0
  for line in path.read_bytes().decode(errors='replace').splitlines():
    if not line.strip():
      continue
    try:
      keep = json.loads(line)['step'] <= step
    except (ValueError, TypeError, KeyError):
      dropped += 1
      continue
    if keep:
      kept.append(line + '\n')
  if dropped:
    print(f'warning: dropped {dropped} unreadable line{"s" if dropped > 1 else ""} of {path} '
          f'(half-written when a run was killed or the disk was full)', file=sys.stderr,
          flush=True)
  return kept


# Off a terminal (a log file, nohup, SLURM, Colab's `!`), a progress line at most this often
# and once per percent of the run, whichever is rarer; epoch summaries always.
LOG_INTERVAL_SECONDS = 180.0
_LOG_FORMAT = ('{desc}{percentage:.0f}% {n_fmt}/{total_fmt} [{elapsed}<{remaining}, '
               '{rate_fmt}{postfix}]')

_later = {'runs': 0, 'epochs': 0.0}  # the plan's runs after the current one (plan.execute)


@contextlib.contextmanager
def later_in_plan(runs: int, epochs: float):
  """While a plan's run trains: ``runs`` more runs of ``epochs`` epochs in all follow it
  (its progress line then shows the whole plan's remaining time)."""
  _later.update(runs=runs, epochs=epochs)
  try:
    yield
  finally:
    _later.update(runs=0, epochs=0.0)


class Progress:
  """tqdm's progress of one run (steps/s, ETA, the loss) and the plan's time left: a live bar
  on a TTY; otherwise the same text as a log line at most every
  :data:`LOG_INTERVAL_SECONDS` and 1% of the run."""

  def __init__(self, total_steps: int, first_step: int, stream=None, *, steps_per_epoch: int,
               num_epochs: int, enabled: bool = True):
    self.enabled = enabled  # False on every process but 0 of a multi-process run
    self.stream = stream or sys.stderr
    self.live = hasattr(self.stream, 'isatty') and self.stream.isatty()
    self._epochs = (steps_per_epoch, num_epochs)
    self._later = dict(_later)
    self._bar = tqdm.tqdm(total=total_steps, initial=first_step, unit='step', smoothing=0.1,
                          file=self.stream if self.live else io.StringIO(),
                          bar_format=None if self.live else _LOG_FORMAT,
                          disable=not enabled, dynamic_ncols=True)
    self._logged = (self._bar.start_t if enabled else 0.0, first_step)

  def update(self, step: int, epoch: int, loss: float) -> None:
    if not self.enabled:
      return
    bar = self._bar
    bar.update(step - bar.n)  # first: the rate the plan's time left needs
    bar.set_description(f'epoch {epoch}/{self._epochs[1]}', refresh=False)
    bar.set_postfix_str(f'loss {loss:.4f}{self._plan_left(step)}', refresh=self.live)
    now, (t_logged, s_logged) = bar._time(), self._logged  # pylint: disable=protected-access
    if not self.live and (now - t_logged >= LOG_INTERVAL_SECONDS
                          and step - s_logged >= bar.total / 100):
      self.stream.write(str(bar) + '\n')
      self.stream.flush()
      self._logged = (now, step)

  def _plan_left(self, step: int) -> str:
    """``, plan: N more runs, ~H:MM:SS left`` at this run's speed (none: this run's ETA)."""
    rate = self._bar.format_dict['rate']
    if not self._later['runs'] or not rate:
      return ''
    left = (self._bar.total - step + self._later['epochs'] * self._epochs[0]) / rate
    runs = self._later['runs']
    return (f', plan: {runs} more run{"s" if runs > 1 else ""}, '
            f'~{tqdm.tqdm.format_interval(left)} left')

  def message(self, text: str) -> None:
    """A line that stays (evaluation results, checkpoints), above a live bar."""
    if not self.enabled:
      return
    if self.live:
      self._bar.write(text, file=self.stream)
    else:
      self.stream.write(text + '\n')
      self.stream.flush()

  def close(self) -> None:
    self._bar.close()
