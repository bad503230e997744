"""SIGINT and SIGTERM anywhere in a kdjax command: one line, exit 130 / 143, no traceback.

:func:`install` runs first in every command (``python -m kdjax.main``, ``kdjax.cache``,
``kdjax.convert``, ``kdjax.evaluate`` and ``kdjax.export`` from their first line; the console
scripts through :func:`script`, before they import anything heavy). From then on a SIGINT
(Ctrl-C) or SIGTERM prints

    kdjax: interrupted by SIGINT while downloading cifar-10-binary.tar.gz from URL; the
    bytes so far are kept in ....part and the next run resumes from them

and exits with status 130 (SIGINT) or 143 (SIGTERM). Within a :func:`doing` block it exits
through :class:`SystemExit`, so every ``finally`` and ``with`` on the way out runs: locks are
released, temporary files removed, a workdir that saved nothing removed; the line is printed
last, and the process ends there (the libraries' exit handlers, which an interrupted JAX
can crash, are skipped). Outside one (the imports, the flags, the plan: nothing written
yet) it exits at once, since an extension module's import cut short by an exception crashes
the interpreter's exit. What was interrupted is the innermost :func:`doing`
block (a download, a cache build, a run's setup), else the command's start. The first
signal decides; later ones are ignored while the process unwinds. The training loop
(:mod:`kdjax.train.loop`) replaces these handlers while it runs: there a signal stops the
run after its step with a checkpoint saved, and the command exits with status 0.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib
import os
import signal
import sys

EXIT_STATUS = {signal.SIGINT: 130, signal.SIGTERM: 143}
_STARTING = ('starting', 'nothing was written')
_doing: list[tuple[str, str]] = []


def install() -> None:
  """Makes SIGINT and SIGTERM stop this process with one line (see the module docstring); a
  signal the process was started ignoring (``nohup``, a shell's background job) stays so."""
  for signum in EXIT_STATUS:
    if signal.getsignal(signum) != signal.SIG_IGN:
      signal.signal(signum, _stop)


@contextlib.contextmanager
def doing(what: str, kept: str):
  """Within the block, a signal's line says ``while <what>; <kept>``: ``kept`` tells the user
  what survives the interruption and how the next run goes on from it."""
  _doing.append((what, kept))
  try:
    yield
  finally:
    _doing.pop()


def _stop(signum: int, frame) -> None:
  del frame
  for other in EXIT_STATUS:  # the first signal decides; the way out is not interrupted again
    signal.signal(other, signal.SIG_IGN)
  what, kept = _doing[-1] if _doing else _STARTING
  line = f'kdjax: interrupted by {signal.Signals(signum).name} while {what}; {kept}'
  if not _doing:  # imports, flags: nothing to close, and an import cut short crashes the exit
    _exit(line, EXIT_STATUS[signum])
  # At exit, once the way out closed what it had open (a progress bar's line, a checkpoint
  # manager): first of the exit handlers, and the last thing the process does.
  atexit.register(_exit, line, EXIT_STATUS[signum])
  raise SystemExit(EXIT_STATUS[signum])


def _exit(line: str, status: int) -> None:
  """Prints ``line`` and ends the process now: the libraries' own exit handlers and the
  interpreter's teardown, which an interrupted JAX or Orbax can crash, are skipped."""
  sys.stdout.flush()
  print(line, file=sys.stderr, flush=True)
  os._exit(status)  # pylint: disable=protected-access


def script(target: str):
  """A console script (``pyproject.toml``) that installs the handlers, then imports and calls
  ``target`` (``'module:function'``): a signal during its imports is one line too."""
  def run():
    install()
    module, _, name = target.partition(':')
    return getattr(importlib.import_module(module), name)()
  return run


kdjax_main = script('kdjax.main:run')
kdjax_cache = script('kdjax.cache:run')
kdjax_convert = script('kdjax.convert.__main__:main')
kdjax_report = script('kdjax.report:main')
kdjax_eval = script('kdjax.evaluate:main')
kdjax_export = script('kdjax.export:main')
