"""``train_and_evaluate(config, workdir)``: the one training loop of every method.

The loop validates everything it can before it writes anything (config, model, dataset,
teacher), then resumes from the newest checkpoint in ``workdir`` if there is one. Each
step is one jitted call; the host only computes the batch's indices, and fetches metrics
every ``config.log_every_steps`` steps. After each epoch the eval nets are evaluated on the
test set; ``results.json`` keeps the best-epoch and the last-epoch accuracy apart.
Checkpoints are written every ``config.checkpoint_every_steps`` steps, at each epoch end
and when the run ends; SIGTERM / SIGINT stop the run after the current step with a
checkpoint, and running the same command again continues exactly where it stopped.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import time
from typing import Any, Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from kdjax import config as config_lib
from kdjax import data, methods, teachers
from kdjax.errors import KdjaxError
from kdjax.train import checkpoint, optim, step as step_lib
from kdjax.train.state import TrainState, init_state
from kdjax.train.writers import MetricWriter, Progress


class _StopFlag:
  """Remembers a SIGTERM/SIGINT; the loop checks it between steps."""

  def __init__(self):
    self.signum: Optional[int] = None
    self._previous = {}

  def __enter__(self):
    for sig in (signal.SIGTERM, signal.SIGINT):
      try:
        self._previous[sig] = signal.signal(sig, self._handle)
      except ValueError:  # not the main thread: leave signals alone
        pass
    return self

  def _handle(self, signum, frame):
    del frame
    self.signum = signum

  def __exit__(self, *exc):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)


def say(text: str) -> None:
  """A line for the user, from process 0 only."""
  if jax.process_index() == 0:
    print(text, file=sys.stderr, flush=True)


def _check_writable(workdir: str) -> None:
  parent = os.path.abspath(workdir)
  while not os.path.exists(parent):
    parent = os.path.dirname(parent)
  if not os.path.isdir(parent) or not os.access(parent, os.W_OK | os.X_OK):
    raise KdjaxError(f'workdir {workdir!r} is not writable ({parent!r} does not allow '
                     f'creating files); choose another --workdir')


class Run:
  """Everything a run needs, built and validated before the workdir is touched."""

  def __init__(self, config: ml_collections.ConfigDict, workdir: str):
    config_lib.validate(config)
    _check_writable(workdir)
    self.config, self.workdir = config, workdir
    n_dev = jax.device_count()
    if config.batch_size % n_dev:
      raise KdjaxError(f'config.batch_size {config.batch_size} is not divisible by the '
                       f'{n_dev} devices')
    self.train = data.load(config.data.name, 'train', data_dir=config.data.data_dir,
                           download=config.data.download)
    self.test = data.load(config.data.name, 'test', data_dir=config.data.data_dir,
                          download=config.data.download)
    self.steps_per_epoch = len(self.train) // config.batch_size
    if self.steps_per_epoch == 0:
      raise KdjaxError(f'config.batch_size {config.batch_size} is larger than the training '
                       f'set ({len(self.train)} images)')
    self.total_steps = config.num_epochs * self.steps_per_epoch
    self.dtype = jnp.dtype(config.dtype)
    self.mesh = step_lib.make_mesh()
    self.method = methods.build(
        config, num_classes=self.train.num_classes, dtype=self.dtype,
        bn_groups=n_dev if config.bn_stats == 'per_device' else 1,
        optimizer_factory=lambda opt=None: optim.sgd(opt or config.optimizer,
                                                     self.steps_per_epoch))
    self.teacher_vars: Any = {}
    if self.method.teacher is not None:
      self.teacher_vars = teachers.load(config.teacher.checkpoint, config.teacher.model,
                                        self.train.num_classes)
    self.eval_batch = -(-config.eval_batch_size // n_dev) * n_dev
    say(f'{config.method}: {config.model} on {config.data.name} ({len(self.train)} train / '
        f'{len(self.test)} test images), {n_dev} {jax.devices()[0].platform} device(s), '
        f'global batch {config.batch_size} = {config.batch_size // n_dev} per device, '
        f'{self.steps_per_epoch} steps per epoch')


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains ``config`` in ``workdir`` (resuming if it holds a checkpoint); returns results."""
  run = Run(config, workdir)
  created = not os.path.exists(workdir)
  os.makedirs(workdir, exist_ok=True)
  try:
    return _train(run)
  except BaseException:
    if created and not os.path.exists(os.path.join(workdir, 'checkpoints')):
      shutil.rmtree(workdir, ignore_errors=True)
    raise


def _write_json(path: str, obj: Any) -> None:
  tmp = path + '.tmp'
  with open(tmp, 'w') as f:
    json.dump(obj, f, indent=2, sort_keys=True)
  os.replace(tmp, path)


