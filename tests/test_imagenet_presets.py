"""The ImageNet presets: mdistiller's configs/imagenet/<pair>/<method>.yaml values, validated,
and every method built on the imagenet zoo's 224x224 shapes (no FLOPs, no data)."""

import importlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import load_fixture
from kdjax import methods, plan
from kdjax.errors import KdjaxError
from kdjax.methods.base import Batch, BuildInputs, StepContext
from kdjax.models import ModelOutput
from kdjax.train import optim

# (method, preset) -> (batch, lr, method block values) from mdistiller's yaml files.
YAML = {
    ('kd', 'r34_r18'): (512, 0.2, {'kd.temperature': 1.0, 'kd.ce_weight': 0.5,
                                   'kd.kd_weight': 0.5}),
    ('kd', 'r50_mv1'): (512, 0.2, {'kd.temperature': 1.0, 'kd.ce_weight': 0.5,
                                   'kd.kd_weight': 0.5}),
    ('dkd', 'r34_r18'): (512, 0.2, {'dkd.beta': 0.5, 'dkd.temperature': 1.0, 'dkd.warmup': 1,
                                    'dkd.ce_weight': 1.0}),
    ('dkd', 'r50_mv1'): (512, 0.2, {'dkd.beta': 2.0, 'dkd.temperature': 1.0, 'dkd.warmup': 1}),
    ('reviewkd', 'r34_r18'): (256, 0.1, {'reviewkd.reviewkd_weight': 1.0,
                                         'reviewkd.warmup_epochs': 1,
                                         'reviewkd.stu_preact': True,
                                         'reviewkd.max_mid_channel': 512}),
    ('reviewkd', 'r50_mv1'): (256, 0.1, {'reviewkd.reviewkd_weight': 8.0,
                                         'reviewkd.max_mid_channel': 512}),
    ('reviewkd', 'r50_mv1,authors'): (256, 0.1, {'reviewkd.reviewkd_weight': 8.0,
                                                 'reviewkd.max_mid_channel': 256}),
    ('at', 'r34_r18'): (512, 0.2, {'at.feat_weight': 1000.0, 'at.p': 2}),
    ('at', 'r50_mv1'): (512, 0.2, {}),
    ('crd', 'r34_r18'): (256, 0.1, {'crd.nce_k': 16384, 'crd.with_replacement': True}),
    ('crd', 'r50_mv1'): (256, 0.1, {'crd.with_replacement': True}),
    ('ofd', 'r50_mv1'): (128, 0.05, {'ofd.feat_weight': 1e-4}),
    ('slkd', 'r34_r18'): (512, 0.2, {'slkd.temperature': 1.0, 'slkd.ce_weight': 0.5,
                                     'slkd.fused_kd_weight': 0.5}),
    ('slkd', 'r50_mv1'): (512, 0.2, {}),
    # The authors' configs/imagenet/r34_r18/Tech_kd.yaml with their code defaults (cfg.py).
    ('slkd', 'r34_r18,official'): (512, 0.2, {
        'slkd.temperature': 1.0, 'slkd.ce_weight': 0.5, 'slkd.kd_weight': 0.5,
        'slkd.fused_ce_weight': 1.0, 'slkd.fused_kd_weight': 1.0, 'slkd.eta': 1.0,
        'slkd.lambda_ts': 1.0, 'slkd.rho': 0.5, 'slkd.fused_target_grad': True,
        'teacher.model': 'ResNet34', 'model': 'ResNet18'}),
    ('sftn', 'r34_r18'): (512, 0.2, {'sftn.student': 'ResNet18'}),
}
REFERENCE_TOP1 = {('kd', 'r34_r18'): 71.03, ('kd', 'r50_mv1'): 70.50,
                  ('dkd', 'r34_r18'): 71.70, ('dkd', 'r50_mv1'): 72.05}



def _sgd(config):
  """The preset's optimizer at 100 steps per epoch."""
  return optim.sgd(config.optimizer,
                   optim.lr_schedule(config.optimizer, 100, config.num_epochs))

def _preset(method, preset):
  return importlib.import_module(f'kdjax.experiments.{method}').get_config(preset)


def _get(config, key):
  for part in key.split('.'):
    config = config[part]
  return config


@pytest.mark.parametrize('method,preset', list(YAML))
def test_preset_has_mdistillers_values_and_builds_on_imagenet_shapes(method, preset):
  config = _preset(method, preset)
  batch, lr, values = YAML[method, preset]
  assert (config.batch_size, config.optimizer.lr) == (batch, lr)
  assert (config.data.name, config.zoo, config.data.image_size, config.data.resize_size) == (
      'imagenet', 'imagenet', 224, 256)
  assert (config.num_epochs, config.optimizer.momentum, config.optimizer.weight_decay) == (
      100, 0.9, 1e-4)
  assert tuple(config.optimizer.lr_decay_epochs) == (30, 60, 90)
  for key, value in values.items():
    assert _get(config, key) == value, key
  assert config.reference_top1 == REFERENCE_TOP1.get((method, preset))
  if method != 'sftn':
    teacher = {'r34_r18': 'ResNet34', 'r50_mv1': 'ResNet50'}[preset.split(',')[0]]
    assert config.teacher.checkpoint == f'torchvision:{teacher.lower()}'
  with pytest.raises(KdjaxError, match='config.data.data_dir'):
    plan.validate(config)
  config.data.data_dir = '/data/imagenet'
  plan.validate(config)
  built = methods.build(config, BuildInputs(
      num_classes=1000, optimizer=_sgd(config),
      image_shape=(224, 224, 3),
      zoo=config.zoo, train_labels=jnp.zeros((1000,), jnp.int32)))
  assert built.nets


