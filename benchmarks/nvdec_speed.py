"""GPU decoding (``co3d_jax.data.nvdec``, NVDEC through PyNvVideoCodec) against the CPU seek
decoder (``VideoFrames``): time per clip, clips/s with threads, what bounds the rate, and how far
its pixels are from PyAV's (``decode_all``), with a per-frame diagnosis of the difference.

    python -m benchmarks.nvdec_speed --out results/nvdec_speed_h200.json

Videos: generated 10 s 340x256 30-fps clips (``make_video``: moving gradients and a noise band, as
``benchmarks/decode_speed.py``), ``--videos`` of each of: ``libx264`` with the encoder's default
GOP (keyframes 0, 158, 277 here), ``libx264_g48`` (GOP 48) and ``mpeg4`` (GOP 12).

Sections (each measurement is fail-soft: an exception is recorded as ``{"error": ...}`` and the
rest still runs):

* ``per_clip``: ms per clip, one thread, median over ``--reps`` passes over the videos after a
  warm-up, for the X3D-M eval clip (16 frames at rate 5, centred) and an X3D-S training window
  (13 x 6 at a random start): ``cpu`` (``VideoFrames(path)[idx]``, host numpy), ``cpu_put`` (+
  ``jax.device_put`` to the GPU), ``nvdec`` (``NvdecFrames(path, color="rgb")[idx]``: RGB on the
  decoder, packet scan, the thread's decoder reconfigured), ``nvdec_noscan`` (header frame
  count), ``nvdec_nv12`` (native NV12 + ``nv12_to_rgb`` in JAX: the default since the first H200
  run), ``nvdec_new_decoder`` (a new SimpleDecoder per video instead of ``reconfigure_decoder``),
  ``nvdec_bytes`` (from the file's bytes: always a new decoder; with
  ``BYTES_UNSUPPORTED_CODECS`` emptied, so it records PyNvVideoCodec's own behaviour), all but
  ``nvdec_nv12`` with ``color="rgb"`` (the keys keep their meaning across runs);
  ``container_check`` (the PyAV demux that opening an ``NvdecFrames`` adds: ``demux_index``, CPU).
  ``nvdec_parts``: the raw API's reconfigure / ``get_batch_frames_by_index``
  / DLPack import + stack, separately, and the frames NVDEC must decode per clip (from the
  keyframe before the first index) per second of the batch call.
* ``threads``: clips/s (eval clips over all videos, ``--clips`` per run) with 1/2/4/8 threads, each
  with its own decoder, for ``nvdec`` (RGB), ``nvdec_nv12``, ``nvdec`` with ``decoder_cache_size`` 1 and
  8, and ``cpu`` (PyAV releases the GIL while decoding); with the process's CPU time per wall
  second and the NVDEC utilisation that ``nvidia-smi`` reports during the run (what bounds it).
* ``exactness``: two whole videos per codec through NVDEC against PyAV: max / mean abs RGB
  difference and its histogram; the decoded planes (NVDEC's NV12 against PyAV's yuv420p: Y, U, V);
  NVDEC's RGB against ``nv12_to_rgb`` of NVDEC's own NV12 (its colour conversion alone), and
  ``nv12_to_rgb`` of NVDEC's NV12 against PyAV's RGB (the ``color="nv12"`` path); and per frame:
  picture type, position in the GOP, RGB and Y differences, and the difference against PyAV's
  previous and next frames (an off-by-one shows as a neighbour being closer), summarised by GOP
  position with a ``verdict``.
* ``checks``: frame counts (header, scan, PyAV) after reconfigures onto a shorter and a longer
  video; ``bad_files``: what each decoder says about a cut file, junk and an empty file.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import threading
import time
import traceback

import numpy as np

from .gpu_util import GpuUtil

W, H, N, FPS = 340, 256, 300, 30
CODECS = {"libx264": ("libx264", None), "libx264_g48": ("libx264", 48), "mpeg4": ("mpeg4", None)}


def make_video(path, codec, seed=0, n=N, w=W, h=H, fps=FPS, gop=None):
    """A generated clip (``co3d_jax.data.synthetic.gradient_noise_video``: moving colour gradients and a
    moving band of noise, seeded) encoded with ``codec`` at ``gop`` (None: the encoder's default)."""
    import av
    from co3d_jax.data.synthetic import gradient_noise_video
    with av.open(path, "w") as c:
        s = c.add_stream(codec, rate=fps)
        s.width, s.height, s.pix_fmt = w, h, "yuv420p"
        if gop:
            s.codec_context.gop_size = gop
        for img in gradient_noise_video(n, h, w, seed):
            for p in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)


def _make_job(job):
    path, codec, seed, n, gop = job
    make_video(path, codec, seed=seed, n=n, gop=gop)


def soft(fn, *a, **k):
    """``fn(*a, **k)``, or ``{"error": ...}`` (the exception and the last lines of its traceback)."""
    try:
        return fn(*a, **k)
    except Exception as e:  # noqa: BLE001 (recorded: one failure must not lose the rest)
        tb = traceback.format_exc().strip().splitlines()
        print(f"  ! {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}", flush=True)
        return {"error": f"{type(e).__name__}: {e}"[:800], "where": tb[-4:-1]}


