"""Downloading the public X3D, Slow and I3D checkpoints (urllib + tqdm), resumable, then converting them.

The table :data:`SOURCES` is data: one row per file. A partial download lives in
``DIR/<filename>.part``; a later run resumes it with an HTTP ``Range`` request (a server that
ignores the range restarts the file from zero). A network failure keeps the ``.part`` for
resuming (``--restart`` discards it); an integrity failure (sha256 mismatch, more bytes than
announced, a file that does not load as the expected checkpoint) deletes it. The finished file
is renamed to ``DIR/<filename>`` only after it is verified, then converted to ``DIR/<arch>.npz``.
The folder is created only once the server answers (an offline run leaves nothing behind).

Digests: no row of the table pins a sha256 (see :data:`SOURCES`). Instead the first verified
download of a row records its digest in a lock file (``DIR/weights.lock.json``, or ``--lock
PATH``) that the user can commit; later downloads, and a reused file, must match it (a mismatch
is one error line and the downloaded file is removed). ``--sha256`` pins a digest explicitly.

Tests and mirrors: ``--url`` replaces a row's URL; the environment variable
``WEIGHT_PORT_MIRROR`` (a base URL) replaces the directory part of every row's URL.
"""

from __future__ import annotations

import dataclasses
import hashlib
import http.client
import os
import re
import sys
import urllib.error
import urllib.request
import warnings
from typing import Callable

from .errors import PortError

MIRROR_ENV = "WEIGHT_PORT_MIRROR"
_PYSLOWFAST = "https://dl.fbaipublicfiles.com/pyslowfast/x3d_models"
_PYTORCHVIDEO = "https://dl.fbaipublicfiles.com/pytorchvideo/model_zoo/kinetics"
_PYTORCHVIDEO_CHARADES = "https://dl.fbaipublicfiles.com/pytorchvideo/model_zoo/charades"
_PYSLOWFAST_K400 = "https://dl.fbaipublicfiles.com/pyslowfast/model_zoo/kinetics400"


@dataclasses.dataclass(frozen=True)
class WeightSource:
    """One downloadable checkpoint.

    ``name``: what ``download NAME`` takes; ``arch``: the co3d_jax model it converts to by
    default; ``sha256``/``size``: pinned digest and byte count, ``None`` where unknown;
    ``layout``: ``"slowfast"``, ``"pytorchvideo"``, ``"torchvision"`` or ``"caffe2"`` (checked
    after download).
    """

    name: str
    url: str
    filename: str
    sha256: str | None
    size: int | None
    layout: str
    arch: str


