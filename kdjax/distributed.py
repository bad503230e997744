"""Multi-process (multi-host) runs: when and how ``jax.distributed`` is started.

``python -m kdjax.main`` calls :func:`initialize` with ``config.distributed`` before anything
touches a device. With ``'auto'`` (the default) the distributed runtime starts when the
environment is a multi-process launch:

* ``KDJAX_COORDINATOR_ADDRESS`` (``host:port`` of process 0), ``KDJAX_NUM_PROCESSES`` and
  ``KDJAX_PROCESS_ID`` are set: a launch by hand or by a script (the tests do this);
* SLURM, ``srun`` with more than one task (``SLURM_NTASKS`` > 1): JAX reads the coordinator,
  the process count and the process id from SLURM's variables;
* Open MPI, ``mpirun -n N`` with N > 1;
* a Cloud TPU VM: every worker of a pod slice (JAX asks the TPU metadata server).

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
from typing import Optional, Union

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


def _int_env(name: str, default: int = 1) -> int:
  try:
    return int(os.environ.get(name, default))
  except ValueError:
    return default


def detect_cluster() -> Optional[str]:
  """The multi-process launcher this process runs under, or ``None``.

  ``'env'`` (the ``KDJAX_*`` variables), ``'slurm'``, ``'ompi'`` or ``'tpu'``.
  """
  env = os.environ
  if env.get(ENV_COORDINATOR):
    return 'env'
  if 'SLURM_JOB_ID' in env and 'SLURM_STEP_NODELIST' in env and _int_env('SLURM_NTASKS') > 1:
    return 'slurm'
  if 'OMPI_MCA_orte_hnp_uri' in env and _int_env('OMPI_COMM_WORLD_SIZE') > 1:
    return 'ompi'
  try:  # set when `import jax` found TPU chips and libtpu on a Cloud TPU VM
    from jax._src import cloud_tpu_init  # pylint: disable=import-outside-toplevel
    if cloud_tpu_init.running_in_cloud_tpu_vm:
      return 'tpu'
  except ImportError:  # pragma: no cover - a JAX without the module
    pass
  return None


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
  cluster = detect_cluster()
  if cluster is None:
    if mode == 'true':
      raise KdjaxError(f'config.distributed is true but no multi-process launch was found: '
                       f'set {ENV_COORDINATOR}, {ENV_NUM_PROCESSES} and {ENV_PROCESS_ID}, or '
                       f'launch with srun / mpirun / on every worker of a TPU pod slice')
    return False
  kwargs = _explicit_args() if cluster == 'env' else {}
  try:  # gloo is the default in recent JAX; older ones had no CPU collectives by default
    jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  except (AttributeError, KeyError, ValueError):  # pragma: no cover - older JAX
    pass
  from jax._src import xla_bridge  # pylint: disable=import-outside-toplevel
  if xla_bridge.backends_are_initialized():
    raise KdjaxError('jax.distributed must start before any device is used; call '
                     'kdjax.distributed.initialize() first thing in the program')
  try:
    jax.distributed.initialize(**kwargs)
  except (RuntimeError, ValueError) as e:
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    where = kwargs.get('coordinator_address', f'the {cluster} launch')
    raise KdjaxError(f'could not start jax.distributed ({where}): {first}') from None
  if quiet_others and jax.process_index() != 0:
    sys.stdout = open(os.devnull, 'w')  # pylint: disable=consider-using-with
  return jax.process_count() > 1


def is_primary() -> bool:
  """Whether this process writes the run's files and prints (process 0)."""
  return jax.process_index() == 0
