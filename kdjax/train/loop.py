"""``train_and_evaluate(config, workdir)``: the one training loop of every method.

The run is set up as a flow of data, before the workdir is touched (:func:`prepare`)::

    inputs = load_inputs(config)                            # kdjax.train.inputs
    method = methods.build(config, method_inputs(config, inputs, schedule))
    inputs = load_teacher_inputs(config, inputs, mesh)
    steps = make_steps(config, method, mesh, ...)           # kdjax.train.step

then :func:`train_and_evaluate` holds the workdir's lock, its checkpoints, the feed of
batches (:mod:`kdjax.train.feeds`), the metric writer and the signal handler in one
``contextlib.ExitStack``, resumes from the newest checkpoint if there is one, and steps. Each
step is one jitted call; the host only computes the batch's indices (a host dataset's
batches come from the host pipeline instead, its position kept in every checkpoint), and
fetches metrics every ``config.log_every_steps`` steps. After each epoch the eval nets are
evaluated on the test set; ``results.json`` keeps the best-epoch and the last-epoch accuracy
apart. Checkpoints are written every ``config.checkpoint_every_steps`` steps, at each epoch
end and when the run ends; SIGTERM / SIGINT stop the run after the current step with a
checkpoint and raise :class:`~kdjax.train.signals.Interrupted`.

Each step's metrics (loss, loss terms, gradient norms) are checked before every checkpoint:
a non-finite one stops the run naming the step and the terms, and the last good checkpoint
stays the latest. With several processes (:mod:`kdjax.distributed`) every process runs this
loop in lockstep; only process 0 writes files and prints. See ``docs/scaling.md``.
"""

from __future__ import annotations

import contextlib
import json
import tempfile
import time
from typing import Callable, NamedTuple, Optional

import jax
import ml_collections
import numpy as np
import optax
from jax.sharding import Mesh

from kdjax import checkpoints, interrupts, jsonio, methods, paths, run_fields, sharding
from kdjax.console import say
from kdjax.errors import KdjaxError
from kdjax.methods.base import FrozenInputs, Method
from kdjax.teachers import logit_cache, trajectory
from kdjax.teachers import zoo as teacher_zoo
from kdjax.train import feeds, optim
from kdjax.train import step as step_lib
from kdjax.train.inputs import (RunInputs, load_inputs, load_teacher_inputs, lr_schedule,
                                method_inputs)
from kdjax.train.signals import Interrupted, StopFlag
from kdjax.train.state import TrainState, init_state
from kdjax.train.workdir_lock import WorkdirLock
from kdjax.train.writers import MetricWriter, Progress

__all__ = ['Interrupted', 'Training', 'check_config', 'prepare', 'train_and_evaluate']


def check_config(config: ml_collections.ConfigDict) -> None:
  """Raises :class:`KdjaxError` for a mistake in the fields of the training loop: the seed,
  the optimizer (:func:`kdjax.train.optim.check_config`), batch sizes (the global batch
  divides over the devices), epochs and steps, dtype, BatchNorm statistics, the trajectory,
  logging and checkpoints, ``config.debug`` and ``config.profile_steps``."""
  optim.check_config(config.optimizer)
  n_dev, nan_at = jax.device_count(), (config.get('debug') or {}).get('nan_at_step')
  profile = config.get('profile_steps')
  checks = (
      (isinstance(config.seed, int) and config.seed >= 0,
       f'config.seed must be an integer >= 0, got {config.seed!r}'),
      (config.batch_size > 0, f'config.batch_size must be positive, got {config.batch_size}'),
      (config.batch_size % n_dev == 0, f'config.batch_size {config.batch_size} is not '
                                       f'divisible by the {n_dev} devices'),
      (config.eval_batch_size > 0,
       f'config.eval_batch_size must be positive, got {config.eval_batch_size}'),
      (config.num_epochs > 0, f'config.num_epochs must be positive, got {config.num_epochs}'),
      (config.max_steps is None or config.max_steps > 0,
       f'config.max_steps must be positive (or None: the whole run), got {config.max_steps}'),
      (config.dtype in ('float32', 'bfloat16'),
       f'config.dtype must be float32 or bfloat16, got {config.dtype!r}'),
      (config.bn_stats in ('global', 'per_device'),
       f'config.bn_stats must be global or per_device, got {config.bn_stats!r}'),
      (0 <= config.trajectory.stages <= config.num_epochs,
       f'config.trajectory.stages must be between 0 and num_epochs ({config.num_epochs}), '
       f'got {config.trajectory.stages}'),
      (config.log_every_steps > 0 and config.checkpoint_every_steps > 0,
       'config.log_every_steps and config.checkpoint_every_steps must be positive'),
      (config.keep_checkpoints >= 1,
       f'config.keep_checkpoints must be >= 1, got {config.keep_checkpoints}'),
      (nan_at is None or nan_at >= 1,
       f'config.debug.nan_at_step must be >= 1 (a 1-based step) or None, got {nan_at}'),
      (profile is None or (len(profile) == 2 and 1 <= profile[0] <= profile[1]),
       f'config.profile_steps must be (first, last) updates with 1 <= first <= last, or '
       f'None, got {profile!r}'),
  )
  for ok, message in checks:
    if not ok:
      raise KdjaxError(message)


