"""``nvidia-smi``'s decoder (NVDEC) and GPU utilisation, sampled in a background thread: what
bounds a measured rate (the GPU busy or idle, the decoder engines). Used by ``experiments/scaling.py``
and the benchmarks (``benchmarks.nvdec_speed``, ``benchmarks.input_rates``). Imports no JAX, so a
parent process that drives GPU children holds no accelerator."""

from __future__ import annotations

import subprocess
import threading
import time
from collections.abc import Sequence

import numpy as np


class GpuUtil:
    """``with GpuUtil() as u: ...; u.summary()``: the decoder and GPU utilisation (percent) of the
    GPUs ``gpus`` (``nvidia-smi`` indices; default GPU 0) every ``period`` seconds. No
    ``nvidia-smi`` (a CPU machine): no samples, ``summary()`` is None. ``samples`` holds
    ``(time, gpu, decoder %, GPU %)`` rows."""

    def __init__(self, period: float = 0.5, gpus: Sequence[int] = (0,)):
        self.samples: list[tuple[float, int, float, float]] = []
        self.gpus = tuple(int(g) for g in gpus)
        self.period, self.stop = period, threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True, name="gpu-util")

    def _run(self):
        while not self.stop.is_set():
            try:
                r = subprocess.run(["nvidia-smi", "--query-gpu=index,utilization.decoder,utilization.gpu",
                                    "--format=csv,noheader,nounits"], capture_output=True, text=True, timeout=5)
                now = time.time()
                rows = [[float(x) for x in line.split(",")[:3]] for line in r.stdout.strip().splitlines()]
                rows = [(int(g), dec, gpu) for g, dec, gpu in rows if int(g) in self.gpus]
                if not rows:
                    return
                self.samples.extend((now, g, dec, gpu) for g, dec, gpu in rows)
            except Exception:  # noqa: BLE001 (no nvidia-smi: no samples)
                return
            self.stop.wait(self.period)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join(timeout=10)

    def summary(self, since: float | None = None, until: float | None = None,
                gpus: Sequence[int] | None = None) -> dict | None:
        """Over the samples of ``gpus`` (default: all sampled) taken in ``[since, until]``
        (``time.time()`` values; None: open): mean and max decoder utilisation and mean GPU
        utilisation of all of them together, and the mean GPU utilisation per GPU
        (``gpu_util_per_gpu``, by index). None without samples."""
        keep = set(self.gpus if gpus is None else (int(g) for g in gpus))
        s = [x for x in self.samples if x[1] in keep and (since is None or x[0] >= since)
             and (until is None or x[0] <= until)]
        if not s:
            return None
        a = np.asarray(s)
        per = {int(g): round(float(a[a[:, 1] == g, 3].mean()), 1) for g in sorted(set(a[:, 1].astype(int)))}
        return {"decoder_util_mean": round(float(a[:, 2].mean()), 1), "decoder_util_max": float(a[:, 2].max()),
                "gpu_util_mean": round(float(a[:, 3].mean()), 1), "gpu_util_per_gpu": per,
                "samples": len(a) // max(len(per), 1)}


__all__ = ["GpuUtil"]
