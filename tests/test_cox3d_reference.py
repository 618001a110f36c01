"""CoX3D step == continual-inference's CoX3D stepped frame by frame (reference check (c), co3d.md §4).

The torch model is built here with ``continual`` (``import continual as co``) mirroring co3d's
``models/cox3d/modules/x3d.py`` (co3d.md §2.1.3, §2.1.4 CoSe, §2.1.7 containers): stem
``co.Sequential(conv_xy, conv, bn, relu)``; blocks ``co.Sequential(co.BroadcastReduce(skip,
co.Sequential(branch2)), nn.ReLU)`` with ``auto_delay``; SE ``co.Residual(co.Sequential(avg_pool,
fc1, fc1_act, fc2, fc2_sig), reduce="mul")``; head ``conv_5, conv_5_bn, conv_5_relu,
co.AvgPool3d((T_w, s, s), stride=1), lin_5 (1x1x1 co.Conv3d), lin_5_relu, co.Linear(channel_dim=1),
Softmax(dim=1)``. Weights go JAX -> PySlowFast state-dict names -> ``load_state_dict(flatten=True,
strict=True)``, which also pins that our params pytree mirrors the PySlowFast key set.

Each frame is fed with ``forward_step`` (one ``(B, C, H, W)`` frame); a ``None`` output must
coincide with ``valid == False`` of our step, and every tensor output must match ours.
"""

from __future__ import annotations

import re
import time
from collections import OrderedDict

import numpy as np
import pytest

torch = pytest.importorskip("torch")
co = pytest.importorskip("continual")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from co3d_jax import create_model  # noqa: E402
from helpers import random_params, rel_err  # noqa: E402

# continual's flattened state_dict calls nn.Module.state_dict with positional args (torch FutureWarning).
pytestmark = pytest.mark.filterwarnings("ignore:Positional args are being deprecated:FutureWarning")

from experiments.torch_reference import build_torch_cox3d  # noqa: E402


# ----------------------------------------------------------------------------- JAX params -> PySlowFast keys

_BN_NAMES = {"scale": "weight", "bias": "bias", "mean": "running_mean", "var": "running_var"}


def slowfast_key(path: tuple[str, ...]) -> str:
    """Our params path -> PySlowFast X3D state-dict key (co3d.md §3.2)."""
    *mods, leaf = path
    mods = list(mods)
    if mods[0] == "s1":
        mods.insert(1, "pathway0_stem")
    elif re.fullmatch(r"s[2-5]", mods[0]):
        mods[1] = "pathway0_" + mods[1]
        mods = [m for m in mods if m not in ("residual", "skip", "gate")]
    return ".".join(mods + [leaf])


def to_slowfast_state_dict(params, torch_state_dict) -> OrderedDict:
    """Convert our params to a flattened PySlowFast state dict (co3d.md §3.2).

    Conv kernels DHWIO -> OIDHW; Dense kernels (C_in, C_out) -> (C_out, C_in), viewed as
    (C_out, C_in, 1, 1, 1) where the torch module is a 1x1x1 conv; BN ``scale/bias/mean/var`` ->
    ``weight/bias/running_mean/running_var``. Asserts that the key sets are equal and that every
    shape matches exactly (so a wrong transpose cannot hide behind a reshape).
    """
    flat = jax.tree_util.tree_flatten_with_path(params)[0]
    out = OrderedDict()
    for path, arr in flat:
        names = tuple(p.key for p in path)
        a = np.array(arr, np.float32)  # writable copy (torch.from_numpy)
        leaf = names[-1]
        if leaf == "kernel":
            a = a.transpose(4, 3, 0, 1, 2) if a.ndim == 5 else a.T
            key = slowfast_key(names[:-1] + ("weight",))
        elif leaf in _BN_NAMES and names[-2].endswith("bn"):
            key = slowfast_key(names[:-1] + (_BN_NAMES[leaf],))
        else:
            key = slowfast_key(names)
        assert key not in out, key
        out[key] = a
    target = {".".join(p for p in k.split(".") if not p.isdigit()): v for k, v in torch_state_dict.items()}
    for k in target:
        if k.endswith("num_batches_tracked"):
            out[k] = np.zeros((), np.int64)
    assert set(out) == set(target), sorted(set(out) ^ set(target))[:10]
    sd = OrderedDict()
    for k, v in target.items():
        a = out[k]
        want = tuple(v.shape)
        assert a.shape == want or (a.ndim == 2 and want == a.shape + (1, 1, 1)), (k, a.shape, want)
        sd[k] = torch.from_numpy(np.ascontiguousarray(a).reshape(want))
    return sd


