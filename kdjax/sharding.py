"""Where arrays live: the one-axis ``('data',)`` mesh, its two shardings, putting host arrays
on it, and the per-step random keys every step and the host derive alike.

Parameters and frozen inputs are replicated on every device of the mesh; a batch is split by
rows over its ``data`` axis. With several processes (:mod:`kdjax.distributed`) the mesh
spans every process's devices and each process puts only its own rows of a batch
(:func:`put_rows`).
"""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P


def make_mesh(devices=None) -> Mesh:
  """A one-axis mesh named ``data`` over all (or the given) devices."""
  return Mesh(np.asarray(devices if devices is not None else jax.devices()), ('data',))


def replicated(mesh: Mesh) -> NamedSharding:
  """A whole copy on every device of ``mesh``."""
  return NamedSharding(mesh, P())


def data_sharded(mesh: Mesh) -> NamedSharding:
  """Split by rows (the leading axis) over the devices of ``mesh``."""
  return NamedSharding(mesh, P('data'))


def put_replicated(tree, mesh: Mesh):
  """``tree`` copied to every device of ``mesh`` from this host's copy.

  Every process must hold the same values (a dataset, a teacher, an initial state). The
  leaves pass through host memory, so arrays committed to one local device (a restored
  teacher) work with several processes too, where ``jax.device_put`` of such an array onto
  another host's devices would fail.
  """
  return jax.device_put(jax.device_get(tree), replicated(mesh))


def put_rows(array, sharding: NamedSharding) -> jax.Array:
  """The global array ``array`` (identical on every process), split by rows as ``sharding``.

  Each process contributes only the rows its own devices hold
  (``jax.make_array_from_process_local_data``), so nothing crosses hosts; with one
  process this is ``jax.device_put``.
  """
  array = np.asarray(array)
  if jax.process_count() == 1:
    return jax.device_put(array, sharding)
  rows = sorted({(s[0].start or 0, len(array) if s[0].stop is None else s[0].stop)
                 for s in sharding.addressable_devices_indices_map(array.shape).values()})
  local = np.concatenate([array[start:stop] for start, stop in rows])
  return jax.make_array_from_process_local_data(sharding, local, array.shape)


def step_keys(rng: jax.Array, step) -> jax.Array:
  """``[augmentation key, loss key]`` of update ``step`` (0-based) of a run whose
  ``state.rng`` is ``rng``: the one derivation of every train step, and of the host's
  teacher-logit cache rows (:class:`kdjax.teachers.logit_cache.HostRows`)."""
  return jax.random.split(jax.random.fold_in(rng, step))