def keyframe_positions(path):
    """Keyframe positions in presentation order (PyAV demux, no decode)."""
    import av
    with av.open(path) as c:
        s = c.streams.video[0]
        pk = sorted((int(p.pts), bool(p.is_keyframe)) for p in c.demux(s) if p.pts is not None)
    return [i for i, (_, k) in enumerate(pk) if k]


def decoded_per_clip(keys, idx):
    """Frames a seek decoder decodes for ``idx``: from the keyframe at or before the first index to the last."""
    first, last = int(min(idx)), int(max(idx))
    k = max([q for q in keys if q <= first] or [0])
    return last - k + 1


def stats_ms(ts):
    ts = np.asarray(ts) * 1e3
    return {"median_ms": float(np.median(ts)), "min_ms": float(np.min(ts)), "n": int(len(ts))}


def eval_indices(n):
    from co3d_jax.data.sampling import centered_window, clip_size, temporal_indices
    size = clip_size(5, 16, FPS)
    start, _ = centered_window(n, size)
    return temporal_indices(n, size, 16, start)


def train_indices(n, rng):
    from co3d_jax.data.sampling import clip_size, temporal_indices
    size = clip_size(6, 13, FPS)
    return temporal_indices(n, size, 13, rng.uniform(0.0, max(n - size, 0.0)))


# -- per clip ----------------------------------------------------------------------------------
def time_clips(read, paths, idx_of, reps):
    """Median time of ``read(path, idx)`` over ``reps`` passes over ``paths`` (one warm-up clip)."""
    read(paths[0], idx_of(0))
    ts = []
    for r in range(reps):
        for j, p in enumerate(paths):
            idx = idx_of(r * len(paths) + j + 1)
            t = time.perf_counter()
            read(p, idx)
            ts.append(time.perf_counter() - t)
    return stats_ms(ts)


def per_clip(paths, reps, keys):
    import jax

    from co3d_jax.data import nvdec
    from co3d_jax.data.video import VideoFrames, demux_index

    def nv(**opts):
        def read(p, idx):
            nvdec.NvdecFrames(p, **{"color": "rgb", **opts})[idx].block_until_ready()
        return read

    def new_decoder(p, idx):
        nvdec.release_thread_decoder()
        nvdec.NvdecFrames(p, color="rgb")[idx].block_until_ready()

    data = {p: open(p, "rb").read() for p in paths}

    def from_bytes(p, idx):
        refused, nvdec.BYTES_UNSUPPORTED_CODECS = nvdec.BYTES_UNSUPPORTED_CODECS, ()
        try:
            nvdec.NvdecFrames(data[p], color="rgb")[idx].block_until_ready()
        finally:
            nvdec.BYTES_UNSUPPORTED_CODECS = refused

    variants = {
        "cpu": lambda p, idx: VideoFrames(p)[idx],
        "cpu_put": lambda p, idx: jax.device_put(VideoFrames(p)[idx]).block_until_ready(),
        "container_check": lambda p, idx: demux_index(p).check_complete(),
        "nvdec": nv(),
        "nvdec_noscan": nv(scan=False),
        "nvdec_nv12": nv(color="nv12"),
        "nvdec_new_decoder": new_decoder,
        "nvdec_bytes": from_bytes,
    }
    out = {}
    for sampling in ("eval_16x5", "train_13x6"):
        res = out[sampling] = {}
        for name, read in variants.items():
            rng = np.random.default_rng(0)
            n = N
            idx_of = (lambda i: eval_indices(n)) if sampling == "eval_16x5" else (lambda i: train_indices(n, rng))
            res[name] = soft(time_clips, read, paths, idx_of, reps)
            nvdec.release_thread_decoder()
        rng = np.random.default_rng(0)
        res["nvdec_parts"] = soft(parts, paths, reps, keys,
                                  (lambda i: eval_indices(N)) if sampling == "eval_16x5" else (lambda i: train_indices(N, rng)))
    return out


def parts(paths, reps, keys, idx_of):
    """The raw API per clip: reconfigure, the batch decode, the DLPack import + stack."""
    import jax
    import jax.numpy as jnp

    import PyNvVideoCodec as nvc
    dec = nvc.SimpleDecoder(paths[0], gpu_id=0, use_device_memory=True, output_color_type=nvc.OutputColorType.RGB)
    dec.get_batch_frames_by_index([int(i) for i in np.unique(idx_of(0))])
    t_re, t_batch, t_imp, fps = [], [], [], []
    for r in range(reps):
        for j, p in enumerate(paths):
            idx = [int(i) for i in np.unique(idx_of(r * len(paths) + j + 1))]
            t0 = time.perf_counter()
            dec.reconfigure_decoder(p)
            t1 = time.perf_counter()
            frames = dec.get_batch_frames_by_index(idx)
            t2 = time.perf_counter()
            jnp.stack([jax.dlpack.from_dlpack(f) for f in frames]).block_until_ready()
            t3 = time.perf_counter()
            t_re.append(t1 - t0), t_batch.append(t2 - t1), t_imp.append(t3 - t2)
            fps.append(decoded_per_clip(keys[p], idx) / (t2 - t1))
    return {"reconfigure": stats_ms(t_re), "batch_decode": stats_ms(t_batch), "dlpack_stack": stats_ms(t_imp),
            "decoded_frames_per_s_in_batch_call": float(np.median(fps)),
            "decoded_frames_per_clip": float(np.median([decoded_per_clip(keys[p], idx_of(0)) for p in paths]))}


