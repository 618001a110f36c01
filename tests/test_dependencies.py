"""``pyproject.toml`` is honest: every runtime dependency is imported somewhere, and every
third-party import of ``co3d_jax``, ``weight_port`` and ``experiments`` is installed by the core
dependencies or by the extra that its part of the code documents (read from the source)."""

from __future__ import annotations

import ast
import os
import re
import sys

import pytest

tomllib = pytest.importorskip("tomllib")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ("co3d_jax", "weight_port", "experiments")

# distribution name -> import name, where they differ other than by "-" vs "_"
IMPORT_NAMES = {"opencv-python-headless": "cv2", "orbax-checkpoint": "orbax", "pillow": "PIL",
                "continual-inference": "continual", "absl-py": "absl", "pynvvideocodec": "PyNvVideoCodec"}
# declared although no module of ours imports them, and why
NOT_IMPORTED = {
    "flatbuffers": "jax.export's serializer (co3d_jax/export.py) imports it; jax does not require it",
    "array-record": "TFDS stores and reads the datasets as ArrayRecord through it; tensorflow-datasets does not "
                    "require it",
    "importlib_resources": "tensorflow-datasets 4.9.10 imports it but requires it only on Python < 3.9",
}
# imported by us and installed by a dependency that requires it
TRANSITIVE = {"absl": "grain requires absl-py; co3d_jax/data/pipeline.py marks grain's flags parsed (guarded)"}
# what an imported package itself imports without requiring it
UNDECLARED = {"pytorchvideo": ("torchvision",)}   # pytorchvideo.models imports torchvision.ops
# the extra each part of the code needs beyond the core dependencies (the longest matching path wins)
EXTRA_OF = {"co3d_jax/data": "data", "co3d_jax/data/tfds": "tfds", "co3d_jax/data/nvdec.py": "nvdec", "co3d_jax/render.py": "data", "weight_port": "port",
            "experiments/benchmark_torch.py": "bench", "experiments/torch_reference.py": "bench"}


def _project() -> dict:
    with open(os.path.join(REPO, "pyproject.toml"), "rb") as f:
        return tomllib.load(f)["project"]


def _dist(requirement: str) -> str:
    return re.match(r"[A-Za-z0-9_.\-]+", requirement).group(0)


def import_name(dist: str) -> str:
    return IMPORT_NAMES.get(dist.lower(), dist.lower().replace("-", "_"))


def third_party_imports() -> dict[str, dict[str, int]]:
    """``path -> {top-level module: line}`` of every non-stdlib, non-project import (any depth)."""
    out = {}
    for pkg in PACKAGES:
        for dirpath, dirnames, filenames in os.walk(os.path.join(REPO, pkg)):
            dirnames[:] = sorted(d for d in dirnames if d != "__pycache__")
            for name in sorted(n for n in filenames if n.endswith(".py")):
                path = os.path.join(dirpath, name)
                found = {}
                for node in ast.walk(ast.parse(open(path, encoding="utf-8").read(), path)):
                    if isinstance(node, ast.Import):
                        tops = [a.name.split(".")[0] for a in node.names]
                    elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
                        tops = [node.module.split(".")[0]]
                    else:
                        continue
                    for top in tops:
                        if top not in sys.stdlib_module_names and top not in PACKAGES:
                            found.setdefault(top, node.lineno)
                out[os.path.relpath(path, REPO).replace(os.sep, "/")] = found
    return out


def extra_of(path: str) -> str | None:
    hits = [p for p in EXTRA_OF if path == p or path.startswith(p + "/")]
    return EXTRA_OF[max(hits, key=len)] if hits else None


def test_every_runtime_dependency_is_imported():
    project = _project()
    imported = {top for found in third_party_imports().values() for top in found}
    unused = [d for d in map(_dist, project["dependencies"]) if import_name(d) not in imported and d not in NOT_IMPORTED]
    assert not unused, f"runtime dependencies that nothing imports: {unused} (remove them, or say why in NOT_IMPORTED)"
    declared = {_dist(r) for r in project["dependencies"]}
    declared |= {_dist(r) for reqs in project["optional-dependencies"].values() for r in reqs}
    assert set(NOT_IMPORTED) <= declared, f"NOT_IMPORTED names undeclared packages: {set(NOT_IMPORTED) - declared}"


def test_every_import_is_installed_by_its_extra():
    project = _project()
    core = {import_name(_dist(r)) for r in project["dependencies"]}
    extras = {k: {import_name(_dist(r)) for r in v} for k, v in project["optional-dependencies"].items()}
    assert set(EXTRA_OF.values()) <= set(extras), f"EXTRA_OF names missing extras: {set(EXTRA_OF.values()) - set(extras)}"
    problems = []
    for path, found in sorted(third_party_imports().items()):
        extra = extra_of(path)
        have = core | extras.get(extra, set()) | set(TRANSITIVE)
        for top, line in sorted(found.items()):
            for need in (top, *UNDECLARED.get(top, ())):
                if need not in have:
                    what = top if need == top else f"{top}, which imports {need},"
                    problems.append(f"{path}:{line} imports {what} not in the core dependencies"
                                    + (f" or the [{extra}] extra" if extra else " (and no extra covers this file)"))
    assert not problems, "imports that their install does not provide:\n" + "\n".join(problems)


# packages of an extra that [test] leaves out, and why
NOT_IN_TEST = {"pynvvideocodec": "NVIDIA-only wheels that need the driver's NVDEC library to import; "
                                 "tests/test_nvdec.py uses a fake PyNvVideoCodec"}


def test_the_test_extra_installs_every_extra():
    """``pip install -e '.[test]'`` runs every test: it holds each extra's packages (but those of
    ``NOT_IN_TEST``)."""
    extras = _project()["optional-dependencies"]
    test = {_dist(r).lower() for r in extras["test"]} | set(NOT_IN_TEST)
    missing = {k: sorted({_dist(r).lower() for r in v} - test) for k, v in extras.items() if k != "test"}
    assert not any(missing.values()), f"packages of extras missing from [test]: {missing}"


def test_missing_package_errors_name_an_extra_that_installs_it():
    """``co3d_jax.extras``: every ``require("module", "extra")`` in the code, and every entry of
    ``EXTRA_OF`` (what ``cli_main`` reports for an unguarded import), names an extra that installs
    the module, so the one-line error's ``pip install -e '.[extra]'`` fixes it."""
    from co3d_jax.extras import EXTRA_OF as RUNTIME_EXTRA_OF
    extras = {k: {import_name(_dist(r)) for r in v} for k, v in _project()["optional-dependencies"].items()}
    calls = [(module, extra, "co3d_jax/extras.py EXTRA_OF") for module, extra in RUNTIME_EXTRA_OF.items()]
    for pkg in PACKAGES:
        for dirpath, dirnames, filenames in os.walk(os.path.join(REPO, pkg)):
            for name in (n for n in filenames if n.endswith(".py")):
                path = os.path.join(dirpath, name)
                for node in ast.walk(ast.parse(open(path, encoding="utf-8").read(), path)):
                    if (isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", None)) == "require"
                            and len(node.args) >= 2 and all(isinstance(a, ast.Constant) for a in node.args[:2])):
                        calls.append((node.args[0].value, node.args[1].value,
                                      f"{os.path.relpath(path, REPO)}:{node.lineno}"))
    assert len(calls) > len(RUNTIME_EXTRA_OF)
    wrong = [f"{where}: {module!r} is not installed by [{extra}]" for module, extra, where in calls
             if module.split(".")[0] not in extras.get(extra, set())]
    assert not wrong, "\n".join(wrong)
