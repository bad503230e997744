"""benchmarks/throughput.py --dataset imagenet keeps working: its tiny run writes sane numbers."""

import json
import math
import subprocess
import sys

import pytest

from conftest import ROOT


@pytest.mark.slow
def test_imagenet_throughput_tiny_mode(tmp_path):
  out = tmp_path / 'imagenet.json'
  proc = subprocess.run([sys.executable, 'benchmarks/throughput.py', '--dataset', 'imagenet',
                         '--tiny', '--out', str(out)],
                        cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert '| grain workers |' in proc.stdout and '| method |' in proc.stdout
  report = json.loads(out.read_text())
  (pipeline,) = report['pipeline']
  assert pipeline['workers'] == 1
  (step,) = report['steps']
  assert (step['method'], step['net'], step['batch']) == ('vanilla', 'resnet8', 8)
  for key in ('pipeline_images_per_s', 'pipeline_images_per_cpu_s'):
    assert math.isfinite(pipeline[key]) and pipeline[key] > 0, (key, pipeline[key])
  for key in ('step_images_per_s', 'compile_s', 'step_gflops', 'pipeline_over_step'):
    assert math.isfinite(step[key]) and step[key] > 0, (key, step[key])
  assert step['step_images_per_s_min'] <= step['step_images_per_s'] <= step['step_images_per_s_max']
  assert step['pipeline_over_step'] == pytest.approx(
      pipeline['pipeline_images_per_s'] / step['step_images_per_s'])


def test_a_pair_of_the_other_dataset_is_refused():
  proc = subprocess.run([sys.executable, 'benchmarks/throughput.py', '--dataset', 'imagenet',
                         '--pair', 'res32x4_res8x4'],
                        cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert proc.returncode == 2 and 'is not a pair of --dataset imagenet' in proc.stderr