def load_into_torch(tmodel, params):
    sd = to_slowfast_state_dict(params, tmodel.state_dict(flatten=True))
    tmodel.load_state_dict(sd, strict=True, flatten=True)
    return tmodel


# ----------------------------------------------------------------------------- helpers


def sharpen_head(params, factor: float):
    """Scale the projection so that softmax outputs are far from uniform (a meaningful check)."""
    head = dict(params["head"])
    head["projection"] = {k: v * factor for k, v in head["projection"].items()}
    return {**params, "head": head}


def torch_stream(tmodel, frames: np.ndarray):
    """Feed ``frames`` ``(B, T, H, W, 3)`` one ``forward_step`` at a time -> list of (B, K) arrays or None."""
    x = torch.from_numpy(np.ascontiguousarray(frames.transpose(0, 1, 4, 2, 3)))  # B, T, C, H, W
    outs = []
    tmodel.clean_state()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny per-frame ops: more threads only add contention
    try:
        with torch.no_grad():
            for t in range(x.shape[1]):
                y = tmodel.forward_step(x[:, t])
                outs.append(None if y is None else y.reshape(y.shape[0], -1).numpy().copy())
    finally:
        torch.set_num_threads(threads)
    return outs


def compare_streams(ours_scores, ours_valid, torch_outs):
    """Validity must agree frame by frame (``None`` <-> invalid, for every stream); returns the
    max relative error over all valid frames and the number of valid frames."""
    ours_scores, ours_valid = np.asarray(ours_scores), np.asarray(ours_valid)
    t_valid = np.array([y is not None for y in torch_outs])
    np.testing.assert_array_equal(ours_valid, np.broadcast_to(t_valid, ours_valid.shape))
    ref = np.stack([y for y in torch_outs if y is not None], 1)  # (B, n_valid, K)
    return rel_err(ours_scores[:, t_valid], ref), int(t_valid.sum()), ref


# ----------------------------------------------------------------------------- metadata and keys

META_CASES = [("cox3d_xs", {}), ("cox3d_s_13", {}), ("cox3d_s_64", {}), ("cox3d_m_16", {}),
              ("cox3d_l_16", {}), ("cox3d_l_64", {}), ("cox3d_s_32", {}),
              ("cox3d_s_13", {"se_scope": "clip"}), ("cox3d_s_13", {"temporal_fill": "replicate"})]


@pytest.mark.parametrize("name,opts", META_CASES, ids=[f"{n}-{'-'.join(o.values()) or 'default'}"
                                                        for n, o in META_CASES])
def test_torch_metadata_matches(name, opts):
    m = create_model(name, **opts)
    tm = build_torch_cox3d(m.config)
    assert (tm.delay, tm.receptive_field, tm.padding[0], tm.stride[0]) == \
        (m.delay, m.receptive_field, m.padding, m.stride)


@pytest.mark.parametrize("name,n_keys", [("cox3d_s_13", 568), ("cox3d_l_16", None)])
def test_params_mirror_slowfast_keys(name, n_keys):
    """Our params pytree maps one-to-one (names and shapes) onto the flattened co3d/PySlowFast keys."""
    m = create_model(name)
    tm = build_torch_cox3d(m.config)
    target = tm.state_dict(flatten=True)
    if n_keys is not None:
        assert len(target) == n_keys
    zeros = jax.tree.map(lambda s: np.zeros(s.shape, np.float32), jax.eval_shape(m.init, jax.random.key(0)))
    sd = to_slowfast_state_dict(zeros, target)
    assert set(sd) == set(target)
    assert "s2.pathway0_res0.branch1.weight" in sd and "s5.pathway0_res0.branch2.se.fc1.bias" in sd


