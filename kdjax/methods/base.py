"""The contract every distillation method follows.

A method is a small graph of networks and the loss terms that connect them:

* ``nets``: the *learning* networks (student, self-learning teachers, meta-networks,
  connectors), each a Flax module whose variables are ``params`` (+ ``batch_stats``). Each
  has its own optimizer (``optimizers[name]``) and its own entries ``params[name]``,
  ``batch_stats[name]``, ``opt_state[name]`` in the train state.
* ``teacher``: an optional *frozen* zoo model; it runs in inference mode on every batch,
  outside differentiation, and its output reaches the loss as ``ctx.teacher``.
* ``sample_inputs[name]`` (for nets that do not read images, e.g. a FitNet regressor or
  ReviewKD's fusion modules): a pytree of ``jax.ShapeDtypeStruct`` to initialise the net
  with; nets absent from it are initialised on an image batch. Every net's ``__call__``
  takes ``train`` as a keyword.
* ``init_extra(key) -> dict``: the method's own state besides the nets (CRD's memory
  bank, SKD's self-learning trajectory), kept in the train state and checkpointed; a loss
  reads ``run.extra`` and may assign new values to its entries (never differentiated).
* ``frozen``: host arrays the method needs besides the teacher and never learns (SKD's
  recorded teacher trajectory); they reach every step, replicated, as
  ``ctx.frozen.method[name]`` (:class:`FrozenInputs`, next to ``ctx.frozen.teacher``, the
  teacher's variables).
* ``needs_quiz``: the method meta-learns on a quiz batch held out from the training set
  (``config.data.holdout`` examples, never trained on); each step then carries
  ``batch.quiz``, a batch drawn from that held-out part.
* ``loss(run, batch, ctx) -> (loss, terms)``: the scalar the step differentiates with
  respect to every learning net at once, and a dict of named terms to log (mdistiller's
  contract). ``run(name, x, **kwargs)`` applies learning net ``name`` in training mode and
  records its updated BatchNorm statistics. Which net learns from which is expressed with
  ``jax.lax.stop_gradient`` inside the loss.
* ``stages`` (rarely): a sequence of ``(net names, loss)`` applied one after another within
  the step, for methods in which some nets must learn before others look at them (SLKD*).
* ``eval_nets``: the nets evaluated on the test set each epoch; the first one's accuracy is
  the run's reported accuracy.
* ``eval_logits(variables, x) -> {name: logits}`` (rarely): for eval nets that cannot run on
  images alone (SFTN's student branches read the teacher's features): the test logits of
  every eval net from the inference variables ``variables[name]`` of the eval nets.

A method module has ``build(config, inputs: BuildInputs) -> Method``, ``INFO``, a
:class:`MethodInfo` with the facts the plan, the loop and the report read without building
it, and, if it has hyper-parameters, ``default_config()`` (the block ``config.<name>``).
Builders read no files: what a method needs from the data or the teacher's folder is named
in ``INFO.inputs`` and loaded by the loop into :class:`BuildInputs`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, NamedTuple, Optional

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax

from kdjax import models


class Batch(NamedTuple):
  """A training batch: normalised NHWC images, int32 labels, and the examples' indices in
  the training set (CRD's memory bank is indexed by them)."""
  images: jax.Array
  labels: jax.Array
  indices: Any = None
  quiz: Any = None  # a Batch from the held-out quiz set, for methods with ``needs_quiz``


@flax.struct.dataclass
class FrozenInputs:
  """What every train step reads and never learns, replicated on the devices."""
  teacher: Any = None  # the frozen teacher's variables (Method.teacher), or None
  method: Mapping[str, Any] = dataclasses.field(default_factory=dict)  # Method.frozen
  teacher_logits: Any = None  # the teacher-logit cache (N, V, classes) kept on the devices
  quiz_pool: Any = None  # the held-out training indices of a method that needs_quiz


class StepContext(NamedTuple):
  """What a loss may read besides the nets: the step, the epoch, randomness, the teacher's
  output and the learning rate of the run's optimizer at this step."""
  step: jax.Array  # 0-based global step
  epoch: jax.Array  # 1-based epoch of this step, as mdistiller counts for warm-ups
  rng: jax.Array
  teacher: Any = None  # the frozen teacher's ModelOutput, or None
  frozen: Any = None  # the step's FrozenInputs (ctx.frozen.method: the method's own)
  lr: Any = None  # config.optimizer's learning rate of this update (SKD's virtual step)


class BuildInputs(NamedTuple):
  """What ``build(config, inputs)`` gets besides the config: what the run knows that is no
  hyper-parameter, loaded by the loop (builders read no files)."""
  num_classes: int
  optimizer: optax.GradientTransformation  # the run's optimizer, one instance for every net
  image_shape: tuple = models.CIFAR_IMAGE_SHAPE  # (H, W, C) of the dataset's images
  dtype: Any = jnp.float32  # computation dtype of the nets
  bn_groups: int = 1  # BatchNorm statistics per group of the batch (learning nets)
  materialize_residuals: bool = False  # kdjax.platform_tuning.materialize_residuals
  train_labels: Any = None  # INFO.inputs 'train_labels': the training set's labels
  teacher_trajectory: Any = None  # INFO.inputs 'teacher_trajectory': stacked snapshots
  zoo: str = 'cifar'  # config.zoo: the model zoo of the run's nets

  def create_net(self, model: str, *, frozen: bool = False) -> nn.Module:
    """Zoo model ``model`` for this run (a frozen teacher keeps global BatchNorm groups)."""
    return models.create(model, self.num_classes, zoo=self.zoo, dtype=self.dtype,
                         bn_groups=1 if frozen else self.bn_groups,
                         materialize_residuals=self.materialize_residuals)

  def output_shapes(self, net: nn.Module) -> models.ModelOutput:
    """``net``'s output on two of this run's images, as shapes (no FLOPs)."""
    return models.output_shapes(net, self.image_shape, self.dtype)


class FollowUp(NamedTuple):
  """A run the plan adds after a method's run (SFTN: a student distilled from its teacher)."""
  role: str  # its line in the plan and the summary
  config: ml_collections.ConfigDict
  workdir: str


def _none(config, workdir=None) -> tuple:
  del config, workdir
  return ()


def _no_check(config) -> None:
  del config


def default_pair(config: Mapping) -> tuple[str, str]:
  """``(teacher model, student model)`` of a run's config (a dict, e.g. its config.json):
  a distillation's frozen teacher and trained student."""
  return (config.get('teacher') or {}).get('model', ''), config['model']


@dataclasses.dataclass(frozen=True)
class MethodInfo:
  """A method's facts, stated in its module (``INFO``) and read by the plan, the loop and
  the report without building the method."""
  label: str  # the method's name in tables and plots
  uses_teacher: bool = True  # distils from a frozen pre-trained teacher (config.teacher)
  # Its losses read only the teacher's logits (ctx.teacher.logits), never its features:
  # config.teacher.cache may stand in for the teacher's forward (kdjax/teachers/logit_cache.py).
  teacher_logits_only: bool = False
  trained_net: str = 'student'  # the net a finished run delivers, e.g. as a teacher
  # inputs(config) -> names of BuildInputs fields the builder reads ('train_labels',
  # 'teacher_trajectory'): the loop loads them.
  inputs: Callable[[ml_collections.ConfigDict], tuple] = _none
  # follow_ups(config, workdir) -> FollowUp runs the plan adds after this one.
  follow_ups: Callable[[ml_collections.ConfigDict, str], tuple] = _none
  # pair(config dict) -> (teacher, student) models that a report row compares.
  pair: Callable[[Mapping], tuple[str, str]] = default_pair
  # Extra report figures: 'kl_monitors' (loss/kl_* curves), 'eval_nets' (every eval net).
  figures: tuple = ()
  # What its losses read of the student's and teacher's outputs besides their logits (names
  # of kdjax.models.user.OUTPUTS); a user's net without them is refused (methods.build).
  net_outputs: tuple = ()
  # check(config) raises KdjaxError for a mistake in the method's own block (config.<name>);
  # the plan runs it before any run starts (kdjax.plan.validate).
  check: Callable[[ml_collections.ConfigDict], None] = _no_check


@dataclasses.dataclass(frozen=True)
class Method:
  """A distillation method (see the module docstring)."""
  name: str
  nets: Mapping[str, nn.Module]
  optimizers: Mapping[str, optax.GradientTransformation]
  loss: Callable[..., tuple[jax.Array, dict[str, jax.Array]]]
  eval_nets: tuple[str, ...] = ('student',)
  teacher: Optional[nn.Module] = None
  sample_inputs: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  labels: Mapping[str, str] = dataclasses.field(default_factory=dict)  # eval nets' names in tables
  init_extra: Optional[Callable[[jax.Array], dict]] = None
  # Optional sequential stages ((net names, loss), ...): each stage's gradient is taken
  # with respect to its nets only, after the previous stages' updates were applied. Empty:
  # one stage, ``loss`` over all nets (the fused step of every method but SLKD*).
  stages: tuple = ()
  # Optional: computes every eval net's test logits at once (see the module docstring).
  eval_logits: Optional[Callable[..., Mapping[str, jax.Array]]] = None
  frozen: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  needs_quiz: bool = False

  def update_stages(self) -> tuple:
    return self.stages or ((tuple(self.nets), self.loss),)


class LearningNets:
  """The learning nets of one step, as a loss sees them (its ``run`` argument):
  ``run(name, x, **kwargs)`` applies learning net ``name`` in training mode.

  Holds the nets' params and BatchNorm statistics of one step; each call threads the
  statistics it updated into the next call of the same net, and ``batch_stats`` returns
  them all after the loss ran.
  """

  def __init__(self, nets: Mapping[str, nn.Module], params, batch_stats, extra=None):
    self._nets = nets
    self._params = params
    self.batch_stats = dict(batch_stats)
    self.extra = dict(extra or {})

  def params(self, name: str):
    """The parameters of net ``name`` this step differentiates (or holds fixed)."""
    return self._params[name]

  def __call__(self, name: str, x: jax.Array, *, update_stats: bool = True, params=None,
               **kwargs):
    """Applies net ``name`` in training mode (batch statistics).

    With ``update_stats=False`` the net still normalises with the batch's statistics but
    its running estimates are left as they are (a second look at the same batch).
    ``params`` replaces the net's parameters for this call (a virtual, look-ahead copy).
    """
    variables = {'params': self._params[name] if params is None else params}
    with jax.named_scope(name):  # the net's operations carry its name in profiles
      if not self.batch_stats.get(name):
        return self._nets[name].apply(variables, x, train=True, **kwargs)
      variables['batch_stats'] = self.batch_stats[name]
      out, updates = self._nets[name].apply(variables, x, train=True, mutable=['batch_stats'],
                                            **kwargs)
    if update_stats:
      self.batch_stats[name] = updates['batch_stats']
    return out


def student_and_teacher(config, inputs: BuildInputs):
  """The student ``config.model`` (learning) and the frozen teacher ``config.teacher.model``."""
  return inputs.create_net(config.model), inputs.create_net(config.teacher.model, frozen=True)
