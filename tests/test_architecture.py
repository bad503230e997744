"""The import graph of kdjax is the ladder of docs/architecture.md: no import loops, and no
module imports a higher rung (losses <- models <- methods <- train <- plan <- main)."""

import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1]

# The rungs, bottom first. Modules beside the ladder (data, teachers, config, ...) may be
# imported from any rung; the import loops check covers them too.
RUNGS = ('kdjax.losses', 'kdjax.models', 'kdjax.methods', 'kdjax.train', 'kdjax.plan',
         ('kdjax.main', 'kdjax.cache', 'kdjax.evaluate', 'kdjax.export'))


def _rung(module: str):
  for i, rung in enumerate(RUNGS):
    for prefix in (rung if isinstance(rung, tuple) else (rung,)):
      if module == prefix or module.startswith(prefix + '.'):
        return i
  return None


def _import_graph() -> dict[str, set[str]]:
  """kdjax module -> the kdjax modules it imports, at the top or inside a function."""
  paths = {}
  for path in (ROOT / 'kdjax').rglob('*.py'):
    parts = path.relative_to(ROOT).with_suffix('').parts
    paths['.'.join(parts[:-1] if parts[-1] == '__init__' else parts)] = path
  graph = {}
  for module, path in paths.items():
    package = module if path.name == '__init__.py' else module.rpartition('.')[0]
    imported = set()
    for node in ast.walk(ast.parse(path.read_text())):
      if isinstance(node, ast.Import):
        imported.update(a.name for a in node.names)
      elif isinstance(node, ast.ImportFrom):
        base = node.module or ''
        if node.level:
          base = '.'.join(package.split('.')[:len(package.split('.')) - node.level + 1] +
                          ([node.module] if node.module else []))
        for alias in node.names:  # `from kdjax import plan` imports the module kdjax.plan
          imported.add(f'{base}.{alias.name}' if f'{base}.{alias.name}' in paths else base)
    graph[module] = {m for m in imported if m in paths and m != module}
  return graph


def test_no_import_loops():
  graph = _import_graph()
  state = {}

  def visit(module, path):
    state[module] = 'open'
    for other in sorted(graph[module]):
      assert state.get(other) != 'open', 'import loop: ' + ' -> '.join(path + [other])
      if other not in state:
        visit(other, path + [other])
    state[module] = 'done'

  for module in sorted(graph):
    if module not in state:
      visit(module, [module])


def test_nothing_imports_a_higher_rung():
  upward = [f'{module} -> {other}' for module, imports in sorted(_import_graph().items())
            for other in sorted(imports)
            if _rung(module) is not None and _rung(other) is not None
            and _rung(other) > _rung(module)]
  assert not upward, upward


def test_the_graph_is_read():
  """The checks above see the imports they are about (a parser bug would pass them)."""
  graph = _import_graph()
  assert 'kdjax.plan' in graph['kdjax.main'] and 'kdjax.train.loop' in graph['kdjax.plan']
  assert 'kdjax.models.registry' in graph['kdjax.models.resnet']
  assert 'kdjax.losses' in graph['kdjax.methods.kd']
