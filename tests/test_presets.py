"""Experiment-file arguments parse strictly (kdjax/presets.py): a typo'd preset or variant is
one line naming the closest valid word, never dropped."""

import importlib
import subprocess
import sys

import pytest

from kdjax import presets
from kdjax.errors import KdjaxError


@pytest.mark.parametrize('method, arg, closest', [
    ('slkd', 'digits,offical', 'official'), ('skd', 'digits,tbt_onyl', 'tbt_only'),
    ('kd', 'digitz', 'digits'), ('dkd', 'digits,official', None),
    ('vanilla', 'resnet33', 'resnet32'), ('sftn', 'res32x4_res8x5', 'res32x4_res8x4'),
    ('slkd', 'digits,res56_res8', None), ('slkd', 'digits,sequential,sequential', None)])
def test_a_wrong_word_is_refused(method, arg, closest):
  get_config = importlib.import_module(f'kdjax.experiments.{method}').get_config
  with pytest.raises(KdjaxError, match=method) as refused:
    get_config(arg)
  assert (f'did you mean {closest!r}?' in str(refused.value)) == (closest is not None)


def test_valid_words_in_any_order():
  from kdjax.experiments import skd, slkd  # pylint: disable=import-outside-toplevel
  config = slkd.get_config('sequential,digits')
  assert (config.preset, config.variant, config.slkd.mode) == ('digits', 'sequential',
                                                               'sequential')
  assert skd.get_config('digits,tet_only').skd.use_tbt is False
  assert slkd.get_config(None).preset == 'res32x4_res8x4'
  assert presets.parse(' a ,, b', 'm', ('a',), ('b',)) == ('a', ('b',))


def test_the_command_prints_one_line():
  done = subprocess.run([sys.executable, '-m', 'kdjax.main', '--config', 'slkd:digits,offical',
                         '--dry-run'], capture_output=True, text=True, timeout=120, check=False)
  assert done.returncode == 2 and not done.stdout
  assert done.stderr.startswith("kdjax: error: unknown preset or variant 'offical' for slkd; "
                                "did you mean 'official'?")
  assert done.stderr.count('\n') == 1
