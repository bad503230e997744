"""Command line: ``python -m kdjax.main --config experiments/<method>.py[:<preset>]``.

    python -m kdjax.main --config experiments/slkd.py:digits --workdir runs/slkd_digits \
        --config.num_epochs=10

``--workdir`` defaults to ``runs/<config file>[_<preset>]``; running the same command again
resumes from the workdir's newest checkpoint. ``--seeds N`` runs seeds 0..N-1 into
``WORKDIR/seed_<i>``; ``--dry-run`` prints the plan (:mod:`kdjax.plan`: the teacher, the
runs, their workdirs) and trains nothing; ``--dry-run --trace`` also traces each run's step
on abstract inputs (:mod:`kdjax.train.trace`; no data, so no ``data_dir``, and no download).
A mistake in the config or the inputs prints one line starting with ``kdjax: error:`` and
exits with status 2; a SIGTERM/SIGINT in training saves a checkpoint and exits with status 0,
anywhere else it is one line and status 130/143 (:mod:`kdjax.interrupts`).

``python -m kdjax.cache`` takes the same flags (:func:`command`, :func:`parse_flags`)
and builds the teacher-logit caches of the plan's runs instead of training them.

The flow: ``main`` -> :mod:`kdjax.plan` (config -> runs) -> :mod:`kdjax.train.loop` (one run)
-> :mod:`kdjax.train.step` (one jitted step) -> :mod:`kdjax.methods` -> models and losses.
"""

from __future__ import annotations

if __name__ == '__main__':  # run as a command: a signal from here on is one line (interrupts)
  from kdjax import interrupts
  interrupts.install()

import importlib.resources
import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from kdjax import cli, distributed, interrupts, paths, platform_tuning
from kdjax.errors import KdjaxError

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Experiment file, e.g. '
                                          'experiments/slkd.py:digits, or a packaged one by '
                                          'name: slkd:digits', lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Run directory (checkpoints, metrics, '
                               'results.json); default runs/<config>[_<preset>]')
_SEEDS = flags.DEFINE_integer('seeds', None, 'Run seeds 0..N-1 one after another into '
                              'WORKDIR/seed_<i>, skipping finished ones (kdjax/plan.py)')
_DRY_RUN = flags.DEFINE_bool('dry-run', False, 'Print the plan and exit without training: '
                             'every run, its workdir, its state (new, resumable, finished, '
                             'refused for a changed config) '
                             "and its config's differences from the method's defaults")
_TRACE = flags.DEFINE_bool('trace', False, 'With --dry-run: trace each run\'s train step on '
                           'abstract inputs (no data, no download) and print its parameters, '
                           'GFLOP per image and memory per device (kdjax/train/trace.py)')
_ALLOW_CHANGE = flags.DEFINE_list(
    'allow_change', [], 'Config fields (dotted, comma-separated, e.g. num_epochs,optimizer.lr) '
    "that may differ from the config.json of a workdir being continued; any other field that "
    'changes results is refused (README.md, "Rerunning a workdir")')
flags.DEFINE_bool('list', False, 'List the methods and their presets, and exit')

_HELP_FLAGS = ('--help', '-h', '-?', '--helpshort')


def default_workdir(config_arg: str) -> str:
  """``experiments/slkd.py:digits`` -> ``runs/slkd_digits``."""
  path, _, preset = config_arg.partition(':')
  name = os.path.splitext(os.path.basename(path))[0]
  return os.path.join('runs', f'{name}_{preset}' if preset else name)


def main(argv) -> None:
  command(argv, _run_plan)


def _run_plan(config, workdir: str) -> None:
  from kdjax import plan  # pylint: disable=import-outside-toplevel  (after the flags are set)
  if _TRACE.value and not _DRY_RUN.value:
    raise KdjaxError('--trace goes with --dry-run (it traces the plan\'s steps, it trains '
                     'nothing)')
  runs = plan.make_plan(config, workdir, _SEEDS.value, need_data_dir=not _TRACE.value,
                        allow_change=tuple(_ALLOW_CHANGE.value),
                        refuse_changes=not _DRY_RUN.value)
  if _DRY_RUN.value:
    print(plan.describe(runs, trace=_TRACE.value))
    return
  where = paths.text(workdir)
  try:
    with interrupts.doing(f'running the plan in {where}', 'its finished runs are kept; the same '
                          'command continues it'):
      print(f'kdjax: workdir {where}', file=sys.stderr, flush=True)
      plan.execute(runs)
  except plan.Interrupted as e:
    print(f'kdjax: {e}', file=sys.stderr)
    return
  print(f'workdir: {where}')  # under the summary table


def command(argv, action) -> None:
  """The frame of kdjax's commands: the ``--config`` file read, the workdir (``--workdir``
  or :func:`default_workdir`), the platform and ``jax.distributed`` set up, then
  ``action(config, workdir)``; a mistake is one ``kdjax: error:`` line and status 2."""
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
  logging.set_verbosity(logging.WARNING)  # kdjax prints its own progress lines
  try:
    config = _CONFIG.value
    config.get('method')  # config_flags reports a missing or broken file lazily
  except OSError as e:
    print(f'kdjax: error: {_config_file_error(e)}', file=sys.stderr)
    sys.exit(2)
  try:
    workdir = user_path(_WORKDIR.value or default_workdir(flags.FLAGS['config'].config_filename),
                        '--workdir')
    if config.get('teacher') and config.teacher.checkpoint:
      config.teacher.checkpoint = user_path(config.teacher.checkpoint,
                                            'config.teacher.checkpoint')
    platform_tuning.apply(config)  # XLA reads its flags once, when the backend starts
    distributed.initialize(config.get('distributed', 'auto'))  # before any device is used
    action(config, workdir)
  except KdjaxError as e:
    print(f'kdjax: error: {e}', file=sys.stderr)
    sys.exit(2)
  except Exception as e:  # pylint: disable=broad-except
    known = paths.io_error(e)  # an object store refusing, a disk or folder failing us
    if known is None:
      raise
    print(f'kdjax: error: {known}', file=sys.stderr)
    sys.exit(2)


