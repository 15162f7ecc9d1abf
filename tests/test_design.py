"""The package's design rules (issue 23): no cross-module private access, no import cycle, short files.

These scan the source of ``ssps_nni/`` with :mod:`ast`; nothing is imported or run.
"""
from __future__ import annotations

import ast
import graphlib
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / 'ssps_nni'
MAX_LINES = 400

#: Private names of other libraries that a module here needs, and why. Anything else that reads
#: or writes ``x._name`` must define ``_name`` in the same module.
THIRD_PARTY = {
    ('cli/sweep/jobs.py', '_exit'): 'os._exit is the documented way out of a forked worker',
    ('mmengine/serialization.py', '_reconstruct'): "numpy's pickled name, allow-listed for torch.load",
    ('mmengine/loops.py', '_max_epochs'): "the state of mmengine's EpochBasedTrainLoop, which this loop subclasses",
    ('mmengine/loops.py', '_iter'): "the state of mmengine's EpochBasedTrainLoop, which this loop subclasses",
    ('mmengine/loops.py', '_decide_current_val_interval'): "EpochBasedTrainLoop's own step of run()",
    ('nni/lightning.py', '_trainer'): "Lightning's LightningModule.trainer raises when detached; this is its state",
    ('cell.py', '_version'): "torch's in-place write counter: no public API tells a cached mask that its buffer was "
                             "written in place (a broadcast, load_state_dict's copy_)",
    ('export.py', '_constants'): "torch.onnx's highest TorchScript opset is only exposed there",
}


def modules() -> dict[str, Path]:
    """``{'ssps_nni.cli.search': path}`` for every module (a package as its ``__init__``)."""
    out = {}
    for path in sorted(PACKAGE.rglob('*.py')):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix('').parts)
        if parts[-1] == '__init__':
            parts = parts[:-1]
        out['.'.join(parts)] = path
    return out


def is_private(name: str) -> bool:
    return name.startswith('_') and not (name.startswith('__') and name.endswith('__'))


def defined_names(tree: ast.AST) -> set[str]:
    """Names a module defines: functions, classes, module and class variables, ``self.x`` / ``cls.x``."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
        elif (isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store)
              and isinstance(node.value, ast.Name) and node.value.id in ('self', 'cls')):
            names.add(node.attr)
    return names


def private_accesses() -> list[str]:
    """Every ``x._name`` and ``from m import _name`` in ``ssps_nni/`` whose name this module does not define."""
    trees = {name: ast.parse(path.read_text(), str(path)) for name, path in modules().items()}
    found = []
    for name, tree in trees.items():
        rel = modules()[name].relative_to(PACKAGE).as_posix()
        own = defined_names(tree)
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                found += [f'{rel}:{node.lineno} from {node.module} import {a.name}' for a in node.names
                          if is_private(a.name) and (rel, a.name) not in THIRD_PARTY]
            elif isinstance(node, ast.Attribute) and is_private(node.attr) and node.attr not in own:
                if (rel, node.attr) not in THIRD_PARTY:
                    found.append(f'{rel}:{node.lineno} {ast.unparse(node)}')
    return found


def import_graph() -> dict[str, set[str]]:
    """``{module: modules of ssps_nni it imports}``, at module level and inside functions."""
    mods = modules()
    graph = {}
    for name, path in mods.items():
        package = name if path.name == '__init__.py' else name.rpartition('.')[0]
        edges = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                edges |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split('.')[:len(package.split('.')) - node.level + 1]
                    source = '.'.join(base + ([node.module] if node.module else []))
                else:
                    source = node.module or ''
                edges |= {f'{source}.{a.name}' if f'{source}.{a.name}' in mods else source for a in node.names}
        graph[name] = {e for e in edges if e in mods and e != name}
    return graph


def test_no_private_access_across_modules():
    found = private_accesses()
    assert not found, 'private names of another module:\n' + '\n'.join(found)


def test_no_import_cycle():
    try:
        graphlib.TopologicalSorter(import_graph()).prepare()
    except graphlib.CycleError as err:
        pytest.fail(f'import cycle: {" -> ".join(err.args[1])}')


def test_files_are_short():
    long = {p.relative_to(PACKAGE).as_posix(): n for p in PACKAGE.rglob('*.py')
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f'files over {MAX_LINES} lines: {long}'


def test_the_scans_find_what_they_look_for(tmp_path):
    """The private-access scan flags another module's private name and keeps a module's own."""
    tree = ast.parse('class A:\n    def f(self, other):\n        self._x = 1\n        return other._x + other._y\n')
    own = defined_names(tree)
    flagged = [n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute) and is_private(n.attr) and n.attr not in own]
    assert flagged == ['_y']


def test_readme_layout_lists_every_module():
    """Every file of ``ssps_nni/`` has a line in the README's Layout section (``__init__`` aside)."""
    readme = (PACKAGE.parent / 'README.md').read_text()
    layout = readme[readme.index('## Layout'):]
    layout = layout[:layout.index('```', layout.index('```') + 3)]
    folder, listed = None, set()
    for line in layout.splitlines():
        if line.startswith('ssps_nni/'):
            folder = line.split()[0]
        elif folder and line.startswith('  ') and line.split()[0].endswith('.py'):
            listed.add(folder + line.split()[0])
    files = {p.relative_to(PACKAGE.parent).as_posix() for p in PACKAGE.rglob('*.py') if p.name != '__init__.py'}
    files -= {'ssps_nni/cli/__main__.py'}
    assert not files - listed, f'modules missing from the README Layout: {sorted(files - listed)}'
    assert not listed - files, f'README Layout lists modules that do not exist: {sorted(listed - files)}'
