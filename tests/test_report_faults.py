"""``kdjax.report`` over damaged run folders: every readable run is reported, and what was
left out (an unreadable config.json, results.json, half-written metrics lines) is listed
under "skipped:" on stderr and in ``skipped.txt``, never dropped silently nor fatal.

The run folders are real files in the format the training loop writes (made by
``test_report.write_run``), then damaged as a kill or a full disk leaves them.
"""

import csv
import json
import os
import re
import subprocess
import sys

import pytest

from conftest import ROOT
from kdjax import report
from kdjax.errors import KdjaxError
from test_report import write_run


def _cut(path, keep: int) -> None:
  """Cuts ``path`` to its first ``keep`` bytes (a write stopped by a kill or a full disk)."""
  os.truncate(path, keep)


@pytest.fixture
def damaged_runs(tmp_path):
  """Four KD seeds: 0 intact, 1 with a half-written last metrics line, 2 with a cut
  results.json, 3 with a cut config.json."""
  root = tmp_path / 'kd'
  for seed, top1s in enumerate(([40.0, 70.0, 65.0], [45.0, 60.0, 75.0], [50.0, 72.0, 71.0],
                                [30.0, 31.0, 32.0])):
    write_run(root / f'seed_{seed}', 'kd', seed, top1s)
  with open(root / 'seed_1' / 'metrics.jsonl', 'a') as f:
    f.write('{"step": 13, "split": "train", "lo')
  _cut(root / 'seed_2' / 'results.json', 40)
  _cut(root / 'seed_3' / 'config.json', 25)
  return root


def _expected_skips(root):
  return [
      (str(root / 'seed_1' / 'metrics.jsonl'),
       '1 unreadable line left out (line 10: half-written or cut off)'),
      (str(root / 'seed_2' / 'results.json'), 'unreadable (JSONDecodeError: '),
      (str(root / 'seed_3' / 'config.json'), 'unreadable (JSONDecodeError: '),
  ]


def _check_skips(skipped, root):
  assert len(skipped) == 3, skipped
  for (path, why), (want_path, want_why) in zip(skipped, _expected_skips(root)):
    assert path == want_path and why.startswith(want_why), (path, why)
  assert skipped[1][1].endswith('; the run is reported from its metrics.jsonl')
  assert skipped[2][1].endswith('; run left out')


def test_report_reports_every_readable_run_and_lists_what_it_skipped(damaged_runs, tmp_path):
  out = tmp_path / 'out'
  skipped = []
  written = report.report([str(damaged_runs)], str(out), skipped)
  _check_skips(skipped, damaged_runs)
  assert written[-1] == str(out / 'skipped.txt')
  assert (out / 'skipped.txt').read_text() == ''.join(f'{p}: {w}\n' for p, w in skipped)
  (row,) = csv.DictReader(open(out / 'table.csv'))
  assert (row['method'], row['runs'], row['seeds']) == ('kd', '3', '0 1 2')
  # seed 2's numbers come from its metrics (best 72 at epoch 2), the others' results.json
  assert float(row['best_top1_mean']) == pytest.approx((70.0 + 75.0 + 72.0) / 3)
  assert (row['finished'], row['epochs_done']) == ('2', '3')
  runs = {r.seed: r for r in report.find_runs([str(damaged_runs)], [])}
  assert sorted(runs) == [0, 1, 2] and runs[2].results is None
  assert [m['step'] for m in runs[1].train_rows()][-1] == 12  # the cut line is left out

  # a clean report into the same folder drops the stale list
  for seed in (1, 2, 3):
    write_run(damaged_runs / f'seed_{seed}', 'kd', seed, [1.0, 2.0, 3.0])
  written = report.report([str(damaged_runs)], str(out))
  assert not (out / 'skipped.txt').exists() and 'skipped.txt' not in str(written)


def test_cli_prints_a_skipped_section_on_stderr(damaged_runs, tmp_path):
  done = subprocess.run([sys.executable, '-m', 'kdjax.report', str(damaged_runs), '--out',
                         str(tmp_path / 'out')], cwd=ROOT, capture_output=True, text=True,
                        timeout=300)
  assert done.returncode == 0, done.stderr
  assert '| kd | 3 (0,1,2) | 3/3 |' in done.stdout
  err = done.stderr.splitlines()
  start = err.index('skipped:')
  lines = err[start + 1:start + 4]
  _check_skips([tuple(l.strip().split(': ', 1)) for l in lines], damaged_runs)
  assert all(l.startswith('  ') for l in lines)
  assert err[start + 4].startswith('wrote ') and err[start + 4].endswith('skipped.txt')


def test_only_unreadable_runs_is_one_error_line_and_find_runs_without_a_list_is_strict(
    tmp_path, capsys):
  write_run(tmp_path / 'run', 'kd', 0, [1.0])
  (tmp_path / 'run' / 'config.json').write_text('{"method": "kd", "se')
  config = tmp_path / 'run' / 'config.json'
  with pytest.raises(KdjaxError, match=f'^{re.escape(str(config))}: unreadable '
                     f'\\(JSONDecodeError: '):
    report.find_runs([str(tmp_path)])
  assert report.main([str(tmp_path)]) == 2
  err = capsys.readouterr().err
  assert err.startswith(f'kdjax: error: no run under {tmp_path} could be read (1 tried; '
                        f'{config}: unreadable (JSONDecodeError: ')
  assert err.count('\n') == 1
  (tmp_path / 'run' / 'config.json').write_text(json.dumps({'seed': 0}))
  with pytest.raises(KdjaxError, match='not a kdjax config'):
    report.load_run(str(tmp_path / 'run'))
