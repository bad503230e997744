"""Platform-specific speed settings, chosen by the platform and switchable in the config.

``config.platform`` (:func:`default_config`):

* ``cpu_conv``: which library runs XLA:CPU's convolutions. ``'auto'`` (default) is
  ``'eigen'``; ``'ynnpack'`` keeps XLA's own default of this jaxlib (YNNPACK). On a 2-core
  x86 CPU (AVX-512) Eigen's convolutions made resnet8x4's train step 25% faster and KD's
  (resnet32x4 -> resnet8x4) 31% faster: YNNPACK's filter-gradient convolutions (a 32x32
  window over a 3x3 output) are slow there (``benchmarks/throughput.py``, README). Values
  agree to float rounding (another summation order), not bit for bit. The flag is an
  ``xla_cpu_*`` flag: it changes nothing on GPUs and TPUs. It is only set for a jaxlib that
  knows it (>= 0.10; older ones use Eigen anyway).
* ``xla_flags``: extra ``XLA_FLAGS``, appended to the environment's.

XLA reads ``XLA_FLAGS`` once, when JAX starts its backend, so :func:`apply` must run before
anything touches a device: ``kdjax.main`` calls it right after reading the config. Flags
already in the environment win (a user's ``XLA_FLAGS=--xla_cpu_experimental_ynn_fusion_type=...``
is left alone).
"""

from __future__ import annotations

import os

import ml_collections

from kdjax.errors import KdjaxError

CPU_CONV = ('auto', 'eigen', 'ynnpack')
_YNN_FLAG = '--xla_cpu_experimental_ynn_fusion_type'
_EIGEN_CONV = f'{_YNN_FLAG}=-individual_convolution'


def default_config() -> ml_collections.ConfigDict:
  """``config.platform``: Eigen for CPU convolutions, no extra XLA flags."""
  return ml_collections.ConfigDict({'cpu_conv': 'auto', 'xla_flags': ''})


def _jaxlib_knows_ynn_convolution() -> bool:
  try:
    import jaxlib  # pylint: disable=import-outside-toplevel
    version = tuple(int(p) for p in jaxlib.__version__.split('.')[:2])
  except (ImportError, AttributeError, ValueError):  # pragma: no cover
    return False
  return version >= (0, 10)


def _backend_started() -> bool:
  try:
    from jax._src import xla_bridge  # pylint: disable=import-outside-toplevel
    return bool(xla_bridge.backends_are_initialized())
  except (ImportError, AttributeError):  # pragma: no cover - another JAX
    return False


def xla_flags(config: ml_collections.ConfigDict | None = None) -> list[str]:
  """The XLA flags ``config.platform`` asks for (defaults without the block)."""
  block = config.get('platform') if config is not None else None
  block = block if block is not None else default_config()
  cpu_conv = block.get('cpu_conv', 'auto')
  if cpu_conv not in CPU_CONV:
    raise KdjaxError(f'config.platform.cpu_conv must be one of {", ".join(CPU_CONV)}, '
                     f'got {cpu_conv!r}')
  flags = []
  if cpu_conv in ('auto', 'eigen') and _jaxlib_knows_ynn_convolution():
    flags.append(_EIGEN_CONV)
  flags += (block.get('xla_flags', '') or '').split()
  return flags


def apply(config: ml_collections.ConfigDict | None = None) -> list[str]:
  """Appends :func:`xla_flags` to ``XLA_FLAGS`` (before the backend starts); returns them.

  A flag whose name is already in ``XLA_FLAGS`` is not added again. After the backend has
  started, wanting a flag that is not there yet is a :class:`KdjaxError`.
  """
  current = os.environ.get('XLA_FLAGS', '').split()
  names = {f.split('=', 1)[0] for f in current}
  added = [f for f in xla_flags(config) if f.split('=', 1)[0] not in names]
  if not added:
    return []
  if _backend_started():
    raise KdjaxError(f'XLA flags {" ".join(added)} (config.platform) must be set before JAX '
                     f'starts its backend; call kdjax.platform_tuning.apply first, or set '
                     f'XLA_FLAGS in the environment')
  os.environ['XLA_FLAGS'] = ' '.join(current + added)
  return added
