"""Static checks of the package layout, read from the source (nothing is imported):

* the module import graph of ``co3d_jax``, ``weight_port`` and ``experiments`` has no cycle
  (imports inside functions count: a lazy import hides a cycle, it does not remove it);
* no module imports another module's private ``_name`` (``from m import _f`` or ``m._f``); what
  several modules share is public where it is defined (a package may import its own private
  submodule, e.g. ``experiments._cli``).

``benchmarks/`` (one-off studies that probe internals) and ``tests/`` are not checked. The
dependencies are checked in ``test_dependencies.py``.
"""

from __future__ import annotations

import ast
import os

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ("co3d_jax", "weight_port", "experiments")


def _modules() -> dict[str, str]:
    """Dotted module name -> file, for every ``.py`` file of ``PACKAGES`` (a package is its ``__init__``)."""
    out = {}
    for pkg in PACKAGES:
        for dirpath, dirnames, filenames in os.walk(os.path.join(REPO, pkg)):
            dirnames[:] = sorted(d for d in dirnames if d != "__pycache__")
            for name in sorted(filenames):
                if name.endswith(".py"):
                    rel = os.path.relpath(os.path.join(dirpath, name), REPO)[:-3].split(os.sep)
                    if rel[-1] == "__init__":
                        rel = rel[:-1]
                    out[".".join(rel)] = os.path.join(dirpath, name)
    return out


MODULES = _modules()

def _is_package(module: str) -> bool:
    return MODULES[module].endswith("__init__.py")


def _base(module: str, node: ast.ImportFrom) -> str:
    """The module a ``from ... import`` names, with relative levels resolved."""
    if not node.level:
        return node.module or ""
    parts = module.split(".") if _is_package(module) else module.split(".")[:-1]
    parts = parts[: len(parts) - (node.level - 1)]
    return ".".join(parts + ([node.module] if node.module else []))


def _imports(module: str):
    """``(target module, imported name or None, line)`` for every import of a project module in
    ``module``'s file, at any depth (function bodies included)."""
    tree = ast.parse(open(MODULES[module], encoding="utf-8").read(), MODULES[module])
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name in MODULES:
                    yield a.name, None, node.lineno
        elif isinstance(node, ast.ImportFrom):
            base = _base(module, node)
            for a in node.names:
                sub = f"{base}.{a.name}"
                if sub in MODULES:            # ``from pkg import submodule``
                    yield sub, None, node.lineno
                elif base in MODULES:
                    yield base, a.name, node.lineno


def import_graph() -> dict[str, dict[str, int]]:
    """module -> {imported project module: first line}."""
    graph = {}
    for m in MODULES:
        edges = {}
        for target, _, line in _imports(m):
            if target != m:
                edges.setdefault(target, line)
        graph[m] = edges
    return graph


