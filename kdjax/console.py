"""kdjax's lines for the user: on standard error, from process 0 only (with several processes
every process runs the same code, and one line is enough)."""

from __future__ import annotations

import sys

import jax


def say(text: str) -> None:
  """A line for the user, from process 0 only."""
  if jax.process_index() == 0:
    print(text, file=sys.stderr, flush=True)


def warn(text: str) -> None:
  """``warning: <text>``, from process 0 only."""
  say(f'warning: {text}')