# -- threads -----------------------------------------------------------------------------------
def run_threads(read, paths, k, clips):
    """clips/s of ``k`` threads reading eval clips of ``paths`` round robin, ``clips`` in all."""
    idx = eval_indices(N)
    todo = [paths[i % len(paths)] for i in range(clips)]
    lock, pos, errors = threading.Lock(), [0], []

    def worker():
        try:
            read(paths[0], idx)                         # the thread's decoder, outside the timing
            barrier.wait()
            while True:
                with lock:
                    if pos[0] >= len(todo):
                        return
                    p = todo[pos[0]]
                    pos[0] += 1
                read(p, idx)
        except threading.BrokenBarrierError:
            return
        except Exception as e:  # noqa: BLE001 (re-raised in the caller)
            errors.append(e)
            barrier.abort()

    barrier = threading.Barrier(k + 1)
    threads = [threading.Thread(target=worker) for _ in range(k)]
    [t.start() for t in threads]
    try:
        barrier.wait()
    except threading.BrokenBarrierError:
        pass
    r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    with GpuUtil(period=0.2) as util:
        [t.join() for t in threads]
    wall = time.perf_counter() - t0
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    if errors:
        raise errors[0]
    cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
    return {"clips_per_s": clips / wall, "wall_s": wall, "cpu_cores_busy": cpu / wall, "nvidia_smi": util.summary()}


def threads_section(paths, ks, clips):
    from co3d_jax.data import nvdec
    from co3d_jax.data.video import VideoFrames

    def nv(**opts):
        def read(p, idx):
            nvdec.NvdecFrames(p, **{"color": "rgb", **opts})[idx].block_until_ready()
        return read

    variants = {"nvdec": (nv(), ks), "nvdec_nv12": (nv(color="nv12"), ks),
                "nvdec_cache1": (nv(cache_size=1), (1, 4)), "nvdec_cache8": (nv(cache_size=8), (1, 4)),
                "cpu": (lambda p, idx: VideoFrames(p)[idx], ks)}
    out = {}
    for name, (read, kk) in variants.items():
        out[name] = {str(k): soft(run_threads, read, paths, k, clips) for k in kk}
        print(f"  threads {name}: " + ", ".join(f"{k}: {v.get('clips_per_s', float('nan')):.0f}/s"
                                                for k, v in out[name].items()), flush=True)
    return out


# -- processes ---------------------------------------------------------------------------------
PROC_VARIANTS = ("nvdec_host", "nvdec_raw", "cpu")


def _proc_reader(variant: str):
    """``read(path, idx)`` in a decoding process (no JAX computation there): ``nvdec_host`` is what
    a ``--decoder-procs`` worker does per clip (``frame_source(p, "nvdec-host")``: the PyAV demux at
    open, the process's decoder reconfigured, NV12 copied to host memory as ``Nv12Frames``);
    ``nvdec_raw`` the raw API in device memory, frames dropped (the decode alone: reconfigure +
    ``get_batch_frames_by_index``); ``cpu`` the CPU seek decoder (``VideoFrames``)."""
    if variant == "nvdec_host":
        from co3d_jax.data.nvdec import frame_source
        return lambda p, idx: frame_source(p, "nvdec-host")[idx]
    if variant == "cpu":
        from co3d_jax.data.video import VideoFrames
        return lambda p, idx: VideoFrames(p)[idx]
    if variant != "nvdec_raw":
        raise ValueError(variant)
    import PyNvVideoCodec as nvc
    state = {}

    def raw(p, idx):
        dec = state.get("dec")
        if dec is None:
            dec = state["dec"] = nvc.SimpleDecoder(p, gpu_id=0, use_device_memory=True,
                                                   output_color_type=nvc.OutputColorType.NATIVE)
        else:
            dec.reconfigure_decoder(p)
        got = dec.get_batch_frames_by_index(sorted({int(i) for i in idx}))
        if not got:
            raise RuntimeError(f"{p}: no frames")
    return raw


def _proc_main(conn) -> None:
    """A decoding process of :func:`run_procs`: for each task ``(variant, jobs)`` it reads the first
    clip (its decoder's start, untimed), says ``ready``, waits for ``go``, reads every ``(path,
    idx)`` of ``jobs`` and sends its start and end (``time.monotonic``, one clock for all processes
    on Linux) and CPU seconds; ``None`` ends it."""
    import signal
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    os.environ["JAX_PLATFORMS"] = "cpu"          # JAX, where imported, never takes the GPU here
    readers = {}
    while True:
        msg = conn.recv()
        if msg is None:
            return
        variant, jobs = msg
        try:
            read = readers.get(variant) or readers.setdefault(variant, _proc_reader(variant))
            read(*jobs[0])
        except Exception as e:  # noqa: BLE001 (reported to the parent)
            conn.send({"error": f"{type(e).__name__}: {e}"[:500]})
            conn.recv()
            continue
        conn.send("ready")
        conn.recv()                                   # go
        r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.monotonic()
        try:
            for p, idx in jobs:
                read(p, idx)
        except Exception as e:  # noqa: BLE001
            conn.send({"error": f"{type(e).__name__}: {e}"[:500]})
            continue
        t1, r1 = time.monotonic(), resource.getrusage(resource.RUSAGE_SELF)
        conn.send({"start": t0, "end": t1, "clips": len(jobs),
                   "cpu_s": (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)})


