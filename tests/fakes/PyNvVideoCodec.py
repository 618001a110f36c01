"""A file-based fake ``PyNvVideoCodec`` for worker processes (``--decoder-procs``): a spawned
process imports it from ``sys.path`` (tests put this folder first), where the in-memory fake of
``tests/test_nvdec.py`` cannot reach. It serves each file's real frames: its yuv420p planes as
decoded by PyAV, as NV12 (which ``nv12_to_rgb`` converts to PyAV's RGB bit for bit on x86-64), in
host memory (numpy arrays, whose ``__dlpack__`` numpy and JAX both import). A file PyAV cannot
decode whole fails at open, as the real decoder's open fails on junk. ``FAKE_NVC_LOG`` (an environment
variable naming a file): each process appends ``pid use_device_memory path`` per decoder it points
at a file, so a test can tell the frames came through the fake in other processes."""

from __future__ import annotations

import os
import types

import numpy as np

__version__ = "fake"
OutputColorType = types.SimpleNamespace(NATIVE="native", RGB="rgb", RGBP="rgbp")


def nv12_of(path):
    """A file's frames as NV12 ``(T, 3H/2, W)`` uint8 (PyAV's yuv420p planes), its fps and codec name."""
    import av
    with av.open(path) as c:
        s = c.streams.video[0]
        fps, codec = float(s.average_rate), s.codec_context.name
        out = []
        for f in c.decode(video=0):
            i420 = f.to_ndarray(format="yuv420p")
            h, w = f.height, f.width
            y, u, v = i420[:h], i420[h:h + h // 4].reshape(h // 2, w // 2), i420[h + h // 4:].reshape(h // 2, w // 2)
            out.append(np.concatenate([y, np.stack([u, v], -1).reshape(h // 2, w)]))
    return np.stack(out), fps, codec


class _Meta:
    def __init__(self, **kw):
        self.__dict__.update(kw)


class SimpleDecoder:
    def __init__(self, src, gpu_id=0, cuda_context=0, cuda_stream=0, use_device_memory=True, max_width=0,
                 max_height=0, need_scanned_stream_metadata=0, decoder_cache_size=4,
                 output_color_type="native", bWaitForSessionWarmUp=False, enableDecodeStats=False):
        if output_color_type != "native":
            raise RuntimeError("this fake serves NV12 only")
        self.device = use_device_memory
        self._load(src)

    def _load(self, src):
        if not isinstance(src, str):
            raise RuntimeError("this fake reads paths only")
        try:
            self.nv12, self.fps, self.codec = nv12_of(src)
        except Exception:  # noqa: BLE001 (as the real one: cannot open)
            raise RuntimeError("Failed to open input stream") from None
        if os.environ.get("FAKE_NVC_LOG"):
            with open(os.environ["FAKE_NVC_LOG"], "a") as f:
                f.write(f"{os.getpid()} {self.device} {src}\n")

    def reconfigure_decoder(self, new_source):
        self._load(new_source)

    def get_stream_metadata(self):
        t, h15, w = self.nv12.shape
        return _Meta(num_frames=t, average_fps=self.fps, width=w, height=h15 * 2 // 3, codec_name=self.codec)

    def get_scanned_stream_metadata(self):
        return _Meta(num_frames=len(self.nv12))

    def get_batch_frames_by_index(self, indices):
        seen, out = set(), []
        for i in indices:
            if 0 <= i < len(self.nv12) and i not in seen:
                seen.add(i)
                out.append(np.array(self.nv12[i]))
        return out
