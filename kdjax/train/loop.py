"""``train_and_evaluate(config, workdir)``: the one training loop of every method.

:class:`RunSetup` builds everything a run needs before anything is written (data, the
method with the inputs it names, the teacher, the jitted steps); the config was validated by
:mod:`kdjax.plan`. The loop then resumes from the newest checkpoint in ``workdir`` if there
is one. Each
step is one jitted call; the host only computes the batch's indices, and fetches metrics
every ``config.log_every_steps`` steps. A dataset too large for the devices
(``config.data.name`` in :data:`kdjax.data.HOST_DATASETS`, e.g. ImageNet, or your own data
as :func:`kdjax.data.streams` places it) comes instead
through the host pipeline (:mod:`kdjax.data.host_pipeline`): grain workers decode and
augment each batch, which is on the devices before its step runs, and the pipeline's
position rides in every checkpoint (``progress['input_pipeline']``), so a resumed run sees
the batches an uninterrupted one would. After each epoch the eval nets are evaluated on the
test set; ``results.json`` keeps the best-epoch and the last-epoch accuracy apart.
Checkpoints are written every ``config.checkpoint_every_steps`` steps, at each epoch end
and when the run ends; SIGTERM / SIGINT stop the run after the current step with a
checkpoint and raise :class:`Interrupted`; running the same command again continues exactly
where it stopped.

Each step's metrics (loss, loss terms, gradient norms) are checked before every checkpoint:
a non-finite one stops the run naming the step and the terms, and the last good checkpoint
stays the latest. A checkpoint that cannot be written stops the run too (the previous one
stays valid). With several processes (:mod:`kdjax.distributed`) every process runs this
loop in lockstep; only process 0 writes files and prints. See ``docs/scaling.md``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from kdjax import (checkpoints, data, interrupts, jsonio, methods, platform_tuning,
                   teacher_cache, teacher_zoo, teachers, trajectory)
from kdjax.data import host_pipeline, image_sources
from kdjax.errors import KdjaxError
from kdjax.methods.base import BuildInputs
from kdjax.train import optim, step as step_lib
from kdjax.train.state import TrainState, init_state
from kdjax.train.workdir_lock import WorkdirLock
from kdjax.train.writers import MetricWriter, Progress


class _StopFlag:
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
      say('warning: the JAX preemption service is off (jax_enable_preemption_service); '
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


def say(text: str) -> None:
  """A line for the user, from process 0 only."""
  if jax.process_index() == 0:
    print(text, file=sys.stderr, flush=True)


def check_workdir(workdir: str) -> None:
  """Raises :class:`KdjaxError` unless ``workdir`` exists as a folder or can be created:
  its nearest existing parent must be a folder in which a folder can really be made (probed
  and removed; permission bits say nothing of /proc or a read-only mount, or to root)."""
  parent = os.path.abspath(workdir)
  while not os.path.exists(parent):
    parent = os.path.dirname(parent)
  if parent == os.path.abspath(workdir) and os.path.isdir(parent):
    return
  try:
    if not os.path.isdir(parent):
      raise NotADirectoryError(0, 'not a folder')
    os.rmdir(tempfile.mkdtemp(prefix='.kdjax_probe_', dir=parent))
  except OSError as e:
    raise KdjaxError(f'cannot create the workdir {workdir!r} ({parent!r}: '
                     f'{e.strerror or e}); choose another --workdir') from None


class RunSetup:
  """Everything a run needs, built before the workdir is touched.

  The datasets, the teacher's variables and its trajectory are loaded as the config says,
  unless given (the throughput benchmark passes synthetic CIFAR-sized data and a random
  teacher): the run is then the same, on those inputs. With ``config.teacher.cache`` the
  teacher-logit cache (:mod:`kdjax.teacher_cache`) is loaded, or built first, unless given as
  ``teacher_logits`` (the benchmark's random one), and joins the frozen inputs as
  ``frozen['teacher_logits']`` (the step gathers the teacher's logits from it), or, by
  :func:`kdjax.teacher_cache.placement`, stays in host memory as :attr:`host_teacher_logits`
  (the feed then sends each step's rows).
  :attr:`train_step` is the jitted step the loop runs,
  ``(state, frozen, train_images, train_labels, idx[, teacher_rows]) -> (state, metrics)``
  with the arrays of :meth:`device_arrays` and the indices of :meth:`batch_indices`, as the
  feed of :meth:`open_feed` gives them; on a host dataset
  (:attr:`host_data`) ``self.train`` / ``self.test`` are image sources
  (:mod:`kdjax.data.image_sources`) and the step is ``(state, frozen, images, labels,
  indices)`` of a batch of the host pipeline. :meth:`open_feed` gives the loop either.
  """

  def __init__(self, config: ml_collections.ConfigDict, workdir: str, *, datasets=None,
               teacher_variables=None, teacher_trajectory=None, teacher_logits=None):
    check_workdir(workdir)
    teacher_cache.check_config(config)
    self.config, self.workdir = config, workdir
    n_dev = jax.device_count()
    if config.batch_size % n_dev:
      raise KdjaxError(f'config.batch_size {config.batch_size} is not divisible by the '
                       f'{n_dev} devices')
    self.host_data = data.streams(config)
    load = _open_source if self.host_data else _load_split
    self.train, self.test = datasets or (load(config, 'train'), load(config, 'test'))
    if self.host_data:
      self.image_shape = (config.data.image_size, config.data.image_size, 3)
      self.mean, self.std = data.custom.normalisation(config, self.train)
    else:
      self.image_shape = tuple(self.train.images.shape[1:])
      self.mean, self.std = self.train.mean, self.train.std
    # Training indices (None: the whole training set) and the held-out quiz indices.
    self.train_indices, quiz_pool = None, None
    if config.data.holdout:
      if config.data.holdout >= len(self.train) - config.batch_size:
        raise KdjaxError(f'config.data.holdout {config.data.holdout} leaves less than one '
                         f'batch of the {len(self.train)} training images')
      self.train_indices, quiz_pool = data.holdout_split(self.train.labels, config.data.holdout)
    self.train_size = len(self.train) - config.data.holdout
    self.steps_per_epoch = self.train_size // config.batch_size
    if self.steps_per_epoch == 0:
      raise KdjaxError(f'config.batch_size {config.batch_size} is larger than the training '
                       f'set ({self.train_size} images)')
    self.total_steps = config.num_epochs * self.steps_per_epoch
    self.dtype = jnp.dtype(config.dtype)
    self.mesh = step_lib.make_mesh()
    self.info = methods.info(config.method)
    image_shape, zoo = self.image_shape, config.zoo
    needs = self.info.inputs(config)
    if 'teacher_trajectory' in needs and teacher_trajectory is None:
      teacher_trajectory = trajectory.load_snapshots(config.teacher.checkpoint,
                                                     config.teacher.model,
                                                     self.train.num_classes, image_shape, zoo)
    self.method = methods.build(config, BuildInputs(
        num_classes=self.train.num_classes,
        optimizer=optim.sgd(config.optimizer, self.steps_per_epoch, config.num_epochs),
        image_shape=image_shape, dtype=self.dtype,
        bn_groups=n_dev if config.bn_stats == 'per_device' else 1,
        materialize_residuals=platform_tuning.materialize_residuals(config),
        train_labels=self.train.labels if 'train_labels' in needs else None,
        teacher_trajectory=teacher_trajectory, zoo=zoo))
    if self.method.needs_quiz and quiz_pool is None:
      raise KdjaxError(f'{config.method} meta-learns on a quiz set held out from the training '
                       f'set: set config.data.holdout (e.g. 5000 for CIFAR, 144 for digits)')
    if self.method.teacher is not None and teacher_variables is None:
      teacher_variables = teachers.load_variables(
          self.teacher_path(), config.teacher.model, self.train.num_classes, image_shape, zoo,
          dataset=config.data.name, other_data=config.teacher.other_data)
    self.frozen: dict = step_lib.frozen_inputs(self.method, teacher_variables)
    self.cache_placement, self.host_teacher_logits = None, None
    if config.teacher.cache and self.method.teacher is not None:
      if teacher_logits is None:
        teacher_logits = teacher_cache.teacher_logits(config, self.method.teacher,
                                                      teacher_variables, self.train, self.mesh)
      self.cache_placement = teacher_cache.placement(
          config, teacher_logits.nbytes, teacher_cache.device_memory_bytes())
      if self.cache_placement == 'device':
        self.frozen['teacher_logits'] = teacher_logits
      else:
        self.host_teacher_logits = teacher_logits
        say(f'the teacher-logit cache ({teacher_logits.nbytes / 2**30:.2f} GiB) stays in host '
            f'memory; each step\'s rows go to the devices with its batch')
    if self.method.needs_quiz:
      self.frozen['quiz_pool'] = quiz_pool
    self.eval_batch = -(-config.eval_batch_size // n_dev) * n_dev
    norm = dict(mean=self.mean, std=self.std, dtype=self.dtype, host_batches=self.host_data)
    self.train_step = self.step_for(self.method)
    self.eval_step = step_lib.make_eval_step(self.method, self.mesh, **norm)
    self.teacher_eval_step = None
    if self.method.teacher is not None:
      self.teacher_eval_step = step_lib.make_eval_step(
          self.method, self.mesh, nets={'teacher': self.method.teacher}, **norm)
    self.idx_sharding = step_lib.data_sharded(self.mesh)
    held_out = f' + {config.data.holdout} held out' if config.data.holdout else ''
    say(f'{config.method}: {config.model} on {config.data.name} ({self.train_size} train'
        f'{held_out} / '
        f'{len(self.test)} test images), {n_dev} {jax.devices()[0].platform} device(s)'
        f'{f" in {jax.process_count()} processes" if jax.process_count() > 1 else ""}, '
        f'global batch {config.batch_size} = {config.batch_size // n_dev} per device, '
        f'{self.steps_per_epoch} steps per epoch')

  def step_for(self, method) -> Callable:
    """The jitted train step of ``method`` (the run's, or a variant of it) on this run's data,
    augmentation and schedule."""
    return step_lib.make_run_train_step(
        method, self.mesh, self.config, steps_per_epoch=self.steps_per_epoch, mean=self.mean,
        std=self.std, host_data=self.host_data, teacher_cache=self.cache_placement)

  def teacher_path(self) -> str:
    """``config.teacher.checkpoint``, a published ``mdistiller:<model>`` resolved to its
    converted folder in the cache (downloaded and converted on first use)."""
    spec = self.config.teacher.checkpoint
    if not teacher_zoo.is_zoo_spec(spec):
      return spec
    return teacher_zoo.resolve(spec, zoo_url=self.config.teacher.get('zoo_url'),
                               num_classes=self.train.num_classes)

  def initial_state(self) -> TrainState:
    """The run's state before its first step, replicated over the mesh."""
    return step_lib.put_replicated(
        init_state(self.method, self.config.seed, self.image_shape), self.mesh)

  def device_arrays(self) -> tuple:
    """``(frozen, train_images, train_labels, test_images, test_labels)`` on the devices."""
    return step_lib.put_replicated((self.frozen, self.train.images, self.train.labels,
                                    self.test.images, self.test.labels), self.mesh)

  def batch_indices(self, step: int) -> np.ndarray:
    """The training-set indices of update ``step`` (0-based), on the host."""
    idx = data.batch_indices(self.config.seed, step, self.train_size, self.config.batch_size)
    return np.asarray(idx if self.train_indices is None else self.train_indices[idx])

  def open_feed(self, saved: Optional[dict], start: int, rng: jax.Array):
    """The frozen inputs and the data of the run's steps from update ``start`` on:
    :class:`_HostFeed` on a host dataset (continuing from ``saved``, a checkpoint's
    ``progress['input_pipeline']``), else :class:`_DeviceFeed` (``rng``: the state's
    ``rng``, from which a cache kept on the host finds each step's rows)."""
    return _HostFeed(self, saved, start) if self.host_data else _DeviceFeed(self, rng)


class _DeviceFeed:
  """The splits held whole on the devices (CIFAR, digits): each step gathers its batch
  (and, with a teacher-logit cache kept in host memory, receives its rows of it)."""

  def __init__(self, run: RunSetup, rng: jax.Array):
    self.run = run
    self.frozen, self._train_images, self._train_labels, self._test_images, \
        self._test_labels = run.device_arrays()
    self._cache_rows = None
    if run.host_teacher_logits is not None:
      c = run.config
      self._cache_rows = teacher_cache.HostRows(
          run.host_teacher_logits, rng, batch_size=c.batch_size,
          crop_padding=c.data.crop_padding, flip=c.data.flip, sharding=run.idx_sharding)

  def train_inputs(self, step: int) -> tuple:
    """The train step's arguments after ``frozen`` for update ``step``."""
    idx = self.run.batch_indices(step)
    inputs = (self._train_images, self._train_labels,
              step_lib.put_rows(idx, self.run.idx_sharding))
    if self._cache_rows is not None:
      inputs += (self._cache_rows.rows(step, idx),)
    return inputs

  def evaluate(self, eval_step, variables) -> dict:
    """:func:`kdjax.train.step.evaluate` of ``variables`` on the whole test set."""
    run = self.run
    return step_lib.evaluate(eval_step, variables, self._test_images, self._test_labels,
                             batch_size=run.eval_batch, size=len(run.test), mesh=run.mesh)

  def state(self) -> None:  # the batches are a function of (seed, step): nothing to save
    return None

  def close(self) -> None:
    pass


class _HostFeed:
  """The host pipeline's batches (:mod:`kdjax.data.host_pipeline`), prefetched to the
  devices; each process reads and decodes only its rows of every batch."""

  def __init__(self, run: RunSetup, saved: Optional[dict], start: int):
    self.run, config = run, run.config
    self.frozen = step_lib.put_replicated(run.frozen, run.mesh)
    self._sharding = step_lib.data_sharded(run.mesh)
    self._train = host_pipeline.DevicePrefetch(host_pipeline.train_pipeline(
        run.train, batch_size=config.batch_size, seed=config.seed,
        num_epochs=config.num_epochs, image_size=config.data.image_size,
        worker_count=config.data.workers), self._sharding)
    # The batches are a function of (seed, step): a checkpoint without the item resumes at
    # its step; one with it is checked against this run's seed, data and batch size.
    self._train.set_state(saved if saved is not None else
                          {**self._train.get_state(), 'step': start})
    if self._train.get_state()['step'] != start:
      raise KdjaxError(f'the checkpoint of step {start} holds the input pipeline state of step '
                       f'{self._train.get_state()["step"]}; the checkpoint is damaged')

  def train_inputs(self, step: int) -> tuple:
    """The train step's arguments after ``frozen`` for update ``step`` (the next batch)."""
    assert self._train.get_state()['step'] == step, 'host batches taken out of order'
    batch = next(self._train)
    return batch['images'], batch['labels'], batch['indices']

  def evaluate(self, eval_step, variables) -> dict:
    """Accuracy of ``variables`` on every test image once (the last batch masked)."""
    run, config = self.run, self.run.config
    batches = host_pipeline.eval_pipeline(
        run.test, batch_size=run.eval_batch, image_size=config.data.image_size,
        resize_size=config.data.resize_size, worker_count=config.data.workers)
    with host_pipeline.DevicePrefetch(batches, self._sharding) as prefetched:
      return step_lib.evaluate_batches(eval_step, variables, prefetched, size=len(run.test))

  def state(self) -> dict:
    """The position of the next batch, for ``progress['input_pipeline']``."""
    return self._train.get_state()

  def close(self) -> None:
    self._train.close()


def _open_source(config: ml_collections.ConfigDict, split: str):
  if data.is_custom(config.data.name):
    return data.custom.open_source(config, split)
  return image_sources.open_split(config.data.name, split, config.data.data_dir)


def _load_split(config: ml_collections.ConfigDict, split: str) -> data.Dataset:
  if data.is_custom(config.data.name):
    return data.custom.load(config, split)
  return data.load_split(config.data.name, split, data_dir=config.data.data_dir,
                         download=config.data.download, url=config.data.url,
                         sha256=config.data.sha256)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains ``config`` in ``workdir`` (resuming if it holds a checkpoint); returns results.

  Raises :class:`Interrupted` when a signal stopped the run (its checkpoint is saved).
  """
  with interrupts.doing(f'setting up the run in {workdir}', 'its workdir was not touched'):
    run = RunSetup(config, workdir)
  created = not os.path.exists(workdir)
  try:
    os.makedirs(workdir, exist_ok=True)
  except OSError as e:
    raise KdjaxError(f'cannot create the workdir {workdir!r} ({e.strerror or e}); choose '
                     f'another --workdir') from None
  # The lock is taken outside the clean-up below: a run refused because another holds the
  # workdir must never remove what that run writes.
  with _locked(workdir), interrupts.doing(f'starting or ending the run in {workdir}',
                                          'its saved checkpoints are kept'):
    try:
      return _train(run)
    except BaseException:
      if created and jax.process_index() == 0 and not _saved_a_step(workdir):
        shutil.rmtree(workdir, ignore_errors=True)  # nothing worth keeping was written
      raise


@contextlib.contextmanager
def _locked(workdir: str):
  """Holds ``workdir``'s :class:`WorkdirLock` (process 0 takes it; with several processes
  all of them learn whether it got it, so none waits for a run that is not going to start)."""
  lock, error = WorkdirLock(workdir), None
  if jax.process_index() == 0:
    try:
      lock.acquire()
    except KdjaxError as e:
      error = e
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
    refused = int(multihost_utils.broadcast_one_to_all(np.int32(error is not None)))
    if refused and error is None:
      error = KdjaxError(f'workdir {workdir!r} is in use by another run (process 0 could not '
                         f'lock it)')
  if error is not None:
    raise error
  try:
    yield
  finally:
    lock.release()


def _saved_a_step(workdir: str) -> bool:
  """Whether a checkpoint step was saved in ``workdir`` (Orbax names step folders by number)."""
  directory = os.path.join(workdir, 'checkpoints')
  return os.path.isdir(directory) and any(name.isdigit() for name in os.listdir(directory))


def _train(run: RunSetup) -> dict:
  """Restores or starts the run's state, then trains; the checkpoint manager is closed on
  every way out (its writes finish, no library noise after kdjax's own line)."""
  ckpt = checkpoints.Checkpointer(os.path.join(run.workdir, 'checkpoints'),
                                  keep=run.config.keep_checkpoints)
  try:
    return _train_from_checkpoint(run, ckpt)
  finally:
    ckpt.close(quiet=True)  # after a normal end already closed: nothing to do


def _refuse_silent_restart(config: ml_collections.ConfigDict, workdir: str) -> None:
  """A workdir whose run ended (``results.json``) or evaluated an epoch but holds no
  checkpoint any more would be overwritten from step 0: refused unless ``config.restart``."""
  ended = os.path.exists(os.path.join(workdir, 'results.json'))
  metrics, evaluated = os.path.join(workdir, 'metrics.jsonl'), False
  if os.path.exists(metrics):
    with open(metrics, errors='replace') as f:
      evaluated = '"split": "test/' in f.read()
  if (ended or evaluated) and not config.get('restart'):
    raise KdjaxError(f'workdir {workdir!r} holds the results of an earlier run but no '
                     f'checkpoint to resume from; --config.restart=true starts over and '
                     f'overwrites them, or choose another --workdir')


def _train_from_checkpoint(run: RunSetup, ckpt: checkpoints.Checkpointer) -> dict:
  config, workdir = run.config, run.workdir
  primary = jax.process_index() == 0  # the one process that writes files and prints
  state = run.initial_state()
  progress = {'history': [], 'best_top1': None, 'best_epoch': None}
  restored = ckpt.restore_latest(checkpoints.abstract_like(state))
  if restored is not None:
    state, progress = restored
    say(f'resumed from the checkpoint at step {int(state.step)} in {workdir}')
  else:  # every process sees the workdir, so every one refuses alike
    _refuse_silent_restart(config, workdir)
  if primary:
    jsonio.write_json(os.path.join(workdir, 'config.json'),
                      json.loads(config.to_json_best_effort()))
  start = int(state.step)

  feed = run.open_feed(progress.get('input_pipeline'), start, state.rng)
  with contextlib.closing(feed):
    return _run_feed(run, ckpt, feed, state, progress, start)


def _run_feed(run: RunSetup, ckpt: checkpoints.Checkpointer, feed, state: TrainState,
              progress: dict, start: int) -> dict:
  """Evaluates the teacher (if any), then trains from update ``start`` on ``feed``."""
  config, workdir, primary = run.config, run.workdir, jax.process_index() == 0
  if run.teacher_eval_step is not None:
    acc = feed.evaluate(run.teacher_eval_step, {'teacher': feed.frozen['teacher']})['teacher']
    progress.setdefault('teacher', acc)
    published = teacher_zoo.published_top1(config.teacher.checkpoint, config.data.name)
    say(f'teacher {config.teacher.model} ({config.teacher.checkpoint}): top-1 '
        f'{acc["top1"]:.2f}%, top-5 {acc["top5"]:.2f}% on the {len(run.test)} test images'
        + (f' (published: {published:.2f}%)' if published is not None else ''))
    warning = teacher_zoo.shortfall_warning(config.teacher.checkpoint, config.data.name,
                                            acc['top1'])
    if warning:
      say(warning)

  last = run.total_steps if config.max_steps is None else min(run.total_steps, config.max_steps)
  with contextlib.closing(MetricWriter(workdir, resume_step=start, enabled=primary)) as writer:
    return _loop(run, ckpt, writer, feed, state, progress, start, last)


def _loop(run: RunSetup, ckpt, writer: MetricWriter, feed, state: TrainState,
          progress: dict, start: int, last: int) -> dict:
  """Steps ``start..last-1``: log, check, evaluate, checkpoint; then the results."""
  config, workdir, method = run.config, run.workdir, run.method
  primary = jax.process_index() == 0
  frozen = feed.frozen
  bar = Progress(last, start, enabled=primary, steps_per_epoch=run.steps_per_epoch,
                 num_epochs=config.num_epochs)
  window, t_window, stopped_by = [], time.perf_counter(), None
  images_per_second = None
  with _StopFlag() as stop:
    for step in range(start, last):
      state, metrics = run.train_step(state, frozen, *feed.train_inputs(step))
      window.append(metrics)
      done = step + 1
      epoch_end = done % run.steps_per_epoch == 0
      stopping = stop.poll(done)
      checkpoint_now = done % config.checkpoint_every_steps == 0 or epoch_end or stopping
      # Metrics are fetched (and the loss checked) before every checkpoint, so a
      # non-finite state is never saved over a good one.
      if done % config.log_every_steps == 0 or checkpoint_now or done == last:
        per_step = jax.device_get(window)  # each step's metrics: name the first bad step
        means = {k: float(np.mean([m[k] for m in per_step], dtype=np.float64))
                 for k in per_step[0]}
        seconds = time.perf_counter() - t_window
        images_per_second = len(window) * config.batch_size / seconds
        means['images_per_second'] = images_per_second
        writer.write(done, 'train', means)
        bar.update(done, (done - 1) // run.steps_per_epoch + 1, means['loss'])
        bad = _first_non_finite(per_step, first_step=done - len(per_step) + 1)
        if bad is not None:
          raise _non_finite_error(config, *bad, kept=ckpt.latest_step())
        window, t_window = [], time.perf_counter()
      if epoch_end:
        epoch = done // run.steps_per_epoch
        result = feed.evaluate(run.eval_step, _eval_variables(state, method))
        _record_epoch(progress, epoch, done, result, method.eval_nets)
        for name, r in result.items():
          writer.write(done, f'test/{name}', r)
        bar.message(f'epoch {epoch}: ' + ', '.join(
            f'{name} top-1 {r["top1"]:.2f}%' for name, r in result.items()))
        if config.trajectory.stages and primary:
          net = run.info.trained_net
          trajectory.record(workdir, epoch, config.num_epochs, config.trajectory.stages,
                            config.model, run.train.num_classes,
                            jax.device_get(_eval_variables(state, method)[net]))
      if checkpoint_now:
        ckpt.save(done, state, _with_input_state(progress, feed))
      if stopping:
        stopped_by = stop.signum
        break
  bar.close()
  final_step = int(state.step)
  ckpt.save(final_step, state, _with_input_state(progress, feed), wait=True)
  ckpt.close()
  results = _results(run, progress, final_step, images_per_second)
  if primary:
    jsonio.write_json(os.path.join(workdir, 'results.json'), results)
  if stopped_by is not None:
    raise Interrupted(workdir, final_step, stopped_by)
  return results


def _with_input_state(progress: dict, feed) -> dict:
  """``progress`` with the host pipeline's position of the next batch as its
  ``'input_pipeline'`` (kept in the checkpoint); unchanged for data held on the devices."""
  position = feed.state()
  if position is not None:
    progress['input_pipeline'] = position
  return progress


def _debug(config: ml_collections.ConfigDict, name: str):
  """``config.debug.<name>``, or ``None`` for a config without the debug block."""
  debug = config.get('debug')
  return debug.get(name) if debug is not None else None


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
              if _debug(config, 'nan_at_step') == step else '')
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


def _results(run: RunSetup, progress: dict, step: int, images_per_second) -> dict:
  history = progress['history']
  last = history[-1] if history else None
  net = run.method.eval_nets[0]
  return {
      'method': run.config.method,
      'model': run.config.model,
      'dataset': run.config.data.name,
      'num_classes': run.train.num_classes,
      'classes': list(run.train.classes),
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
