"""Where metrics go: JSON lines, TensorBoard, and a progress line for people.

``metrics.jsonl`` gets one object per logging point (``{"step": ..., "split": "train" |
"test", ...}``); TensorBoard event files get the same scalars. On an interactive terminal a
single updating line shows step, steps/s, ETA and the latest loss; otherwise the same
appears as plain log lines at each logging point.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from typing import Mapping

# A non-finite value is logged as is (the loop then stops with its own message naming it);
# tensorboardX's own warning about it would only repeat that.
logging.getLogger('tensorboardX.x2num').setLevel(logging.ERROR)


class MetricWriter:
  """Appends metrics to ``workdir/metrics.jsonl`` and TensorBoard events in ``workdir/tb``."""

  def __init__(self, workdir: str, *, resume_step: int, enabled: bool = True):
    self.enabled = enabled
    self.path = os.path.join(workdir, 'metrics.jsonl')
    if not enabled:
      return
    _truncate_after(self.path, resume_step)
    from tensorboardX import SummaryWriter  # pylint: disable=import-outside-toplevel
    self._tb = SummaryWriter(os.path.join(workdir, 'tb'), purge_step=resume_step or None)

  def write(self, step: int, split: str, scalars: Mapping[str, float]) -> None:
    if not self.enabled:
      return
    with open(self.path, 'a') as f:
      f.write(json.dumps({'step': step, 'split': split, **scalars}) + '\n')
    for k, v in scalars.items():
      if isinstance(v, (int, float)):
        self._tb.add_scalar(f'{split}/{k}', v, step)

  def close(self) -> None:
    if self.enabled:
      self._tb.close()


def _truncate_after(path: str, step: int) -> None:
  """Drops lines written after ``step`` (a resumed run rewrites them); replaces the file
  atomically.

  A line that is not a JSON object with a ``step`` (the half-written last line of a run
  killed mid-write, or the zeros a full disk or a crash can leave) is dropped too, with one
  warning line on stderr naming the file and how many lines went.
  """
  if not os.path.exists(path):
    return
  kept, dropped = [], 0
  with open(path, errors='replace') as f:
    for line in f:
      if not line.strip():
        continue
      try:
        keep = json.loads(line)['step'] <= step
      except (ValueError, TypeError, KeyError):
        dropped += 1
        continue
      if keep:
        kept.append(line.rstrip('\n') + '\n')
  with open(path + '.tmp', 'w') as f:  # a kill now leaves the old file whole
    f.writelines(kept)
  os.replace(path + '.tmp', path)
  if dropped:
    print(f'warning: dropped {dropped} unreadable line{"s" if dropped > 1 else ""} of {path} '
          f'(half-written when a run was killed or the disk was full)', file=sys.stderr,
          flush=True)


class Progress:
  """Step counter with steps/s and ETA; a live line on a TTY, log lines otherwise."""

  def __init__(self, total_steps: int, first_step: int, stream=None, *, enabled: bool = True):
    self.total = total_steps
    self.enabled = enabled  # False on every process but 0 of a multi-process run
    self.stream = stream or sys.stderr
    self.live = hasattr(self.stream, 'isatty') and self.stream.isatty()
    self._t0, self._s0 = time.perf_counter(), first_step

  def update(self, step: int, epoch: int, loss: float) -> None:
    if not self.enabled:
      return
    elapsed = time.perf_counter() - self._t0
    rate = (step - self._s0) / elapsed if elapsed > 0 else 0.0
    eta = (self.total - step) / rate if rate > 0 else float('nan')
    eta_s = time.strftime('%H:%M:%S', time.gmtime(eta)) if eta == eta else '--:--:--'
    text = (f'epoch {epoch} step {step}/{self.total} ({100.0 * step / self.total:.0f}%) '
            f'{rate:.2f} steps/s ETA {eta_s} loss {loss:.4f}')
    if self.live:
      self.stream.write('\r' + text.ljust(100))
    else:
      self.stream.write(text + '\n')
    self.stream.flush()

  def message(self, text: str) -> None:
    """A line that stays (evaluation results, checkpoints)."""
    if not self.enabled:
      return
    if self.live:
      self.stream.write('\r' + ' ' * 100 + '\r')
    self.stream.write(text + '\n')
    self.stream.flush()
