"""The one parser of an experiment file's preset argument, ``<preset>[,<variant>...]``.

Every ``experiments/<method>.py`` reads ``--config experiments/<method>.py:<argument>``
through :func:`parse`, so a misspelled preset or variant is refused with one line that
lists the valid ones and the closest match, never dropped: ``slkd.py:digits,offical`` would
otherwise train the default SLKD without a word.
"""

from __future__ import annotations

import difflib
from typing import Iterable

from kdjax.errors import KdjaxError


def parse(arg: str | None, method: str, presets: Iterable[str],
          variants: Iterable[str] = ()) -> tuple[str | None, tuple[str, ...]]:
  """``'digits,official'`` -> ``('digits', ('official',))``: at most one of ``presets``
  (None when there is none) and any of ``variants``, each once, in any order.

  Raises :class:`KdjaxError` for anything else, naming ``method``'s valid words.
  """
  presets, variants = tuple(presets), tuple(variants)
  preset, chosen = None, []
  for word in (w.strip() for w in (arg or '').split(',')):
    if not word:
      continue
    if word in variants and word not in chosen:
      chosen.append(word)
    elif word in presets and preset is None:
      preset = word
    elif word in presets or word in variants:
      raise KdjaxError(f'{method}:{arg} names more than one preset or a variant twice '
                       f'({word!r}); give one preset and each variant once, joined by ","')
    else:
      raise KdjaxError(_unknown(word, method, presets, variants))
  return preset, tuple(chosen)


def _unknown(word: str, method: str, presets: tuple, variants: tuple) -> str:
  """The line for an unknown ``word``: the closest valid word, then all of them."""
  close = difflib.get_close_matches(word, presets + variants, n=1, cutoff=0.6)
  hint = f'; did you mean {close[0]!r}?' if close else ''
  valid = f'presets: {", ".join(presets)}'
  if variants:
    valid += f'; variants (after a ","): {", ".join(variants)}'
  what = 'preset or variant' if variants else 'preset'
  return f'unknown {what} {word!r} for {method}{hint} ({valid})'
