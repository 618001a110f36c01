"""Low-latency live inference: a compiled step with the weights closed over and the state packed.

A CoX3D state is ~100 arrays; passing them (and ~300 weight arrays) through a jitted call costs
more host time than the GPU spends on a batch-1 step. :class:`LiveStep` packs the small state
arrays into one float buffer and one int32 buffer (split and re-joined inside the compiled
function), passes the large ones (``split_bytes`` and up) as their own arrays, donates all of them
between calls, and bakes the weights into the executable. Packing a large array costs device
copies (out of the buffer before the step, back in after it, and the buffer into the donated
output); a separate array costs host time per call instead (about 2.5 µs per array on an H200), so
large arrays go separately.

    live = LiveStep(model, params, batch_size=2)
    state = live.init()                                  # (float buffer, int buffer, *large arrays)
    state, out = live(state, frame)                      # frame (B, H, W, 3); out.scores, out.valid
    state = live.reset(state, mask)                      # restart streams where mask (B,) is True
    out = live.peek(state, frame)                        # output without advancing the state
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from .stream import reset_state


# float state arrays of at least this many bytes (whole batch) are not packed by default. On one H200,
# CoX3D-S_64 fp32 (results/README.md, "Where a batch-1 `LiveStep` call goes, and `LiveStep`'s packing"): packing everything cost
# 3.56 ms per call at batch 64 against 2.60 ms with every float array of 64 KB and up split; at batch 1
# the blocking call was no faster split that way (more arrays cost host time), so the bar sits where a
# batch-1 CoX3D-S state stays packed but for its stem.
SPLIT_BYTES = 1 << 20


class LiveStep:
    """A jitted, packed-state ``step`` for ``batch_size`` streams of ``model`` with ``params``.

    ``split_bytes``: float state arrays of at least this many bytes travel as their own donated
    arrays, the others are packed (``None``: :data:`SPLIT_BYTES`; ``0``: no packing of floats;
    ``float("inf")``: everything packed, the two-buffer form)."""

    def __init__(self, model, params, batch_size: int = 1, dtype=jnp.float32, split_bytes: float | None = None):
        self.model, self.batch_size, self.dtype = model, batch_size, jnp.dtype(dtype)
        self.split_bytes = SPLIT_BYTES if split_bytes is None else split_bytes
        if not self.split_bytes >= 0:
            raise ValueError(f"LiveStep: split_bytes must be >= 0, got {split_bytes!r}")
        template = model.init_state(batch_size, dtype)
        leaves, self.treedef = jax.tree.flatten(template)
        self._specs = [(a.shape, a.dtype) for a in leaves]
        # 0: packed float, 1: packed int, 2: its own array
        is_float = [jnp.issubdtype(a.dtype, jnp.floating) for a in leaves]
        self._where = [2 if f and a.size * self.dtype.itemsize >= self.split_bytes else int(not f)
                       for a, f in zip(leaves, is_float)]
        self._fresh = self.pack(template)
        self._frame_shape = (batch_size, *model.frame_shape)
        self._state_shapes = tuple(a.shape for a in self._fresh)
        # the all-valid mask lives on the device once: a call without ``valid`` dispatches no eager op
        self._all_valid = jax.device_put(np.ones((batch_size,), bool))
        self._float_dtypes = set()  # frame dtypes already checked to be floating

        def step(state, frame, valid):
            # the cast is traced (a no-op when the frame already has the step's dtype)
            s, out = model.step(params, self.unpack(state), frame.astype(self.dtype), valid)
            return self.pack(s), out

        self._step = jax.jit(step, donate_argnums=(0,))
        self._peek = jax.jit(lambda state, frame, valid: step(state, frame, valid)[1])
        self._reset = jax.jit(self._reset_impl, donate_argnums=(0,))

    # ------------------------------------------------------------------ packing
    def pack(self, state):
        """``(float buffer, int32 buffer, *large float arrays)`` of a state pytree."""
        leaves = jax.tree.leaves(state)
        fl = [jnp.ravel(a).astype(self.dtype) for a, w in zip(leaves, self._where) if w == 0]
        it = [jnp.ravel(a).astype(jnp.int32) for a, w in zip(leaves, self._where) if w == 1]
        big = [a.astype(self.dtype) for a, w in zip(leaves, self._where) if w == 2]
        return (jnp.concatenate(fl) if fl else jnp.zeros((0,), self.dtype),
                jnp.concatenate(it) if it else jnp.zeros((0,), jnp.int32), *big)

    def unpack(self, packed):
        """The state pytree of a packed state (inverse of :meth:`pack`)."""
        fbuf, ibuf, *big = packed
        out, off, k = [], [0, 0], 0
        for (shape, dtype), w in zip(self._specs, self._where):
            if w == 2:
                out.append(big[k].astype(dtype))
                k += 1
                continue
            n = math.prod(shape)
            buf = fbuf if w == 0 else ibuf
            out.append(buf[off[w]:off[w] + n].reshape(shape).astype(dtype))
            off[w] += n
        return jax.tree.unflatten(self.treedef, out)

    # ------------------------------------------------------------------ API
    def init(self):
        """A fresh packed state for ``batch_size`` streams."""
        return jax.tree.map(jnp.copy, self._fresh)

    def _check(self, frame, valid, state=None):
        """Validate the arguments of a call in plain Python (shapes and dtypes only: no JAX op runs
        here) and return the validity mask to pass (the cached all-valid one when ``valid`` is None)."""
        if state is not None:
            self._check_state(state)
        want = self._frame_shape
        shape = tuple(frame.shape)
        if shape != want:
            if len(shape) == len(want) and shape[1:] == want[1:]:
                raise ValueError(f"{self.model.name}: this LiveStep is for {self.batch_size} stream(s) (batch_size="
                                 f"{self.batch_size}) but the frame has batch size {shape[0]}; expected a frame "
                                 f"of shape {want}")
            raise ValueError(f"{self.model.name}: expected a frame of shape {want}, got {shape}")
        dtype = frame.dtype
        if dtype not in self._float_dtypes:
            if not jnp.issubdtype(dtype, jnp.floating):
                raise TypeError(f"{self.model.name}: expected a float frame, got dtype {dtype}")
            self._float_dtypes.add(dtype)
        if valid is None:
            return self._all_valid
        if not isinstance(valid, jax.Array):
            valid = np.asarray(valid)  # host-side; the jitted call transfers it
        if tuple(valid.shape) != (self.batch_size,) or valid.dtype != np.bool_:
            raise ValueError(f"{self.model.name}: valid must be a ({self.batch_size},) bool array, got "
                             f"{tuple(valid.shape)} {valid.dtype}")
        return valid

    def _check_state(self, state):
        """A packed state of another LiveStep (another batch size): one ``ValueError`` naming both."""
        want = self._state_shapes
        if type(state) is tuple and len(state) == len(want) and all(
                getattr(a, "shape", None) == w for a, w in zip(state, want)):
            return
        try:
            have = tuple(tuple(np.shape(a)) for a in state)
        except TypeError:
            have = None
        if have == want:
            return
        # streams: the int32 buffer (never split) over its per-stream length; else a packed float buffer's
        got = f"shapes {have}"
        for i in (1, 0):
            per = math.prod(want[i]) // self.batch_size if self.batch_size and len(want) > i else 0
            if per and have and len(have) > i and len(have[i]) == 1 and have[i][0] % per == 0:
                if i == 1 or len(have) == len(want):
                    got = f"{have[i][0] // per} stream(s)"
                break
        if got == f"{self.batch_size} stream(s)":  # the streams match: another packing (split_bytes)
            raise ValueError(f"{self.model.name}: the state is packed as {len(have)} arrays but this LiveStep packs "
                             f"{len(want)} (split_bytes={self.split_bytes}); pass a state from its init()")
        raise ValueError(f"{self.model.name}: the state is for {got} but this LiveStep is for {self.batch_size} "
                         f"(batch_size={self.batch_size}); pass a state from its init()")

    def __call__(self, state, frame, valid=None):
        """Advance every stream by one frame: ``(state, StepOutput(scores (B, K), valid (B,)))``,
        as :meth:`co3d_jax.Model.step` returns."""
        return self._step(state, frame, self._check(frame, valid, state))

    def peek(self, state, frame, valid=None):
        """The ``StepOutput`` of the next step without advancing ``state``."""
        return self._peek(state, frame, self._check(frame, valid, state))

    def _reset_impl(self, state, mask):
        return self.pack(reset_state(self.unpack(state), self.unpack(self._fresh), mask, name=self.model.name))

    def reset(self, state, mask):
        """Restart the streams where ``mask`` ``(B,)`` is True; the others continue untouched
        (:func:`co3d_jax.stream.reset_state` on the unpacked state)."""
        self._check_state(state)
        return self._reset(state, jnp.asarray(mask))


def numpy_state(state):
    """Host copy of a packed state (for inspection or checkpointing a live session)."""
    return tuple(np.asarray(a) for a in state)
