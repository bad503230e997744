"""The one exception type for mistakes a user can make.

Every error that a user can cause (unknown model, method or dataset, a teacher checkpoint
that does not fit, a bad hyper-parameter, an unwritable workdir) is raised as a
:class:`KdjaxError` carrying one line that says what was wrong and what would be right.
The command-line entry points print that line and exit with status 2.
"""

import argparse
import sys
from typing import Callable


class KdjaxError(Exception):
  """A user error; ``str(error)`` is the one line shown to the user."""


class OneLineParser(argparse.ArgumentParser):
  """argparse whose usage mistakes are one ``kdjax: error:`` line and exit status 2."""

  def error(self, message):
    print(f'kdjax: error: {message} (see {self.prog} --help)', file=sys.stderr)
    sys.exit(2)


def run_command(command: Callable[[], str]) -> int:
  """Prints the line ``command()`` returns and gives exit status 0, or prints its
  :class:`KdjaxError` as one ``kdjax: error:`` line and gives 2."""
  try:
    print(command())
  except KdjaxError as e:
    print(f'kdjax: error: {e}', file=sys.stderr)
    return 2
  return 0


def warn(text: str) -> None:
  """Prints ``warning: <text>`` on stderr: kdjax's one voice for what went wrong without
  stopping the run (never a library's log format)."""
  print(f'warning: {text}', file=sys.stderr, flush=True)
