"""``--dry-run --trace``: a run's train step traced on abstract inputs, before any run starts.

:func:`trace_run` builds the run's method as the loop does (:func:`kdjax.methods.build`), but
from what the config alone says: the dataset's size and classes (:data:`DATASETS`, no data
read), the teacher's variables as shapes (``models.variable_shapes``: no checkpoint read, no
download), the train state as shapes (``jax.eval_shape`` of
:func:`~kdjax.train.state.init_state`), and the step's arguments as ``jax.ShapeDtypeStruct``
(the whole training set held on the devices, or one host batch of ImageNet). The run's own
jitted step (:func:`kdjax.train.step.make_run_train_step`) is then lowered on them: a method
that cannot be built or traced on the preset's shapes fails here, in one line. It reports

* each net's parameter count (the learning nets, and the frozen teacher);
* the step's GFLOP per training image: XLA's cost analysis of the lowered step divided by
  the global batch (forward, backward and optimizer of every net, the teacher's forward);
* with ``compile=True``, the compiled step's memory per device (XLA's memory analysis:
  arguments + outputs + temporaries - donated aliases, :func:`step_memory_bytes`), at the
  preset's batch on this process's devices; the figure is the backend's (XLA:CPU's buffer
  assignment on a CPU, not a GPU's), ``None`` where the backend reports none.

What stands in for data: CRD's sampler gets balanced labels of the dataset's size (the
negatives' count, not their classes, shapes the step); SKD's recorded teacher trajectory is
``max(config.teacher.trajectory_stages, 2)`` snapshots of the teacher's shapes; normalisation
constants are ImageNet's (values, not shapes). The teacher-logit cache
(``config.teacher.cache``) is traced where the run would place it.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from kdjax import data, methods, models
from kdjax.data import host_pipeline
from kdjax.errors import KdjaxError
from kdjax.sharding import make_mesh
from kdjax.teachers import logit_cache
from kdjax.methods.base import BuildInputs
from kdjax.train import optim, step as step_lib
from kdjax.train.loop import check_config
from kdjax.train.state import init_state

# config.data.name -> (training images, classes): what shapes a step, without reading the
# data (digits: the fixed split of kdjax/data/sources.py; ImageNet: ILSVRC-2012's train).
DATASETS = {'digits': (1437, 10), 'cifar10': (50000, 10), 'cifar100': (50000, 100),
            'imagenet': (1281167, 1000)}


class Trace(NamedTuple):
  """What ``--dry-run --trace`` prints for one run."""
  params: dict  # net name -> parameter count (the learning nets, then 'teacher')
  gflop_per_image: float  # XLA's cost analysis of the step / the global batch
  batch_per_device: int
  memory_bytes: Optional[float]  # the compiled step's, per device; None: not compiled/known


def step_memory_bytes(compiled) -> float:
  """The step's own buffers on one device, from XLA's memory analysis of the compiled step:
  arguments (state, frozen inputs, data) + outputs + temporaries, minus what donation aliases
  (outputs written into argument buffers); NaN where the backend has no analysis."""
  mem = compiled.memory_analysis()
  if mem is None:  # pragma: no cover - a backend without the analysis
    return float('nan')
  return float(mem.argument_size_in_bytes + mem.output_size_in_bytes
               + mem.temp_size_in_bytes - mem.alias_size_in_bytes)


def cost_flops(stage) -> float:
  """XLA's FLOP count of a lowered or compiled computation (NaN where none is reported)."""
  cost = stage.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost.get('flops', float('nan'))) if cost else float('nan')


def _abstract(tree):
  return jax.tree.map(lambda a: jax.ShapeDtypeStruct(np.shape(a), jnp.result_type(a)), tree)


def _count(tree) -> int:
  return int(sum(np.prod(leaf.shape) for leaf in jax.tree.leaves(tree)))


def _build(config: ml_collections.ConfigDict, train_size: int, num_classes: int,
           image_shape: tuple, schedule):
  """The run's method and the teacher's variables as shapes (:class:`BuildInputs` as the
  loop fills it, with the stand-ins of the module docstring)."""
  needs = methods.info(config.method).inputs(config)
  teacher_shapes = None
  if methods.info(config.method).uses_teacher:
    teacher_shapes = models.variable_shapes(
        models.create(config.teacher.model, num_classes, zoo=config.zoo), image_shape)
  trajectory = None
  if 'teacher_trajectory' in needs:
    k = max(config.teacher.trajectory_stages, 2)
    trajectory = jax.tree.map(lambda s: jax.ShapeDtypeStruct((k,) + s.shape, s.dtype),
                              teacher_shapes)
  n_dev = jax.device_count()
  method = methods.build(config, BuildInputs(
      num_classes=num_classes,
      optimizer=optim.sgd(config.optimizer, schedule),
      image_shape=image_shape, dtype=jnp.dtype(config.dtype),
      bn_groups=n_dev if config.bn_stats == 'per_device' else 1,
      train_labels=(np.arange(train_size) % num_classes).astype(np.int32)
      if 'train_labels' in needs else None,
      teacher_trajectory=trajectory, zoo=config.zoo))
  return method, teacher_shapes