class ProcPool:
    """``size`` spawned decoding processes (:func:`_proc_main`), kept across runs (each pays its
    CUDA/NVDEC start once)."""

    def __init__(self, size: int):
        import multiprocessing as mp
        ctx = mp.get_context("spawn")
        self.conns, self.procs = [], []
        for _ in range(size):
            a, b = ctx.Pipe()
            p = ctx.Process(target=_proc_main, args=(b,), daemon=True)
            p.start()
            b.close()                     # this process keeps one end only: a dead child is an EOFError
            self.conns.append(a)
            self.procs.append(p)

    def run(self, variant: str, jobs: list, n: int) -> dict:
        """``jobs`` (``(path, idx)``) dealt round robin to the first ``n`` processes, all started
        together: clips/s over the wall time from ``go`` to the last process's end, the CPU cores
        the processes kept busy, NVDEC utilisation meanwhile."""
        conns = self.conns[:n]
        for k, c in enumerate(conns):
            c.send((variant, jobs[k::n]))
        said = [c.recv() for c in conns]
        errors = [x["error"] for x in said if isinstance(x, dict)]
        if errors:
            for c, x in zip(conns, said):
                c.send("skip") if isinstance(x, dict) else None
            for c, x in zip(conns, said):     # the ready ones: let them run their share, then drop it
                if not isinstance(x, dict):
                    c.send("go")
                    c.recv()
            raise RuntimeError(errors[0])
        with GpuUtil(period=0.2) as util:
            t0 = time.monotonic()
            for c in conns:
                c.send("go")
            got = [c.recv() for c in conns]
        errors = [x["error"] for x in got if "error" in x]
        if errors:
            raise RuntimeError(errors[0])
        wall = max(x["end"] for x in got) - t0
        cpu = sum(x["cpu_s"] for x in got)
        return {"clips_per_s": len(jobs) / wall, "clips": len(jobs), "wall_s": wall, "cpu_cores_busy": cpu / wall,
                "slowest_process_s": max(x["end"] - x["start"] for x in got),
                "nvidia_smi": util.summary()}

    def close(self) -> None:
        for c in self.conns:
            try:
                c.send(None)
            except Exception:  # noqa: BLE001 (already gone)
                pass
        for p in self.procs:
            p.join(timeout=10)
            if p.is_alive():
                p.terminate()


