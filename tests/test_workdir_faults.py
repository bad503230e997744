"""A workdir after a kill or a full disk: a half-written metrics line.

Everything is real: files written and cut short on disk.
"""

import json

from kdjax.train.writers import MetricWriter

# ------------------------------------------------------------------------ metrics.jsonl


def test_a_half_written_metrics_line_is_dropped_with_one_warning(tmp_path, capfd):
  path = tmp_path / 'metrics.jsonl'
  rows = [{'step': s, 'split': 'train', 'loss': 1.0 / s} for s in (4, 8, 12)]
  text = ''.join(json.dumps(r) + '\n' for r in rows)
  path.write_text(text + '{"step": 16, "split": "tra')  # killed mid-write
  writer = MetricWriter(str(tmp_path), resume_step=8)
  writer.write(12, 'train', {'loss': 0.5})
  writer.close()
  assert [json.loads(l) for l in path.read_text().splitlines()] == rows[:2] + [
      {'step': 12, 'split': 'train', 'loss': 0.5}]
  err = capfd.readouterr().err.splitlines()
  assert err == [f'warning: dropped 1 unreadable line of {path} (half-written when a run was '
                 f'killed or the disk was full)']


def test_zeros_and_a_good_line_without_newline_after_a_full_disk(tmp_path, capfd):
  path = tmp_path / 'metrics.jsonl'
  # a good line whose newline was lost, then a zero-filled block and a cut-off line
  path.write_bytes(b'{"step": 4, "split": "train", "loss": 1.0}\n'
                   b'\x00\x00\x00\x00\n{"step": 8, "spl\xff\n{"step": 8, "split": "train"}')
  MetricWriter(str(tmp_path), resume_step=8).close()
  assert path.read_text() == ('{"step": 4, "split": "train", "loss": 1.0}\n'
                              '{"step": 8, "split": "train"}\n')
  assert 'dropped 2 unreadable lines of' in capfd.readouterr().err
