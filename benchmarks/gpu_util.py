"""``nvidia-smi``'s decoder (NVDEC) and GPU utilisation, sampled in a background thread; shared by
the benchmarks that say what bounds a rate (``nvdec_speed``, ``input_rates``)."""

from __future__ import annotations

import subprocess
import threading
import time

import numpy as np


class GpuUtil:
    """``with GpuUtil() as u: ...; u.summary()``: the decoder and GPU utilisation (percent) of
    GPU 0 every ``period`` seconds. No ``nvidia-smi`` (a CPU machine): no samples, ``summary()``
    is None."""

    def __init__(self, period: float = 0.5):
        self.samples: list[tuple[float, float, float]] = []   # (time, decoder %, GPU %)
        self.period, self.stop = period, threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self.stop.is_set():
            try:
                r = subprocess.run(["nvidia-smi", "--query-gpu=utilization.decoder,utilization.gpu",
                                    "--format=csv,noheader,nounits", "-i", "0"],
                                   capture_output=True, text=True, timeout=5)
                dec, gpu = (float(x) for x in r.stdout.strip().split(",")[:2])
                self.samples.append((time.time(), dec, gpu))
            except Exception:  # noqa: BLE001 (no nvidia-smi: no samples)
                return
            self.stop.wait(self.period)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join(timeout=10)

    def summary(self, since: float | None = None) -> dict | None:
        """Mean and max decoder utilisation, mean GPU utilisation over the samples from ``since``
        (a ``time.time()``) on."""
        s = [x for x in self.samples if since is None or x[0] >= since]
        if not s:
            return None
        a = np.asarray(s)
        return {"decoder_util_mean": round(float(a[:, 1].mean()), 1), "decoder_util_max": float(a[:, 1].max()),
                "gpu_util_mean": round(float(a[:, 2].mean()), 1), "samples": len(a)}
