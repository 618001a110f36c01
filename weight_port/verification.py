"""The ``--verify`` harness shared by every family: the converted JAX model against a PyTorch
reference network on one random clip.

A family's ``verify`` builds its torch reference with the checkpoint's *source* tensors (only
names are mapped, never layouts, so the check is independent of the JAX re-layout) and calls
:func:`compare`, which runs both on the same clip and measures two quantities:

* the **softmax scores**: the reference's per-position softmax averaged over positions against
  co3d_jax ``head_activation='softmax'`` (same params);
* the **logits**: the reference without its head activation against ``head_activation='identity'``.

Float32 throughout: TF32 off and ``highest`` float32 matmul precision in torch, ``highest``
matmul/conv precision in JAX.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping

import numpy as np

from .errors import PortError, one_line, summarise
from .strict import create_model

if TYPE_CHECKING:
    import torch

    from .conversion import Conversion

# torch clip (B, C, T, H, W) -> (softmax scores, logits), both (B, K)
TorchOutputs = Callable[["torch.Tensor"], "tuple[np.ndarray, np.ndarray]"]


@dataclasses.dataclass
class VerifyResult:
    """Errors of the JAX model against the torch reference on one clip ``(B, T, S, S, 3)``."""

    clip_shape: tuple[int, ...]
    prob_max_abs: float
    prob_rel: float
    logit_max_abs: float
    logit_rel: float
    logit_scale: float

    @property
    def worst_rel(self) -> float:
        return max(self.prob_rel, self.logit_rel)

    def report(self) -> str:
        b, t, h, w, c = self.clip_shape
        return (f"verify on a random clip {b}x{t}x{h}x{w}x{c} (float32; torch TF32 off, JAX precision highest):\n"
                f"  softmax scores: max abs error {self.prob_max_abs:.3e}, relative {self.prob_rel:.3e}\n"
                f"  logits:         max abs error {self.logit_max_abs:.3e}, relative {self.logit_rel:.3e} "
                f"(max |logit| {self.logit_scale:.3g})")


def relative_error(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """``(max |a - b|, max |a - b| / max |b|)`` (``max |b|`` floored at 1e-30)."""
    err = float(np.max(np.abs(a - b)))
    return err, err / max(float(np.max(np.abs(b))), 1e-30)


# ------------------------------------------------------------------------------------ JAX side
@functools.lru_cache(maxsize=8)
def jax_forward_fn(arch: str, options: tuple = ()) -> Callable:
    """``fn(params, clip) -> (softmax scores, logits)``, both ``(B, K)``: one jitted function with
    the clip forwards of ``create_model(arch, head_activation='softmax'|'identity', **options)`` on
    the same params (cached: repeated verifications of one configuration compile once).
    ``options``: sorted ``(name, value)`` pairs of ``create_model`` options."""
    import jax

    opts = dict(options)
    soft = create_model(arch, **{**opts, "head_activation": "softmax"})
    ident = create_model(arch, **{**opts, "head_activation": "identity"})
    return jax.jit(lambda params, clip: (soft.forward(params, clip), ident.forward(params, clip)))


# ------------------------------------------------------------------------------------ torch side
@contextlib.contextmanager
def float32_torch() -> Iterator[None]:
    """TF32 off and ``highest`` float32 matmul precision in torch for the block, restored after."""
    import torch

    old = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32,
           torch.get_float32_matmul_precision())
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old[:2]
        torch.set_float32_matmul_precision(old[2])


def head_activation_outputs(model, prepare: Callable | None = None) -> TorchOutputs:
    """Outputs of a pytorchvideo network whose last block is a head with an ``activation``
    (softmax): the scores as is, the logits with the activation removed for the call.
    ``prepare`` maps the clip to the network's input (e.g. SlowFast's pathway list; called per
    run, as pytorchvideo's multi-pathway blocks overwrite the list they are given)."""
    def outputs(x):
        head = model.blocks[-1]
        probs = model(prepare(x) if prepare else x).numpy()
        act, head.activation = head.activation, None
        try:
            logits = model(prepare(x) if prepare else x).numpy()
        finally:
            head.activation = act
        return probs, logits
    return outputs


def logit_outputs(model) -> TorchOutputs:
    """Outputs of a network that returns logits (torchvision): the scores are their softmax."""
    import torch

    def outputs(x):
        logits = model(x)
        return torch.softmax(logits, dim=1).numpy(), logits.numpy()
    return outputs


def _fit(value: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """``value`` reshaped to ``shape`` where they differ only by trailing singleton dims (Caffe2
    blobs), else unchanged (torch then reports the mismatch)."""
    def core(s):
        s = list(s)
        while s and s[-1] == 1:
            s.pop()
        return s
    if tuple(value.shape) != tuple(shape) and core(value.shape) == core(shape):
        return value.reshape(shape)
    return value


def load_reference_weights(model, state: Mapping[str, np.ndarray], reference: str) -> None:
    """Load ``state`` (torch names of ``model``) into ``model``: every parameter and BN statistic
    must be there (BN ``num_batches_tracked`` may be absent) and every tensor must be used, else
    one :class:`PortError` naming ``reference``."""
    import torch

    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    tensors = {}
    for k, v in state.items():
        a = np.asarray(v)
        tensors[k] = torch.from_numpy(np.ascontiguousarray(_fit(a, shapes[k]) if k in shapes else a))
    try:
        missing, unexpected = model.load_state_dict(tensors, strict=False)
    except RuntimeError as e:  # mis-shaped tensors
        raise PortError(f"verify: the source weights do not load into the {reference} reference: "
                        + one_line(e)[:400]) from None
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    parts = [f"{what} {summarise(keys)}" for what, keys in (("missing", missing), ("unexpected", unexpected)) if keys]
    if parts:
        raise PortError(f"verify: the source weights do not load into the {reference} reference: " + "; ".join(parts))


# ------------------------------------------------------------------------------------ comparison
def compare(conv: Conversion, torch_outputs: TorchOutputs, options: Mapping[str, Any], *, frames: int,
            image_size: int, batch: int = 1, seed: int = 0) -> VerifyResult:
    """Run ``torch_outputs`` and the converted JAX model (``create_model(conv.arch,
    **conv.model_options, **options)``) on one standard-normal clip ``(batch, frames, S, S, 3)``
    drawn with ``seed`` and measure the errors of the JAX scores and logits."""
    import jax
    import jax.numpy as jnp
    import torch

    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 3, frames, image_size, image_size, generator=g, dtype=torch.float32)
    try:
        with float32_torch(), torch.no_grad():
            probs_ref, logits_ref = torch_outputs(x)
    except RuntimeError as e:
        raise PortError(f"verify: the torch reference fails on a {frames}-frame {image_size}px clip: "
                        + one_line(e)[:300]) from None
    opts = {**conv.model_options, **options}
    params = jax.tree.map(jnp.asarray, conv.params)
    clip = jnp.asarray(x.permute(0, 2, 3, 4, 1).numpy())
    with jax.default_matmul_precision("highest"):
        probs, logits = jax.device_get(jax_forward_fn(conv.arch, tuple(sorted(opts.items())))(params, clip))
    if probs.shape != probs_ref.shape or logits.shape != logits_ref.shape:
        raise PortError(f"verify: output shapes differ: JAX {probs.shape}, torch {probs_ref.shape}")
    pa, pr = relative_error(probs, probs_ref)
    la, lr = relative_error(logits, logits_ref)
    return VerifyResult(tuple(clip.shape), pa, pr, la, lr, float(np.max(np.abs(logits_ref))))
