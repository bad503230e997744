"""``notebooks/quickstart.ipynb`` runs top to bottom on the CPU (its smoke size)."""

import pytest

from conftest import ROOT

NOTEBOOK = ROOT / 'notebooks' / 'quickstart.ipynb'


def test_notebook_is_stored_without_outputs():
  nbformat = pytest.importorskip('nbformat')
  nb = nbformat.read(NOTEBOOK, as_version=4)
  nbformat.validate(nb)
  code = [c for c in nb.cells if c.cell_type == 'code']
  assert code and all(not c.outputs and c.execution_count is None for c in code)


@pytest.mark.slow
def test_notebook_runs_top_to_bottom(tmp_path, monkeypatch):
  nbclient = pytest.importorskip('nbclient')
  nbformat = pytest.importorskip('nbformat')
  monkeypatch.setenv('KDJAX_NOTEBOOK_SMOKE', '1')  # the kernel inherits the environment
  monkeypatch.setenv('KDJAX_NOTEBOOK_WORKDIR', str(tmp_path / 'runs'))
  nb = nbformat.read(NOTEBOOK, as_version=4)
  client = nbclient.NotebookClient(nb, timeout=600, kernel_name='python3',
                                   resources={'metadata': {'path': str(ROOT)}})
  client.execute()  # raises CellExecutionError, with the cell and its traceback, on failure
  outputs = [o for c in nb.cells if c.cell_type == 'code' for o in c.outputs]
  assert not [o for o in outputs if o.output_type == 'error']
  shown = [o for o in outputs if o.output_type == 'display_data']
  tables = [o.data['text/markdown'] for o in shown if 'text/markdown' in o.data]
  assert tables and '| slkd | 1 (0) | 1/1 |' in tables[0]
  assert sum('image/png' in o.data for o in shown) == 3  # teacher, pair, SLKD KL figures
  assert (tmp_path / 'runs' / 'slkd' / 'seed_0' / 'results.json').exists()