def _frozen_and_cache(config, method, teacher_shapes, train_size: int, num_classes: int):
  """The step's frozen inputs as shapes, where the teacher-logit cache sits (None: no cache)
  and the shape of a host-held cache's rows per step."""
  frozen = _abstract(step_lib.frozen_inputs(method, teacher_shapes))
  if method.needs_quiz:
    frozen = frozen.replace(quiz_pool=jax.ShapeDtypeStruct((config.data.holdout,), jnp.int32))
  if not (config.teacher.cache and method.teacher is not None):
    return frozen, None, ()
  dtype = jnp.dtype(config.teacher.cache_dtype)
  shape = (train_size + config.data.holdout,
           data.num_variants(config.data.crop_padding, config.data.flip), num_classes)
  placement = logit_cache.placement(config, int(np.prod(shape)) * dtype.itemsize,
                                    logit_cache.device_memory_bytes())
  if placement == 'device':
    frozen = frozen.replace(teacher_logits=jax.ShapeDtypeStruct(shape, dtype))
    return frozen, placement, ()
  return frozen, placement, (jax.ShapeDtypeStruct((config.batch_size, num_classes), dtype),)


def _data_args(config, train_size: int, image_shape: tuple, host: bool) -> tuple:
  """``(images, labels, indices)`` of the step: one host batch, or the whole training set
  held on the devices and the batch's indices."""
  batch, i32 = config.batch_size, jnp.int32
  rows = batch if host else train_size + config.data.holdout
  return (jax.ShapeDtypeStruct((rows,) + image_shape, jnp.uint8),
          jax.ShapeDtypeStruct((rows,), i32), jax.ShapeDtypeStruct((batch,), i32))


def trace_run(config: ml_collections.ConfigDict, *, compile: bool = False) -> Trace:
  """Builds ``config``'s method and lowers (with ``compile``, also compiles) its train step
  on abstract inputs (the module docstring); raises :class:`KdjaxError` in one line for a run
  that cannot be built or traced."""
  if config.data.name not in DATASETS:
    raise KdjaxError(f'cannot trace a run on {config.data.name!r}: its size is not known '
                     f'(kdjax.train.trace.DATASETS)')
  check_config(config)  # the training loop's own fields (the batch over the devices, ...)
  total, num_classes = DATASETS[config.data.name]
  train_size = total - config.data.holdout
  steps_per_epoch = max(train_size // config.batch_size, 1)
  host = config.data.name in data.HOST_DATASETS
  image_shape = ((config.data.image_size, config.data.image_size, 3) if host
                 else models.CIFAR_IMAGE_SHAPE)
  try:
    schedule = optim.lr_schedule(config.optimizer, steps_per_epoch, config.num_epochs)
    method, teacher_shapes = _build(config, train_size, num_classes, image_shape, schedule)
    frozen, placement, rows = _frozen_and_cache(config, method, teacher_shapes, train_size,
                                                num_classes)
    state = jax.eval_shape(lambda: init_state(method, config.seed, image_shape))
    step = step_lib.make_run_train_step(
        config, method, make_mesh(), steps_per_epoch=steps_per_epoch, learning_rate=schedule,
        mean=host_pipeline.IMAGENET_MEAN, std=host_pipeline.IMAGENET_STD, on_host=host,
        teacher_cache=placement)
    lowered = step.lower(state, frozen, *_data_args(config, train_size, image_shape, host),
                         *rows)
  except (ValueError, TypeError) as e:  # a shape mismatch inside the method's loss
    raise KdjaxError(f'{config.method} cannot trace its step on {config.model} <- '
                     f'{config.teacher.model} ({config.data.name}): '
                     f'{" ".join(str(e).split())}') from None
  params = {name: _count(p) for name, p in state.params.items()}
  if teacher_shapes is not None:
    params['teacher'] = _count(teacher_shapes['params'])
  memory = step_memory_bytes(lowered.compile()) if compile else None
  return Trace(params, cost_flops(lowered) / config.batch_size / 1e9,
               config.batch_size // jax.device_count(), memory)


def describe(trace: Trace) -> str:
  """One line: parameters per net, GFLOP per image, memory per device at the batch."""
  nets = ', '.join(f'{name} {count / 1e6:.2f} M' for name, count in trace.params.items())
  memory = ('' if trace.memory_bytes is None or np.isnan(trace.memory_bytes) else
            f', {trace.memory_bytes / 2**30:.2f} GiB per device at {trace.batch_per_device} '
            f'images per device ({jax.devices()[0].platform} backend\'s memory analysis)')
  return f'parameters: {nets}; {trace.gflop_per_image:.2f} GFLOP per image{memory}'
