"""``kdjax.report`` (tables, plots) and ``kdjax.plan``'s seeds (N seeds into sibling workdirs).

The fast tests build workdirs by hand in the format the training loop writes; the slow ones
train real tiny digits runs through ``--seeds`` (KD two seeds, SLKD one: each SLKD run costs
about as much as the rest together) and check the report against the runs' own
``results.json`` and ``metrics.jsonl``.
"""

import ast
import csv
import io
import json
import os
import statistics
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT, run_cli
from kdjax import cli, jsonio, plan, report
from kdjax.errors import KdjaxError

# ------------------------------------------------------------------- hand-made workdirs


def write_run(path, method, seed, top1s, *, teacher='resnet20', student='resnet8',
               finished=True, results=True, reference=None, steps_per_epoch=4, nets=None,
               **fields):
  """A workdir as ``train_and_evaluate`` leaves it: config.json, metrics.jsonl with two
  train rows and one test row per net per epoch, and results.json (unless ``results`` is
  False: a run still going); ``fields`` are further config fields."""
  os.makedirs(path, exist_ok=True)
  config = {'method': method, 'seed': seed, 'model': student, 'num_epochs': 3,
            'data': {'name': 'digits'}, 'teacher': {'model': teacher, 'checkpoint': None},
            'sftn': {'student': 'resnet8'}, 'reference_top1': reference, **fields}
  nets = nets or {'student': top1s}
  main = 'teacher' if method == 'sftn' else 'student'
  lines = []
  for epoch in range(len(top1s)):
    for half in (1, 2):
      step = epoch * steps_per_epoch + half * steps_per_epoch // 2
      row = {'step': step, 'split': 'train', 'loss': 3.0 / step,
             'images_per_second': 100.0 + 10 * seed + step}
      if method == 'slkd':
        row.update({'loss/kl_teacher_student': 1.0 / step, 'loss/kl_fused_student': 0.5 / step})
      lines.append(row)
    for net, values in sorted(nets.items()):
      lines.append({'step': (epoch + 1) * steps_per_epoch, 'split': f'test/{net}',
                    'top1': values[epoch], 'top5': 100.0, 'loss': 0.1})
  with open(os.path.join(path, 'config.json'), 'w') as f:
    json.dump(config, f)
  with open(os.path.join(path, 'metrics.jsonl'), 'w') as f:
    f.writelines(json.dumps(l) + '\n' for l in lines)
  if results:
    main_top1 = nets[main]
    best = int(np.argmax(main_top1))
    with open(os.path.join(path, 'results.json'), 'w') as f:
      json.dump({'method': method, 'seed': seed, 'finished': finished,
                 'step': len(top1s) * steps_per_epoch, 'epochs_done': len(top1s),
                 'num_epochs': 3, 'best_top1': main_top1[best], 'best_epoch': best + 1,
                 'last_top1': main_top1[-1], 'teacher_top1': 97.0 + seed,
                 'images_per_second': 1.0,
                 'net_labels': {n: n for n in nets}}, f)


@pytest.fixture
def fake_runs(tmp_path):
  """KD and SLKD, two seeds each, and their vanilla teacher; one SLKD seed is running."""
  write_run(tmp_path / 'kd' / 'teacher', 'vanilla', 0, [50.0, 80.0, 90.0], teacher='resnet32',
             student='resnet20')
  write_run(tmp_path / 'kd' / 'seed_0', 'kd', 0, [40.0, 70.0, 65.0], reference=73.33)
  write_run(tmp_path / 'kd' / 'seed_1', 'kd', 1, [45.0, 60.0, 75.0], reference=73.33)
  write_run(tmp_path / 'slkd' / 'seed_0', 'slkd', 0, [30.0, 80.0, 85.0])
  write_run(tmp_path / 'slkd' / 'seed_1', 'slkd', 1, [35.0, 82.0], results=False)
  return tmp_path


def test_mean_std_uses_ddof_1_and_no_std_for_one_value():
  assert report.mean_std([1.0, 2.0, 4.0]) == (pytest.approx(7 / 3),
                                              pytest.approx(np.std([1, 2, 4], ddof=1)))
  assert report.mean_std([5.0, None]) == (5.0, None)
  assert report.mean_std([]) == (None, None)


