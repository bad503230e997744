"""Training progress through tqdm (kdjax issue 26): steps/s, loss, an ETA right beyond 24
hours, the plan's remaining time; off a terminal at most one line per few minutes and per
percent of the run, whichever is rarer, and every epoch summary."""

import io

import pytest
import tqdm.std

from kdjax.train import writers


class _Clock:
  def __init__(self):
    self.now = 1000.0

  def __call__(self):
    return self.now


class _Terminal(io.StringIO):
  def isatty(self):
    return True


@pytest.fixture
def clock(monkeypatch):
  fake = _Clock()
  monkeypatch.setattr(tqdm.std, 'time', fake)  # tqdm's clock, which Progress reads too
  return fake


def _run(progress, clock, steps, seconds_per_step, log_every=10, steps_per_epoch=None):
  for done in range(log_every, steps + 1, log_every):
    clock.now += seconds_per_step * log_every
    progress.update(done, (done - 1) // (steps_per_epoch or steps) + 1, 2.5)
    if steps_per_epoch and done % steps_per_epoch == 0:
      progress.message(f'epoch {done // steps_per_epoch}: student top-1 50.00%')


def test_off_a_terminal_few_lines_and_every_epoch_summary(clock):
  """A 240-epoch CIFAR run of 187,680 steps at 20 steps/s (2.6 hours): a line every 3
  minutes (rarer than 1%), every epoch summary, and nothing else."""
  stream = io.StringIO()
  steps, per_epoch = 187_680, 782
  progress = writers.Progress(steps, 0, stream, steps_per_epoch=per_epoch, num_epochs=240)
  _run(progress, clock, steps, 0.05, log_every=46, steps_per_epoch=per_epoch)
  lines = stream.getvalue().splitlines()
  summaries = [line for line in lines if line.startswith('epoch ') and 'top-1' in line]
  bars = [line for line in lines if 'step/s' in line]
  assert len(summaries) == 240 and len(bars) + len(summaries) == len(lines)
  assert 9384 / 180 - 2 <= len(bars) <= 9384 / 180  # 2.6 h at one per 3 minutes
  assert bars[0] == ('epoch 5/240: 2% 3634/187680 [03:01<2:33:22, 20.00step/s, loss 2.5000]')


def test_per_percent_when_that_is_rarer(clock):
  stream = io.StringIO()
  progress = writers.Progress(1000, 0, stream, steps_per_epoch=1000, num_epochs=1)
  _run(progress, clock, 1000, 60.0)  # ten minutes per logging point, 1% each
  assert len(stream.getvalue().splitlines()) == 100


def test_eta_beyond_a_day_and_the_plan_left(clock):
  stream = _Terminal()
  with writers.later_in_plan(2, 16):  # two more runs of 8 epochs each
    progress = writers.Progress(1000, 0, stream, steps_per_epoch=100, num_epochs=10)
  _run(progress, clock, 10, 100.0)  # 100 s per step: 99,000 s = 27:30:00 left
  line = stream.getvalue().rsplit('\r', 1)[-1]
  assert '<27:30:00' in line and 'epoch 1/10' in line
  assert '10/1000' in line and 'loss 2.5000' in line
  # the plan: 990 steps of this run + 1,600 of the later ones at 0.01 steps/s = 259,000 s
  assert 'plan: 2 more runs, ~71:56:40 left' in line
  progress.close()
