"""Static checks of the package's import structure (no import of the package itself).

* No import cycle among ``co3d_jax`` modules, counting imports inside functions too (a lazy
  import hides a cycle rather than removing it).
* No module imports a private (``_``-prefixed) name from another module.

``co3d_jax/data`` is not covered yet (its dataset index and TFDS reader still share private
helpers and import each other).
"""

from __future__ import annotations

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1] / "co3d_jax"
EXCLUDED = ("data",)


def _modules() -> dict[str, pathlib.Path]:
    mods = {}
    for path in ROOT.rglob("*.py"):
        rel = path.relative_to(ROOT.parent).with_suffix("")
        if rel.parts[1] in EXCLUDED:
            continue
        parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
        mods[".".join(parts)] = path
    return mods


def _imports(name: str, path: pathlib.Path):
    """``(module, imported names)`` for every ``from``/``import`` statement of ``path``."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = package.split(".")
            if node.level:
                base = base[:len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            yield target, [a.name for a in node.names]
        elif isinstance(node, ast.Import):
            for a in node.names:
                yield a.name, []


def _graph():
    mods = _modules()
    graph = {}
    for name, path in mods.items():
        deps = set()
        for target, names in _imports(name, path):
            submodules = {f"{target}.{n}" for n in names} & set(mods)  # from pkg import module
            deps |= submodules
            if target in mods and (not names or len(submodules) < len(names)):
                deps.add(target)
        graph[name] = deps - {name}
    return mods, graph


def test_no_import_cycles():
    _, graph = _graph()
    state, stack, cycles = {}, [], []

    def visit(m):
        state[m] = "active"
        stack.append(m)
        for d in sorted(graph.get(m, ())):
            if state.get(d) == "active":
                cycles.append(stack[stack.index(d):] + [d])
            elif d not in state:
                visit(d)
        stack.pop()
        state[m] = "done"

    for m in sorted(graph):
        if m not in state:
            visit(m)
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_no_private_imports_across_modules():
    mods, _ = _graph()
    bad = []
    for name, path in mods.items():
        for target, names in _imports(name, path):
            if target.startswith("co3d_jax") and target != name:
                bad += [f"{name} imports {target}.{n}" for n in names if n.startswith("_") and n != "__future__"]
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("module", ["co3d_jax.layers.conv", "co3d_jax.flops"])
def test_checked_modules_exist(module):
    assert module in _modules()
