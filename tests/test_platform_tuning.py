"""config.platform: the XLA:CPU convolution library and extra XLA flags (kdjax.platform_tuning)."""

import json
import os
import subprocess
import sys

import ml_collections
import numpy as np
import pytest

from conftest import ROOT
from kdjax import platform_tuning
from kdjax.errors import KdjaxError

EIGEN = '--xla_cpu_experimental_ynn_fusion_type=-individual_convolution'


def _config(**platform):
  c = ml_collections.ConfigDict()
  c.platform = platform_tuning.default_config()
  c.platform.update(platform)
  return c


def test_flags_chosen_by_the_config():
  assert platform_tuning.xla_flags(None) == [EIGEN]  # no block: the defaults
  assert platform_tuning.xla_flags(_config()) == [EIGEN]
  assert platform_tuning.xla_flags(_config(cpu_conv='eigen')) == [EIGEN]
  assert platform_tuning.xla_flags(_config(cpu_conv='ynnpack')) == []
  assert platform_tuning.xla_flags(_config(cpu_conv='ynnpack', xla_flags='--a=1 --b')) == [
      '--a=1', '--b']
  with pytest.raises(KdjaxError, match='cpu_conv'):
    platform_tuning.xla_flags(_config(cpu_conv='mkl'))


def test_apply_appends_once_and_keeps_the_users_flags(monkeypatch):
  monkeypatch.setenv('XLA_FLAGS', '--xla_force_host_platform_device_count=2')
  assert platform_tuning.apply(_config()) == [EIGEN]
  assert platform_tuning.apply(_config()) == []
  assert os.environ['XLA_FLAGS'].split() == ['--xla_force_host_platform_device_count=2', EIGEN]
  monkeypatch.setenv('XLA_FLAGS', '--xla_cpu_experimental_ynn_fusion_type=individual_dot')
  assert platform_tuning.apply(_config()) == []  # the user's own setting wins


_GRADS = """
import json, sys
from kdjax import platform_tuning
import ml_collections
c = ml_collections.ConfigDict({'platform': platform_tuning.default_config()})
c.platform.cpu_conv = sys.argv[1]
platform_tuning.apply(c)
import jax, jax.numpy as jnp, numpy as np
from kdjax import models
net = models.create('resnet8', 10)
x = jnp.asarray(np.random.default_rng(0).normal(size=(8, 32, 32, 3)), jnp.float32)
v = net.init(jax.random.PRNGKey(0), x, train=False)
def loss(p):
  out, _ = net.apply({**v, 'params': p}, x, train=True, mutable=['batch_stats'])
  return jnp.sum(jnp.sin(out.logits))
value, grads = jax.jit(jax.value_and_grad(loss))(v['params'])
print(json.dumps({'value': float(value),
                  'grads': [np.asarray(g).ravel().tolist() for g in jax.tree.leaves(grads)]}))
"""


def test_eigen_and_ynnpack_convolutions_agree():
  runs = {}
  for impl in ('eigen', 'ynnpack'):
    proc = subprocess.run([sys.executable, '-c', _GRADS, impl], cwd=ROOT, capture_output=True,
                          text=True, timeout=300, env={**os.environ, 'XLA_FLAGS': ''})
    assert proc.returncode == 0, proc.stderr[-2000:]
    runs[impl] = json.loads(proc.stdout.strip().splitlines()[-1])
  np.testing.assert_allclose(runs['eigen']['value'], runs['ynnpack']['value'], rtol=1e-5)
  for a, b in zip(runs['eigen']['grads'], runs['ynnpack']['grads']):
    np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-5 * max(1.0, np.max(np.abs(b))))


def test_residual_outputs_chosen_by_the_config():
  assert platform_tuning.materialize_residuals(_config())  # 'auto': the tests run on the CPU
  assert platform_tuning.materialize_residuals(None)
  for value, materializes in (('fuse', False), ('materialize', True)):
    assert platform_tuning.materialize_residuals(_config(residual_outputs=value)) is materializes
  for check in (platform_tuning.apply, platform_tuning.materialize_residuals):
    with pytest.raises(KdjaxError, match='residual_outputs must be one of'):
      check(_config(residual_outputs='always'))


def _train_grads(name, materialize_residuals):
  """Logits and parameter gradients of a train-mode step, and the step's compiled HLO."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  from kdjax import models  # pylint: disable=import-outside-toplevel
  net = models.create(name, 10, materialize_residuals=materialize_residuals)
  x = jnp.asarray(np.random.default_rng(0).normal(size=(4, 32, 32, 3)), jnp.float32)
  v = net.init(jax.random.PRNGKey(0), x, train=False)

  def loss(p):
    out, _ = net.apply({**v, 'params': p}, x, train=True, mutable=['batch_stats'])
    return jnp.sum(jnp.sin(out.logits)), out.logits

  step = jax.jit(jax.value_and_grad(loss, has_aux=True))
  (_, logits), grads = step(v['params'])
  return logits, grads, step.lower(v['params']).compile().as_text()


@pytest.mark.parametrize('name', ['resnet8', 'wrn_16_1', 'MobileNetV2'])
def test_materialized_residual_outputs_change_no_result(name):
  import jax  # pylint: disable=import-outside-toplevel
  runs = {value: _train_grads(name, value == 'materialize') for value in ('fuse', 'materialize')}
  np.testing.assert_array_equal(runs['fuse'][0], runs['materialize'][0])
  for a, b in zip(jax.tree.leaves(runs['fuse'][1]), jax.tree.leaves(runs['materialize'][1])):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6 * max(1.0, np.max(np.abs(b))))
  # The speed-up rests on XLA keeping the conditionals: if a new XLA folds them away, this
  # says so (and benchmarks/throughput.py will show the slower step).
  assert 'conditional(' not in runs['fuse'][2]
  assert 'conditional(' in runs['materialize'][2]


def test_materialize_returns_its_input_for_any_first_element():
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  from kdjax.models import layers  # pylint: disable=import-outside-toplevel
  materialize = jax.jit(layers.materialize)
  for first in (1.5, -0.0, np.nan, np.inf):  # the predicate reads the first element
    x = jnp.asarray([[first, 2.0], [-3.0, 4.0]], jnp.float32)
    np.testing.assert_array_equal(materialize(x), x)
    assert np.signbit(materialize(x)[0, 0]) == np.signbit(x[0, 0])
  assert 'conditional(' in materialize.lower(x).compile().as_text()