class Training(NamedTuple):
  """One run's training, prepared from its config before its workdir is touched."""
  config: ml_collections.ConfigDict
  workdir: str
  inputs: RunInputs
  method: Method
  mesh: Mesh
  steps: step_lib.Steps  # jitted by prepare()
  frozen: FrozenInputs  # on the host; the feed puts it on the devices
  host_teacher_logits: Optional[np.ndarray]  # a logit cache kept in host memory, or None
  cache_placement: Optional[str]  # 'device', 'host', or None without a logit cache
  schedule: optax.Schedule  # the learning rate per step
  steps_per_epoch: int
  total_steps: int

  def initial_state(self) -> TrainState:
    """The run's state before its first step, replicated over the mesh."""
    return sharding.put_replicated(
        init_state(self.method, self.config.seed, self.inputs.image_shape), self.mesh)

  def steps_for(self, method: Method) -> step_lib.Steps:
    """The jitted steps of ``method`` (the run's, or a variant of it) on this run's data,
    augmentation and schedule."""
    return step_lib.make_steps(
        self.config, method, self.mesh, mean=self.inputs.mean, std=self.inputs.std,
        on_host=self.inputs.on_host, steps_per_epoch=self.steps_per_epoch,
        learning_rate=self.schedule, teacher_cache=self.cache_placement)

  def open_feed(self, saved: Optional[dict], start: int, rng: jax.Array) -> feeds.Feed:
    """The feed of the run's steps from update ``start`` on (:func:`feeds.open_feed`)."""
    return feeds.open_feed(self.config, self.inputs, self.frozen, self.mesh, saved=saved,
                           start=start, rng=rng, host_teacher_logits=self.host_teacher_logits)


def _place_logit_cache(config, inputs: RunInputs) -> tuple:
  """``(placement, device cache, host cache)`` of the run's teacher-logit cache
  (:func:`kdjax.teachers.logit_cache.placement`); ``(None, None, None)`` without one."""
  logits = inputs.teacher_logits
  if logits is None:
    return None, None, None
  where = logit_cache.placement(config, logits.nbytes, logit_cache.device_memory_bytes())
  if where == 'device':
    return where, logits, None
  say(f'the teacher-logit cache ({logits.nbytes / 2**30:.2f} GiB) stays in host memory; each '
      f'step\'s rows go to the devices with its batch')
  return where, None, logits


def prepare(config: ml_collections.ConfigDict, workdir: str, *, datasets=None,
            teacher_trajectory=None, teacher_variables=None, teacher_logits=None) -> Training:
  """Loads ``config``'s inputs (those given aside: the benchmark's synthetic ones), builds
  its method and jits its steps; writes nothing."""
  mesh = sharding.make_mesh()
  inputs = load_inputs(config, datasets=datasets, teacher_trajectory=teacher_trajectory)
  schedule = lr_schedule(config, inputs)
  method = methods.build(config, method_inputs(config, inputs, schedule))
  inputs = load_teacher_inputs(config, inputs, mesh, teacher_variables=teacher_variables,
                               teacher_logits=teacher_logits)
  placement, device_logits, host_logits = _place_logit_cache(config, inputs)
  frozen = step_lib.frozen_inputs(
      method, inputs.teacher_variables, teacher_logits=device_logits,
      quiz_pool=inputs.quiz_pool if method.needs_quiz else None)
  steps_per_epoch = inputs.steps_per_epoch(config.batch_size)
  run = Training(config, workdir, inputs, method, mesh, None, frozen, host_logits, placement,
                 schedule, steps_per_epoch, config.num_epochs * steps_per_epoch)
  _say_setup(config, inputs, steps_per_epoch)
  return run._replace(steps=run.steps_for(method))


