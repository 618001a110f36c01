"""Helpers shared by the experiment command lines."""

from __future__ import annotations

import hashlib
import json
import math
import os
import sys

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


# ----------------------------------------------------------------------------- faults
class CliError(Exception):
    """A user-facing failure a command reports in one line (exit status 2)."""


def json_safe(obj):
    """``obj`` with every non-finite float (NaN, inf) replaced by None, so the JSON written is
    standard (``json.dumps(..., allow_nan=False)`` accepts it)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def dumps(obj, **kw) -> str:
    """Standard JSON (non-finite floats as null, see :func:`json_safe`)."""
    return json.dumps(json_safe(obj), allow_nan=False, **kw)


def make_out_dir(path: str, flag: str = "--out") -> str:
    """Create the folder ``path`` (the leaf only) and return its absolute path; a missing parent
    folder or a file in the way is a :class:`CliError` (a typo must not create folders anywhere)."""
    path = os.path.abspath(path)
    if os.path.isdir(path):
        return path
    if os.path.exists(path):
        raise CliError(f"{flag} {path} exists and is not a folder")
    parent = os.path.dirname(path)
    if not os.path.isdir(parent):
        raise CliError(f"{flag} {path}: the parent folder {parent} does not exist (create it first)")
    os.makedirs(path, exist_ok=True)   # the parent exists: only the leaf (several processes may race here)
    return path


def check_out_file(path: str, flag: str) -> str:
    """An output file's absolute path; its folder must exist (:class:`CliError` otherwise)."""
    path = os.path.abspath(path)
    if not os.path.isdir(os.path.dirname(path)):
        raise CliError(f"{flag} {path}: the folder {os.path.dirname(path)} does not exist (create it first)")
    return path


def read_run_config(path: str) -> dict | None:
    """The ``config.json`` of an earlier run in an output folder (None when there is none); a
    damaged file is a :class:`CliError` saying what to do."""
    if not os.path.exists(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            cfg = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CliError(f"{path} is damaged ({type(e).__name__}: {e}); pass --overwrite to start the run afresh "
                       "or use another --out") from None
    if not isinstance(cfg, dict):
        raise CliError(f"{path} is not a run configuration (a JSON object); pass --overwrite or use another --out")
    return cfg


class Interrupted(Exception):
    """A stop was asked for (a signal) while :func:`compile_responsive` waited."""


COMPILE_THREAD = "xla-compile"


def exit_process(code: int):
    """End a command's process with ``code`` (its ``__main__``). A compile abandoned by
    :func:`compile_responsive` (the run was stopped by a signal) still runs in its daemon thread, and
    tearing that thread down at interpreter shutdown aborts the process (``FATAL: exception not
    rethrown``: glibc unwinds the thread through XLA's C++), so then the process ends at once with
    ``os._exit`` after flushing its output."""
    import threading

    if any(t.name == COMPILE_THREAD and t.is_alive() for t in threading.enumerate()):
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


def compile_responsive(jitted, *args, stop=lambda: False, poll_s: float = 0.1):
    """``jitted.lower(*args).compile()`` in a worker thread, the main thread polling every
    ``poll_s`` so Python signal handlers run while XLA compiles (a handler that raises, e.g.
    ``KeyboardInterrupt``, propagates at once; ``stop()`` true raises :class:`Interrupted`).
    The worker is a daemon: an abandoned compile does not keep the process alive. Returns the
    compiled executable (call it with arguments like ``args``)."""
    import threading

    box: dict = {}

    def work():
        try:
            box["compiled"] = jitted.lower(*args).compile()
        except BaseException as e:  # re-raised in the caller
            box["error"] = e

    t = threading.Thread(target=work, name=COMPILE_THREAD, daemon=True)
    t.start()
    while t.is_alive():
        t.join(poll_s)
        if stop():
            raise Interrupted
    if "error" in box:
        raise box["error"]
    return box["compiled"]
