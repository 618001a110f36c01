"""The input pipeline of evaluation and fine-tuning: worker processes decode, the devices transform.

One path for both (:mod:`co3d_jax.data.eval_loader`, :mod:`co3d_jax.data.train_loader`)::

    this process's items ─ Grain ─> elements ─ collate ─> host batch ─ DevicePrefetcher (thread) ─> the mesh
    (grain.MapDataset,       (uint8 frames     (uint8 (B, T, H, W, 3)   (jax.make_array_from_process_local_data,
     per-process share)       (T, h, w, 3)      on a zero canvas,        sharded over 'data'), then the device
                              + CropTaps)       taps (B, S))             transform: (B, T, S, S, 3) float32

* :class:`GrainReader`: a ``grain.MapDataset`` over this process's share of the items (each loader
  shards by ``jax.process_index()``) read in order through ``mp_prefetch`` worker processes
  (``workers=0``: in the calling thread, for tests and debugging). Each worker decodes one element
  at a time (its own slice, interleaved back in dataset order, so the order is deterministic and
  independent of the worker count) and keeps at most ``buffer`` decoded elements queued; Grain
  hands the arrays over in shared memory. It reads exactly ``len(dataset)`` elements and confirms
  the end, so the workers finish on their own, and :meth:`GrainReader.close` releases the worker
  processes and every shared-memory block on any exit path (Grain unlinks the blocks of consumed
  elements in a background thread, which a process exit would cut short: close waits for it).
* :func:`collate_windows` / :func:`stack_taps`: elements' windows of different sizes onto one zero
  canvas (rounded up to 32 pixels; the taps never read the padding) and their taps.
* :class:`DevicePrefetcher`: a thread that collates batch ``k+1``, places it on the mesh and
  dispatches its device transform while batch ``k`` computes (one batch ahead on the devices);
  an error in the thread is re-raised in the consumer's ``next``; ``close`` stops the thread and
  closes the reader.
* The device transform is :func:`co3d_jax.data.device_augment.make_augment` for both: training's
  taps carry the random scale jitter, crop and flip (:func:`co3d_jax.data.augment.crop_taps`),
  evaluation's the reference's resize + centre crop
  (:func:`co3d_jax.data.transforms.center_crop_taps`).

Seam for a device (GPU) decoder (e.g. :mod:`co3d_jax.data.nvdec`). The device transform takes
uint8 frames ``(B, T, H, W, 3)`` that are already ``jax.Array`` s (rows padded to a common ``H, W``
on the device, e.g. ``jnp.zeros(...).at[k, :, :h, :w].set(frames_k)``) plus the taps ``(B, S)``
computed on the host from each sample's frame size (``center_crop_taps(h, w, S)`` needs only the
size; training's ``crop_taps`` likewise)::

    clips = make_augment(mesh, mean, std)(frames, taps)    # (B, T, S, S, 3) float32, sharded over 'data'

with ``frames`` and ``taps`` sharded over the mesh's ``'data'`` axis, which :func:`place_on_mesh`
does: host arrays are transferred, ``jax.Array`` leaves are never copied to the host (in one
process, a batch on other devices is moved device to device; several processes must pass global
arrays sharded over ``'data'``). So a decoder plugs in as the ``produce`` callable of
:class:`DevicePrefetcher`, in the main process (CUDA does not belong in Grain's worker processes):
it returns ``((frames_on_device, host_taps), meta)``, and the prefetcher places them and runs the
same transform one batch ahead.
"""

from __future__ import annotations

import gc
import os
import queue
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ..extras import require
from .transforms import CropTaps

CANVAS_MULTIPLE = 32   # canvas sides are rounded up to this (fewer shapes, fewer compiles)


def default_workers() -> int:
    """Decoding processes when a command is not told: one per core but one, at most 8."""
    n = os.cpu_count() or 1
    return max(0, min(8, n - 1))


# ----------------------------------------------------------------------------- Grain
def _absl_parsed() -> None:
    try:  # grain reads absl flags; scripts that don't use absl.app never parse them
        from absl import flags
        if not flags.FLAGS.is_parsed():
            flags.FLAGS.mark_as_parsed()
    except ImportError:
        pass


