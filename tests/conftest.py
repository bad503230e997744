"""Shared test helpers: where the PyTorch reference fixtures live."""

import os
import pathlib

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
FIXTURES = pathlib.Path(os.environ.get('KDJAX_FIXTURES', ROOT.parent / 'shared' / 'fixtures'))


def fixture_path(name: str) -> pathlib.Path:
  """Path of a reference fixture; skips the test with the reason when it is absent."""
  path = FIXTURES / name
  if not path.exists():
    pytest.skip(f'reference fixture {path} not found (set KDJAX_FIXTURES to its folder)',
                allow_module_level=True)
  return path


def load_fixture(name: str):
  """``numpy.load`` of a reference fixture file (see ../shared/fixtures/README.md)."""
  return np.load(fixture_path(name))
