"""``notebooks/quickstart.ipynb`` runs top to bottom on the CPU (its smoke size), and is stored
with the outputs of that run, so that it reads without running.

The stored outputs are refreshed by running the second test with ``KDJAX_NOTEBOOK_SAVE=1``
(CONTRIBUTING.md); the first test fails when a code cell changed since they were saved.
"""

import hashlib
import os

import pytest

import kdjax
from conftest import ROOT

NOTEBOOK = ROOT / 'notebooks' / 'quickstart.ipynb'


def _code_digest(nb) -> str:
  code = '\n\0'.join(c.source for c in nb.cells if c.cell_type == 'code')
  return hashlib.sha256(code.encode()).hexdigest()


def test_notebook_is_stored_with_the_outputs_of_its_code():
  nbformat = pytest.importorskip('nbformat')
  nb = nbformat.read(NOTEBOOK, as_version=4)
  nbformat.validate(nb)
  assert nb.metadata.get('kdjax', {}).get('outputs_of_code') == _code_digest(nb), (
      'a code cell changed since the outputs were saved: KDJAX_NOTEBOOK_SAVE=1 python -m '
      'pytest tests/test_notebook.py (CONTRIBUTING.md)')
  code = [c for c in nb.cells if c.cell_type == 'code']
  assert all(c.execution_count is not None for c in code)
  assert not [o for c in code for o in c.outputs if o.output_type == 'error']
  assert f"KDJAX_VERSION = '{kdjax.__version__}'" in code[0].source  # the install's pin


@pytest.mark.slow
def test_notebook_runs_top_to_bottom(tmp_path, monkeypatch):
  nbclient = pytest.importorskip('nbclient')
  nbformat = pytest.importorskip('nbformat')
  monkeypatch.setenv('KDJAX_NOTEBOOK_SMOKE', '1')  # the kernel inherits the environment
  monkeypatch.delenv('KDJAX_NOTEBOOK_WORKDIR', raising=False)
  nb = nbformat.read(NOTEBOOK, as_version=4)
  client = nbclient.NotebookClient(nb, timeout=600, kernel_name='python3',
                                   resources={'metadata': {'path': str(tmp_path)}})
  client.execute()  # raises CellExecutionError, with the cell and its traceback, on failure
  outputs = [o for c in nb.cells if c.cell_type == 'code' for o in c.outputs]
  assert not [o for o in outputs if o.output_type == 'error']
  shown = [o for o in outputs if o.output_type == 'display_data']
  tables = [o.data['text/markdown'] for o in shown if 'text/markdown' in o.data]
  assert tables and '| slkd | 1 (0) | 1/1 |' in tables[0]
  assert sum('image/png' in o.data for o in shown) == 3  # teacher, pair, SLKD KL figures
  assert (tmp_path / 'runs' / 'quickstart' / 'slkd' / 'seed_0' / 'results.json').exists()
  if os.environ.get('KDJAX_NOTEBOOK_SAVE') == '1':
    nb.metadata['kdjax'] = {'outputs_of_code': _code_digest(nb)}
    nbformat.write(nb, NOTEBOOK)
