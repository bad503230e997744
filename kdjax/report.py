"""Tables and plots of finished or running runs.

    python -m kdjax.report DIR [DIR ...] [--out OUTDIR]

DIR and OUTDIR may be folders in an object store (``gs://bucket/runs``, :mod:`kdjax.paths`).
Every folder under the DIRs that holds a run (its ``config.json``; seeds in ``DIR/seed_<i>``
and the digits teachers in ``DIR/teacher`` included) is read: ``results.json`` where the
run wrote one (finished, or stopped by a signal), otherwise its ``metrics.jsonl`` (a run
still going). Written to OUTDIR (default ``DIR/report`` of the first DIR):

* ``table.md`` and ``table.csv``: one row per (dataset, teacher, student, method and its
  variant (``config.variant``, e.g. SLKD's ``official``/``sequential`` presets), epochs)
  and setting: runs share a row only when their configs differ in the seed alone (or in
  fields that change no result, :data:`kdjax.run_fields.NEUTRAL`); runs that differ in
  another field are rows of their own, the method labelled by those fields' values
  (``kd [optimizer.lr=0.5]``). Each row gives, over its runs (seeds), mean +- std (ddof 1;
  blank for one run) of the best-epoch and last-epoch top-1 of the trained net, the
  teacher's top-1, the epochs done and images/s (each run's median over its logged training
  windows), and where the config names a published top-1 (``config.reference_top1``) the
  best-epoch mean minus it. Rows of one teacher/student pair are adjacent, in the order of
  the method registry (:func:`kdjax.methods.names`: vanilla first), so methods compare at a
  glance.
* ``<dataset>_<teacher>_<student>.png``: test top-1 and training loss per epoch, one line
  per run of the pair; and the figures a method asks for in ``INFO.figures``:
  ``..._<method>_kl.png`` (``'kl_monitors'``: the logged ``loss/kl_*`` monitors, SLKD's KL(T
  || S) and KL(F || S), the paper's Figure 2) and ``..._<method>_nets.png``
  (``'eval_nets'``: the top-1 of every evaluated net, an SFTN teacher and its branches).

Every run that can be read is reported; what cannot be (a run whose ``config.json`` does not
parse, an unreadable ``results.json``, half-written ``metrics.jsonl`` lines) is left out and
listed, one ``PATH: why`` line each, under ``skipped:`` on stderr and in ``skipped.txt``.

As a library: ``kdjax.report.report([dirs], out, skipped=None)`` returns the paths it wrote
(and appends ``(path, why)`` pairs to ``skipped``); :func:`find_runs`, :func:`table_rows`
and the ``*_figure`` functions are the pieces.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
import statistics
import sys
from typing import Iterable, Iterator, Optional, Sequence

from etils import epath

from kdjax import cli, jsonio, methods, paths, run_fields
from kdjax.errors import KdjaxError

_SKIP_DIRS = ('checkpoints', 'tb')  # a run's own sub-folders, never runs themselves
_LINESTYLES = ('-', '--', ':', '-.')  # one per run of a method (seed) in the figures
_KL_MONITORS = (('loss/kl_teacher_student', 'KL(T || S)', '-'),
                ('loss/kl_fused_student', 'KL(F || S), fused SL-teachers', '--'))


@dataclasses.dataclass
class RunRecord:
  """One workdir: its config, ``results.json`` (None while running) and metrics lines."""
  workdir: str
  config: dict
  results: Optional[dict]
  metrics: list

  @property
  def method(self) -> str:
    return self.config['method']

  @property
  def seed(self) -> int:
    return self.config.get('seed', 0)

  @property
  def info(self) -> methods.MethodInfo:
    return methods.info(self.method)

  @property
  def variant(self) -> str:
    """The preset variant of the method (``config.variant``), '' for the default."""
    return self.config.get('variant') or ''

  @property
  def label(self) -> str:
    """The method and its variant, as a row names them: ``slkd (official)``."""
    return f'{self.method} ({self.variant})' if self.variant else self.method

  @property
  def main_net(self) -> str:
    """The eval net whose accuracy the run reports (``INFO.trained_net``)."""
    return self.info.trained_net

  def test_rows(self, net: Optional[str] = None) -> list:
    """The per-epoch test metrics of ``net`` (default: the main net), in order."""
    split = f'test/{net or self.main_net}'
    return [m for m in self.metrics if m['split'] == split]

  def train_rows(self) -> list:
    return [m for m in self.metrics if m['split'] == 'train']

  def steps_per_epoch(self) -> Optional[int]:
    tests = self.test_rows()
    return tests[0]['step'] if tests else None


def _read_jsonl(path: str) -> tuple:
  """``(rows, problem)``: the metrics rows of ``path`` (none if it is missing) and None, or
  with what was left out: lines that are not a metrics row (half-written by a run still
  going, or cut off by a kill or a full disk), or the whole file if it cannot be opened."""
  rows, bad = [], []
  try:
    text = paths.path(path).read_bytes().decode('utf-8', errors='replace')
  except FileNotFoundError:
    return [], None
  except OSError as e:
    return [], f'unreadable ({type(e).__name__}: {e.strerror}); no metrics for the run'
  for number, line in enumerate(text.splitlines(), 1):
    if not line.strip():
      continue
    try:
      row = json.loads(line)
      if isinstance(row, dict) and 'step' in row and 'split' in row:
        rows.append(row)
        continue
    except ValueError:
      pass
    bad.append(number)
  if not bad:
    return rows, None
  where = ', '.join(map(str, bad[:5])) + (f' and {len(bad) - 5} more' if len(bad) > 5 else '')
  return rows, (f'{len(bad)} unreadable line{"s" if len(bad) > 1 else ""} left out (line '
                f'{where}: half-written or cut off)')


class _UnreadableRun(KdjaxError):
  """A run whose ``config.json`` cannot be read: ``path`` and ``why``."""

  def __init__(self, path: str, why: str):
    super().__init__(f'{path}: {why}')
    self.path, self.why = path, why


def load_run(workdir: str, skipped: Optional[list] = None) -> RunRecord:
  """The run in ``workdir`` (which holds its ``config.json``).

  Raises :class:`KdjaxError` if ``config.json`` cannot be read. What else cannot be read
  is left out: a ``results.json`` that does not parse (the run's numbers then come from its
  metrics, as for a run still going) and ``metrics.jsonl`` lines that are not metrics rows;
  each is appended to ``skipped`` as a ``(path, why)`` pair when a list is given.
  """
  folder = paths.path(workdir)
  path = str(folder / 'config.json')
  config, problem = jsonio.read_run_config_or_why(folder)  # with its allowed changes
  if problem is None and not (isinstance(config, dict) and 'method' in config):
    problem = 'missing' if config is None else 'not a kdjax config (no method)'
  if problem:
    raise _UnreadableRun(path, problem)
  notes = [] if skipped is None else skipped
  path = str(folder / 'results.json')
  results, problem = jsonio.read_json_or_why(path)
  if problem is None and results is not None and not isinstance(results, dict):
    results, problem = None, 'not a JSON object'
  if problem:
    notes.append((path, f'{problem}; the run is reported from its metrics.jsonl'))
  path = str(folder / 'metrics.jsonl')
  metrics, problem = _read_jsonl(path)
  if problem:
    notes.append((path, problem))
  return RunRecord(workdir, config, results, metrics)


def _run_folders(folder: epath.Path) -> Iterator[epath.Path]:
  """``folder`` and the folders under it that hold a ``config.json``, in path order; a run's
  own sub-folders (checkpoints, TensorBoard logs) are not searched. (``epath.Path.walk``
  drops the ``gs://`` of the folders it yields.)"""
  children = sorted(folder.iterdir())
  if any(child.name == 'config.json' for child in children):
    yield folder
  for child in children:
    if child.name not in _SKIP_DIRS and child.is_dir():
      yield from _run_folders(child)


def find_runs(dirs: Sequence[str], skipped: Optional[list] = None) -> list:
  """Every run under ``dirs`` (recursively), each once, in path order.

  Without ``skipped``, a run whose ``config.json`` cannot be read raises
  :class:`KdjaxError`. With a list, that run is left out and what was skipped is appended
  to it as ``(path, why)`` pairs (unreadable runs, and what :func:`load_run` leaves out);
  a :class:`KdjaxError` then says so only if no run at all could be read.
  """
  if not dirs:
    raise KdjaxError('no run directories given')
  found = set()
  for top in dirs:
    folder = paths.path(top)
    if not folder.is_dir():
      raise KdjaxError(f'{top} is not a directory')
    runs = [str(path) if paths.is_remote(top) else os.path.realpath(path)
            for path in _run_folders(folder)]
    if not runs:
      raise KdjaxError(f'{top} holds no kdjax run (no config.json under it)')
    found.update(runs)
  if skipped is None:
    return [load_run(path) for path in sorted(found)]
  runs = []
  for path in sorted(found):
    try:
      runs.append(load_run(path, skipped))
    except _UnreadableRun as e:
      skipped.append((e.path, f'{e.why}; run left out'))
  if not runs:
    raise KdjaxError(f'no run under {", ".join(dirs)} could be read ({len(found)} tried; '
                     f'{skipped[-1][0]}: {skipped[-1][1]})')
  return runs


def _by_seed(runs: Iterable[RunRecord]) -> list:
  return sorted(runs, key=lambda r: (r.seed, r.workdir))


# ------------------------------------------------------------------------------ numbers


def mean_std(values: Iterable[float]) -> tuple:
  """(mean, std with ddof 1) of the values that are not None; std None for fewer than two,
  (None, None) for none."""
  xs = [float(v) for v in values if v is not None]
  if not xs:
    return None, None
  return statistics.fmean(xs), statistics.stdev(xs) if len(xs) >= 2 else None


def _median_images_per_second(run: RunRecord) -> Optional[float]:
  rates = [m['images_per_second'] for m in run.train_rows() if 'images_per_second' in m]
  if rates:
    return statistics.median(rates)
  return (run.results or {}).get('images_per_second')


def run_summary(run: RunRecord) -> dict:
  """One run's numbers: from ``results.json`` when it has one, else from its metrics."""
  r = run.results
  tests = run.test_rows()
  if r is not None and r.get('step', 0) >= (run.metrics[-1]['step'] if run.metrics else 0):
    summary = {k: r.get(k) for k in ('best_top1', 'best_epoch', 'last_top1', 'epochs_done',
                                     'finished', 'teacher_top1')}
  else:  # still running: the epochs evaluated so far
    top1 = [t['top1'] for t in tests]
    best = max(range(len(top1)), key=top1.__getitem__) if top1 else None
    summary = {'best_top1': top1[best] if top1 else None,
               'best_epoch': best + 1 if top1 else None,
               'last_top1': top1[-1] if top1 else None, 'epochs_done': len(top1),
               'finished': False, 'teacher_top1': (r or {}).get('teacher_top1')}
  summary['num_epochs'] = run.config.get('num_epochs')
  summary['images_per_second'] = _median_images_per_second(run)
  return summary


def _teacher_name(run: RunRecord, teacher: str) -> str:
  """The teacher's model, with the method that trained it when that is not the supervised
  one (an SFTN teacher), for a run that distils from a checkpoint; '' for none."""
  checkpoint = (run.config.get('teacher') or {}).get('checkpoint')
  if not teacher or not run.info.uses_teacher or not checkpoint:
    return teacher
  source = jsonio.read_json(str(paths.path(checkpoint) / 'config.json'))
  kind = (source or {}).get('method', methods.SUPERVISED)
  return teacher if kind == methods.SUPERVISED else f'{teacher} ({kind})'


def pair_key(run: RunRecord) -> tuple:
  """(dataset, teacher, student) of a run (``INFO.pair``): the runs one figure compares."""
  teacher, student = run.info.pair(run.config)
  return (run.config.get('data', {}).get('name', ''), _teacher_name(run, teacher), student)


def _method_rank(label: str) -> tuple:
  """Registry order of a row's method (``slkd (official)`` after ``slkd``)."""
  name, _, variant = label.partition(' ')
  order = methods.names()
  return (order.index(name) if name in order else len(order), name, variant)


def row_key(run: RunRecord) -> tuple:
  """The table row of a run: its pair, method (with its variant) and number of epochs."""
  return pair_key(run) + (run.label, run.config.get('num_epochs'))


def _sort_key(key: tuple) -> tuple:
  dataset, teacher, student, label, epochs = key
  return (dataset, teacher or student, teacher, student, _method_rank(label), epochs or 0)


def group_runs(runs: Sequence[RunRecord], key=row_key) -> dict:
  """``{key: [runs]}`` (pairs together, methods in registry order once sorted)."""
  groups = {}
  for run in runs:
    groups.setdefault(key(run), []).append(run)
  return {key: _by_seed(members) for key, members in groups.items()}


def _setting_labels(runs: Sequence[RunRecord]) -> dict:
  """``{workdir: ' [field=value, ...]'}``: for runs of one :func:`row_key` whose configs
  differ in a result-changing field other than the seed (:mod:`kdjax.run_fields`), the
  values of the fields that differ among them; '' where a key's runs differ in seeds alone."""
  labels = {}
  for members in group_runs(runs).values():
    fields = [run_fields.result_fields(r.config, ignore=('seed', 'num_epochs'))
              for r in members]
    varying = sorted({k for f in fields for k in f
                      if any(other.get(k) != f.get(k) for other in fields)})
    for run, f in zip(members, fields):
      values = ', '.join(f'{k}={f.get(k)}' for k in varying)
      labels[run.workdir] = f' [{values}]' if values else ''
  return labels


def table_key(runs: Sequence[RunRecord]):
  """The table's row key: :func:`row_key`, its method label extended by
  :func:`_setting_labels`, so that one row holds runs whose configs differ in the seed alone."""
  settings = _setting_labels(runs)

  def key(run: RunRecord) -> tuple:
    *pair, label, epochs = row_key(run)
    return (*pair, label + settings[run.workdir], epochs)
  return key


def table_rows(runs: Sequence[RunRecord]) -> list:
  """One dict per table row (see the module docstring), in table order."""
  groups = group_runs(runs, table_key(runs))
  rows = []
  for key in sorted(groups, key=_sort_key):
    members = groups[key]
    summaries = [run_summary(r) for r in members]
    dataset, teacher, student, method, num_epochs = key
    row = {'dataset': dataset, 'teacher': teacher, 'student': student, 'method': method,
           'runs': len(members), 'seeds': [r.seed for r in members],
           'epochs_done': min(s['epochs_done'] or 0 for s in summaries),
           'epochs_done_max': max(s['epochs_done'] or 0 for s in summaries),
           'num_epochs': num_epochs,
           'finished': sum(bool(s['finished']) for s in summaries)}
    for field in ('best_top1', 'last_top1', 'teacher_top1', 'images_per_second'):
      row[f'{field}_mean'], row[f'{field}_std'] = mean_std(s[field] for s in summaries)
    references = {r.config.get('reference_top1') for r in members} - {None}
    row['reference_top1'] = references.pop() if len(references) == 1 else None
    row['gap'] = (row['best_top1_mean'] - row['reference_top1']
                  if row['reference_top1'] is not None and row['best_top1_mean'] is not None
                  else None)
    rows.append(row)
  return rows


# ------------------------------------------------------------------------------- tables

CSV_FIELDS = ('dataset', 'teacher', 'student', 'method', 'runs', 'seeds', 'finished',
              'epochs_done', 'epochs_done_max', 'num_epochs', 'best_top1_mean',
              'best_top1_std', 'last_top1_mean', 'last_top1_std', 'teacher_top1_mean',
              'images_per_second_mean', 'reference_top1', 'gap')


def _num(x, digits: int = 2) -> str:
  return '' if x is None else f'{x:.{digits}f}'


def _pm(mean, std, digits: int = 2) -> str:
  if mean is None:
    return ''
  return _num(mean, digits) + (f' ± {std:.{digits}f}' if std is not None else '')


def markdown_table(rows: Sequence[dict]) -> str:
  """The rows as a Markdown table (top-1 in %, mean ± std over the runs)."""
  head = ('dataset', 'teacher', 'student', 'method', 'seeds', 'epochs', 'best top-1',
          'last top-1', 'teacher top-1', 'img/s', 'published', 'best - published')
  lines = ['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
  for r in rows:
    done = sorted({r['epochs_done'], r['epochs_done_max']})
    epochs = '-'.join(map(str, done)) + f'/{r["num_epochs"]}'
    cells = (r['dataset'], r['teacher'] or '-', r['student'], r['method'],
             f'{r["runs"]} ({",".join(map(str, r["seeds"]))})', epochs,
             _pm(r['best_top1_mean'], r['best_top1_std']),
             _pm(r['last_top1_mean'], r['last_top1_std']), _num(r['teacher_top1_mean']),
             _num(r['images_per_second_mean'], 1), _num(r['reference_top1']),
             '' if r['gap'] is None else f'{r["gap"]:+.2f}')
    lines.append('| ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines) + '\n'


def csv_table(rows: Sequence[dict]) -> str:
  """The rows as CSV, numbers unrounded, an empty cell for a missing value."""
  out = io.StringIO()
  writer = csv.DictWriter(out, fieldnames=CSV_FIELDS, extrasaction='ignore', lineterminator='\n')
  writer.writeheader()
  for r in rows:
    writer.writerow({k: ('' if r[k] is None else
                         ' '.join(map(str, r[k])) if isinstance(r[k], list) else r[k])
                     for k in CSV_FIELDS})
  return out.getvalue()


# ------------------------------------------------------------------------------ figures


def _new_figure(ncols: int = 1):
  """A Figure on the Agg canvas (no pyplot, no global state) and its axes."""
  # pylint: disable=import-outside-toplevel
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure
  fig = Figure(figsize=(5.5 * ncols, 4.0), dpi=80, layout='constrained')
  FigureCanvasAgg(fig)
  return fig, [fig.add_subplot(1, ncols, i + 1) for i in range(ncols)]


def _styles(runs: Sequence[RunRecord]) -> dict:
  """A colour per table row (method and setting), a line style per run of it, and the
  line's label: ``{workdir: plot kwargs}``."""
  rows = group_runs(runs, table_key(runs))
  styles = {}
  for number, key in enumerate(sorted(rows, key=_sort_key)):
    for i, r in enumerate(rows[key]):
      styles[r.workdir] = {'color': f'C{number % 10}', 'label': f'{key[3]} seed {r.seed}',
                           'linestyle': _LINESTYLES[i % len(_LINESTYLES)]}
  return styles


def _title(key: tuple) -> str:
  dataset, teacher, student = key
  return f'{dataset}: {teacher} -> {student}' if teacher else f'{dataset}: {student}'


def pair_figure(runs: Sequence[RunRecord]):
  """Test top-1 of the trained net (left) and training loss (right, log scale) per epoch;
  one line per run in each."""
  fig, (acc, loss) = _new_figure(2)
  styles = _styles(runs)
  for run in sorted(runs, key=lambda r: (_method_rank(r.label), r.seed, r.workdir)):
    tests, spe = run.test_rows(), run.steps_per_epoch()
    acc.plot([i + 1 for i in range(len(tests))], [t['top1'] for t in tests], marker='o',
             markersize=3, **styles[run.workdir])
    train = run.train_rows() if spe else []
    loss.plot([t['step'] / spe for t in train], [t['loss'] for t in train], linewidth=1,
              **styles[run.workdir])
  acc.set(xlabel='epoch', ylabel='test top-1 (%)', title=_title(pair_key(runs[0])))
  loss.set(xlabel='epoch', ylabel='training loss (all terms)', yscale='log',
           title='training loss')
  acc.legend(fontsize='small')
  loss.legend(fontsize='small')
  return fig


def kl_figure(runs: Sequence[RunRecord]):
  """The KL monitors per logged step (SLKD's KL(T || S) solid, KL(F || S) dashed), per run."""
  fig, (ax,) = _new_figure(1)
  for i, run in enumerate(_by_seed(runs)):
    spe = run.steps_per_epoch() or 1
    for key, name, linestyle in _KL_MONITORS:
      rows = [t for t in run.train_rows() if key in t]
      ax.plot([t['step'] / spe for t in rows], [t[key] for t in rows], linestyle=linestyle,
              color=f'C{i % 10}', linewidth=1, label=f'{name}, seed {run.seed}')
  ax.set(xlabel='epoch', ylabel='KL at temperature tau (per image)',
         title=f'{runs[0].info.label} {_title(pair_key(runs[0]))}')
  ax.legend(fontsize='small')
  return fig


def nets_figure(runs: Sequence[RunRecord]):
  """Every evaluated net of a run (an SFTN teacher and its student branches): test top-1 per
  epoch, one line per net and run, the run's main net first."""
  fig, (ax,) = _new_figure(1)
  for i, run in enumerate(_by_seed(runs)):
    labels = (run.results or {}).get('net_labels') or {}
    nets = sorted({m['split'][len('test/'):] for m in run.metrics
                   if m['split'].startswith('test/')}, key=lambda n: (n != run.main_net, n))
    for j, net in enumerate(nets):
      tests = run.test_rows(net)
      ax.plot([k + 1 for k in range(len(tests))], [t['top1'] for t in tests],
              color=f'C{j % 10}', linestyle=_LINESTYLES[i % len(_LINESTYLES)],
              label=f'{labels.get(net, net)}, seed {run.seed}')
  ax.set(xlabel='epoch', ylabel='test top-1 (%)',
         title=f'{runs[0].info.label} {_title(pair_key(runs[0]))}')
  ax.legend(fontsize='small')
  return fig


def _slug(*parts: str) -> str:
  text = '_'.join(p for p in parts if p)
  return ''.join(c if c.isalnum() or c in '-_.' else '_' for c in text).strip('_')


def figures(runs: Sequence[RunRecord]) -> dict:
  """``{file name: Figure}``: one pair figure per (dataset, teacher, student), and per pair
  and method the figures its ``INFO.figures`` names."""
  out = {}
  for key, members in sorted(group_runs(runs, pair_key).items()):
    logged = [r for r in members if r.metrics]  # a run that just started has no lines yet
    if not logged:
      continue
    out[_slug(*key) + '.png'] = pair_figure(logged)
    for method in sorted({r.method for r in logged}, key=_method_rank):
      of_method = [r for r in logged if r.method == method]
      for kind in methods.info(method).figures:
        name, figure = _METHOD_FIGURES[kind]
        out[_slug(*key, method, name) + '.png'] = figure(of_method)
  return out


# A method's INFO.figures entry -> (file name suffix, figure function).
_METHOD_FIGURES = {'kl_monitors': ('kl', kl_figure), 'eval_nets': ('nets', nets_figure)}


# -------------------------------------------------------------------------------- entry


def report(dirs: Sequence[str], out: Optional[str] = None,
           skipped: Optional[list] = None) -> list:
  """Writes ``table.md``, ``table.csv`` and the figures of the runs under ``dirs`` into
  ``out`` (default ``<dirs[0]>/report``); returns the paths written.

  Every run that can be read is reported. What cannot be (a run whose ``config.json`` does
  not parse, an unreadable ``results.json``, half-written ``metrics.jsonl`` lines) is left
  out and listed in ``out/skipped.txt``, one ``PATH: why`` line each, the last of the
  returned paths (a ``skipped.txt`` of an earlier report is removed when nothing was
  skipped); the same ``(path, why)`` pairs are appended to ``skipped`` when a list is given.
  """
  notes = []
  runs = find_runs(dirs, notes)
  if skipped is not None:
    skipped.extend(notes)
  folder = paths.path(out or str(paths.path(dirs[0]) / 'report'), '--out')
  try:
    folder.mkdir(parents=True, exist_ok=True)  # nothing to make in an object store
  except OSError as e:
    raise KdjaxError(f'cannot create the report folder {str(folder)!r}: {e.strerror}') from e
  rows = table_rows(runs)
  files = {'table.md': markdown_table(rows).encode(), 'table.csv': csv_table(rows).encode()}
  for name, fig in figures(runs).items():
    png = io.BytesIO()  # matplotlib writes files locally only: the bytes go through epath
    fig.savefig(png, format='png')
    files[name] = png.getvalue()
  skipped_txt = folder / 'skipped.txt'
  if notes:
    files['skipped.txt'] = ''.join(f'{path}: {why}\n' for path, why in notes).encode()
  elif skipped_txt.exists():
    skipped_txt.unlink()
  for name, data in files.items():
    (folder / name).write_bytes(data)
  return [str(folder / name) for name in files]


def main(argv: Optional[Sequence[str]] = None) -> int:
  import argparse  # pylint: disable=import-outside-toplevel
  parser = argparse.ArgumentParser(prog=cli.invoked_as('kdjax.report'), description=(
      'Table (Markdown, CSV) and plots of the kdjax runs under the given folders; what '
      'cannot be read is listed under "skipped:" on stderr and in OUTDIR/skipped.txt.'))
  parser.add_argument('dirs', nargs='+', metavar='DIR', help='run folders (searched recursively)')
  parser.add_argument('--out', help='output folder (default: DIR/report of the first DIR)')
  args = parser.parse_args(argv)
  skipped = []
  try:
    written = report(args.dirs, args.out, skipped)
  except Exception as e:  # pylint: disable=broad-except
    known = e if isinstance(e, KdjaxError) else paths.io_error(e)
    if known is None:
      raise
    print(f'kdjax: error: {known}', file=sys.stderr)
    return 2
  print(paths.path(written[0]).read_text(), end='')
  if skipped:
    print('skipped:', file=sys.stderr)
    for path, why in skipped:
      print(f'  {path}: {why}', file=sys.stderr)
  print(f'wrote {", ".join(written)}', file=sys.stderr)
  return 0


if __name__ == '__main__':
  sys.exit(main())