def user_path(value: str, what: str) -> str:
  """A path as users type it: ``~`` expanded; a URL kept as it is when kdjax can reach its
  scheme (:func:`kdjax.paths.path` refuses any other with one line)."""
  if paths.is_remote(value):
    return paths.text(value, what)
  return os.path.expanduser(value)


def _config_file_error(error: Exception) -> str:
  """One line for a config file that config_flags could not load."""
  text = str(error.__cause__ or error).strip()
  return (f'could not load the config file {flags.FLAGS["config"].config_filename!r}: '
          f'{text.splitlines()[-1].strip()}')


def packaged_config(value: str) -> str:
  """``--config``'s value with a bare preset name (``slkd`` or ``slkd:digits``) turned into
  the path of the packaged ``kdjax/experiments/slkd.py``; a path that exists, or any value
  with a folder or ``.py`` in it, is left as it is."""
  path, colon, preset = value.partition(':')
  if os.path.exists(path) or os.sep in path or path.endswith('.py'):
    return value
  packaged = importlib.resources.files('kdjax.experiments') / f'{path}.py'
  return f'{packaged}{colon}{preset}' if packaged.is_file() else value


def _with_packaged_configs(argv: list) -> list:
  out = list(argv)
  for i, arg in enumerate(out):
    if arg.startswith('--config='):
      out[i] = '--config=' + packaged_config(arg[len('--config='):])
    elif arg == '--config' and i + 1 < len(out):
      out[i + 1] = packaged_config(out[i + 1])
  return out


_PURPOSE = ('Trains the runs of a distillation experiment (the teacher it needs first, the '
            'student, its\nbaselines, per seed); running it again resumes them.')


def _usage(purpose: str) -> str:
  """``--help``: how to call the command as typed, and kdjax's own flags (absl's
  ``--help`` would list those of the console script's wrapper module, none)."""
  flag_help = flags.FLAGS.module_help(flags.FLAGS.find_module_defining_flag('workdir'))
  return (f'usage: {cli.invoked_as("kdjax.main")} --config METHOD[:PRESET] [--workdir DIR] '
          f'[--seeds N] [--dry-run]\n    [--config.FIELD=VALUE ...]\n\n{purpose}\n\n'
          f'{flag_help.split(":", 1)[1].strip(chr(10))}\n\n'
          f'  e.g. --config slkd:digits (packaged), --config experiments/kd.py:res56_res20 '
          f'(a file),\n  --config.optimizer.lr=0.01 (any field of the config). The methods '
          f'and presets: --list.\n  absl\'s own flags (logging, ...): --helpfull.')


def parse_flags(argv, purpose: str = _PURPOSE):
  """absl's flag parsing, with every mistake (bad file, unknown key) as one line; ``--help``
  and ``--list`` answered; no ``--config`` is an error line followed by the methods."""
  if any(arg in _HELP_FLAGS for arg in argv[1:]):
    _answer(_usage(purpose))
  try:
    parsed = flags.FLAGS(_with_packaged_configs(argv))
  except Exception as e:  # pylint: disable=broad-except
    _flag_error(e)
  if flags.FLAGS.list:
    _answer(cli.method_list())
  if not flags.FLAGS['config'].present:
    print(f'kdjax: error: --config is required, e.g. {cli.invoked_as("kdjax.main")} '
          f'--config slkd:digits', file=sys.stderr)
    print(cli.method_list(), file=sys.stderr)
    sys.exit(2)
  return parsed


def _answer(text: str) -> None:
  """Prints ``text`` and exits 0; a reader that stopped early (``kdjax --list | head``) is
  no error: the rest goes nowhere, without a BrokenPipeError traceback."""
  try:
    print(text, flush=True)
  except BrokenPipeError:
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # for the exit's flush
  sys.exit(0)


def _flag_error(e: Exception) -> None:
  """Exits with the one line of a flag that absl could not parse."""
  message = ' '.join(str(e).split()) or type(e).__name__
  if 'Failed loading config file' in str(e) or isinstance(e, OSError):
    message = _config_file_error(e)
  elif isinstance(e, (KeyError, AttributeError)):
    message = (f'unknown config field in the --config.* overrides: '
               f'{_plain(e.args[0] if e.args else message)}; the experiment file lists the '
               f'fields')
  print(f'kdjax: error: {message}', file=sys.stderr)
  sys.exit(2)


def _plain(text) -> str:
  """A KeyError's message without its repr quoting (``'\'lrr\'\nDid you mean...'``)."""
  text = str(text)
  while len(text) > 1 and text[0] == text[-1] and text[0] in '"\'':
    text = text[1:-1]
  return ' '.join(text.replace("\\'", "'").replace('\\n', ' ').split())


def run() -> None:
  app.run(main, flags_parser=parse_flags)


if __name__ == '__main__':
  run()
