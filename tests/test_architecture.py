"""The import graph of kdjax is the ladder of docs/architecture.md: no import loops, every
module on a floor, and no module imports one on a higher floor; no function is longer than a
screen."""

import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1]

# The floors, bottom first; a module belongs to the floor of its longest matching prefix.
FLOORS = (
    # the ground floor: infrastructure every floor may use
    ('kdjax', 'kdjax.errors', 'kdjax.jsonio', 'kdjax.configdict', 'kdjax.console',
     'kdjax.sharding', 'kdjax.workdirs', 'kdjax.downloads', 'kdjax.distributed',
     'kdjax.platform_tuning', 'kdjax.checkpoints', 'kdjax.run_fields', 'kdjax.interrupts',
     'kdjax.presets', 'kdjax.paths'),
    ('kdjax.data',),
    ('kdjax.losses',),
    ('kdjax.models',),
    ('kdjax.methods',),
    ('kdjax.teachers',),
    ('kdjax.config',),
    ('kdjax.train',),
    ('kdjax.plan', 'kdjax.cli'),
    # the commands and the experiment files
    ('kdjax.main', 'kdjax.cache', 'kdjax.convert', 'kdjax.evaluate', 'kdjax.export',
     'kdjax.report', 'kdjax.experiments'),
)

# Config-default builders list fields one by one: their length is the config's.
LONG_FUNCTIONS_ALLOWED = {'kdjax/config.py:base_config'}
MAX_FUNCTION_LINES = 60


def _floor(module: str) -> int:
  """The floor of ``module`` (its longest matching prefix); fails for a module on none."""
  matches = [(len(prefix), i) for i, floor in enumerate(FLOORS) for prefix in floor
             if module == prefix or (prefix != 'kdjax' and module.startswith(prefix + '.'))]
  assert matches, f'{module} is on no floor of tests/test_architecture.py'
  return max(matches)[1]


def _modules() -> dict[str, pathlib.Path]:
  paths = {}
  for path in (ROOT / 'kdjax').rglob('*.py'):
    parts = path.relative_to(ROOT).with_suffix('').parts
    paths['.'.join(parts[:-1] if parts[-1] == '__init__' else parts)] = path
  return paths


def _import_graph() -> dict[str, set[str]]:
  """kdjax module -> the kdjax modules it imports, at the top or inside a function."""
  paths = _modules()
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


def test_nothing_imports_a_higher_floor():
  upward = [f'{module} -> {other}' for module, imports in sorted(_import_graph().items())
            for other in sorted(imports) if _floor(other) > _floor(module)]
  assert not upward, upward


def test_the_graph_is_read():
  """The checks above see the imports they are about (a parser bug would pass them)."""
  graph = _import_graph()
  assert 'kdjax.plan' in graph['kdjax.main'] and 'kdjax.train.loop' in graph['kdjax.plan']
  assert 'kdjax.models.registry' in graph['kdjax.models.resnet']
  assert 'kdjax.losses' in graph['kdjax.methods.kd']
  assert _floor('kdjax.train.step') > _floor('kdjax.teachers.logit_cache') > _floor('kdjax')
  assert _floor('kdjax.convert.__main__') > _floor('kdjax.teachers.loading')


def _code_lines(node: ast.AST, lines: list[str]) -> int:
  """Lines of ``node``'s body that hold code: no blank, comment-only or docstring line."""
  body = node.body
  if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
      and isinstance(body[0].value.value, str):
    body = body[1:]
  if not body:
    return 0
  text = lines[body[0].lineno - 1:body[-1].end_lineno]
  return sum(1 for line in text if line.strip() and not line.strip().startswith('#'))


def test_no_function_over_60_code_lines():
  long = []
  for path in sorted((ROOT / 'kdjax').rglob('*.py')):
    source = path.read_text()
    lines = source.splitlines()
    for node in ast.walk(ast.parse(source)):
      if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        where = f'{path.relative_to(ROOT)}:{node.name}'
        n = _code_lines(node, lines)
        if n > MAX_FUNCTION_LINES and where not in LONG_FUNCTIONS_ALLOWED:
          long.append(f'{where} ({n} lines)')
  assert not long, long