@pytest.mark.parametrize('method,preset', [('ofd', 'r34_r18'), ('fitnet', 'r34_r18'),
                                           ('sp', 'r50_mv1'), ('pkt', 'r34_r18'),
                                           ('rkd', 'r50_mv1'), ('skd', 'r34_r18')])
def test_presets_without_a_recipe_are_refused(method, preset):
  with pytest.raises(KdjaxError, match=f'{method} has no ImageNet recipe for {preset}: '
                                       f"mdistiller's configs/imagenet/{preset}/ holds no "
                                       f'{method}.yaml'):
    _preset(method, preset)


def test_variants_and_pairs_a_method_cannot_run_are_refused():
  with pytest.raises(KdjaxError, match='the ReviewKD preset variant authors is for r50_mv1'):
    _preset('reviewkd', 'r34_r18,authors')
  with pytest.raises(KdjaxError, match='as many stages'):
    _preset('sftn', 'r50_mv1')


@pytest.mark.parametrize('preset,in_channels,out_channels,mid', [
    ('r34_r18', (64, 128, 256, 512, 512), (64, 128, 256, 512, 512), 512),
    ('r50_mv1', (128, 256, 512, 1024, 1024), (256, 512, 1024, 2048, 2048), 512),
    ('r50_mv1,authors', (128, 256, 512, 1024, 1024), (256, 512, 1024, 2048, 2048), 256)])
def test_reviewkd_levels_derived_from_the_nets_are_the_yaml_ones(preset, in_channels,
                                                                 out_channels, mid):
  """IN_CHANNELS, OUT_CHANNELS, SHAPES, OUT_SHAPES ([1, 7, 14, 28, 56], listed deepest
  first in the yaml) of configs/imagenet/<preset>/reviewkd.yaml; the mid channels mdistiller's
  ReviewKD.py runs, min(512, IN_CHANNELS[-1]) (its yaml's MAX_MID_CHANNEL unused), or the
  authors' 256 (the authors variant)."""
  config = _preset('reviewkd', preset)
  fusion = methods.build(config, BuildInputs(
      num_classes=1000, optimizer=_sgd(config),
      image_shape=(224, 224, 3),
      zoo='imagenet')).nets['abfs']
  assert (fusion.in_channels, fusion.out_channels) == (in_channels, out_channels)
  assert fusion.shapes == fusion.out_shapes == (56, 28, 14, 7, 1)
  assert fusion.mid_channel == mid


def test_at_term_on_resnet50_mobilenetv1_features_equals_mdistillers():
  """The AT term of the r50_mv1 preset on the feature lists of ../shared/fixtures/
  at_r50_mv1.npz: mdistiller's 1000 * at_loss(feats[1:], feats[1:]) (zip drops the teacher's
  last map), value and gradient with respect to the student's maps."""
  ref = load_fixture('at_r50_mv1.npz')
  nhwc = lambda a: jnp.asarray(np.transpose(a, (0, 2, 3, 1)))
  s_feats = [nhwc(ref[f'student_feat{i}']) for i in range(4)]
  t_feats = [nhwc(ref[f'teacher_feat{i}']) for i in range(5)]
  config = _preset('at', 'r50_mv1')
  method = methods.build(config, BuildInputs(
      num_classes=1000, optimizer=_sgd(config),
      image_shape=(224, 224, 3), zoo=config.zoo))
  logits = jnp.zeros((1, 1000))
  batch = Batch(jnp.zeros((1, 224, 224, 3)), jnp.zeros((1,), jnp.int32))

  def at_term(student_maps):
    run = lambda name, x, **kw: ModelOutput(logits, student_maps, None, None)
    ctx = StepContext(step=0, epoch=1, rng=jax.random.PRNGKey(0),
                      teacher=ModelOutput(logits, t_feats, None, None))
    return method.loss(run, batch, ctx)[1]['at']

  value, grads = jax.value_and_grad(at_term)(s_feats)
  np.testing.assert_allclose(value, ref['loss_x1000'], rtol=1e-5)
  assert not np.any(grads[0])  # the stem's map is not distilled
  for i in (1, 2, 3):
    np.testing.assert_allclose(grads[i], nhwc(ref[f'grad_student_feat{i}']), rtol=1e-4,
                               atol=1e-7 * float(np.abs(ref[f'grad_student_feat{i}']).max()))
