"""Optional dependencies: one error for a missing package, naming the extra that installs it.

``require("av", "data")`` imports and returns a module, or raises :class:`MissingExtra` with one
line such as ``decoding video needs 'av', which is not installed: pip install -e '.[data]'``.
Every command's ``main`` is wrapped in :func:`cli_main`, which prints that line as
``error: ...`` on stderr and exits with code 2 (a ``ModuleNotFoundError`` for a package of
:data:`EXTRA_OF` is reported the same way, wherever it was imported).
"""

from __future__ import annotations

import functools
import importlib
import sys

EXTRA_OF = {"av": "data", "cv2": "data", "grain": "data", "PIL": "data",
            "tensorflow_datasets": "tfds", "array_record": "tfds", "importlib_resources": "tfds",
            "torch": "port", "torchvision": "port", "pytorchvideo": "port", "continual": "bench",
            "PyNvVideoCodec": "nvdec"}
"""Top-level module -> the extra (``pip install -e '.[extra]'``) that installs it."""

PACKAGE_OF = {"cv2": "opencv-python-headless", "PIL": "pillow", "tensorflow_datasets": "tensorflow-datasets",
              "array_record": "array-record", "continual": "continual-inference", "PyNvVideoCodec": "pynvvideocodec"}
"""Top-level module -> its pip distribution, where the names differ."""


class MissingExtra(ImportError):
    """An optional package is not installed; the message names it and the extra that installs it."""

    def __init__(self, module: str, extra: str, purpose: str | None = None):
        self.module, self.extra = module, extra
        package = PACKAGE_OF.get(module, module)
        need = f"{purpose} needs" if purpose else "this command needs"
        super().__init__(f"{need} {package!r}, which is not installed: pip install -e '.[{extra}]' "
                         f"(or pip install 'co3d-jax[{extra}]')", name=module)


def require(module: str, extra: str, purpose: str | None = None):
    """``import module`` (dotted names allowed), or raise :class:`MissingExtra` naming ``extra``."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as e:
        missing = (e.name or module).split(".")[0]
        if missing != module.split(".")[0]:  # a package that ``module`` itself imports
            extra = EXTRA_OF.get(missing, extra)
        raise MissingExtra(missing, extra, purpose) from None


def as_missing_extra(e: ImportError) -> MissingExtra | None:
    """``e`` as a :class:`MissingExtra` when it is one, or a ``ModuleNotFoundError`` for a
    package of :data:`EXTRA_OF`; else ``None``."""
    if isinstance(e, MissingExtra):
        return e
    top = (getattr(e, "name", None) or "").split(".")[0]
    if isinstance(e, ModuleNotFoundError) and top in EXTRA_OF:
        return MissingExtra(top, EXTRA_OF[top])
    return None


def cli_main(main):
    """Wrap a command's ``main(argv=None) -> int``: a missing optional package becomes
    ``error: <one line>`` on stderr and exit code 2 instead of a traceback."""

    @functools.wraps(main)
    def wrapped(argv=None):
        try:
            return main(argv)
        except ImportError as e:
            missing = as_missing_extra(e)
            if missing is None:
                raise
            print(f"error: {missing}", file=sys.stderr)
            return 2

    return wrapped