def test_table_rows_mean_std_order_and_gap(fake_runs):
  runs = report.find_runs([str(fake_runs / 'kd'), str(fake_runs / 'slkd')])
  assert len(runs) == 5  # the nested teacher is a run of its own
  rows = report.table_rows(runs)
  assert [(r['method'], r['teacher'], r['student']) for r in rows] == [
      ('vanilla', '', 'resnet20'), ('kd', 'resnet20', 'resnet8'),
      ('slkd', 'resnet20', 'resnet8')]
  teacher, kd, slkd = rows
  assert teacher['runs'] == 1 and teacher['best_top1_std'] is None
  assert kd['seeds'] == [0, 1] and kd['finished'] == 2
  assert kd['best_top1_mean'] == pytest.approx(np.mean([70.0, 75.0]))
  assert kd['best_top1_std'] == pytest.approx(np.std([70.0, 75.0], ddof=1))
  assert kd['last_top1_mean'] == pytest.approx(70.0)
  assert kd['teacher_top1_mean'] == pytest.approx(97.5)
  assert kd['gap'] == pytest.approx(72.5 - 73.33)
  # images/s: each run's median over its logged training windows, then the mean
  medians = [statistics.median([100.0 + 10 * s + st for st in range(2, 13, 2)]) for s in (0, 1)]
  assert kd['images_per_second_mean'] == pytest.approx(np.mean(medians))
  # the running SLKD seed counts with the epochs it has evaluated (best 82 at epoch 2)
  assert slkd['finished'] == 1 and (slkd['epochs_done'], slkd['epochs_done_max']) == (2, 3)
  assert slkd['best_top1_mean'] == pytest.approx(np.mean([85.0, 82.0]))
  assert slkd['last_top1_std'] == pytest.approx(np.std([85.0, 82.0], ddof=1))
  assert slkd['gap'] is None


def test_a_row_holds_runs_that_differ_in_the_seed_alone(tmp_path):
  """Runs of one method and pair that differ in the learning rate or the batch size are
  rows of their own, named by those fields; seeds, and fields that change no result
  (logging cadence), share a row."""
  lr = lambda value: {'lr': value, 'momentum': 0.9}
  write_run(tmp_path / 'a', 'kd', 0, [40.0, 50.0, 60.0], optimizer=lr(0.05), batch_size=64)
  write_run(tmp_path / 'b', 'kd', 1, [42.0, 52.0, 62.0], optimizer=lr(0.05), batch_size=64,
            log_every_steps=10)
  write_run(tmp_path / 'c', 'kd', 0, [10.0, 20.0, 30.0], optimizer=lr(0.5), batch_size=64)
  write_run(tmp_path / 'd', 'kd', 0, [11.0, 21.0, 31.0], optimizer=lr(0.05), batch_size=128)
  rows = report.table_rows(report.find_runs([str(tmp_path)]))
  by_method = {r['method']: (r['seeds'], r['best_top1_mean']) for r in rows}
  assert by_method == {
      'kd [batch_size=64, optimizer.lr=0.05]': ([0, 1], 61.0),
      'kd [batch_size=64, optimizer.lr=0.5]': ([0], 30.0),
      'kd [batch_size=128, optimizer.lr=0.05]': ([0], 31.0)}


def test_markdown_and_csv_tables(fake_runs):
  rows = report.table_rows(report.find_runs([str(fake_runs)]))
  md = report.markdown_table(rows).splitlines()
  assert len(md) == 2 + len(rows)
  kd_line = next(l for l in md if '| kd |' in l)
  assert '| 2 (0,1) | 3/3 | 72.50 ± 3.54 | 70.00 ± 7.07 | 97.50 |' in kd_line
  assert kd_line.endswith('| 73.33 | -0.83 |')
  assert '| 2-3/3 |' in next(l for l in md if '| slkd |' in l)
  assert '| - | resnet20 | vanilla | 1 (0) | 3/3 | 90.00 | 90.00 |' in md[2]
  table = list(csv.DictReader(io.StringIO(report.csv_table(rows))))
  assert [r['method'] for r in table] == ['vanilla', 'kd', 'slkd']
  assert float(table[1]['best_top1_std']) == pytest.approx(np.std([70, 75], ddof=1))
  assert table[0]['best_top1_std'] == '' and table[1]['seeds'] == '0 1'


def test_figures_have_one_line_per_run(fake_runs):
  runs = report.find_runs([str(fake_runs)])
  figs = report.figures(runs)
  assert sorted(figs) == ['digits_resnet20.png', 'digits_resnet20_resnet8.png',
                          'digits_resnet20_resnet8_slkd_kl.png']
  acc, loss = figs['digits_resnet20_resnet8.png'].axes
  assert len(acc.get_lines()) == len(loss.get_lines()) == 4
  slkd_seed1 = next(l for l in acc.get_lines() if l.get_label() == 'slkd seed 1')
  np.testing.assert_array_equal(slkd_seed1.get_xydata(), [[1, 35.0], [2, 82.0]])
  kd_loss = next(l for l in loss.get_lines() if l.get_label() == 'kd seed 0')
  np.testing.assert_allclose(kd_loss.get_xdata(), np.arange(2, 13, 2) / 4)
  (kl,) = figs['digits_resnet20_resnet8_slkd_kl.png'].axes
  assert len(kl.get_lines()) == 4  # KL(T||S) and KL(F||S) for each of the two SLKD runs