def procs_section(pool: ProcPool, paths, keys, ns, per_proc, variants, samplings) -> dict:
    """Clips/s of ``n`` decoding processes for each ``n`` in ``ns`` (``per_proc`` clips per process),
    per variant (:data:`PROC_VARIANTS`) and sampling (``eval_16x5``, ``train_13x6``), with the frames
    a seek decoder decodes per clip (from the keyframe before the first index: the GOP's cost)."""
    out = {}
    for sampling in samplings:
        for variant in variants:
            row = out.setdefault(sampling, {}).setdefault(variant, {})
            for n in ns:
                rng = np.random.default_rng(n)
                jobs = []
                for i in range(per_proc * n):     # process i % n's j-th clip is of video (i % n + j): never
                    idx = eval_indices(N) if sampling == "eval_16x5" else train_indices(N, rng)   # the same twice
                    jobs.append((paths[(i % n + i // n) % len(paths)], [int(x) for x in idx]))
                r = row[str(n)] = soft(pool.run, variant, jobs, n)
                if "error" not in r:
                    r["decoded_frames_per_clip"] = float(np.mean([decoded_per_clip(keys[p], idx) for p, idx in jobs]))
                    u = r.get("nvidia_smi") or {}
                    print(f"  procs {sampling} {variant} x{n}: {r['clips_per_s']:.0f} clips/s, cores "
                          f"{r['cpu_cores_busy']:.1f}, NVDEC {u.get('decoder_util_mean', '-')}% "
                          f"(max {u.get('decoder_util_max', '-')}), {r['decoded_frames_per_clip']:.0f} frames/clip",
                          flush=True)
    return out


# -- exactness ---------------------------------------------------------------------------------
PICT_TYPES = {0: "?", 1: "I", 2: "P", 3: "B", 4: "S", 5: "i", 6: "p", 7: "b"}   # AVPictureType (SI, SP, BI lower case)


def host_array(frame):
    """A decoded frame as a host numpy array, whatever its strides (numpy's DLPack import takes a
    row pitch that JAX's refuses), else through JAX."""
    try:
        return np.from_dlpack(frame)
    except Exception:  # noqa: BLE001 (device memory: numpy cannot read it)
        import jax
        return np.asarray(jax.dlpack.from_dlpack(frame))


def pyav_frames(path):
    """PyAV's frames in presentation order: rgb (as ``decode_all``), the yuv420p planes, picture type, key flag."""
    import av
    got = []
    with av.open(path) as c:
        for f in c.decode(video=0):
            pt = f.pict_type             # an int (AVPictureType) in PyAV 18, an enum in others
            pt = PICT_TYPES.get(pt, str(pt)) if isinstance(pt, int) else getattr(pt, "name", str(pt))
            got.append((f.pts, f.to_ndarray(format="rgb24"), f.to_ndarray(format="yuv420p"), pt, bool(f.key_frame)))
    got.sort(key=lambda g: g[0])
    return (np.stack([g[1] for g in got]), np.stack([g[2] for g in got]), [g[3] for g in got], [g[4] for g in got])


def absdiff(a, b):
    return np.abs(a.astype(np.int16) - b.astype(np.int16))


def summary(d):
    d = np.asarray(d)
    hist = np.bincount(np.minimum(d.ravel(), 4), minlength=5) / d.size
    return {"max_abs": int(d.max()), "mean_abs": float(d.mean()),
            "fraction_0_1_2_3_4plus": [round(float(x), 5) for x in hist]}


def exactness_video(path, gop_hint):
    import PyNvVideoCodec as nvc
    from co3d_jax.data.nvdec import NvdecFrames, nv12_to_rgb
    from co3d_jax.data.video import decode_all

    rgb_ref, yuv_ref, ptypes, keys = pyav_frames(path)
    n = len(rgb_ref)
    out = {"frames_pyav": n, "pyav_rgb_equals_decode_all": bool(np.array_equal(rgb_ref, decode_all(path)[0]))}
    v = NvdecFrames(path, color="rgb")
    out["frames_nvdec"] = len(v)
    m = min(n, len(v))
    rgb = np.asarray(v[np.arange(m)])
    rgb_ref = rgb_ref[:m]
    d = absdiff(rgb, rgb_ref)
    out["rgb_vs_pyav"] = summary(d)

    # the decoded planes, before any colour conversion
    planes = None
    try:
        # in host memory (use_device_memory=False): the planes whatever the surface's row pitch
        dec = nvc.SimpleDecoder(path, gpu_id=0, use_device_memory=False, output_color_type=nvc.OutputColorType.NATIVE)
        nv12 = np.stack([host_array(f) for f in dec.get_batch_frames_by_index(list(range(m)))])
        del dec
        out["nv12_shape"] = list(nv12.shape)
        y, uv = nv12[:, :H], nv12[:, H:].reshape(m, H // 2, W // 2, 2)
        y_ref = yuv_ref[:m, :H]
        u_ref = yuv_ref[:m, H:H + H // 4].reshape(m, H // 2, W // 2)
        v_ref = yuv_ref[:m, H + H // 4:].reshape(m, H // 2, W // 2)
        dy = absdiff(y, y_ref)
        out["y_plane_vs_pyav"] = summary(dy)
        out["u_plane_vs_pyav"] = summary(absdiff(uv[..., 0], u_ref))
        out["v_plane_vs_pyav"] = summary(absdiff(uv[..., 1], v_ref))
        ours = np.asarray(nv12_to_rgb(nv12, H))
        out["nvdec_rgb_vs_nv12_to_rgb_of_nvdec_nv12"] = summary(absdiff(rgb, ours))   # NVDEC's colour conversion
        out["nv12_to_rgb_of_nvdec_nv12_vs_pyav"] = summary(absdiff(ours, rgb_ref))    # the color="nv12" path
        i420_ref = np.concatenate([y_ref, np.stack([u_ref, v_ref], -1).reshape(m, H // 2, W)], axis=1)
        out["nv12_to_rgb_of_pyav_yuv_vs_pyav"] = summary(absdiff(np.asarray(nv12_to_rgb(i420_ref, H)), rgb_ref))
        planes = dy.reshape(m, -1).mean(1), dy.reshape(m, -1).max(1)
    except Exception as e:  # noqa: BLE001
        out["planes_error"] = f"{type(e).__name__}: {e}"[:800]

    # per frame: GOP position, picture type, difference to PyAV's frame and to its neighbours
    gop_pos, last_key = [], 0
    for i in range(m):
        if keys[i]:
            last_key = i
        gop_pos.append(i - last_key)
    per = d.reshape(m, -1)
    mean_i = per.mean(1)
    prev = np.array([absdiff(rgb[i], rgb_ref[i - 1]).mean() if i else np.inf for i in range(m)])
    nxt = np.array([absdiff(rgb[i], rgb_ref[i + 1]).mean() if i + 1 < m else np.inf for i in range(m)])
    out["per_frame"] = {
        "pict_type": "".join(p[:1] for p in ptypes[:m]), "key": [i for i in range(m) if keys[i]],
        "gop_pos": gop_pos, "rgb_mean_abs": [round(float(x), 3) for x in mean_i],
        "rgb_max_abs": [int(x) for x in per.max(1)],
        "rgb_mean_abs_vs_prev": [round(float(x), 3) for x in np.where(np.isinf(prev), -1, prev)],
        "rgb_mean_abs_vs_next": [round(float(x), 3) for x in np.where(np.isinf(nxt), -1, nxt)],
    }
    if planes is not None:
        out["per_frame"]["y_mean_abs"] = [round(float(x), 3) for x in planes[0]]
        out["per_frame"]["y_max_abs"] = [int(x) for x in planes[1]]
    closer = (np.minimum(prev, nxt) < mean_i)
    by_pos = {}
    for lo, hi in ((0, 0), (1, 3), (4, 7), (8, 11), (12, 23), (24, 47), (48, 10 ** 6)):
        sel = [i for i in range(m) if lo <= gop_pos[i] <= hi]
        if sel:
            key = f"{lo}" if lo == hi else f"{lo}-{hi if hi < 10 ** 6 else ''}"
            by_pos[key] = {"frames": len(sel), "rgb_mean_abs": round(float(mean_i[sel].mean()), 3),
                           "rgb_max_abs": int(per[sel].max())}
            if planes is not None:
                by_pos[key]["y_mean_abs"] = round(float(planes[0][sel].mean()), 4)
                by_pos[key]["y_max_abs"] = int(planes[1][sel].max())
    by_type = {t: round(float(mean_i[[i for i in range(m) if ptypes[i][:1] == t]].mean()), 3)
               for t in sorted({p[:1] for p in ptypes[:m]})}
    out["diagnosis"] = {"by_gop_position": by_pos, "rgb_mean_abs_by_picture_type": by_type,
                        "frames_where_a_neighbour_is_closer": int(closer.sum()),
                        "corr_gop_position_rgb_mean_abs": float(np.corrcoef(gop_pos, mean_i)[0, 1])
                        if np.std(mean_i) > 0 and np.std(gop_pos) > 0 else None}
    out["diagnosis"]["verdict"] = verdict(out, keys[:m], gop_pos, mean_i, planes, closer)
    return out


def verdict(out, keys, gop_pos, mean_i, planes, closer):
    m = len(mean_i)
    if closer.sum() > m // 2:
        return "off by one: most NVDEC frames are closer to PyAV's neighbouring frame than to the same index"
    if planes is None:
        return "undetermined (no NV12 planes to compare)"
    y_mean = planes[0]
    if planes[1].max() == 0 and out.get("u_plane_vs_pyav", {}).get("max_abs") == 0 \
            and out.get("v_plane_vs_pyav", {}).get("max_abs") == 0:
        return ("decoded planes identical to PyAV's: the whole RGB difference is NVDEC's YUV->RGB conversion "
                f"(max {out['rgb_vs_pyav']['max_abs']}); color='nv12' gives "
                f"max {out.get('nv12_to_rgb_of_nvdec_nv12_vs_pyav', {}).get('max_abs')}")
    at_key = float(y_mean[[i for i in range(m) if keys[i]]].mean())
    half = max(gop_pos) // 2
    late = float(y_mean[[i for i in range(m) if gop_pos[i] >= half]].mean()) if half else at_key
    conv = out.get("nvdec_rgb_vs_nv12_to_rgb_of_nvdec_nv12", {}).get("max_abs")
    if late > 2 * at_key + 0.1:
        return (f"decoder drift: the decoded Y planes differ little at keyframes (mean {at_key:.3f}) and more along "
                f"the predicted frames (mean {late:.3f} in the second half of a GOP): an IDCT mismatch between NVDEC "
                "and FFmpeg's decoder (MPEG-4 Part 2 lets decoders' IDCTs differ) accumulating until the next "
                f"keyframe; NVDEC's YUV->RGB differs from PyAV's by at most {conv}")
    return (f"decoded planes differ from PyAV's about as much at keyframes (Y mean {at_key:.3f}) as late in GOPs "
            f"({late:.3f}): a decoder difference that does not accumulate; NVDEC's YUV->RGB differs from PyAV's "
            f"by at most {conv}")


def verdicts(path):
    """What each decoder says about ``path``: ``ok (N frames)`` or the error."""
    from co3d_jax.data import nvdec
    from co3d_jax.data.video import VideoFrames
    out = {}
    for name, open_ in (("cpu", VideoFrames), ("nvdec", nvdec.NvdecFrames)):
        try:
            v = open_(path)
            v[[0, len(v) - 1]]
            out[name] = f"ok ({len(v)} frames)"
        except Exception as e:  # noqa: BLE001 (the verdict is the record)
            out[name] = f"{type(e).__name__}: {str(e).replace(path, '<file>')}"[:300]
    return out


def bad_files(d):
    """Both decoders' verdicts on a cut file (the MP4 index first, so it opens), junk and an empty file."""
    from co3d_jax.data.video import encode_video
    good = os.path.join(d, "faststart.mp4")
    rng = np.random.default_rng(0)
    encode_video(good, rng.integers(0, 256, (90, 64, 96, 3), dtype=np.uint8), 30, faststart=True)
    data = open(good, "rb").read()
    files = {"cut_at_60_percent": data[:int(len(data) * 0.6)], "junk": b"not a video" * 100, "empty": b""}
    out = {"intact": verdicts(good)}
    for name, content in files.items():
        p = os.path.join(d, f"{name}.mp4")
        open(p, "wb").write(content)
        out[name] = verdicts(p)
    return out


def checks(codec_paths, short_path):
    from co3d_jax.data import nvdec
    from co3d_jax.data.video import decode_all
    out = {}
    nvdec.release_thread_decoder()
    v = nvdec.NvdecFrames(codec_paths[0])
    s = nvdec.NvdecFrames(short_path)                     # reconfigured onto a 150-frame video
    ref = decode_all(short_path)[0]
    out["long_then_short"] = {"header_frames": s.header_frames, "len": len(s), "pyav_frames": len(ref),
                              "max_abs_last_frames": int(absdiff(np.asarray(s[[len(ref) - 2, len(ref) - 1]]),
                                                                 ref[-2:]).max())}
    long_again = nvdec.NvdecFrames(codec_paths[1])           # reconfigured from the short one back to a long one
    out["short_then_long"] = {"header_frames": long_again.header_frames, "len": len(long_again)}
    out["header_only_len"] = len(nvdec.NvdecFrames(short_path, scan=False))   # (another decoder)
    out["first_len"] = len(v)
    out["codec"] = v.codec
    return out


# -- main --------------------------------------------------------------------------------------
def environment(argv):
    import av
    import jax
    env = {"python": platform.python_version(), "jax": jax.__version__, "numpy": np.__version__,
           "pyav": av.__version__, "ffmpeg_libavcodec": list(av.library_versions.get("libavcodec", ()))}
    try:
        import jaxlib
        env["jaxlib"] = jaxlib.__version__
    except Exception:  # noqa: BLE001
        pass
    try:
        import PyNvVideoCodec as nvc
        env["pynvvideocodec"] = getattr(nvc, "__version__", "?")
    except Exception as e:  # noqa: BLE001
        env["pynvvideocodec"] = f"not loaded: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    try:
        smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20).stdout.strip()
    except Exception:  # noqa: BLE001
        smi = ""
    d = jax.devices()[0]
    return {"device": f"{smi or d.device_kind} (JAX: {d!r}, {jax.default_backend()}); {os.cpu_count()} CPU cores visible",
            "versions": env,
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "command": "python -m benchmarks.nvdec_speed " + " ".join(argv),
            "commit": subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()}


def print_table(out):
    print(f"\nfirst clip in the process (session start): {out.get('cold_start')}")
    print("ms per clip (median, one thread)        eval 16x5   train 13x6")
    for codec, res in out["results"].items():
        pc = res.get("per_clip", {})
        names = list(pc.get("eval_16x5", {}))
        for name in names:
            if name == "nvdec_parts":
                continue
            cells = [pc.get(s, {}).get(name, {}) for s in ("eval_16x5", "train_13x6")]
            txt = ["   error" if "error" in c else f"{c.get('median_ms', float('nan')):8.1f}" for c in cells]
            print(f"  {codec:12s} {name:20s} {txt[0]:>10s} {txt[1]:>12s}")
        pp = pc.get("eval_16x5", {}).get("nvdec_parts", {})
        if "batch_decode" in pp:
            print(f"  {codec:12s} raw API, eval clip: reconfigure {pp['reconfigure']['median_ms']:.1f} ms, "
                  f"get_batch_frames_by_index {pp['batch_decode']['median_ms']:.1f} ms "
                  f"({pp['decoded_frames_per_clip']:.0f} frames decoded: "
                  f"{pp['decoded_frames_per_s_in_batch_call']:.0f} frames/s), "
                  f"DLPack + stack {pp['dlpack_stack']['median_ms']:.1f} ms")
    print("\nclips/s (eval 16x5) by threads")
    for codec, res in out["results"].items():
        for name, by_k in res.get("threads", {}).items():
            if isinstance(by_k, dict) and "error" not in by_k:
                cells = ", ".join(f"{k}: " + ("error" if "error" in v else f"{v['clips_per_s']:.0f}") for k, v in by_k.items())
                print(f"  {codec:12s} {name:14s} {cells}")
    print("\nclips/s by decoding processes (NVDEC utilisation mean %, cores busy; frames decoded per clip)")
    for codec, res in out["results"].items():
        for sampling, by_v in (res.get("procs") or {}).items():
            if not isinstance(by_v, dict):
                continue
            for variant, by_n in by_v.items():
                cells = ", ".join(f"{n}: " + ("error" if "error" in v else
                                              f"{v['clips_per_s']:.0f} ({(v.get('nvidia_smi') or {}).get('decoder_util_mean', '-')}%"
                                              f", {v['cpu_cores_busy']:.1f})") for n, v in by_n.items())
                fpc = next((v["decoded_frames_per_clip"] for v in by_n.values() if "decoded_frames_per_clip" in v), None)
                print(f"  {codec:12s} {sampling:10s} {variant:10s} {cells}  [{fpc} frames/clip]")
    print("\nchecks (frame counts after reconfigure: header / len)")
    for codec, res in out["results"].items():
        c = res.get("checks", {})
        if "error" in c:
            print(f"  {codec:12s} error {c['error'][:100]}")
        elif c:
            a, b = c["long_then_short"], c["short_then_long"]
            print(f"  {codec:12s} long->short {a['header_frames']}/{a['len']} (PyAV {a['pyav_frames']}, last frames max "
                  f"abs {a['max_abs_last_frames']}); short->long {b['header_frames']}/{b['len']}")
    for name, v in (out.get("bad_files") or {}).items():
        if isinstance(v, dict) and "cpu" in v:
            print(f"  {name:18s} cpu: {v['cpu'][:70]}\n  {'':18s} nvdec: {v['nvdec'][:70]}")
    print("\nexactness vs PyAV (max / mean abs, uint8 RGB)")
    for codec, res in out["results"].items():
        for i, ex in enumerate(res.get("exactness", [])):
            if "error" in ex:
                print(f"  {codec:12s} video {i}: error {ex['error'][:100]}")
                continue
            r, y = ex["rgb_vs_pyav"], ex.get("y_plane_vs_pyav", {})
            nv = ex.get("nv12_to_rgb_of_nvdec_nv12_vs_pyav", {})
            print(f"  {codec:12s} video {i}: rgb {r['max_abs']} / {r['mean_abs']:.3f}; Y plane "
                  f"{y.get('max_abs')} / {y.get('mean_abs', float('nan')):.3f}; nv12->rgb(JAX) "
                  f"{nv.get('max_abs')} / {nv.get('mean_abs', float('nan')):.3f}")
            print(f"  {'':12s}   {ex['diagnosis']['verdict']}")


def write(path, out):
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path + ".tmp", "w") as f:
        json.dump(out, f, indent=1)
    os.replace(path + ".tmp", path)


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="results/nvdec_speed_h200.json")
    ap.add_argument("--videos", type=int, default=6, help="videos per codec")
    ap.add_argument("--reps", type=int, default=2, help="passes over the videos per per-clip measurement")
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2, 4, 8])
    ap.add_argument("--clips", type=int, default=64, help="clips per threads measurement")
    ap.add_argument("--codecs", nargs="+", default=list(CODECS), choices=list(CODECS))
    ap.add_argument("--sections", nargs="+", default=["per_clip", "threads", "exactness", "checks"],
                    choices=["per_clip", "threads", "exactness", "checks", "procs"])
    ap.add_argument("--procs", type=int, nargs="+", default=[1, 2, 4, 8],
                    help="section procs: numbers of decoding processes (spawned once, the largest number)")
    ap.add_argument("--proc-clips", type=int, default=24, help="section procs: clips per process per run")
    ap.add_argument("--proc-variants", nargs="+", default=["nvdec_host"], choices=PROC_VARIANTS)
    ap.add_argument("--proc-samplings", nargs="+", default=["eval_16x5", "train_13x6"],
                    choices=["eval_16x5", "train_13x6"])
    args = ap.parse_args(argv)
    t_start = time.perf_counter()

    out = environment(argv)
    out.update({"video": f"generated, {N} frames ({N // FPS} s) {W}x{H} {FPS} fps (make_video)",
                "unit": "ms per clip (median) / clips per s; pixel differences in uint8 RGB levels",
                "results": {}})
    from co3d_jax.data import nvdec
    out["nvdec_available"] = nvdec.available()
    out["nvdec_unavailable_reason"] = nvdec.unavailable_reason()
    print(f"{out['device']}\nNVDEC available: {out['nvdec_available']} {out['nvdec_unavailable_reason'] or ''}", flush=True)

    pool = ProcPool(max(args.procs)) if "procs" in args.sections else None
    with tempfile.TemporaryDirectory() as d:
        first = first_checks = True
        for codec in args.codecs:
            enc, gop = CODECS[codec]
            t = time.perf_counter()
            paths = [os.path.join(d, f"{codec}_{i}.mp4") for i in range(args.videos)]
            short = os.path.join(d, f"{codec}_short.mp4")
            jobs = [(p, enc, i, N, gop) for i, p in enumerate(paths)]
            jobs += [(short, enc, 99, 150, gop)] if "checks" in args.sections else []
            import multiprocessing as mp
            from concurrent.futures import ProcessPoolExecutor
            with ProcessPoolExecutor(min(len(jobs), os.cpu_count() or 1), mp_context=mp.get_context("spawn")) as ex:
                list(ex.map(_make_job, jobs))
            res = out["results"][codec] = {"encoder": enc, "gop": gop or "encoder default",
                                           "make_videos_s": round(time.perf_counter() - t, 2)}
            keys = {p: keyframe_positions(p) for p in paths}
            res["keyframes_video0"] = keys[paths[0]]
            print(f"{codec}: {len(paths)} videos in {res['make_videos_s']} s, keyframes {res['keyframes_video0']}", flush=True)
            if first:     # the process's first NVDEC decode: CUDA/NVDEC session start
                def cold(p=paths[0]):
                    t0 = time.perf_counter()
                    nvdec.NvdecFrames(p)[eval_indices(N)].block_until_ready()
                    return {"first_clip_s": time.perf_counter() - t0}
                out["cold_start"] = soft(cold)
                first = False
            if "checks" in args.sections:
                res["checks"] = soft(checks, paths, short)
                if first_checks:
                    out["bad_files"] = soft(bad_files, d)
                    first_checks = False
            if "per_clip" in args.sections:
                res["per_clip"] = soft(per_clip, paths, args.reps, keys)
            if "threads" in args.sections:
                res["threads"] = soft(threads_section, paths, args.threads, args.clips)
            if "procs" in args.sections:
                res["procs"] = soft(procs_section, pool, paths, keys, args.procs, args.proc_clips,
                                    args.proc_variants, args.proc_samplings)
            if "exactness" in args.sections:
                res["exactness"] = [soft(exactness_video, p, gop) for p in paths[:2]]
            print(f"{codec}: done at {time.perf_counter() - t_start:.0f} s", flush=True)
            nvdec.release_thread_decoder()
            write(args.out, out)                     # after each codec: a run cut short keeps what it measured
    if pool is not None:
        pool.close()
    out["total_s"] = round(time.perf_counter() - t_start, 1)
    out["nvdec_reconfigure_failures"] = nvdec.reconfigure_failures   # reconfigures replaced by a new decoder
    write(args.out, out)
    print_table(out)
    print(f"\nwrote {args.out} ({out['total_s']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