# sha256 and sizes are None: this table was written without network access, so no digest could
# be computed, and no published digest of these files was reachable to cite (the model zoos'
# pages list URLs and accuracies only). Without a digest the first download is checked to load
# (weights_only) and to convert strictly to `arch` in the expected layout, and its digest is then
# recorded in the lock file (DIR/weights.lock.json), which later downloads must match. Pin a
# digest with --sha256 (or fill it in here once known, from a source you can cite).
SOURCES: tuple[WeightSource, ...] = (
    # PySlowFast model zoo (used by co3d for X3D and CoX3D; reference §3.1): {'model_state': ...}
    WeightSource("x3d_xs", f"{_PYSLOWFAST}/x3d_xs.pyth", "x3d_xs.pyth", None, None, "slowfast", "x3d_xs"),
    WeightSource("x3d_s", f"{_PYSLOWFAST}/x3d_s.pyth", "x3d_s.pyth", None, None, "slowfast", "x3d_s"),
    WeightSource("x3d_m", f"{_PYSLOWFAST}/x3d_m.pyth", "x3d_m.pyth", None, None, "slowfast", "x3d_m"),
    WeightSource("x3d_l", f"{_PYSLOWFAST}/x3d_l.pyth", "x3d_l.pyth", None, None, "slowfast", "x3d_l"),
    # pytorchvideo torch-hub zoo (pytorchvideo/models/hub/x3d.py): {'model_state': ...}, blocks.* names
    WeightSource("pytorchvideo_x3d_xs", f"{_PYTORCHVIDEO}/X3D_XS.pyth", "X3D_XS.pyth", None, None, "pytorchvideo",
                 "x3d_xs"),
    WeightSource("pytorchvideo_x3d_s", f"{_PYTORCHVIDEO}/X3D_S.pyth", "X3D_S.pyth", None, None, "pytorchvideo",
                 "x3d_s"),
    WeightSource("pytorchvideo_x3d_m", f"{_PYTORCHVIDEO}/X3D_M.pyth", "X3D_M.pyth", None, None, "pytorchvideo",
                 "x3d_m"),
    WeightSource("pytorchvideo_x3d_l", f"{_PYTORCHVIDEO}/X3D_L.pyth", "X3D_L.pyth", None, None, "pytorchvideo",
                 "x3d_l"),
    # Slow-8x8-R50 (Slow, CoSlow; reference §3.1): pytorchvideo model zoo, {'model_state': ...}, blocks.*
    # names. The Kinetics and Charades files share a basename, so they are saved under co3d's names.
    WeightSource("slow_8x8_r50", f"{_PYTORCHVIDEO}/SLOW_8x8_R50.pyth", "slow_8x8_kinetics.pyth", None, None,
                 "pytorchvideo", "slow_8x8_r50"),
    WeightSource("slow_8x8_r50_charades", f"{_PYTORCHVIDEO_CHARADES}/SLOW_8x8_R50.pyth", "slow_8x8_charades.pyth",
                 None, None, "pytorchvideo", "slow_8x8_r50_charades"),
    # I3D-8x8-R50 (I3D, CoI3D; co3d's weights): PySlowFast Caffe2 pickle {'blobs': ...}
    WeightSource("i3d_r50", f"{_PYSLOWFAST_K400}/I3D_8x8_R50.pkl", "I3D_8x8_R50.pkl", None, None, "caffe2",
                 "i3d_r50"),
    # the pytorchvideo hub's i3d_r50 (pytorchvideo/models/hub/resnet.py): blocks.* names, pool as blocks.2
    WeightSource("pytorchvideo_i3d_r50", f"{_PYTORCHVIDEO}/I3D_8x8_R50.pyth", "I3D_8x8_R50.pyth", None, None,
                 "pytorchvideo", "i3d_r50"),
    # R(2+1)D-18 (reference §3.1, §3.5): torchvision's plain state dict
    WeightSource("r2plus1d_18", "https://download.pytorch.org/models/r2plus1d_18-91a641e6.pth",
                 "r2plus1d_18-91a641e6.pth", None, None, "torchvision", "r2plus1d_18_16"),
    # SlowFast-R50 (reference §3.1, §3.5): PySlowFast Caffe2 pickles {'blobs': ...}
    WeightSource("slowfast_8x8_r50", f"{_PYSLOWFAST_K400}/SLOWFAST_8x8_R50.pkl", "SLOWFAST_8x8_R50.pkl", None, None,
                 "caffe2", "slowfast_8x8_r50"),
    WeightSource("slowfast_4x16_r50", f"{_PYSLOWFAST_K400}/SLOWFAST_4x16_R50.pkl", "SLOWFAST_4x16_R50.pkl", None, None,
                 "caffe2", "slowfast_4x16_r50"),
)


def find_source(name: str) -> WeightSource:
    """The table row called ``name``."""
    for row in SOURCES:
        if row.name == name:
            return row
    raise PortError(f"unknown checkpoint {name!r}; choose from {', '.join(r.name for r in SOURCES)}")


def resolve_url(row: WeightSource, url: str | None = None) -> str:
    """``url`` if given, else the row's URL under ``$WEIGHT_PORT_MIRROR`` if set, else the row's URL."""
    if url:
        return url
    mirror = os.environ.get(MIRROR_ENV)
    if mirror:
        return mirror.rstrip("/") + "/" + row.filename
    return row.url


