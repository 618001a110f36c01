"""Helpers shared by the experiment command lines."""

from __future__ import annotations

import hashlib
import json

from co3d_jax.fileio import atomic_write  # noqa: F401  (the commands' results writer)


def parse_options(items: list[str], flag: str = "--model-arg") -> dict:
    """``["KEY=VALUE", ...]`` -> dict; values are parsed as JSON where they parse (numbers,
    booleans, lists), else kept as strings. Raises ``ValueError`` naming ``flag`` on a malformed item."""
    opts = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"{flag} expects KEY=VALUE, got {item!r}")
        try:
            opts[key.strip()] = json.loads(value.strip())
        except json.JSONDecodeError:
            opts[key.strip()] = value.strip()
    return opts


def model_args(items: list[str]) -> dict:
    """The ``--model-arg KEY=VALUE`` options as a dict; a malformed item exits with its message."""
    try:
        return parse_options(items, "--model-arg")
    except ValueError as e:
        raise SystemExit(str(e)) from None


def add_benchmark_args(ap, out: str, repeats: int, sections: str) -> None:
    """The options every benchmark script shares: ``--out``, ``--repeats``, ``--dtypes``,
    ``--models`` and ``--sections``."""
    ap.add_argument("--out", default=out, help="results JSON (device, versions and date included)")
    ap.add_argument("--repeats", type=int, default=repeats, help="timed repeats (the median is reported)")
    ap.add_argument("--dtypes", default="fp32,bf16")
    ap.add_argument("--models", default="", help="comma-separated subset of model names (default: all)")
    ap.add_argument("--sections", default=sections, help="comma-separated parts to run")


def file_sha256(path: str) -> str:
    """Hex SHA-256 of a file (read in 1 MiB blocks)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class ResultsFile:
    """A benchmark's JSON results ``{"env": env, "results": [...]}``, rewritten atomically after
    every :meth:`record` (so an interrupted run keeps what it measured) and echoed as JSON lines."""

    def __init__(self, path: str, env: dict):
        self.path = path
        self.data = {"env": env, "results": []}

    def record(self, row: dict) -> None:
        self.data["results"].append(row)
        print(json.dumps(row), flush=True)
        atomic_write(self.path, json.dumps(self.data, indent=1))