def _say_setup(config, inputs: RunInputs, steps_per_epoch: int) -> None:
  n_dev = jax.device_count()
  held_out = f' + {config.data.holdout} held out' if config.data.holdout else ''
  processes = f' in {jax.process_count()} processes' if jax.process_count() > 1 else ''
  say(f'{config.method}: {config.model} on {config.data.name} ({inputs.train_size} train'
      f'{held_out} / {len(inputs.test)} test images), {n_dev} {jax.devices()[0].platform} '
      f'device(s){processes}, global batch {config.batch_size} = '
      f'{config.batch_size // n_dev} per device, {steps_per_epoch} steps per epoch')


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains ``config`` in ``workdir`` (resuming if it holds a checkpoint); returns results.

  Raises :class:`Interrupted` when a signal stopped the run (its checkpoint is saved).
  """
  with interrupts.doing(f'setting up the run in {workdir}', 'its workdir was not touched'):
    run = prepare(config, workdir)
  primary = jax.process_index() == 0  # the one process that writes files and prints
  with contextlib.ExitStack() as stack:
    created = _make_workdir(workdir)
    # The lock is taken before the clean-up: a run refused because another holds the
    # workdir must never remove what that run writes.
    lock = stack.enter_context(_locked(workdir))
    stack.enter_context(interrupts.doing(f'starting or ending the run in {workdir}',
                                         'its saved checkpoints are kept'))
    stack.enter_context(_removed_on_failure(workdir, created))
    ckpt = checkpoints.Checkpointer(  # a save checks first that the workdir is still ours
        _join(workdir, 'checkpoints'), keep=config.keep_checkpoints,
        before_save=lambda: _on_process_0(lock.check, f'process 0 lost the lock on workdir '
                                                      f'{workdir!r}'))
    stack.callback(ckpt.close, quiet=True)  # after a normal end already closed: nothing to do
    state, progress = _restore_or_start(run, ckpt)
    start = int(state.step)
    feed = stack.enter_context(contextlib.closing(
        run.open_feed(progress.get('input_pipeline'), start, state.rng)))
    _evaluate_teacher(run, feed, progress)
    writer = stack.enter_context(contextlib.closing(
        MetricWriter(workdir, resume_step=start, enabled=primary)))
    stop = stack.enter_context(StopFlag())
    profiler = stack.enter_context(Profiler(workdir, config.get('profile_steps')))
    state, images_per_second, stopped_by = _train_steps(run, state, progress, feed, writer,
                                                        ckpt, stop, profiler)
    final_step = int(state.step)
    ckpt.save(final_step, state, _with_input_state(progress, feed), wait=True)
    ckpt.close()
    results = _results(run, progress, final_step, images_per_second)
    if primary:
      jsonio.write_json(_join(workdir, 'results.json'), results)
    if stopped_by is not None:
      raise Interrupted(workdir, final_step, stopped_by)
    return results


def _join(workdir: str, name: str) -> str:
  """``workdir/name``, for a local folder or an object store's URL alike."""
  return str(paths.path(workdir) / name)


def _make_workdir(workdir: str) -> bool:
  """Creates ``workdir`` if needed (an object store needs no folders); whether it was
  created now (for an object store: whether nothing was under its prefix)."""
  folder = paths.path(workdir)
  created = not folder.exists()
  try:
    folder.mkdir(parents=True, exist_ok=True)
  except OSError as e:
    raise KdjaxError(f'cannot create the workdir {workdir!r} ({e.strerror or e}); choose '
                     f'another --workdir') from None
  return created


@contextlib.contextmanager
def _removed_on_failure(workdir: str, created: bool):
  """Removes a workdir created by this run when the run fails before saving any step."""
  try:
    yield
  except BaseException:
    if created and jax.process_index() == 0 and not _saved_a_step(workdir):
      with contextlib.suppress(OSError):  # nothing worth keeping was written
        paths.path(workdir).rmtree()
    raise


