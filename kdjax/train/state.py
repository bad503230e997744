"""The train state: one pytree holding every learning net and the position in the run.

``params[name]``, ``batch_stats[name]`` and ``opt_state[name]`` exist for every learning
net of the method, even when there is only one. ``step`` fixes the data position (the
batch order is a function of seed and epoch, see :mod:`kdjax.data.order`) and ``rng`` is
the root key from which every step folds its own. A frozen teacher is not part of it.
"""

from __future__ import annotations

from typing import Any

import flax
import jax
import jax.numpy as jnp

from kdjax.methods.base import Method


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  rng: jax.Array  # raw uint32 key (jax.random.PRNGKey), checkpointable as a plain array
  params: dict[str, Any]
  batch_stats: dict[str, Any]
  opt_state: dict[str, Any]
  extra: dict[str, Any] = flax.struct.field(default_factory=dict)  # method state (CRD bank)


def init_state(method: Method, seed: int, image_shape: tuple[int, ...]) -> TrainState:
  """Initialises every learning net of ``method`` from ``seed`` (each net its own key)."""
  root = jax.random.PRNGKey(seed)
  image = jax.ShapeDtypeStruct((2,) + tuple(image_shape), jnp.float32)
  params, batch_stats, opt_state = {}, {}, {}
  for i, (name, net) in enumerate(method.nets.items()):
    x = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype),
                     method.sample_inputs.get(name, image))
    variables = net.init(jax.random.fold_in(jax.random.fold_in(root, 1), i), x, train=False)
    params[name] = variables['params']
    batch_stats[name] = variables.get('batch_stats', {})
    opt_state[name] = method.optimizers[name].init(params[name])
  extra = method.init_extra(jax.random.fold_in(root, 2)) if method.init_extra else {}
  return TrainState(jnp.zeros((), jnp.int32), root, params, batch_stats, opt_state, extra)