# ----------------------------------------------------------------------------- step == continual-inference (CI)

CI = dict(image_size=32, depth_factor=0.6)
B, T = 2, 150


@pytest.fixture(scope="module")
def ci_frames():
    size = CI["image_size"]
    return np.random.default_rng(3).standard_normal((B, T, size, size, 3)).astype(np.float32)


@pytest.mark.parametrize("fill,head", [("zeros", "softmax"), ("replicate", "identity")])
def test_step_matches_continual_inference(fill, head, ci_frames):
    m = create_model("cox3d_s_13", **CI, temporal_fill=fill, head_activation=head)
    params = random_params(m, seed=1)
    if head == "softmax":
        params = sharpen_head(params, 5.0)
    tm = load_into_torch(build_torch_cox3d(m.config, head_act=head), params)
    assert (tm.delay, tm.receptive_field, tm.padding[0]) == (m.delay, m.receptive_field, m.padding)

    t0 = time.perf_counter()
    torch_outs = torch_stream(tm, ci_frames)
    t_torch = time.perf_counter() - t0
    _, out = m.stream_fn()(params, m.init_state(B), jnp.asarray(ci_frames))
    err, n, ref = compare_streams(out.scores, out.valid, torch_outs)
    assert n == T - m.delay and all(y is None for y in torch_outs[: m.delay])
    print(f"\n[continual-inference {fill}/{head}] {n} valid frames x {B} streams, max rel err {err:.2e} "
          f"max prob {ref.max():.3f} (torch stepping {t_torch:.1f}s)")
    if head == "softmax":
        assert ref.max() > 4.0 / m.num_classes  # clearly non-uniform probabilities
    assert err <= 1e-5


# ----------------------------------------------------------------------------- full CoX3D-S (slow)


@pytest.mark.slow
def test_full_cox3d_s_matches_continual_inference():
    """CoX3D-S_13 at 160 px, real depth (26 blocks), softmax head as co3d, 1 stream x 150 frames:
    our step vs continual-inference stepping, and vs our clip reference with per-frame SE."""
    m = create_model("cox3d_s_13")
    params = sharpen_head(random_params(m, seed=5), 10.0)
    tm = load_into_torch(build_torch_cox3d(m.config, head_act="softmax"), params)
    assert (tm.delay, tm.receptive_field, tm.padding[0]) == (m.delay, m.receptive_field, m.padding) == (40, 69, 28)
    frames = np.random.default_rng(6).standard_normal((1, T, 160, 160, 3)).astype(np.float32)

    t0 = time.perf_counter()
    torch_outs = torch_stream(tm, frames)
    t_torch = time.perf_counter() - t0
    t0 = time.perf_counter()
    _, out = m.stream_fn()(params, m.init_state(1), jnp.asarray(frames))
    scores = np.asarray(out.scores)
    t_jax = time.perf_counter() - t0
    err, n, ref = compare_streams(out.scores, out.valid, torch_outs)
    clip_model = create_model("cox3d_s_13", se_clip_pool="frame")
    clip = np.asarray(jax.jit(clip_model.net.forward)(params, jnp.asarray(frames))).reshape(1, -1, m.num_classes)
    err_clip = rel_err(scores[:, m.delay:], clip[:, : T - m.delay])
    print(f"\n[full CoX3D-S_13, 160 px] {n} valid frames: max rel err vs continual-inference {err:.2e}, "
          f"vs clip(frame SE) {err_clip:.2e}; max prob {ref.max():.3f} "
          f"(torch stepping {t_torch:.1f}s, jax compile+stream {t_jax:.1f}s)")
    assert n == T - 40
    assert err <= 1e-5 and err_clip <= 1e-5