def _restore_or_start(run: Training, ckpt: checkpoints.Checkpointer) -> tuple:
  """``(state, progress)`` of the newest checkpoint, or of step 0 (a workdir holding the
  results of an ended run but no checkpoint is refused); records ``config.json``."""
  config, workdir = run.config, run.workdir
  state = run.initial_state()
  progress = {'history': [], 'best_top1': None, 'best_epoch': None}
  restored = ckpt.restore_latest(checkpoints.abstract_like(state))
  if restored is not None:
    state, progress = restored
    say(f'resumed from the checkpoint at step {int(state.step)} in {workdir}')
  else:  # every process sees the workdir, so every one refuses alike
    _refuse_silent_restart(config, workdir)
  if jax.process_index() == 0:
    _record_config(config, workdir, int(state.step) if restored is not None else None)
  return state, progress


def _record_config(config: ml_collections.ConfigDict, workdir: str,
                   resumed_at: Optional[int]) -> None:
  """Writes ``config.json`` once, when the run starts at step 0 (new, or started over by
  ``config.restart``), and on a resume only where there is none (an older kdjax's workdir).
  A resume under changed result fields (:mod:`kdjax.run_fields`; the plan lets only
  ``--allow_change`` ones through) records each change in ``config_changes.jsonl``
  (:func:`kdjax.jsonio.record_changes`); ``config.json`` is kept as it was."""
  current = json.loads(config.to_json_best_effort())
  recorded = jsonio.read_run_config_or_why(workdir)[0] if resumed_at is not None else None
  if recorded is None:
    jsonio.write_json(_join(workdir, jsonio.CONFIG), current)
    return
  changes = run_fields.recorded_changes(recorded, current)
  if changes:
    jsonio.record_changes(workdir, resumed_at, changes)


def _evaluate_teacher(run: Training, feed: feeds.Feed, progress: dict) -> None:
  """The frozen teacher's test accuracy, printed and kept in ``progress['teacher']``."""
  if run.steps.teacher_eval is None:
    return
  config = run.config
  acc = feed.evaluate(run.steps.teacher_eval, {'teacher': feed.frozen.teacher})['teacher']
  progress.setdefault('teacher', acc)
  published = teacher_zoo.published_top1(config.teacher.checkpoint, config.data.name)
  say(f'teacher {config.teacher.model} ({config.teacher.checkpoint}): top-1 '
      f'{acc["top1"]:.2f}%, top-5 {acc["top5"]:.2f}% on the {len(run.inputs.test)} test images'
      + (f' (published: {published:.2f}%)' if published is not None else ''))
  warning = teacher_zoo.shortfall_warning(config.teacher.checkpoint, config.data.name,
                                          acc['top1'])
  if warning:
    say(warning)


