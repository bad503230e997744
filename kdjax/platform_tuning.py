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
* ``residual_outputs``: ``'auto'`` (default) is ``'materialize'`` when JAX computes on the
  CPU and ``'fuse'`` elsewhere. XLA:CPU computes the weight gradient of a convolution from a
  transposed copy of its input, and fuses into that copy every cheap elementwise op that made
  the input: through the identity shortcuts of a ResNet stage that is BatchNorm, add and ReLU
  of *every earlier block*, re-read in transposed (cache-hostile) order for each copy. On a
  2-core x86 CPU this was 40% of resnet32x4's train step. ``'materialize'`` ends each
  residual block with :func:`kdjax.models.layers.materialize`, which XLA cannot fuse
  through, so the copy reads one stored tensor: resnet32x4's step went from 16.8 to 22
  images/s (``benchmarks/throughput.py``). Outputs are the same bit for bit, gradients to
  float rounding. ``'fuse'`` leaves XLA's fusion alone; on GPUs and TPUs there is nothing to
  gain. :func:`materialize_residuals` resolves the setting to the ``materialize_residuals``
  attribute of the models a run creates; nothing is read while a model is traced.
* ``xla_flags``: extra ``XLA_FLAGS``, appended to the environment's.

XLA reads ``XLA_FLAGS`` once, when JAX starts its backend, so :func:`apply` must run before
anything touches a device (flags set later are silently ignored by XLA): ``kdjax.main`` calls
it right after reading the config, the tests in their ``conftest.py``. Flags already in the
environment win (a user's ``XLA_FLAGS=--xla_cpu_experimental_ynn_fusion_type=...`` is left
alone). ``XLA_FLAGS`` is the only process-wide setting kdjax makes.
"""

from __future__ import annotations

import os

import ml_collections

from kdjax.errors import KdjaxError

CPU_CONV = ('auto', 'eigen', 'ynnpack')
RESIDUAL_OUTPUTS = ('auto', 'materialize', 'fuse')
_YNN_FLAG = '--xla_cpu_experimental_ynn_fusion_type'
_EIGEN_CONV = f'{_YNN_FLAG}=-individual_convolution'


def default_config() -> ml_collections.ConfigDict:
  """``config.platform``: Eigen convolutions and stored residual outputs on CPU."""
  return ml_collections.ConfigDict({'cpu_conv': 'auto', 'residual_outputs': 'auto',
                                    'xla_flags': ''})


def materialize_residuals(config: ml_collections.ConfigDict | None = None) -> bool:
  """Whether the run's models end residual blocks in :func:`kdjax.models.layers.materialize`.

  ``config.platform.residual_outputs`` (see above); ``'auto'`` asks JAX's default backend,
  so call it once the backend may start (when the run builds its models), not earlier.
  """
  value = _choice(_block(config), 'residual_outputs', RESIDUAL_OUTPUTS)
  if value == 'auto':
    import jax  # pylint: disable=import-outside-toplevel
    return jax.default_backend() == 'cpu'
  return value == 'materialize'


def _choice(block: ml_collections.ConfigDict, name: str, choices: tuple[str, ...]) -> str:
  value = block.get(name, 'auto')
  if value not in choices:
    raise KdjaxError(f'config.platform.{name} must be one of {", ".join(choices)}, '
                     f'got {value!r}')
  return value


def _jaxlib_knows_ynn_convolution() -> bool:
  try:
    import jaxlib  # pylint: disable=import-outside-toplevel
    version = tuple(int(p) for p in jaxlib.__version__.split('.')[:2])
  except (ImportError, AttributeError, ValueError):  # pragma: no cover
    return False
  return version >= (0, 10)


def _block(config: ml_collections.ConfigDict | None) -> ml_collections.ConfigDict:
  block = config.get('platform') if config is not None else None
  return block if block is not None else default_config()


def xla_flags(config: ml_collections.ConfigDict | None = None) -> list[str]:
  """The XLA flags ``config.platform`` asks for (defaults without the block)."""
  block = _block(config)
  cpu_conv = _choice(block, 'cpu_conv', CPU_CONV)
  flags = []
  if cpu_conv in ('auto', 'eigen') and _jaxlib_knows_ynn_convolution():
    flags.append(_EIGEN_CONV)
  flags += (block.get('xla_flags', '') or '').split()
  return flags


def apply(config: ml_collections.ConfigDict | None = None) -> list[str]:
  """Appends :func:`xla_flags` to ``XLA_FLAGS``; returns the flags it added.

  Must run before JAX starts its backend. A flag whose name is already in ``XLA_FLAGS`` is
  not added again. Also checks ``residual_outputs``, so a bad value fails before any work.
  """
  _choice(_block(config), 'residual_outputs', RESIDUAL_OUTPUTS)
  current = os.environ.get('XLA_FLAGS', '').split()
  names = {f.split('=', 1)[0] for f in current}
  added = [f for f in xla_flags(config) if f.split('=', 1)[0] not in names]
  if added:
    os.environ['XLA_FLAGS'] = ' '.join(current + added)
  return added
