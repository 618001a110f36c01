"""Static checks of the porter's structure (no imports executed, fast): no import cycles inside
``weight_port``, no module importing another's private names, and ``co3d_jax`` free of torch and
``weight_port``; every family the porter handles declares its checkpoints in its model file."""

from __future__ import annotations

import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _imports(path: pathlib.Path, package: str) -> list[tuple[str, list[str]]]:
    """``(absolute module, imported names)`` of every import in ``path``, at any depth."""
    tree = ast.parse(path.read_text(), str(path))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(a.name, []) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, base]) if base else ".".join(parts)
            names = [a.name for a in node.names]
            out.append((base, names))
            # `from . import x` imports the submodule x
            out += [(f"{base}.{n}", []) for n in names if not node.module]
    return out


def _modules(package: str) -> dict[str, pathlib.Path]:
    root = ROOT / package.replace(".", "/")
    mods = {}
    for p in root.rglob("*.py"):
        rel = p.relative_to(ROOT).with_suffix("")
        name = ".".join(rel.parts)
        mods[name[: -len(".__init__")] if name.endswith(".__init__") else name] = p
    return mods


def test_weight_port_has_no_import_cycles_or_private_imports():
    mods = _modules("weight_port")
    graph: dict[str, set[str]] = {m: set() for m in mods}
    private = []
    for mod, path in mods.items():
        package = mod if path.name == "__init__.py" else mod.rsplit(".", 1)[0]
        for target, names in _imports(path, package):
            if target in mods and target != mod and target != "weight_port":
                graph[mod].add(target)
                private += [f"{mod} imports {target}.{n}" for n in names if n.startswith("_") and n != "__future__"]
    assert not private, private

    def visit(node, stack, done):
        if node in stack:
            raise AssertionError("import cycle: " + " -> ".join([*stack[stack.index(node):], node]))
        if node in done:
            return
        for nxt in sorted(graph[node]):
            visit(nxt, [*stack, node], done)
        done.add(node)

    done: set[str] = set()
    for m in sorted(graph):
        visit(m, [], done)


def test_co3d_jax_imports_neither_torch_nor_weight_port():
    bad = [f"{mod}: {target}" for mod, path in _modules("co3d_jax").items()
           for target, _ in _imports(path, mod.rsplit(".", 1)[0])
           if target.split(".")[0] in ("torch", "torchvision", "pytorchvideo", "weight_port")]
    assert not bad, bad


def test_every_ported_family_declares_its_checkpoints():
    from co3d_jax.models import FAMILIES
    from co3d_jax.models.checkpoints import RELAYOUT_RULES, CheckpointSpec
    from weight_port.convert import VERIFIERS
    from weight_port.tensors import RELAYOUT

    assert set(RELAYOUT) == set(RELAYOUT_RULES)
    for fam in FAMILIES:
        spec = fam.checkpoints
        assert isinstance(spec, CheckpointSpec), fam.name
        assert set(spec.relayout) <= set(spec.layouts) and set(spec.blob_layouts) <= set(spec.layouts)
        assert all(spec.relayout_rule(layout) in RELAYOUT for layout in spec.layouts)
        assert fam.name in VERIFIERS
