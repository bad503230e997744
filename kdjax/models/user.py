"""Your own networks: ``config.model`` (or ``config.teacher.model``) ``'package.module:factory'``.

The module is imported as Python imports any (installed, or its folder on ``PYTHONPATH``;
``python -m kdjax.main`` also finds modules under the working directory), and the factory is
called as ``factory(num_classes=N)``, with ``dtype=``, ``bn_groups=`` and
``materialize_residuals=`` too where its signature takes them (or ``**kwargs``). It returns a
Flax linen module whose ``__call__(x, train: bool)`` maps a batch of normalised NHWC images to

* a :class:`~kdjax.models.ModelOutput` (``logits``, ``features``, ``preact_features``,
  ``embedding``: the zoo's contract, :mod:`kdjax.models.base`), or
* the logits alone, an array ``(batch, num_classes)``, which kdjax reads as
  ``ModelOutput(logits, features=(), preact_features=None, embedding=None)``.

Methods that read only logits (vanilla, KD, DKD, SLKD, SKD, the teacher-logit cache) train and
distil any such net; the others state the outputs they read (``MethodInfo.net_outputs``) and
:func:`check_outputs` refuses a net without them, or one that cannot take the run's images,
with one line. The net's variables keep the names the user's module gives them.
"""

from __future__ import annotations

import importlib
import inspect
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from kdjax.errors import KdjaxError
from kdjax.models.base import ModelOutput

# What each name of MethodInfo.net_outputs asks of a net, for the line that refuses one.
OUTPUTS = {
    'features': 'features (a non-empty sequence of NHWC stage outputs)',
    'preact_features': 'preact_features (the stage outputs before their last ReLU)',
    'embedding': 'embedding (the pooled pre-logit vectors, (batch, dim))',
    'start': "a `start` argument (run only stages start.., SFTN's student branches)",
}


def is_spec(name: str) -> bool:
  """Whether a model name is a user factory ``module.path:factory`` (zoo names have no ``:``)."""
  return ':' in name


def _reason(error: BaseException) -> str:
  text = (str(error).strip().splitlines() or [''])[0][:200]
  return f'{type(error).__name__}: {text}' if text else type(error).__name__


def factory(spec: str, field: str = 'config.model') -> Callable[..., Any]:
  """The callable ``spec`` (``module.path:factory``) names; one-line errors for a bad spec,
  a module that does not import, a missing or non-callable factory."""
  module_name, _, attr = spec.partition(':')
  if not module_name or not attr.isidentifier():
    raise KdjaxError(f'{field} {spec!r} is neither a zoo model nor module.path:factory (e.g. '
                     f'my_package.nets:make_net)')
  try:
    module = importlib.import_module(module_name)
  except Exception as e:  # pylint: disable=broad-except  # the user's code may raise anything
    raise KdjaxError(f'{field} {spec!r}: cannot import {module_name} ({_reason(e)}); install '
                     f'it or put its folder on PYTHONPATH') from None
  made = getattr(module, attr, None)
  if not callable(made):
    raise KdjaxError(f'{field} {spec!r}: module {module_name} has no callable {attr} '
                     f'(a factory returning a flax.linen Module)')
  return made


def call_factory(make: Callable[..., Any], kwargs: dict) -> Any:
  """``make(**kwargs)`` with only the keyword arguments its signature takes (all of them with
  ``**kwargs``)."""
  params = inspect.signature(make).parameters
  if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
    kwargs = {k: v for k, v in kwargs.items() if k in params}
  return make(**kwargs)


class UserNet(nn.Module):
  """A user's module under kdjax's contract: its output as a :class:`ModelOutput`."""
  net: nn.Module

  def setup(self):
    nn.share_scope(self, self.net)  # the user's variables keep their own names

  def __call__(self, x, train: bool = False, **kwargs) -> ModelOutput:
    out = self.net(x, train=train, **kwargs)
    if isinstance(out, ModelOutput):
      return out
    if isinstance(out, jax.Array):
      return ModelOutput(out, (), None, None)
    raise KdjaxError(f'{type(self.net).__name__} returns a {type(out).__name__}, neither '
                     f'logits nor a kdjax.models.ModelOutput')


def create(spec: str, kwargs: dict) -> UserNet:
  """The user's net ``spec`` built by its factory with ``kwargs`` (``num_classes``, ...)."""
  make = factory(spec)
  try:
    net = call_factory(make, kwargs)
  except Exception as e:  # pylint: disable=broad-except
    raise KdjaxError(f'{spec}: the factory called with num_classes={kwargs["num_classes"]} '
                     f'failed ({_reason(e)})') from None
  if not isinstance(net, nn.Module):
    raise KdjaxError(f'{spec} returned a {type(net).__name__}, not a flax.linen Module')
  return UserNet(net)


def check_outputs(net: UserNet, spec: str, image_shape: Sequence[int], num_classes: int,
                  needs: Sequence[str], method: str) -> None:
  """Raises one line unless ``net`` takes images of ``image_shape`` and returns what ``needs``
  (names of :data:`OUTPUTS`) asks: ``method`` reads them."""
  x = jax.ShapeDtypeStruct((2,) + tuple(image_shape), jnp.float32)
  try:
    variables = jax.eval_shape(lambda x: net.init(jax.random.key(0), x, train=False), x)
    out = jax.eval_shape(lambda v, x: net.apply(v, x, train=False), variables, x)
  except KdjaxError as e:
    raise KdjaxError(f'{spec}: {e}') from None
  except Exception as e:  # pylint: disable=broad-except
    size = 'x'.join(str(d) for d in image_shape)
    raise KdjaxError(f'{spec} cannot take {size} images (config.data.image_size): '
                     f'{_reason(e)}') from None
  shape = getattr(out.logits, 'shape', None)
  if shape != (2, num_classes):
    raise KdjaxError(f'{spec} returns logits of shape {shape} for 2 images, expected '
                     f'(2, {num_classes}): its head must have num_classes outputs')
  lacking = [name for name in needs if not _has(net, out, name)]
  if lacking:
    raise KdjaxError(f'{method} reads {OUTPUTS[lacking[0]]} of its nets, and {spec} returns '
                     f'none: return a kdjax.models.ModelOutput with it, or choose a method '
                     f'that reads only logits (kd, dkd, slkd, skd)')


def _has(net: UserNet, out: ModelOutput, name: str) -> bool:
  """Whether ``net`` (whose output shapes are ``out``) gives output ``name``."""
  if name == 'start':
    return 'start' in inspect.signature(type(net.net).__call__).parameters
  value = getattr(out, name)
  if name == 'embedding':
    return value is not None and len(value.shape) == 2
  return bool(value) and all(len(f.shape) == 4 for f in value)