def test_sftn_branch_figure(tmp_path):
  write_run(tmp_path / 'sftn', 'sftn', 0, [50.0, 60.0], student='resnet20',
             nets={'teacher': [50.0, 60.0], 'branch1': [20.0, 30.0], 'branch2': [25.0, 35.0]})
  runs = report.find_runs([str(tmp_path)])
  (row,) = report.table_rows(runs)
  assert (row['teacher'], row['student'], row['best_top1_mean']) == ('resnet20', 'resnet8', 60.0)
  (ax,) = report.figures(runs)['digits_resnet20_resnet8_sftn_nets.png'].axes
  assert [l.get_label() for l in ax.get_lines()] == [
      'teacher, seed 0', 'branch1, seed 0', 'branch2, seed 0']


def test_report_writes_tables_and_real_pngs(fake_runs, tmp_path):
  import matplotlib.image
  out = tmp_path / 'out'
  written = report.report([str(fake_runs / 'kd'), str(fake_runs / 'slkd')], str(out))
  assert {os.path.basename(p) for p in written} == {
      'table.md', 'table.csv', 'digits_resnet20_resnet8.png',
      'digits_resnet20_resnet8_slkd_kl.png', 'digits_resnet20.png'}
  for path in written:
    if path.endswith('.png'):
      image = matplotlib.image.imread(path)
      assert image.ndim == 3 and image.shape[0] > 100 and image.std() > 0.01
  default = report.report([str(fake_runs / 'kd')])
  assert all(p.startswith(str(fake_runs / 'kd' / 'report')) for p in default)


def test_a_folder_without_runs_is_one_error_line(tmp_path, capsys):
  (tmp_path / 'empty').mkdir()
  with pytest.raises(KdjaxError, match='holds no kdjax run'):
    report.report([str(tmp_path / 'empty')])
  with pytest.raises(KdjaxError, match='is not a directory'):
    report.find_runs([str(tmp_path / 'missing')])
  assert report.main([str(tmp_path / 'empty')]) == 2
  err = capsys.readouterr().err
  assert err.startswith('kdjax: error: ') and err.count('\n') == 1


# --------------------------------------------------------------------------- seeds


def test_seeds_flag_below_one_is_one_error_line(tmp_path):
  done = run_cli(['--config', 'experiments/kd.py:digits', f'--workdir={tmp_path / "run"}',
                  '--seeds=0'])
  assert done.returncode == 2
  assert done.stderr.strip() == 'kdjax: error: --seeds must be at least 1, got 0'
  assert not (tmp_path / 'run').exists()


# ------------------------------------------------------------------ real digits runs

# KD and SLKD on digits, as small as they go: resnet8 everywhere, batch 256 (5 steps per
# epoch), 1 epoch (the time goes into the 1,437 images per epoch; the hand-made runs above
# cover curves of several epochs); the teacher trained by the KD command and shared.
TINY = ['--config.model=resnet8', '--config.teacher.model=resnet8', '--config.batch_size=256',
        '--config.num_epochs=1', '--config.log_every_steps=2',
        '--config.checkpoint_every_steps=100']


def _literal(text: str):
  """A ``--config.FIELD=VALUE`` value as config_flags reads it: a Python literal, else a str."""
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text