def find_cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """One cycle per strongly connected component with more than one module (Tarjan), each as
    the list of modules along it, the first repeated at the end."""
    index, low, stack, on, comps = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                comps.append(set(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    cycles = []
    for comp in comps:   # a shortest cycle through the component's first module (breadth first)
        start = min(comp)
        prev, frontier = {start: None}, [start]
        while frontier and start not in [w for v in frontier for w in graph[v]]:
            nxt = []
            for v in frontier:
                for w in sorted(graph[v]):
                    if w in comp and w not in prev:
                        prev[w] = v
                        nxt.append(w)
            frontier = nxt
        last = next(v for v in frontier if start in graph[v])
        path = [last]
        while prev[path[-1]] is not None:
            path.append(prev[path[-1]])
        cycles.append(path[::-1] + [start])
    return sorted(cycles)


def describe_cycle(graph, cycle: list[str]) -> str:
    return " -> ".join(f"{a} (line {graph[a][b]})" for a, b in zip(cycle, cycle[1:])) + f" -> {cycle[-1]}"


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def private_imports() -> list[tuple[str, str]]:
    """``("file:line", "module uses other._name")`` for every use of another module's private name:
    ``from other import _name`` and ``other._name`` on a name bound to an imported project module.
    A package's private submodule (``experiments._cli``) may be imported inside that package."""
    found = []
    for m, path in MODULES.items():
        tree = ast.parse(open(path, encoding="utf-8").read(), path)
        aliases = {}
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for a in node.names:
                    if a.name in MODULES and a.asname:
                        aliases[a.asname] = a.name
            elif isinstance(node, ast.ImportFrom):
                base = _base(m, node)
                for a in node.names:
                    sub = f"{base}.{a.name}"
                    if sub in MODULES:
                        aliases[a.asname or a.name] = sub
                        if _private(a.name) and sub.split(".")[0] != m.split(".")[0]:
                            found.append((f"{os.path.relpath(path, REPO)}:{node.lineno}", f"{m} imports private module {sub}"))
                    elif base in MODULES and base != m and _private(a.name):
                        found.append((f"{os.path.relpath(path, REPO)}:{node.lineno}", f"{m} imports {base}.{a.name}"))
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases
                    and _private(node.attr) and aliases[node.value.id] != m):
                found.append((f"{os.path.relpath(path, REPO)}:{node.lineno}", f"{m} uses {aliases[node.value.id]}.{node.attr}"))
    return sorted(set(found))


# ----------------------------------------------------------------------------- the checks
def test_checker_sees_cycles_and_private_imports():
    """The helpers themselves: a two-module cycle is found and printed with its lines."""
    graph = {"a": {"b": 3}, "b": {"c": 5}, "c": {"a": 7}, "d": {"a": 1}}
    (cycle,) = find_cycles(graph)
    assert cycle == ["a", "b", "c", "a"]
    assert describe_cycle(graph, cycle) == "a (line 3) -> b (line 5) -> c (line 7) -> a"
    assert find_cycles({"a": {"b": 1}, "b": {}}) == []
    assert "co3d_jax.data.datasets" in import_graph()["co3d_jax.data.eval_loader"]


def test_no_import_cycles():
    graph = import_graph()
    cycles = find_cycles(graph)
    assert not cycles, "import cycles:\n" + "\n".join(describe_cycle(graph, c) for c in cycles)


def test_no_private_imports_across_modules():
    found = private_imports()
    assert not found, "private names used across modules:\n" + "\n".join(f"{where}: {what}" for where, what in found)


def test_co3d_jax_imports_neither_torch_nor_weight_port():
    """The library is torch-free: only ``weight_port`` (and the PyTorch benchmark side of
    ``experiments``) import torch."""
    forbidden = ("torch", "torchvision", "pytorchvideo", "weight_port")
    bad = []
    for m, path in MODULES.items():
        if m.split(".")[0] != "co3d_jax":
            continue
        for node in ast.walk(ast.parse(open(path, encoding="utf-8").read(), path)):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
            bad += [f"{m}:{node.lineno} imports {n}" for n in names if n.split(".")[0] in forbidden]
    assert not bad, bad


# The parts of the project in tiers (docs/architecture.md): a part imports only parts of lower
# tiers; the library's services (tier 4) may also import each other. A module belongs to the first
# part whose name is a prefix of its own. The fused kernels are tier -1, a leaf below the layers.
TIERS = (
    ("co3d_jax.kernels",),                                   # fused Pallas kernels (import only jax)
    ("co3d_jax.layers", "co3d_jax.normalisation", "co3d_jax.fileio", "co3d_jax.extras", "co3d_jax.mesh"),  # leaves
    ("co3d_jax.stream", "co3d_jax.data"),                    # scan driver; datasets, decoding (no models)
    ("co3d_jax.model",),                                     # the Model object
    ("co3d_jax.models",),                                    # family specs, registry, checkpoint tables
    ("co3d_jax",),                                           # services: params, flops, train, live, export, nnx, ...
    ("weight_port",),                                        # the porter (the only part importing torch)
    ("experiments",),                                        # user commands
)


def part_of(module: str) -> tuple[int, str]:
    """``(tier, part)`` of a module: the longest part name that is a prefix of it."""
    best = max(((t, p) for t, parts in enumerate(TIERS, start=-1) for p in parts if module == p or module.startswith(p + ".")),
               key=lambda tp: len(tp[1]))
    return best if best[1] != "co3d_jax" else (best[0], module)


def test_parts_import_only_lower_tiers():
    bad = []
    for m, edges in import_graph().items():
        tier, part = part_of(m)
        for target, line in edges.items():
            t_tier, t_part = part_of(target)
            if t_part != part and not (t_tier < tier or t_tier == tier == 4):
                bad.append(f"{MODULES[m]}:{line}: {m} (tier {tier}) imports {target} (tier {t_tier})")
    assert not bad, "imports against the layering of docs/architecture.md:\n" + "\n".join(bad)