def sha256_file(path: str, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _remove(path: str) -> None:
    try:
        os.remove(path)
    except FileNotFoundError:
        pass


def _total_from_content_range(value: str | None) -> int | None:
    m = re.match(r"bytes\s+(?:\d+-\d+|\*)/(\d+)", value or "")
    return int(m[1]) if m else None


def fetch(url: str, dest: str, *, sha256: str | None = None, size: int | None = None, progress: bool = True,
          restart: bool = False, timeout: float = 60.0, chunk: int = 1 << 20,
          validate: Callable[[str], None] | None = None, sha256_from: str = "") -> str:
    """Download ``url`` to ``dest`` through ``dest + '.part'``, resuming an existing part.

    ``validate(part_path)`` (optional) runs on the complete file before it is renamed to
    ``dest``; a :class:`PortError` from it removes the part. ``sha256_from`` names where the expected
    digest comes from (``" (--sha256)"``, ``" (recorded in DIR/weights.lock.json)"``) in the
    mismatch message. The folder of ``dest`` is created only once the server answers. Returns ``dest``. Raises
    :class:`PortError` on failure: network errors keep the part file (the message says so),
    integrity errors remove it.
    """
    from tqdm import tqdm

    part = dest + ".part"
    if restart:
        _remove(part)
    start = os.path.getsize(part) if os.path.exists(part) else 0
    headers = {"User-Agent": "co3d-jax-weight-port/1"}
    if start:
        headers["Range"] = f"bytes={start}-"
    keep = f"; the partial file {part} is kept: rerun to resume (or pass --restart)"
    try:
        resp = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and start:  # range not satisfiable: the part is complete, or junk
            total = _total_from_content_range(e.headers.get("Content-Range"))
            if total == start:
                resp = None
            else:
                _remove(part)
                raise PortError(f"download of {url} failed: the server rejected resuming at byte {start}; "
                                f"removed {part}, rerun to start over") from None
        else:
            raise PortError(f"download of {url} failed: HTTP {e.code} {e.reason}"
                            + (keep if start else "")) from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
        reason = getattr(e, "reason", e)
        raise PortError(f"download of {url} failed: {reason}" + (keep if start else "")) from None

    if resp is not None:
        # only now that the server answered: an offline run leaves no (empty) folder behind
        os.makedirs(os.path.dirname(os.path.abspath(dest)), exist_ok=True)
        with resp:
            if start and resp.status == 206:
                total = _total_from_content_range(resp.headers.get("Content-Range"))
                mode = "ab"
            else:  # fresh download, or the server ignored the Range header
                start, mode = 0, "wb"
                length = resp.headers.get("Content-Length")
                total = int(length) if length and length.isdigit() else None
            total = total or size
            try:
                with open(part, mode) as f, tqdm(total=total, initial=start, unit="B", unit_scale=True,
                                                 unit_divisor=1024, desc=os.path.basename(dest),
                                                 disable=not progress, file=sys.stderr) as bar:
                    while block := resp.read(chunk):
                        f.write(block)
                        bar.update(len(block))
            except (OSError, urllib.error.URLError, http.client.HTTPException) as e:  # connection lost mid-transfer
                raise PortError(f"download of {url} interrupted: {getattr(e, 'reason', e)}{keep}") from None
        got = os.path.getsize(part)
        if total is not None and got < total:
            raise PortError(f"download of {url} incomplete: {got} of {total} bytes{keep}")
        if total is not None and got > total:
            _remove(part)
            raise PortError(f"download of {url} produced {got} bytes, more than the announced {total}; removed {part}")
    got = os.path.getsize(part)
    if size is not None and got != size:
        _remove(part)
        raise PortError(f"{url}: got {got} bytes, expected {size}; removed {part}")
    if sha256:
        digest = sha256_file(part)
        if digest.lower() != sha256.lower():
            _remove(part)
            raise PortError(f"{url}: sha256 mismatch (got {digest}, expected {sha256.lower()}{sha256_from}); "
                            f"removed {part}")
    if validate is not None:
        try:
            validate(part)
        except PortError:
            _remove(part)
            raise
    os.replace(part, dest)
    return dest


# ------------------------------------------------------------------------------------ lock file
LOCK_NAME = "weights.lock.json"
"""Default lock file, ``DIR/weights.lock.json``: the digest of each file's first verified download."""
_HEX64 = re.compile(r"[0-9a-f]{64}")


def read_lock(path: str) -> dict[str, dict]:
    """The entries of a lock file (``{"version": 1, "files": {name: {"sha256", "size", "file", "url"}}}``)
    by table row name; ``{}`` if it does not exist; a :class:`PortError` naming it if it is unreadable."""
    import json

    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise PortError(f"lock file {path} is unreadable ({type(e).__name__}: {e}); fix it or delete it to record "
                        "the digests afresh") from None
    files = data.get("files") if isinstance(data, dict) else None
    if not isinstance(files, dict) or not all(isinstance(v, dict) and _HEX64.fullmatch(str(v.get("sha256", "")).lower())
                                              for v in files.values()):
        raise PortError(f"lock file {path} is not a weight_port lock file ({{\"version\": 1, \"files\": "
                        "{name: {\"sha256\": <64 hex digits>, ...}}}}); fix it or delete it")
    return files


def record_lock(path: str, name: str, entry: dict) -> None:
    """Add (or replace) ``name``'s entry in the lock file ``path`` (written atomically, sorted keys)."""
    import json

    from co3d_jax.fileio import atomic_write

    files = read_lock(path)
    files[name] = entry
    text = json.dumps({"version": 1, "files": dict(sorted(files.items()))}, indent=2, sort_keys=True) + "\n"
    try:
        atomic_write(path, text)
    except OSError as e:
        raise PortError(f"cannot write the lock file {path}: {e.strerror or e}") from None


def _expected_digest(row: WeightSource, sha256: str | None, locked: dict | None, lock: str | None
                     ) -> tuple[str | None, str]:
    """The digest a download of ``row`` must have and where it comes from (for messages):
    ``--sha256``, else the table's, else the lock file's; ``--sha256`` against another recorded
    digest is an error (the lock says which bytes this folder was verified with)."""
    if sha256 is not None and not _HEX64.fullmatch(sha256.lower()):
        raise PortError(f"--sha256 {sha256}: expected 64 hex digits")
    recorded = locked.get("sha256", "").lower() if locked else None
    pinned, pinned_from = (sha256, "--sha256") if sha256 else (row.sha256, "the table's digest")
    if pinned and recorded and pinned.lower() != recorded:
        raise PortError(f"{pinned_from} {pinned.lower()} contradicts the digest {recorded} recorded for {row.name} "
                        f"in {lock}; remove that entry (or the lock file) to re-pin"
                        + (", or drop --sha256" if sha256 else ""))
    if pinned:
        return pinned.lower(), f" ({pinned_from})"
    if recorded:
        return recorded, f" (recorded in {lock})"
    return None, ""


def download(name: str, out_dir: str, *, arch: str | None = None, url: str | None = None,
             sha256: str | None = None, progress: bool = True, restart: bool = False,
             log: Callable[[str], None] = print, lock: str | None | bool = True,
             warn: Callable[[str], None] = lambda line: print(line, file=sys.stderr)) -> str:
    """Download table row ``name`` into ``out_dir`` and convert it to ``out_dir/<arch>.npz``.

    Returns the ``.npz`` path. An already present, verified ``out_dir/<filename>`` is reused.
    ``lock``: the lock file (``True``: ``out_dir/weights.lock.json``; ``False``/``None``: none).
    The first verified download of a row records its sha256 there; later downloads (and a
    reused file) must match it, else one error line and the file is removed. ``warn`` gets a
    ``warning: ...`` line for each thing the file's recorded config says against ``arch``.
    """
    from .convert import convert_state_dict, read_source, save_conversion
    from .pipeline import RecordedConfigWarning

    row = find_source(name)
    src_url = resolve_url(row, url)
    lock_path = os.path.join(out_dir, LOCK_NAME) if lock is True else (lock or None)
    locked = read_lock(lock_path).get(row.name) if lock_path else None
    digest, digest_from = _expected_digest(row, sha256, locked, lock_path)
    dest = os.path.join(out_dir, row.filename)
    checked: dict[str, object] = {}
    if os.path.exists(dest) and not restart:
        if digest and sha256_file(dest).lower() != digest:
            raise PortError(f"{dest} exists but its sha256 does not match {digest}{digest_from}; delete it or pass "
                            "--restart")
        log(f"using existing {dest}")
    else:
        log(f"downloading {src_url} -> {dest}")

        def check_structure(path: str) -> None:
            # Always run; without a pinned digest it is the integrity check (load + strict convert).
            try:
                state, container, recorded = read_source(path, row.arch, row.layout, with_config=True)
                with warnings.catch_warnings():  # reported below, for the arch converted to
                    warnings.simplefilter("ignore", RecordedConfigWarning)
                    checked[row.arch] = convert_state_dict(state, row.arch, layout=row.layout, source_label=dest,
                                                           container=container, recorded=recorded)
            except PortError as e:
                raise PortError(f"the downloaded file is not the expected {row.layout}-layout {row.arch} checkpoint "
                                f"(removed {path}): {e}") from None

        fetch(src_url, dest, sha256=digest, size=row.size, progress=progress, restart=restart,
              validate=check_structure, sha256_from=digest_from)
    if lock_path and locked is None:
        got = sha256_file(dest)
        record_lock(lock_path, row.name, {"sha256": got, "size": os.path.getsize(dest), "file": row.filename,
                                          "url": src_url})
        log(f"recorded sha256 {got} of {row.filename} in {lock_path} (commit it: later downloads must match)")
    elif locked is not None:
        log(f"sha256 matches {lock_path}")
    target = arch or row.arch
    conv = checked.get(target)
    if conv is None:
        state, container, recorded = read_source(dest, target, row.layout, with_config=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RecordedConfigWarning)
            conv = convert_state_dict(state, target, layout=row.layout, source_label=dest, container=container,
                                      recorded=recorded)
    for w in conv.warnings:
        warn(f"warning: {w}")
    npz = os.path.join(out_dir, f"{target}.npz")
    save_conversion(conv, npz, dest)
    log(f"wrote {npz} ({target}, {row.layout} layout)")
    return npz