@pytest.fixture(scope='module')
def digits_runs(tmp_path_factory):
  """Real runs, three commands: KD seed 0 (and its teacher) stopped after 3 steps; KD
  ``--seeds 2`` (resumes both, runs seed 1); SLKD ``--seeds 1`` from the same teacher."""
  root = tmp_path_factory.mktemp('digits')
  kd = root / 'kd'
  env = {'JAX_COMPILATION_CACHE_DIR': str(root / 'jax_cache')}  # seeds share compilations

  def cli(config, workdir, *extra):
    done = run_cli(['--config', config, f'--workdir={workdir}', *TINY, *extra], env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stderr

  cli('experiments/kd.py:digits', kd, '--seeds=1', '--config.max_steps=3')
  partial = jsonio.read_json(str(kd / 'seed_0' / 'results.json'))
  resumed = cli('experiments/kd.py:digits', kd, '--seeds=2')
  cli('experiments/slkd.py:digits', root / 'slkd', '--seeds=1',
      f'--config.teacher.checkpoint={kd}/teacher')
  return {'root': root, 'partial': partial, 'resumed': resumed}


@pytest.mark.slow
def test_seeds_resume_an_unfinished_seed_and_skip_finished_ones(digits_runs):
  root, kd = digits_runs['root'], digits_runs['root'] / 'kd'
  assert digits_runs['partial']['step'] == 3 and not digits_runs['partial']['finished']
  assert f'resumed from the checkpoint at step 3 in {kd / "seed_0"}' in digits_runs['resumed']
  for method, seed in (('kd', 0), ('kd', 1), ('slkd', 0)):
    results = jsonio.read_json(str(root / method / f'seed_{seed}' / 'results.json'))
    assert results['finished'] and results['seed'] == seed and results['step'] == 5
    config = json.load(open(root / method / f'seed_{seed}' / 'config.json'))
    assert config['teacher']['checkpoint'] == str(kd / 'teacher')  # one teacher for all
  # launched again, the finished seeds are left alone (the CLI runs exactly this)
  results_files = [kd / f'seed_{seed}' / 'results.json' for seed in (0, 1)]
  mtimes = [os.stat(p).st_mtime_ns for p in results_files]
  config = cli.experiment('kd').get_config('digits')  # the command's own config
  config.update_from_flattened_dict({field: _literal(value) for field, value in (
      flag[len('--config.'):].split('=', 1) for flag in TINY)})
  again = plan.execute(plan.make_plan(config, str(kd), 2))
  assert [r['seed'] for r in again] == [0, 0, 1]  # the teacher, seeds 0 and 1
  assert [os.stat(p).st_mtime_ns for p in results_files] == mtimes


def _report_cli(args):
  """``python -m kdjax.report ARGS`` in the project root."""
  return subprocess.run([sys.executable, '-m', 'kdjax.report', *args], cwd=ROOT,
                        capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_report_of_real_runs_matches_their_results(digits_runs, tmp_path):
  import matplotlib.image
  root = digits_runs['root']
  done = _report_cli([str(root / 'kd'), str(root / 'slkd'), '--out', str(tmp_path)])
  assert done.returncode == 0, done.stderr
  table = {r['method']: r for r in csv.DictReader(open(tmp_path / 'table.csv'))}
  assert list(table) == ['vanilla', 'kd', 'slkd']  # the teacher, then the methods of its pair
  for method, seed_list in (('kd', [0, 1]), ('slkd', [0])):
    results = [json.load(open(root / method / f'seed_{s}' / 'results.json')) for s in seed_list]
    row = table[method]
    assert (row['runs'], row['seeds']) == (str(len(seed_list)), ' '.join(map(str, seed_list)))
    assert (row['teacher'], row['student'], row['epochs_done']) == ('resnet8', 'resnet8', '1')
    for field in ('best_top1', 'last_top1'):
      values = [r[field] for r in results]
      assert float(row[f'{field}_mean']) == pytest.approx(np.mean(values))
      std = row[f'{field}_std']
      assert (float(std) == pytest.approx(np.std(values, ddof=1)) if len(values) > 1
              else std == '')
    assert float(row['teacher_top1_mean']) == pytest.approx(
        np.mean([r['teacher_top1'] for r in results]))
  assert '| kd | 2 (0,1) | 1/1 |' in done.stdout and '| slkd | 1 (0) | 1/1 |' in done.stdout
  for name in ('digits_resnet8.png', 'digits_resnet8_resnet8.png',
               'digits_resnet8_resnet8_slkd_kl.png'):
    image = matplotlib.image.imread(tmp_path / name)
    assert image.ndim == 3 and image.std() > 0.01
  figs = report.figures(report.find_runs([str(root)]))
  acc, loss = figs['digits_resnet8_resnet8.png'].axes
  assert len(acc.get_lines()) == len(loss.get_lines()) == 3  # kd seeds 0 and 1, slkd seed 0
  for line in acc.get_lines():  # each curve is its run's test top-1 per epoch
    method, _, seed = line.get_label().split()
    history = [json.loads(l) for l in open(root / method / f'seed_{seed}' / 'metrics.jsonl')]
    assert list(line.get_ydata()) == [h['top1'] for h in history if h['split'] == 'test/student']
  (kl,) = figs['digits_resnet8_resnet8_slkd_kl.png'].axes
  assert [l.get_label() for l in kl.get_lines()] == [
      'KL(T || S), seed 0', 'KL(F || S), fused SL-teachers, seed 0']
  assert all(len(l.get_xdata()) == 3 for l in kl.get_lines())  # logged at steps 2, 4, 5
