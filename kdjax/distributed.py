"""Multi-process (multi-host) runs: when and how ``jax.distributed`` is started.

``python -m kdjax.main`` calls :func:`initialize` with ``config.distributed`` before anything
touches a device. With ``'auto'`` (the default) kdjax calls ``jax.distributed.initialize()``
and lets JAX detect the launch: SLURM (``srun``), Open MPI (``mpirun``), Kubernetes and every
worker of a Cloud TPU pod slice are found by JAX itself. Where JAX finds no launcher the run
is a single process. As a documented fallback for launches by hand or by a script (the tests
do this), ``KDJAX_COORDINATOR_ADDRESS`` (``host:port`` of process 0), ``KDJAX_NUM_PROCESSES``
and ``KDJAX_PROCESS_ID`` name the coordinator and the process explicitly.

``'true'`` always starts it (an error if no coordinator can be found), ``'false'`` never
does. Once started, every process sees all devices of all processes (``jax.devices()``),
feeds only its own rows of each global batch, and only process 0 prints, writes
``metrics.jsonl``, TensorBoard events, ``config.json``, ``results.json`` and the
checkpoints' metadata; Orbax checkpoints are saved and restored by all processes together.
On CPU the processes talk through gloo (``jax_cpu_collectives_implementation``).
"""

from __future__ import annotations

import os
import sys
from typing import Union

import jax

from kdjax.errors import KdjaxError

MODES = ('auto', 'true', 'false')
ENV_COORDINATOR = 'KDJAX_COORDINATOR_ADDRESS'
ENV_NUM_PROCESSES = 'KDJAX_NUM_PROCESSES'
ENV_PROCESS_ID = 'KDJAX_PROCESS_ID'


def normalize_mode(mode: Union[str, bool, None]) -> str:
  """``config.distributed`` as one of :data:`MODES` (booleans and yes/no/on/off accepted)."""
  if isinstance(mode, bool):
    return 'true' if mode else 'false'
  text = str('auto' if mode is None else mode).strip().lower()
  text = {'1': 'true', 'yes': 'true', 'on': 'true', '0': 'false', 'no': 'false',
          'off': 'false'}.get(text, text)
  if text not in MODES:
    raise KdjaxError(f'config.distributed must be auto, true or false, got {mode!r}')
  return text


def _explicit_args() -> dict:
  """Coordinator, process count and id from the ``KDJAX_*`` variables."""
  env = os.environ
  missing = [n for n in (ENV_NUM_PROCESSES, ENV_PROCESS_ID) if not env.get(n)]
  if missing:
    raise KdjaxError(f'{ENV_COORDINATOR} is set but {" and ".join(missing)} is not; set all '
                     f'three to launch processes by hand')
  try:
    num, pid = int(env[ENV_NUM_PROCESSES]), int(env[ENV_PROCESS_ID])
  except ValueError:
    raise KdjaxError(f'{ENV_NUM_PROCESSES} and {ENV_PROCESS_ID} must be integers, got '
                     f'{env[ENV_NUM_PROCESSES]!r} and {env[ENV_PROCESS_ID]!r}') from None
  if not 0 <= pid < num:
    raise KdjaxError(f'{ENV_PROCESS_ID}={pid} must be in [0, {ENV_NUM_PROCESSES}={num})')
  return dict(coordinator_address=env[ENV_COORDINATOR], num_processes=num, process_id=pid)


def initialize(mode: Union[str, bool, None] = 'auto', *, quiet_others: bool = True) -> bool:
  """Starts ``jax.distributed`` if ``mode`` and the environment ask for it.

  Must run before anything touches a device. Returns whether the run is multi-process.
  With ``quiet_others``, processes other than 0 send their standard output (summary
  tables) to ``/dev/null``; their errors still reach standard error.
  """
  mode = normalize_mode(mode)
  if mode == 'false' or jax.distributed.is_initialized():
    return jax.distributed.is_initialized() and jax.process_count() > 1
  kwargs = _explicit_args() if os.environ.get(ENV_COORDINATOR) else {}
  try:  # gloo is the default in recent JAX; older ones had no CPU collectives by default
    jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  except (AttributeError, KeyError, ValueError):  # pragma: no cover - older JAX
    pass
  try:
    jax.distributed.initialize(**kwargs)
  except ValueError as e:
    # JAX's own answer when it found no launcher and none was named: a single process.
    if not kwargs and 'coordinator_address' in str(e):
      if mode == 'true':
        raise KdjaxError(f'config.distributed is true but no multi-process launch was found: '
                         f'set {ENV_COORDINATOR}, {ENV_NUM_PROCESSES} and {ENV_PROCESS_ID}, or '
                         f'launch with srun / mpirun / on every worker of a TPU pod '
                         f'slice') from None
      return False
    raise _start_error(kwargs, e) from None
  except RuntimeError as e:  # e.g. a device was used before, or the coordinator is unreachable
    raise _start_error(kwargs, e) from None
  if quiet_others and jax.process_index() != 0:
    sys.stdout = open(os.devnull, 'w')  # pylint: disable=consider-using-with
  return jax.process_count() > 1


def _start_error(kwargs: dict, error: Exception) -> KdjaxError:
  first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
  where = kwargs.get('coordinator_address', 'the launch JAX detected')
  return KdjaxError(f'could not start jax.distributed ({where}): {first}')


def is_primary() -> bool:
  """Whether this process writes the run's files and prints (process 0)."""
  return jax.process_index() == 0