def _train_steps(run: Training, state: TrainState, progress: dict, feed: feeds.Feed,
                 writer: MetricWriter, ckpt: checkpoints.Checkpointer, stop: StopFlag,
                 profiler: Profiler) -> tuple:
  """Updates ``state.step`` .. the last one (``config.max_steps`` or the run's end): log,
  check, evaluate, checkpoint. Returns ``(state, images/s of the last logged window, the
  signal that stopped the run or None)``."""
  config, spe = run.config, run.steps_per_epoch
  start = int(state.step)
  last = run.total_steps if config.max_steps is None else min(run.total_steps, config.max_steps)
  bar = Progress(last, start, enabled=jax.process_index() == 0, steps_per_epoch=spe,
                 num_epochs=config.num_epochs)
  window, t_window, images_per_second = [], time.perf_counter(), None
  for step in range(start, last):
    profiler.before(step)
    state, metrics = run.steps.train(state, feed.frozen, *feed.train_inputs(step))
    window.append(metrics)
    done = step + 1
    profiler.after(done, metrics)
    epoch_end = done % spe == 0
    stopping = stop.poll(done)
    checkpoint_now = done % config.checkpoint_every_steps == 0 or epoch_end or stopping
    # Metrics are fetched (and the loss checked) before every checkpoint, so a
    # non-finite state is never saved over a good one.
    if done % config.log_every_steps == 0 or checkpoint_now or done == last:
      images_per_second = _log_window(run, window, t_window, done, writer, bar, ckpt)
      window, t_window = [], time.perf_counter()
    if epoch_end:
      _end_epoch(run, state, progress, feed, writer, bar, done // spe)
    if checkpoint_now:
      writer.flush()  # the metrics of the steps it holds are kept with it
      ckpt.save(done, state, _with_input_state(progress, feed))
    if stopping:
      bar.close()
      return state, images_per_second, stop.signum
  bar.close()
  return state, images_per_second, None


def _log_window(run: Training, window: list, t_window: float, done: int, writer: MetricWriter,
                bar: Progress, ckpt: checkpoints.Checkpointer) -> float:
  """Writes the mean metrics of the steps in ``window`` (dispatched from ``t_window`` on,
  ending at update ``done``) and the images per second they took, once they are done;
  raises on the first step with a non-finite loss or gradient. Returns the images/s."""
  config = run.config
  per_step = jax.device_get(window)  # each step's metrics: name the first bad step
  means = {k: float(np.mean([m[k] for m in per_step], dtype=np.float64)) for k in per_step[0]}
  seconds = time.perf_counter() - t_window
  means['images_per_second'] = len(window) * config.batch_size / seconds
  writer.write(done, 'train', means)
  bar.update(done, (done - 1) // run.steps_per_epoch + 1, means['loss'])
  bad = _first_non_finite(per_step, first_step=done - len(per_step) + 1)
  if bad is not None:
    raise _non_finite_error(config, *bad, kept=ckpt.latest_step())
  return means['images_per_second']


def _end_epoch(run: Training, state: TrainState, progress: dict, feed: feeds.Feed,
               writer: MetricWriter, bar: Progress, epoch: int) -> None:
  """Evaluates the eval nets after ``epoch``, logs and records it; writes the trajectory
  snapshot when the epoch ends one of ``config.trajectory.stages``."""
  config, method, done = run.config, run.method, epoch * run.steps_per_epoch
  result = feed.evaluate(run.steps.eval, _eval_variables(state, method))
  _record_epoch(progress, epoch, done, result, method.eval_nets)
  for name, r in result.items():
    writer.write(done, f'test/{name}', r)
  bar.message(f'epoch {epoch}: ' + ', '.join(
      f'{name} top-1 {r["top1"]:.2f}%' for name, r in result.items()))
  if config.trajectory.stages and jax.process_index() == 0:
    net = methods.info(config.method).trained_net
    trajectory.record(run.workdir, epoch, config.num_epochs, config.trajectory.stages,
                      config.model, run.inputs.num_classes,
                      jax.device_get(_eval_variables(state, method)[net]))


class Profiler:
  """A ``jax.profiler`` trace of updates ``first..last`` (1-based, ``config.profile_steps``)
  into ``<workdir>/profile``, for TensorBoard's profile plugin (docs/performance.md);
  nothing without ``steps``. For a workdir in an object store the trace is written to a
  local temporary folder, then copied up (the profiler writes local files only)."""

  def __init__(self, workdir: str, steps: Optional[tuple]):
    self._first, self._last = steps if steps else (None, None)
    self._folder, self._tracing = _join(workdir, 'profile'), False
    self._local: Optional[tempfile.TemporaryDirectory] = None

  def __enter__(self):
    return self

  def before(self, step: int) -> None:
    """Starts the trace before update ``step + 1`` when it is the first to profile."""
    if self._first is not None and step + 1 == self._first:
      if paths.is_remote(self._folder):
        self._local = tempfile.TemporaryDirectory(prefix='kdjax_profile_')
      jax.profiler.start_trace(self._local.name if self._local else self._folder)
      self._tracing = True

  def after(self, done: int, outputs) -> None:
    """Stops the trace once update ``done``, the last to profile, has finished."""
    if self._tracing and done >= self._last:
      jax.block_until_ready(outputs)
      self._stop()

  def _stop(self) -> None:
    jax.profiler.stop_trace()
    self._tracing = False
    if self._local is not None:
      with self._local as local:
        paths.copy_tree(local, self._folder)
      self._local = None
    say(f'profile of updates {self._first}-{self._last} written to {self._folder}')

  def __exit__(self, *exc):
    if self._tracing:
      self._stop()


@contextlib.contextmanager
def _locked(workdir: str):
  """Holds ``workdir``'s :class:`WorkdirLock` (process 0 takes it, see
  :func:`_on_process_0`); yields it."""
  lock = WorkdirLock(workdir)
  _on_process_0(lock.acquire, f'workdir {workdir!r} is in use by another run (process 0 '
                f'could not lock it)')
  try:
    yield lock
  finally:
    lock.release()


def _on_process_0(action: Callable[[], None], elsewhere: str) -> None:
  """Runs ``action`` on process 0. With several processes all of them learn whether it
  raised :class:`KdjaxError` and raise too (the others with the line ``elsewhere``), so
  none waits in a collective for a process that has left."""
  error = None
  if jax.process_index() == 0:
    try:
      action()
    except KdjaxError as e:
      error = e
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
    failed = int(multihost_utils.broadcast_one_to_all(np.int32(error is not None)))
    if failed and error is None:
      error = KdjaxError(elsewhere)
  if error is not None:
    raise error


def _saved_a_step(workdir: str) -> bool:
  """Whether a checkpoint step was saved in ``workdir`` (Orbax names step folders by number)."""
  directory = paths.path(workdir) / 'checkpoints'
  return directory.is_dir() and any(p.name.isdigit() for p in directory.iterdir())


def _refuse_silent_restart(config: ml_collections.ConfigDict, workdir: str) -> None:
  """A workdir whose run ended (``results.json``) or evaluated an epoch but holds no
  checkpoint any more would be overwritten from step 0: refused unless ``config.restart``."""
  folder = paths.path(workdir)
  ended = (folder / 'results.json').exists()
  metrics = folder / 'metrics.jsonl'
  evaluated = metrics.exists() and '"split": "test/' in metrics.read_bytes().decode(
      errors='replace')
  if (ended or evaluated) and not config.get('restart'):
    raise KdjaxError(f'workdir {workdir!r} holds the results of an earlier run but no '
                     f'checkpoint to resume from; --config.restart=true starts over and '
                     f'overwrites them, or choose another --workdir')


def _with_input_state(progress: dict, feed: feeds.Feed) -> dict:
  """``progress`` with the host pipeline's position of the next batch as its
  ``'input_pipeline'`` (kept in the checkpoint); unchanged for data held on the devices."""
  position = feed.state()
  if position is not None:
    progress['input_pipeline'] = position
  return progress


def _guarded(name: str) -> bool:
  return name == 'loss' or name.startswith(('loss/', 'grad_norm/'))


def _first_non_finite(per_step: list, first_step: int) -> Optional[tuple[int, dict]]:
  """``(step, {metric: value})`` of the first step whose loss, loss terms or gradient
  norms are not all finite."""
  for step, metrics in enumerate(per_step, first_step):
    bad = {k: float(v) for k, v in metrics.items()
           if _guarded(k) and not np.all(np.isfinite(v))}
    if bad:
      return step, bad
  return None


def _non_finite_error(config, step: int, bad: dict, *, kept: Optional[int]) -> KdjaxError:
  """The one line that stops a run whose loss (or gradient) went NaN/inf at ``step``."""
  injected = (' (NaN images injected by config.debug.nan_at_step)'
              if (config.get('debug') or {}).get('nan_at_step') == step else '')
  what = 'the loss' if any(not k.startswith('grad_norm/') for k in bad) else 'the gradients'
  where = (f'the checkpoint of step {kept} is kept' if kept is not None
           else 'no checkpoint was written')
  return KdjaxError(
      f'{what} became non-finite at step {step}{injected}: '
      f'{", ".join(f"{k}={v}" for k, v in bad.items())}; stopped before saving it, {where}; '
      f'lower config.optimizer.lr or look for bad inputs, then rerun to resume')


def _eval_variables(state: TrainState, method) -> dict:
  return {name: {'params': state.params[name], 'batch_stats': state.batch_stats[name]}
          for name in method.eval_nets}


def _record_epoch(progress: dict, epoch: int, step: int, result: dict, eval_nets) -> None:
  progress['history'].append({'epoch': epoch, 'step': step, **result})
  top1 = result[eval_nets[0]]['top1']
  if progress['best_top1'] is None or top1 > progress['best_top1']:
    progress['best_top1'], progress['best_epoch'] = top1, epoch


def _results(run: Training, progress: dict, step: int, images_per_second) -> dict:
  history = progress['history']
  last = history[-1] if history else None
  net = run.method.eval_nets[0]
  return {
      'method': run.config.method,
      'model': run.config.model,
      'dataset': run.config.data.name,
      'num_classes': run.inputs.num_classes,
      'classes': list(run.inputs.train.classes),
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
