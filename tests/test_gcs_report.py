"""``kdjax-report`` on runs in a bucket (the GCS emulator, :mod:`gcs_emulator`): it reads
them through :mod:`kdjax.paths` and writes its tables and plots into the bucket, the same
tables the same runs give on a local disk."""

import io
import os
import subprocess
import sys

import pytest

import gcs_emulator
from conftest import ROOT
from kdjax import report
from test_report import write_run

BUCKET = 'kdjax-test'


@pytest.fixture
def local_runs(tmp_path):
  """KD (two seeds, one with a half-written last metrics line) and SLKD (one seed, still
  running): their files as the training loop leaves them."""
  root = tmp_path / 'runs'
  write_run(root / 'kd' / 'seed_0', 'kd', 0, [40.0, 70.0, 65.0], reference=73.33)
  write_run(root / 'kd' / 'seed_1', 'kd', 1, [45.0, 60.0, 75.0], reference=73.33)
  write_run(root / 'slkd' / 'seed_0', 'slkd', 0, [30.0, 80.0], results=False)
  with open(root / 'kd' / 'seed_1' / 'metrics.jsonl', 'a') as f:
    f.write('{"step": 13, "split": "tra')
  return root


def _report_cli(args, env):
  return subprocess.run([sys.executable, '-m', 'kdjax.report', *args], cwd=ROOT,
                        env={**os.environ, **env}, capture_output=True, text=True, timeout=300)


def _check_png(data: bytes) -> None:
  import matplotlib.image
  assert data.startswith(b'\x89PNG\r\n\x1a\n')
  image = matplotlib.image.imread(io.BytesIO(data), format='png')
  assert image.ndim == 3 and image.shape[0] > 100 and image.std() > 0.01


def test_report_reads_runs_from_a_bucket_and_writes_its_tables_and_plots_there(
    local_runs, tmp_path):
  local_out = tmp_path / 'local_report'
  local_skipped = []
  local_written = report.report([str(local_runs)], str(local_out), local_skipped)
  with gcs_emulator.running_emulator(buckets=(BUCKET,)) as url:
    env = gcs_emulator.client_env(url)
    for path in sorted(local_runs.rglob('*')):
      if path.is_file():
        gcs_emulator.write_object(url, BUCKET, f'runs/{path.relative_to(local_runs)}',
                                  path.read_bytes())
    done = _report_cli([f'gs://{BUCKET}/runs'], env)
    assert done.returncode == 0, done.stderr
    written = {name: gcs_emulator.read_object(url, BUCKET, name)
               for name in gcs_emulator.list_objects(url, BUCKET, 'runs/report/')}
    # read from the bucket, written to a local --out: the same files again
    again = _report_cli([f'gs://{BUCKET}/runs', '--out', str(tmp_path / 'from_bucket')], env)
    assert again.returncode == 0, again.stderr
  names = sorted(os.path.basename(p) for p in local_written)
  assert sorted(n[len('runs/report/'):] for n in written) == names
  assert 'digits_resnet20_resnet8_slkd_kl.png' in names and 'skipped.txt' in names
  for name in ('table.md', 'table.csv'):
    assert written[f'runs/report/{name}'].decode() == (local_out / name).read_text()
    assert (tmp_path / 'from_bucket' / name).read_text() == (local_out / name).read_text()
  assert done.stdout == (local_out / 'table.md').read_text()
  assert '| kd | 2 (0,1) | 3/3 |' in done.stdout and '| slkd | 1 (0) | 2/3 |' in done.stdout
  for name in names:
    if name.endswith('.png'):
      _check_png(written[f'runs/report/{name}'])
  # what was skipped is named by its URL in the bucket
  (path, why), = local_skipped
  gcs_path = f'gs://{BUCKET}/runs/kd/seed_1/metrics.jsonl'
  assert written['runs/report/skipped.txt'].decode() == f'{gcs_path}: {why}\n'
  assert f'  {gcs_path}: {why}' in done.stderr.splitlines()
  assert done.stderr.splitlines()[-1].startswith(f'wrote gs://{BUCKET}/runs/report/table.md, ')