def _train(run: Run) -> dict:
  config, workdir, method, mesh = run.config, run.workdir, run.method, run.mesh
  rep = step_lib.replicated(mesh)
  _write_json(os.path.join(workdir, 'config.json'), json.loads(config.to_json_best_effort()))
  ckpt = checkpoint.Checkpointer(os.path.join(workdir, 'checkpoints'),
                                 keep=config.keep_checkpoints)
  state = jax.device_put(init_state(method, config.seed, run.train.images.shape[1:]), rep)
  progress = {'history': [], 'best_top1': None, 'best_epoch': None}
  restored = ckpt.restore_latest(checkpoint.abstract_like(state))
  if restored is not None:
    state, progress = restored
    say(f'resumed from the checkpoint at step {int(state.step)} in {workdir}')
  start = int(state.step)

  train_images, train_labels, test_images, test_labels = jax.device_put(
      (run.train.images, run.train.labels, run.test.images, run.test.labels), rep)
  teacher_vars = jax.device_put(run.teacher_vars, rep)
  norm = dict(mean=run.train.mean, std=run.train.std, dtype=run.dtype)
  train_step = step_lib.make_train_step(
      method, mesh, crop_padding=config.data.crop_padding, flip=config.data.flip,
      steps_per_epoch=run.steps_per_epoch, **norm)
  eval_step = step_lib.make_eval_step(method, mesh, **norm)
  if method.teacher is not None:
    teacher_eval = step_lib.make_eval_step(method, mesh, nets={'teacher': method.teacher},
                                           **norm)
    acc = step_lib.evaluate(teacher_eval, {'teacher': teacher_vars}, test_images, test_labels,
                            batch_size=run.eval_batch, size=len(run.test))['teacher']
    progress.setdefault('teacher', acc)
    say(f'teacher {config.teacher.model} ({config.teacher.checkpoint}): top-1 '
        f'{acc["top1"]:.2f}%, top-5 {acc["top5"]:.2f}% on the {len(run.test)} test images')
  idx_sharding = step_lib.data_sharded(mesh)

  last = run.total_steps if config.max_steps is None else min(run.total_steps, config.max_steps)
  writer = MetricWriter(workdir, resume_step=start, enabled=jax.process_index() == 0)
  bar = Progress(last, start)
  window, t_window, stopped_by = [], time.perf_counter(), None
  images_per_second = None
  with _StopFlag() as stop:
    for step in range(start, last):
      idx = data.batch_indices(config.seed, step, len(run.train), config.batch_size)
      state, metrics = train_step(state, teacher_vars, train_images, train_labels,
                                  jax.device_put(idx, idx_sharding))
      window.append(metrics)
      done = step + 1
      epoch_end = done % run.steps_per_epoch == 0
      checkpoint_now = (done % config.checkpoint_every_steps == 0 or epoch_end
                        or stop.signum is not None)
      # Metrics are fetched (and the loss checked) before every checkpoint, so a
      # non-finite state is never saved over a good one.
      if done % config.log_every_steps == 0 or checkpoint_now or done == last:
        means = {k: float(v) for k, v in jax.device_get(
            jax.tree.map(lambda *xs: jnp.mean(jnp.stack(xs)), *window)).items()}
        seconds = time.perf_counter() - t_window
        images_per_second = len(window) * config.batch_size / seconds
        means['images_per_second'] = images_per_second
        writer.write(done, 'train', means)
        bar.update(done, (done - 1) // run.steps_per_epoch + 1, means['loss'])
        if not np.isfinite(means['loss']):
          raise KdjaxError(f'the loss became non-finite by step {done} '
                           f'({ {k: v for k, v in means.items() if k.startswith("loss")} }); '
                           f'the last good checkpoint is kept; lower config.optimizer.lr')
        window, t_window = [], time.perf_counter()
      if epoch_end:
        epoch = done // run.steps_per_epoch
        result = step_lib.evaluate(eval_step, _eval_variables(state, method), test_images, test_labels,
                                   batch_size=run.eval_batch, size=len(run.test))
        _record_epoch(progress, epoch, done, result, method.eval_nets)
        for name, r in result.items():
          writer.write(done, f'test/{name}', r)
        bar.message(f'epoch {epoch}: ' + ', '.join(
            f'{name} top-1 {r["top1"]:.2f}%' for name, r in result.items()))
      if checkpoint_now:
        ckpt.save(done, state, progress)
      if stop.signum is not None:
        stopped_by = stop.signum
        break
  final_step = int(state.step)
  ckpt.save(final_step, state, progress, wait=True)
  ckpt.close()
  writer.close()
  results = _results(run, progress, final_step, images_per_second)
  _write_json(os.path.join(workdir, 'results.json'), results)
  if stopped_by is not None:
    bar.message(f'stopped by signal {stopped_by} at step {final_step}; checkpoint saved, run '
                f'the same command again to resume')
    results['stopped_by_signal'] = stopped_by
  return results


def _eval_variables(state: TrainState, method) -> dict:
  return {name: {'params': state.params[name], 'batch_stats': state.batch_stats[name]}
          for name in method.eval_nets}


def _record_epoch(progress: dict, epoch: int, step: int, result: dict, eval_nets) -> None:
  progress['history'].append({'epoch': epoch, 'step': step, **result})
  top1 = result[eval_nets[0]]['top1']
  if progress['best_top1'] is None or top1 > progress['best_top1']:
    progress['best_top1'], progress['best_epoch'] = top1, epoch


def _results(run: Run, progress: dict, step: int, images_per_second) -> dict:
  history = progress['history']
  last = history[-1] if history else None
  net = run.method.eval_nets[0]
  return {
      'method': run.config.method,
      'model': run.config.model,
      'dataset': run.config.data.name,
      'seed': run.config.seed,
      'step': step,
      'total_steps': run.total_steps,
      'finished': step >= run.total_steps,
      'epochs_done': last['epoch'] if last else 0,
      'num_epochs': run.config.num_epochs,
      'teacher_top1': progress.get('teacher', {}).get('top1'),
      'best_top1': progress['best_top1'],
      'best_epoch': progress['best_epoch'],
      'last_top1': last[net]['top1'] if last else None,
      'last_top5': last[net]['top5'] if last else None,
      'last_epoch': {k: v for k, v in last.items() if k not in ('epoch', 'step')} if last else None,
      'net_labels': {n: run.method.labels.get(n, n) for n in run.method.eval_nets},
      'images_per_second': images_per_second,
      'devices': jax.device_count(),
      'platform': jax.devices()[0].platform,
  }
