"""The package is layered: every module imports, no import cycle (module-level or inside functions), and no
module reads another fcdd_jax module's `_private` names (issue 15)."""
import ast
import importlib
import os
import pkgutil

import pytest

import fcdd_jax

PACKAGE_DIR = os.path.dirname(fcdd_jax.__file__)


def _modules():
  """{dotted name: source path} of every module of the package (packages map to their __init__.py)."""
  out = {'fcdd_jax': os.path.join(PACKAGE_DIR, '__init__.py')}
  for info in pkgutil.walk_packages([PACKAGE_DIR], prefix='fcdd_jax.'):
    path = os.path.join(PACKAGE_DIR, *info.name.split('.')[1:])
    if not info.ispkg and not os.path.exists(path + '.py'):
      continue                    # a compiled extension (fcdd_jax/models/cpu/onednn/_onednn_conv*.so): no source to read
    out[info.name] = os.path.join(path, '__init__.py') if info.ispkg else path + '.py'
  return out


MODULES = _modules()


def _imports(name, path):
  """For one module: ({imported fcdd_jax module: first line}, {local alias: fcdd_jax module}) from every
  `import` / `from ... import` in the file, function-local ones included."""
  with open(path, encoding='utf-8') as f:
    tree = ast.parse(f.read(), path)
  package = name if path.endswith('__init__.py') else name.rpartition('.')[0]
  edges, aliases = {}, {}

  def add(target, alias, line):
    if target in MODULES and target != name:
      edges.setdefault(target, line)
      if alias:
        aliases[alias] = target

  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      for a in node.names:
        if a.asname:
          add(a.name, a.asname, node.lineno)
        else:   # `import fcdd_jax.data.x` binds `fcdd_jax`; the edge is still to the module
          add(a.name, None, node.lineno)
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ''
      if node.level:
        parts = package.split('.')
        base = '.'.join(parts[:len(parts) - node.level + 1] + ([node.module] if node.module else []))
      for a in node.names:
        sub = f'{base}.{a.name}'
        if sub in MODULES:        # from fcdd_jax.data import oe
          add(sub, a.asname or a.name, node.lineno)
        else:                     # from fcdd_jax.data.oe import load
          add(base, None, node.lineno)
  return edges, aliases, tree


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


@pytest.mark.parametrize('name', sorted(MODULES))
def test_every_module_imports(name):
  importlib.import_module(name)


def _cycles():
  """Every elementary cycle found by a depth-first search, as a list of module names (first == last)."""
  found, state = [], {}

  def visit(m, stack):
    state[m] = 'open'
    stack.append(m)
    for t in sorted(GRAPH[m][0]):
      if state.get(t) == 'open':
        found.append(stack[stack.index(t):] + [t])
      elif t not in state:
        visit(t, stack)
    stack.pop()
    state[m] = 'done'

  for m in sorted(GRAPH):
    if m not in state:
      visit(m, [])
  return found


def _edge_text(a, b):
  return f'{a} -> {b} ({MODULES[a]}:{GRAPH[a][0][b]})'


def test_no_import_cycle_inside_the_package():
  cycles = _cycles()
  assert not cycles, 'import cycles (module-level or function-local imports):\n' + '\n'.join(
      '  ' + ' ; '.join(_edge_text(c[i], c[i + 1]) for i in range(len(c) - 1)) for c in cycles)


def _protected_accesses():
  """`alias._name` where alias is another fcdd_jax module imported in that file, and `from fcdd_jax.x import
  _name` (dunder names excepted)."""
  out = []
  for name, (_, aliases, tree) in GRAPH.items():
    for node in ast.walk(tree):
      if isinstance(node, ast.ImportFrom) and (node.level or (node.module or '').startswith('fcdd_jax')):
        for a in node.names:
          if a.name.startswith('_') and not a.name.startswith('__'):
            out.append(f'{MODULES[name]}:{node.lineno}: from {"." * node.level}{node.module or ""} import {a.name}')
      if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases
          and node.attr.startswith('_') and not node.attr.startswith('__')):
        out.append(f'{MODULES[name]}:{node.lineno}: {node.value.id}.{node.attr} ({aliases[node.value.id]})')
  return out


def test_no_protected_access_across_modules():
  found = _protected_accesses()
  assert not found, 'private names of other modules used:\n' + '\n'.join(found)


def test_the_checks_can_fail(tmp_path, monkeypatch):
  """The detectors find a planted cycle and a planted protected access (so a passing test means something)."""
  a = tmp_path / 'a.py'
  a.write_text('from fcdd_jax import b_mod\nfrom fcdd_jax.b_mod import _other\n\ndef f():\n  return b_mod._hidden\n')
  b = tmp_path / 'b_mod.py'
  b.write_text('def g():\n  from fcdd_jax import a  # function-local\n')
  monkeypatch.setitem(MODULES, 'fcdd_jax.a', str(a))
  monkeypatch.setitem(MODULES, 'fcdd_jax.b_mod', str(b))
  monkeypatch.setitem(GRAPH, 'fcdd_jax.a', _imports('fcdd_jax.a', str(a)))
  monkeypatch.setitem(GRAPH, 'fcdd_jax.b_mod', _imports('fcdd_jax.b_mod', str(b)))
  assert ['fcdd_jax.a', 'fcdd_jax.b_mod', 'fcdd_jax.a'] in _cycles()
  found = _protected_accesses()
  assert any('b_mod._hidden' in f for f in found) and any('import _other' in f for f in found)
