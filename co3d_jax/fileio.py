"""Atomic file writes that give results the permissions of any other file the user writes."""

from __future__ import annotations

import os
import tempfile
from typing import Callable, Union


def _new_file_mode(path: str) -> int:
    """The mode ``open(path, "w")`` would leave: an existing file's own mode, else 0o666 less the umask."""
    try:
        return os.stat(path).st_mode & 0o7777
    except FileNotFoundError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


def atomic_write(path: str, data: Union[str, bytes, Callable]) -> None:
    """Write ``data`` to ``path`` through a synced temporary file in the same folder and a rename,
    so a reader (or a crash) never sees a half-written file. ``data``: text (UTF-8), bytes, or a
    function that writes to the binary file object it is given. Creates the parent folder; the
    file gets the umask's permissions (or keeps those of the file it replaces), not
    ``mkstemp``'s owner-only 0600."""
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=d, prefix=".tmp-", suffix=os.path.basename(path))
    try:
        with os.fdopen(fd, "wb") as f:
            if callable(data):
                data(f)
            else:
                f.write(data.encode("utf-8") if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
            os.fchmod(f.fileno(), _new_file_mode(path))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
