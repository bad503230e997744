"""The benchmarks keep working: small runs of them write sane numbers."""

import json
import math
import subprocess
import sys

import pytest

from conftest import ROOT


@pytest.mark.slow
def test_throughput_benchmark_tiny_mode(tmp_path):
  out = tmp_path / 'x.json'
  proc = subprocess.run([sys.executable, 'benchmarks/throughput.py', '--tiny', '--out', str(out)],
                        cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert '| method |' in proc.stdout
  report = json.loads(out.read_text())
  assert report['machine']['cpu_count'] >= 1 and report['machine']['devices']
  assert report['matmul_peak']['gflops_per_s'] > 0
  (row,) = report['results']
  assert row['method'] == 'vanilla' and row['net'] == 'resnet8'
  for key in ('images_per_s', 'images_per_s_min', 'images_per_s_max', 'compile_s',
              'step_memory_mb', 'process_peak_memory_mb', 'step_gflops', 'achieved_gflops_per_s'):
    assert math.isfinite(row[key]) and row[key] > 0, (key, row[key])
  assert row['images_per_s_min'] <= row['images_per_s'] <= row['images_per_s_max']
  assert 0 < row['fraction_of_matmul_peak'] < 1.5, row['fraction_of_matmul_peak']
  (loop,) = report['loop']
  assert loop['steps'] == 12 and loop['windows_used'] >= 1
  for key in ('loop_images_per_s', 'step_images_per_s', 'loop_over_step'):
    assert math.isfinite(loop[key]) and loop[key] > 0, (key, loop[key])


@pytest.mark.slow
def test_input_pipeline_benchmark_small_run(tmp_path):
  out = tmp_path / 'input.json'
  proc = subprocess.run([sys.executable, 'benchmarks/input_pipeline.py', '--images', '48',
                         '--width', '100', '--height', '75', '--image-size', '32', '--batch', '4',
                         '--workers', '1', '--out', str(out)],
                        cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  report = json.loads(out.read_text())
  assert [(r['mode'], r['kind'], r['workers']) for r in report['runs']] == [
      ('train', 'direct', 1), ('train', 'grain', 1), ('eval', 'direct', 1), ('eval', 'grain', 1)]
  for run in report['runs']:
    assert run['images_per_second'] > 0 and run['images_per_cpu_second'] > 0, run