def _worker_init(index: int, count: int) -> None:
    """In each Grain worker: Ctrl-C (SIGINT to the terminal's process group) is the main
    process's to handle; it stops the workers through :meth:`GrainReader.close`. A worker killed
    by it instead would die mid-element, and the main process would wait for it to time out.
    JAX, where the worker imported it, is held to its CPU backend: a worker never computes on the
    devices, and on a GPU host JAX's first use there would reserve most of the GPU's memory (an
    NVDEC worker, ``decoder="nvdec-host"``, reaches the GPU through PyNvVideoCodec only)."""
    import signal
    import sys
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    os.environ["JAX_PLATFORMS"] = "cpu"
    if "jax" in sys.modules:
        try:
            sys.modules["jax"].config.update("jax_platforms", "cpu")
        except Exception:  # noqa: BLE001 (a backend already started: nothing to hold)
            pass


def _drain_shared_memory_deletes() -> None:
    """Wait until Grain has unlinked the shared memory of the elements already dropped. Grain
    unlinks it in a thread pool (``SharedMemoryArray.enable_async_del``); a process that exits
    with requests queued there leaves them undone, and Python's resource tracker then warns of
    "leaked shared_memory objects"."""
    try:
        from grain.multiprocessing import SharedMemoryArray
    except ImportError:
        return
    pool = getattr(SharedMemoryArray, "_del_thread_pool", None)   # grain 0.2.x; absent: nothing to wait for
    if pool is not None:
        try:
            pool.apply(int)   # one thread, FIFO: when this no-op has run, every earlier unlink has
        except ValueError:    # pool already shut down (interpreter exit)
            pass


class GrainReader:
    """The elements of ``dataset`` (a ``grain.MapDataset``) in order: decoded by ``workers`` Grain
    processes (``mp_prefetch``; each decodes one element at a time and queues at most ``buffer``
    of them) or, with ``workers=0``, in the calling thread. Element ``i`` is ``dataset[i]`` whatever
    the worker count. Use :meth:`take`; :meth:`close` (idempotent) on every exit path."""

    def __init__(self, dataset, workers: int = 0, buffer: int = 1):
        grain = require("grain", "data", "the input pipeline")
        self._left = len(dataset)
        self._it = None
        self._shared_memory = workers > 0 and self._left > 0   # workers hand elements over in shared memory
        if self._left == 0:
            return
        # Grain's default ReadOptions read 500 elements ahead in 16 threads, in every worker and
        # in the main process: inline here, so the read-ahead is what ``buffer`` says.
        it = dataset.to_iter_dataset(grain.ReadOptions(num_threads=0, prefetch_buffer_size=0))
        if workers > 0:
            _absl_parsed()
            options = grain.MultiprocessingOptions(num_workers=workers, per_worker_buffer_size=max(1, buffer))
            it = it.mp_prefetch(options, worker_init_fn=_worker_init)
        self._it = iter(it)

    @property
    def remaining(self) -> int:
        return self._left

    def take(self, n: int) -> list:
        """The next ``min(n, remaining)`` elements. After the last one, the end is confirmed
        (the workers stop by themselves)."""
        out = []
        if self._left > 0 and self._it is None:
            raise RuntimeError("the reader is closed")
        while len(out) < n and self._left > 0:
            out.append(next(self._it))
            self._left -= 1
        if self._left == 0 and self._it is not None:
            extra = next(self._it, None)
            if extra is not None:
                raise RuntimeError("the Grain pipeline gave more elements than its dataset holds")
            self.close()
        return out

    def close(self) -> None:
        """Stop the worker processes (once), and release the shared memory of every element dropped
        so far: call it again after dropping the last elements (each call waits for Grain's unlinks)."""
        it, self._it = self._it, None
        if it is not None:
            close = getattr(it, "close", None)
            if close is not None:
                close()
            del it, close
        if self._shared_memory:
            gc.collect()   # Grain's iterators hold elements in reference cycles
            _drain_shared_memory_deletes()


