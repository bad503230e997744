"""``--dry-run --trace`` (kdjax/train/trace.py): every method x every preset builds and traces
its train step on abstract inputs (no data, no download), and what it reports is right."""

import importlib
import json

import pytest

from conftest import fixture_path, run_cli
from kdjax import config as config_lib, methods, plan
from kdjax.errors import KdjaxError
from kdjax.train import trace

PRESETS = ['digits', *config_lib.PAIRS, *config_lib.IMAGENET_PAIRS]
# vanilla's presets are model names (its digits preset is every digits plan's teacher run).
METHODS = [name for name in methods.names() if name != methods.SUPERVISED]
NO_IMAGENET = ('fitnet', 'sp', 'pkt', 'rkd', 'skd')  # no recipe: refused in one line
# (method, preset) -> the refusal's words, for pairs a method cannot run.
REFUSED = {
    **{(m, p): 'has no ImageNet recipe' for m in NO_IMAGENET for p in config_lib.IMAGENET_PAIRS},
    ('ofd', 'r34_r18'): 'has no ImageNet recipe',
    ('ofd', 'vgg13_mv2'): 'pre-ReLU',
    ('ofd', 'res50_mv2'): 'pre-ReLU',
    ('sftn', 'r50_mv1'): 'as many stages',
}
# Preset variants with a net or a step of their own.
VARIANTS = [('reviewkd', 'r50_mv1,authors'), ('slkd', 'r34_r18,official'),
            ('slkd', 'r50_mv1,sequential'), ('skd', 'res32x4_res8x4,slkd'),
            ('vanilla', 'digits'), ('vanilla', 'ShuffleV2')]


def _plan(method, preset, tmp_path):
  config = importlib.import_module(f'kdjax.experiments.{method}').get_config(preset)
  return plan.make_plan(config, str(tmp_path / 'run'), need_data_dir=False)


@pytest.mark.slow
@pytest.mark.parametrize('method,preset',
                         [(m, p) for m in METHODS for p in PRESETS] + VARIANTS)
def test_every_method_and_preset_traces_its_step(method, preset, tmp_path):
  """Each planned run (teachers trained first, baselines, follow-ups) builds on the preset's
  shapes and lowers its step; a pair the method cannot run is refused in one line."""
  if (method, preset) in REFUSED:
    with pytest.raises(KdjaxError, match=REFUSED[method, preset]):
      for run in _plan(method, preset, tmp_path):
        trace.trace_run(run.config)
    return
  for run in _plan(method, preset, tmp_path):
    result = trace.trace_run(run.config)
    assert result.gflop_per_image > 0 and all(n > 0 for n in result.params.values())
    assert result.memory_bytes is None  # nothing compiled


@pytest.mark.parametrize('method,preset,teacher,student', [
    ('kd', 'r34_r18', 'ResNet34', 'ResNet18'), ('kd', 'r50_mv1', 'ResNet50', 'MobileNetV1')])
def test_parameters_and_flops_are_mdistillers_models(method, preset, teacher, student):
  """Parameter counts equal PyTorch's (../shared/fixtures/imagenet_models.json); a KD step
  costs the teacher's forward and the student's forward and backward, F_T + 3 F_S of the
  fixtures' FLOPs per 224x224 image (XLA's count within 10 %: it skips the gradient of the
  first conv's input), per training image of the global batch."""
  models = json.loads(fixture_path('imagenet_models.json').read_text())['models']
  config = importlib.import_module(f'kdjax.experiments.{method}').get_config(preset)
  result = trace.trace_run(config)
  assert result.params == {'student': models[student]['params'],
                           'teacher': models[teacher]['params']}
  expected = (models[teacher]['flops_per_image'] + 3 * models[student]['flops_per_image']) / 1e9
  assert result.gflop_per_image == pytest.approx(expected, rel=0.1)


@pytest.mark.slow
def test_compiled_memory_holds_the_state_and_grows_with_the_batch():
  """The compiled step's memory per device: at least the train state (parameters, momentum,
  BatchNorm statistics: 2 x 4 bytes per parameter) and the on-device training set, and more
  for a larger batch."""
  config = importlib.import_module('kdjax.experiments.kd').get_config('digits')
  small = trace.trace_run(config, compile=True)
  floor = 2 * 4 * small.params['student'] + 1437 * 32 * 32 * 3
  assert small.memory_bytes > floor
  config.batch_size = 4 * config.batch_size
  large = trace.trace_run(config, compile=True)
  assert large.memory_bytes > small.memory_bytes and large.batch_per_device == 128
  assert 'GiB per device at 128 images per device' in trace.describe(large)


def test_a_run_that_cannot_trace_fails_in_one_line():
  config = importlib.import_module('kdjax.experiments.fitnet').get_config('digits')
  config.fitnet.hint_layer = 7
  with pytest.raises(KdjaxError, match='fitnet.hint_layer 7 is not a stage'):
    trace.trace_run(config)
  config.data.name = 'svhn'
  with pytest.raises(KdjaxError, match="cannot trace a run on 'svhn'"):
    trace.trace_run(config)


@pytest.mark.slow
def test_cli_traces_an_imagenet_preset_without_data_or_download(tmp_path):
  """No data_dir, an empty cache (nothing downloaded): the plan line and its trace."""
  result = run_cli(['--config', 'experiments/kd.py:r50_mv1', '--dry-run', '--trace',
                    '--workdir', str(tmp_path / 'run')], env={'KDJAX_CACHE': str(tmp_path)})
  assert result.returncode == 0, result.stderr
  lines = result.stdout.splitlines()
  assert lines[0].startswith('1. kd student: kd MobileNetV1 <- ResNet50 torchvision:resnet50')
  traced = [line for line in lines if 'parameters:' in line]
  assert len(traced) == 1 and traced[0].startswith('     traced step: parameters: student 4.23 M, '
                                                   'teacher 25.56 M; 11.')
  assert 'GiB per device at 512 images per device' in traced[0]
  assert not any(tmp_path.glob('**/*.pth'))


def test_cli_trace_without_dry_run_is_one_line():
  result = run_cli(['--config', 'experiments/kd.py:digits', '--trace'])
  assert result.returncode == 2
  assert result.stderr.strip() == ('kdjax: error: --trace goes with --dry-run (it traces the '
                                   "plan's steps, it trains nothing)")


def test_dataset_sizes_are_the_loaders():
  """The sizes the trace shapes a step with are those of the data (digits: embedded)."""
  from kdjax import data
  digits = data.load_split('digits', 'train')
  assert trace.DATASETS['digits'] == (len(digits), digits.num_classes)


def test_only_a_trace_plans_an_imagenet_run_without_its_data_dir(tmp_path):
  config = importlib.import_module('kdjax.experiments.kd').get_config('r34_r18')
  with pytest.raises(KdjaxError, match='config.data.data_dir, which is unset'):
    plan.make_plan(config, str(tmp_path / 'run'))
  runs = plan.make_plan(config, str(tmp_path / 'run'), need_data_dir=False)
  assert [run.config.model for run in runs] == ['ResNet18']