class ThreadReader:
    """:class:`GrainReader`'s interface (``take``, ``remaining``, ``close``) over a random-access
    ``dataset`` (``len`` and ``dataset[i]``, e.g. the same ``grain.MapDataset``) read by
    ``threads`` threads of this process, for a decoder that belongs in the main process (NVDEC:
    :mod:`co3d_jax.data.nvdec` keeps one decoder per thread). Element ``i`` is ``dataset[i]``,
    handed out in order whatever the thread count; at most ``ahead`` elements are in flight or
    waiting. :meth:`close` (idempotent) cancels what has not started and waits for the rest."""

    def __init__(self, dataset, threads: int = 4, ahead: int = 8, name: str = "co3d-decode"):
        import collections
        from concurrent.futures import ThreadPoolExecutor

        if threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        self._dataset, self._n = dataset, len(dataset)
        self._ahead = max(int(ahead), threads)
        self._next = 0                                   # the next element to submit
        self._left = self._n
        self._futures: collections.deque = collections.deque()
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix=name) if self._n else None
        self._lock = threading.Lock()

    @property
    def remaining(self) -> int:
        return self._left

    def _submit(self) -> None:
        while self._next < self._n and len(self._futures) < self._ahead:
            self._futures.append(self._pool.submit(self._dataset.__getitem__, self._next))
            self._next += 1

    def take(self, n: int) -> list:
        """The next ``min(n, remaining)`` elements, in order (an element's exception is raised here)."""
        out = []
        with self._lock:
            if self._left > 0 and self._pool is None:
                raise RuntimeError("the reader is closed")
            while len(out) < n and self._left > 0:
                self._submit()
                out.append(self._futures.popleft().result())
                self._left -= 1
            if self._pool is not None:
                self._submit()                           # keep reading ahead while the batch computes
            if self._left == 0:
                self._close_pool()
        return out

    def _close_pool(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            for f in self._futures:
                f.cancel()
            self._futures.clear()
            pool.shutdown(wait=True, cancel_futures=True)

    def close(self) -> None:
        self._close_pool()


def open_reader(dataset, decoder: str = "cpu", workers: int = 0, threads: int = 4, ahead: int = 1):
    """The reader of ``dataset`` for ``decoder``: :class:`GrainReader` over ``workers`` processes
    (each queueing its share of ``ahead`` elements) for the CPU decoder and for a device decoder
    run in worker processes (``"nvdec-host"``/``"auto-host"``:
    :data:`co3d_jax.data.nvdec.HOST_DECODERS`, each worker its own decoder, frames handed over on
    the host as NV12), :class:`ThreadReader` over ``threads`` threads of this process (``ahead`` in
    flight) for a device decoder whose frames stay on the device. Both device decoders need one JAX
    process (the batch is assembled on this process's device)."""
    if decoder != "cpu":
        import jax
        if jax.process_count() > 1:
            raise ValueError(f"decoder={decoder!r} decodes for one process; this run has {jax.process_count()} "
                             "(use the CPU decoder)")
    if decoder == "cpu" or decoder.endswith("-host"):
        return GrainReader(dataset, workers, max(1, -(-ahead // workers)) if workers > 0 else 1)
    return ThreadReader(dataset, threads, ahead, name="co3d-nvdec")


# ----------------------------------------------------------------------------- collation
def _round_up(x: int, m: int) -> int:
    return -(-x // m) * m


def _canvas(windows, rows, canvas, num_frames):
    """``(rows, T, H, W, windows present)`` of a collated batch (see :func:`collate_windows`)."""
    rows = len(windows) if rows is None else rows
    have = [w for w in windows if w is not None]
    if have:
        t = have[0].shape[0]
        if any(w.shape[0] != t or w.shape[3] != 3 or w.dtype != np.uint8 for w in have):
            found = sorted({(tuple(w.shape), str(w.dtype)) for w in have})
            raise ValueError(f"windows of different lengths or not uint8 RGB: {found}")
    elif num_frames is None:
        raise ValueError("no window to collate and no num_frames")
    else:
        t = num_frames
    h = _round_up(max([canvas[0], 1] + [w.shape[1] for w in have]), CANVAS_MULTIPLE)
    w = _round_up(max([canvas[1], 1] + [w.shape[2] for w in have]), CANVAS_MULTIPLE)
    return rows, t, h, w, have


def collate_windows(windows: Sequence[np.ndarray | None], rows: int | None = None, canvas: tuple[int, int] = (0, 0),
                    num_frames: int | None = None) -> np.ndarray:
    """uint8 windows ``(T, h_i, w_i, 3)`` -> ``(rows, T, H, W, 3)`` uint8, each in the top-left
    corner of a zero canvas: ``H, W`` the largest ``h_i, w_i`` and ``canvas``, rounded up to
    ``CANVAS_MULTIPLE``. ``None`` entries and rows past ``len(windows)`` (``rows`` defaults to it)
    stay zero (failed samples, the padding of a last batch); ``num_frames`` gives ``T`` when there
    is no window."""
    rows, t, h, w_, have = _canvas(windows, rows, canvas, num_frames)
    out = np.zeros((rows, t, h, w_, 3), np.uint8)
    for k, w in enumerate(windows):
        if w is not None:
            out[k, :, :w.shape[1], :w.shape[2]] = w
    return out


def collate_on_device(windows: Sequence[Any], rows: int | None = None, canvas: tuple[int, int] = (0, 0),
                      num_frames: int | None = None, device=None):
    """:func:`collate_windows` for windows that are ``jax.Array`` s on a device (a device decoder's
    frames; numpy windows, e.g. a video decoded on the CPU instead, are transferred; NVDEC worker
    processes' :class:`~co3d_jax.data.nvdec.Nv12Frames` are transferred as NV12 and converted to
    RGB there): the same zero canvas, built on ``device`` (default: the first window's, else JAX's
    default) without a host copy of RGB frames. Returns a ``jax.Array`` ``(rows, T, H, W, 3)`` uint8."""
    import jax
    import jax.numpy as jnp

    rows, t, h, w_, have = _canvas(windows, rows, canvas, num_frames)
    if device is None:
        on = [w for w in have if isinstance(w, jax.Array)]
        device = next(iter(on[0].devices())) if on else jax.devices()[0]
    from .nvdec import Nv12Frames, nv12_windows_to_device
    if any(isinstance(w, Nv12Frames) for w in have):
        windows = nv12_windows_to_device(list(windows), device)
    out = []
    for k in range(rows):
        w = windows[k] if k < len(windows) else None
        if w is None:
            out.append(jnp.zeros((t, h, w_, 3), jnp.uint8, device=device))
            continue
        w = jax.device_put(w, device)
        if w.shape[1:3] != (h, w_):
            w = jnp.pad(w, ((0, 0), (0, h - w.shape[1]), (0, w_ - w.shape[2]), (0, 0)))
        out.append(w)
    return jnp.stack(out)


def stack_taps(taps: Sequence[CropTaps | None], rows: int | None = None,
               size: int | None = None) -> dict[str, np.ndarray]:
    """Per-sample :class:`CropTaps` (``(S,)`` fields) -> ``{field: (rows, S)}``; ``None`` entries
    and rows past ``len(taps)`` read pixel 0 with weight 0 (``size`` gives ``S`` when there are no
    taps)."""
    rows = len(taps) if rows is None else rows
    have = [t for t in taps if t is not None]
    s = have[0].r0.shape[0] if have else size
    if s is None:
        raise ValueError("no taps to stack and no size")
    out = {}
    for f in CropTaps._fields:
        dtype = np.int32 if f in ("r0", "r1", "c0", "c1") else np.float32
        a = np.zeros((rows, s), dtype)
        for k, t in enumerate(taps):
            if t is not None:
                a[k] = getattr(t, f)
        out[f] = a
    return out


# ----------------------------------------------------------------------------- to the devices
def place_on_mesh(tree: Any, mesh=None) -> Any:
    """Host arrays holding this process's rows -> global ``jax.Array`` s sharded along the batch over
    ``mesh``'s ``data`` axis (``jax.make_array_from_process_local_data``; global batch = rows x
    ``jax.process_count()``), or on the default device without a mesh.

    ``jax.Array`` leaves are already on the devices (a device decoder's output) and are not copied
    to the host: one sharded over ``'data'`` passes through; in a single process, one on other
    devices (e.g. a batch decoded on device 0) is moved there device to device; with several
    processes it must already be a global array sharded over ``'data'`` (a ``ValueError`` says so)."""
    import jax

    if mesh is None:
        return jax.tree.map(lambda a: a if isinstance(a, jax.Array) else jax.device_put(a), tree)
    from ..mesh import shardings
    _, batch = shardings(mesh)
    nproc = jax.process_count()

    def one(a):
        if not isinstance(a, jax.Array):
            return jax.make_array_from_process_local_data(batch, a, (a.shape[0] * nproc, *a.shape[1:]))
        if a.sharding.is_equivalent_to(batch, a.ndim):
            return a
        if nproc == 1:
            return jax.device_put(a, batch)
        raise ValueError(f"a device array for the batch must be sharded over the mesh's 'data' axis with "
                         f"{nproc} processes (got {a.sharding})")

    return jax.tree.map(one, tree)


class DevicePrefetcher:
    """Batches on the devices, one ahead: a thread calls ``produce() -> (arrays, meta) | None``
    (``None``: the end), places ``arrays`` (a pytree of host arrays with this process's rows) with
    :func:`place_on_mesh`, dispatches ``transform(placed)`` (asynchronous on the devices) and queues
    ``(result, meta)`` while the consumer computes on the previous batch.

    Iterate it, or call ``next``: an exception raised in the thread is re-raised there (once; the
    iterator then ends). :meth:`close` (idempotent; also on leaving a ``with`` block) stops the
    thread and calls ``close_source``, which the thread also calls when it ends (``close_source``
    must tolerate repeated calls), so worker processes are released on every exit path. What
    ``meta`` holds stays the consumer's: it must not keep the source's buffers (Grain's shared
    memory) alive past :meth:`close`. ``stats``: seconds the consumer waited
    (``wait_s``), the thread spent producing (``host_s``) and transferring (``put_s``), and the
    batches handed out."""

    def __init__(self, produce: Callable[[], tuple[Any, Any] | None], mesh=None, transform: Callable | None = None,
                 close_source: Callable[[], None] | None = None, name: str = "co3d-prefetch"):
        self._produce, self._mesh, self._transform = produce, mesh, transform
        self._close_source = close_source
        self.stats = dict(wait_s=0.0, host_s=0.0, put_s=0.0, batches=0)
        self._q: queue.Queue = queue.Queue(maxsize=1)   # one batch ahead on the devices
        self._stop = threading.Event()
        self._done = False
        self._source_lock = threading.Lock()
        self._thread = threading.Thread(target=self._fill, daemon=True, name=name)
        self._thread.start()

    # ------------------------------------------------------------------ producer (thread)
    def _fill(self) -> None:
        import jax

        try:
            while not self._stop.is_set():
                t0 = time.perf_counter()
                got = self._produce()
                if got is None:
                    self._offer(("end",))
                    return
                arrays, meta = got
                t1 = time.perf_counter()
                placed = place_on_mesh(arrays, self._mesh)
                jax.block_until_ready(placed)
                t2 = time.perf_counter()
                out = self._transform(placed) if self._transform is not None else placed
                del arrays, placed, got
                self.stats["host_s"] += t1 - t0
                self.stats["put_s"] += t2 - t1
                self._offer(("batch", out, meta))
                del out, meta
        except BaseException as e:  # handed to the consumer at its next()
            self._offer(("error", e))
        finally:
            self._release_source()

    def _offer(self, item) -> None:
        while not self._stop.is_set():
            try:
                self._q.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def _release_source(self) -> None:
        if self._close_source is not None:
            with self._source_lock:   # the thread at its end, the consumer at close()
                self._close_source()

    # ------------------------------------------------------------------ consumer
    def __iter__(self):
        return self

    def __next__(self):
        if self._done:
            raise StopIteration
        t0 = time.perf_counter()
        while True:
            try:
                item = self._q.get(timeout=0.1)
                break
            except queue.Empty:
                if not self._thread.is_alive() and self._q.empty():
                    self._done = True
                    raise RuntimeError("the input pipeline's thread ended without a result") from None
        self.stats["wait_s"] += time.perf_counter() - t0
        if item[0] == "end":
            self._done = True
            raise StopIteration
        if item[0] == "error":
            self._done = True
            raise item[1]
        self.stats["batches"] += 1
        return item[1], item[2]

    next = __next__

    def close(self, timeout_s: float = 60.0) -> None:
        """Stop the thread (it finishes the element it is reading) and release the source."""
        self._done = True
        self._stop.set()
        while True:   # unblock the producer
            try:
                self._q.get_nowait()
            except queue.Empty:
                break
        self._thread.join(timeout=timeout_s)
        # A thread still reading (a worker stuck on one video) is stopped by closing the source
        # under it; its read then fails, and it exits.
        self._release_source()
        self._thread.join(timeout=timeout_s)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


__all__ = ["CANVAS_MULTIPLE", "DevicePrefetcher", "GrainReader", "ThreadReader", "collate_on_device",
           "collate_windows", "default_workers", "open_reader", "place_on_mesh", "stack_taps"]
