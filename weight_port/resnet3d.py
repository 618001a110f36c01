"""Porter family ``resnet3d``: Slow-8x8-R50 / CoSlow and I3D-R50 / CoI3D weights.

Archs: ``slow_8x8_r50``, ``i3d_r50``, ``coslow_<T_w>``, ``coi3d_<T_w>`` and the ``*_charades``
names (:mod:`co3d_jax.models.resnet3d`); CoSlow/CoI3D use the clip models' weights unchanged.
Three source layouts, all mapped through the PySlowFast names (the hub of the mapping, as for
X3D in :mod:`weight_port.layouts`):

* **slowfast**: PySlowFast ``ResNet`` names, ``s1.pathway0_stem.conv.weight``,
  ``s2.pathway0_res0.branch1_bn.running_var``, ``s4.pathway0_res2.branch2.a.weight``,
  ``head.projection.weight`` (co3d's clip Slow/I3D load these). They equal the co3d_jax params
  paths by the same rule as X3D (:func:`weight_port.layouts.jax_to_slowfast`).
* **pytorchvideo**: ``pytorchvideo.models.resnet.create_resnet`` / torch hub ``slow_r50`` and
  ``i3d_r50`` (``{'model_state': ...}``): ``blocks.0.conv``, ``blocks.0.norm``,
  ``blocks.{b}.res_blocks.{i}.branch1_conv`` / ``branch1_norm``,
  ``...branch2.conv_{a,b,c}`` / ``norm_{a,b,c}``, ``blocks.{h}.proj``. Block ``b`` of stage
  ``s{n}`` is ``n - 1`` for Slow (``SLOW_8x8_R50.pyth``, head ``blocks.5``); pytorchvideo's I3D
  inserts its temporal pool as ``blocks.2`` (``stage1_pool``), so res3..res5 are ``blocks.3..5``
  and the head ``blocks.6``. The numbering is detected from the keys (a ``blocks.6.*`` key means
  the pool-shifted one) and accepted for either arch; the shapes decide the rest.
* **caffe2**: PySlowFast / video-nonlocal-net Caffe2 pickles (``I3D_8x8_R50.pkl``, read by
  :func:`weight_port.caffe2.load_caffe2_blobs`): ``conv1_w``, ``res_conv1_bn_{s,b,rm,riv}``,
  ``res{S}_{i}_branch1_w``, ``res{S}_{i}_branch1_bn_*``, ``res{S}_{i}_branch2{a,b,c}_w``,
  ``res{S}_{i}_branch2{a,b,c}_bn_*``, ``pred_{w,b}`` (reference §3.4; PySlowFast's
  ``get_name_convert_func`` gives the same names). ``_bn_s`` is the BN scale, ``_bn_b`` its
  shift, ``_bn_rm`` the running mean and ``_bn_riv`` **the running variance as is** (no
  inversion, as PySlowFast and co3d load it). Blobs with fewer (or more) dims than the torch
  tensor, differing only by trailing singleton dims, are reshaped (co3d pads Caffe2 shapes with
  trailing 1s); a note says how many. Non-parameter blobs (``*_momentum``, ``lr``,
  ``model_iter``; :data:`weight_port.caffe2.NON_PARAMETER_BLOBS`) are consumed and ignored.

Strictness as for X3D: every parameter filled with the right shape and dtype, every source
tensor consumed (BN ``num_batches_tracked`` and the non-parameter blobs are consumed and
ignored), else one :class:`~weight_port.errors.CheckpointMismatchError` listing missing,
unexpected and mis-shaped keys in the source's own naming, with hints (a checkpoint whose stem
kernel or class count says it is for another arch).

Family API used by :mod:`weight_port.convert`'s dispatch: :func:`convert_state_dict`,
:func:`read_source`, :func:`verify`.
"""

from __future__ import annotations

import re
import warnings
from typing import Any, Mapping

import numpy as np

from . import layouts as L
from .caffe2 import is_non_parameter_blob, load_caffe2_blobs
from .errors import PortError
from .strict import cached_target_shapes, create_model, port_strict, resolve_layout
from .verification import VerifyResult, compare, head_activation_outputs, jax_forward_fn, load_reference_weights

__all__ = ["ARCH_HELP", "LAYOUTS", "build_model", "build_torch_reference", "caffe2_to_slowfast", "convert_state_dict",
           "detect_layout", "is_resnet3d_arch", "jax_forward_fn", "params_to_state_dict", "pytorchvideo_state",
           "read_source", "slowfast_to_caffe2", "slowfast_to_pytorchvideo", "source_name", "verify"]

LAYOUTS = ("slowfast", "pytorchvideo", "caffe2")
ARCH_HELP = ("slow_8x8_r50, i3d_r50, coslow_8, coslow_64, coi3d_8, coi3d_64 (any window: coslow_<T>, coi3d_<T>), "
             "slow_8x8_r50_charades, coslow_8_charades, coslow_64_charades")

_BN_CAFFE2 = {"s": "weight", "b": "bias", "rm": "running_mean", "riv": "running_var"}
_BN_CAFFE2_INV = {v: k for k, v in _BN_CAFFE2.items()}


def is_resnet3d_arch(arch: str) -> bool:
    return bool(re.fullmatch(r"(slow_8x8_r50|i3d_r50)(_charades)?|(coslow|coi3d)_\d+(_charades)?", arch))


# --------------------------------------------------------------------------- models
def build_model(arch: str, **model_options: Any):
    """``co3d_jax.create_model`` for a Slow/I3D arch, errors as :class:`PortError`."""
    if not is_resnet3d_arch(arch):
        raise PortError(f"--arch {arch!r} is not a Slow/CoSlow/I3D/CoI3D model; choose from {ARCH_HELP}")
    return create_model(arch, **model_options)


def _target_shapes(arch: str, options: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
    return cached_target_shapes(arch, tuple(sorted(options.items())))


# --------------------------------------------------------------------------- names
def slowfast_to_pytorchvideo(key: str, pool_block: bool = False) -> str | None:
    """pytorchvideo ``create_resnet`` name of a PySlowFast ResNet key. ``pool_block``: the
    file numbers its blocks with a ``stage1_pool`` block at index 2 (pytorchvideo's I3D)."""
    if "." not in key:
        return None
    module, param = key.rsplit(".", 1)
    if m := re.fullmatch(r"s1\.pathway0_stem\.(conv|bn)", module):
        return f"blocks.0.{'conv' if m[1] == 'conv' else 'norm'}.{param}"
    if m := re.fullmatch(r"s([2-9])\.pathway0_res(\d+)\.(branch1|branch1_bn|branch2\.[abc]|branch2\.[abc]_bn)", module):
        stage = int(m[1])
        block = stage - 1 + (1 if pool_block and stage >= 3 else 0)
        sub = m[3]
        sub = {"branch1": "branch1_conv", "branch1_bn": "branch1_norm"}.get(sub) or \
            (f"branch2.norm_{sub[8]}" if sub.endswith("_bn") else f"branch2.conv_{sub[8]}")
        return f"blocks.{block}.res_blocks.{m[2]}.{sub}.{param}"
    if module == "head.projection":
        return f"blocks.{6 if pool_block else 5}.proj.{param}"
    return None


def slowfast_to_caffe2(key: str) -> str | None:
    """Caffe2 blob name of a PySlowFast ResNet key (``None`` for BN counters and others)."""
    module, param = key.rsplit(".", 1)
    if module == "s1.pathway0_stem.conv" and param == "weight":
        return "conv1_w"
    if module == "s1.pathway0_stem.bn" and param in _BN_CAFFE2_INV:
        return f"res_conv1_bn_{_BN_CAFFE2_INV[param]}"
    if module == "head.projection" and param in ("weight", "bias"):
        return f"pred_{param[0]}"
    block = r"s(\d+)\.pathway0_res(\d+)\.(branch1|branch1_bn|branch2\.([abc])|branch2\.([abc])_bn)"
    if m := re.fullmatch(block, module):
        base = f"res{m[1]}_{m[2]}_branch" + ("1" if m[3].startswith("branch1") else f"2{m[4] or m[5]}")
        if m[3].endswith("_bn"):
            return f"{base}_bn_{_BN_CAFFE2_INV[param]}" if param in _BN_CAFFE2_INV else None
        return f"{base}_w" if param == "weight" else None
    return None


def caffe2_to_slowfast(name: str) -> str | None:
    """PySlowFast name of a Caffe2 ResNet blob (``None``: not a ResNet parameter blob)."""
    if name == "conv1_w":
        return "s1.pathway0_stem.conv.weight"
    if m := re.fullmatch(r"res_conv1_bn_(s|b|rm|riv)", name):
        return f"s1.pathway0_stem.bn.{_BN_CAFFE2[m[1]]}"
    if m := re.fullmatch(r"pred_([wb])", name):
        return f"head.projection.{'weight' if m[1] == 'w' else 'bias'}"
    if m := re.fullmatch(r"res(\d+)_(\d+)_branch(1|2[abc])_(w|bn_s|bn_b|bn_rm|bn_riv)", name):
        branch = "branch1" if m[3] == "1" else f"branch2.{m[3][1]}"
        if m[4] == "w":
            return f"s{m[1]}.pathway0_res{m[2]}.{branch}.weight"
        return f"s{m[1]}.pathway0_res{m[2]}.{branch}_bn.{_BN_CAFFE2[m[4][3:]]}"
    return None


def detect_layout(keys) -> str | None:
    keys = list(keys)
    pv = sum(k.startswith("blocks.") for k in keys)
    sf = sum(bool(re.match(r"(s\d+\.pathway0_|head\.)", k)) for k in keys)
    c2 = sum(caffe2_to_slowfast(k) is not None for k in keys)
    best = max(pv, sf, c2)
    if best == 0:
        return None
    return "pytorchvideo" if pv == best else "slowfast" if sf == best else "caffe2"


def _pool_block(state: Mapping[str, Any]) -> bool:
    return any(k.startswith("blocks.6.") for k in state)


def source_name(sf_key: str, layout: str, pool_block: bool = False) -> str:
    if layout == "slowfast":
        return sf_key
    name = slowfast_to_pytorchvideo(sf_key, pool_block) if layout == "pytorchvideo" else slowfast_to_caffe2(sf_key)
    if name is None:  # pragma: no cover - every JAX ResNet-3D leaf has a name in each layout
        raise PortError(f"internal: no {layout} name for {sf_key}")
    return name


def _fit_trailing(a: np.ndarray, want: tuple[int, ...]) -> np.ndarray | None:
    """``a`` reshaped to ``want`` if they differ only by trailing singleton dims, else None."""
    have = tuple(a.shape)
    if have == want:
        return a
    n = min(len(have), len(want))
    if have[:n] == want[:n] and all(d == 1 for d in have[n:]) and all(d == 1 for d in want[n:]):
        return a.reshape(want)
    return None


# --------------------------------------------------------------------------- reading
def read_source(path: str, layout: str = "auto") -> tuple[dict[str, np.ndarray], str]:
    """``(state, container)``: Caffe2 blobs for a ``.pkl`` file or ``layout='caffe2'``
    (container ``"caffe2"``), else a torch checkpoint (``weights_only=True``)."""
    if layout == "caffe2" or (layout == "auto" and path.endswith(".pkl")):
        return load_caffe2_blobs(path), "caffe2"
    from .checkpoint import read_checkpoint
    return read_checkpoint(path)


# --------------------------------------------------------------------------- conversion
def convert_state_dict(state: Mapping[str, np.ndarray], arch: str, *, layout: str = "auto",
                       source_label: str = "checkpoint", container: str = "bare", **model_options: Any):
    """Convert a Slow/I3D state dict (any layout of the module docstring) for
    ``create_model(arch, **model_options)``; returns a :class:`weight_port.convert.Conversion`."""
    from co3d_jax.params import unflatten

    from .convert import Conversion

    state, stripped = L.strip_prefixes(state)
    notes = [f"stripped key prefix {p!r}" for p in stripped]
    layout = resolve_layout(layout, state, detect_layout, LAYOUTS, label=source_label, scope=f" for {arch}",
                            unrecognised="unrecognised state dict layout: neither PySlowFast ResNet names "
                                         "(s1.pathway0_stem.*, s2.pathway0_res0.*, head.projection.*), pytorchvideo "
                                         "names (blocks.*) nor Caffe2 blobs (conv1_w, res2_0_branch2a_w, pred_w)")
    model = build_model(arch, **model_options)
    targets = _target_shapes(arch, model_options)
    pool_block = layout == "pytorchvideo" and _pool_block(state)
    if pool_block:
        notes.append("pytorchvideo block numbering with a stage-1 pool block (blocks.2): res3..res5 are "
                     "blocks.3..5, the head blocks.6")

    def name(path: str) -> str:
        return source_name(L.jax_to_slowfast(path), layout, pool_block)

    caffe2 = layout == "caffe2"
    flat = port_strict(state, targets, name, label=source_label, arch=arch, layout=layout,
                       counter=None if caffe2 else L.BN_COUNTER,
                       ignorable=is_non_parameter_blob if caffe2 else lambda k: False,
                       hints=lambda m, u, s: _hints(arch, layout, model, state, pool_block),
                       torch_shape=L.slowfast_torch_shape, to_jax=_caffe2_to_jax if caffe2 else _torch_to_jax)
    if caffe2:
        ignored = sum(is_non_parameter_blob(k) for k in state)
        reshaped = sum(np.shape(state[name(p)]) != L.slowfast_torch_shape(p, shape) for p, shape in targets.items())
        if ignored:
            notes.append(f"ignored {ignored} non-parameter Caffe2 blobs (*_momentum, lr, model_iter)")
        if reshaped:
            notes.append(f"reshaped {reshaped} Caffe2 blobs that lacked trailing singleton dims")
    return Conversion(params=unflatten(flat), arch=arch, model_options=dict(model_options), layout=layout,
                      source=dict(state), notes=notes, container=container)


def _torch_to_jax(src: np.ndarray, want: tuple[int, ...], shape: tuple[int, ...]) -> np.ndarray | None:
    """A torch-layout tensor of exactly the torch shape ``want``, re-laid for JAX."""
    return L.torch_to_jax(src, shape) if tuple(src.shape) == tuple(want) else None


def _caffe2_to_jax(src: np.ndarray, want: tuple[int, ...], shape: tuple[int, ...]) -> np.ndarray | None:
    """A Caffe2 blob of the torch shape ``want`` up to trailing singleton dims, re-laid for JAX."""
    fitted = _fit_trailing(src, want)
    return None if fitted is None else L.torch_to_jax(fitted, shape)


def _stem_kernel(state, layout: str, pool_block: bool) -> int | None:
    w = state.get(source_name("s1.pathway0_stem.conv.weight", layout, pool_block))
    return int(w.shape[2]) if w is not None and np.ndim(w) == 5 else None


def _hints(arch: str, layout: str, model, state: Mapping[str, Any], pool_block: bool) -> list[str]:
    """Why a ResNet-3D checkpoint may not fit: the other arch's stem kernel, other classes, or
    not a ResNet-3D checkpoint at all."""
    hints = []
    k = _stem_kernel(state, layout, pool_block)
    want_k = {"slow": 1, "i3d": 5}[model.config.arch]
    if k is not None and k != want_k:
        like = {1: "Slow (slow_8x8_r50, coslow_*)", 5: "I3D (i3d_r50, coi3d_*)"}.get(k)
        hints.append(f"the checkpoint's stem has temporal kernel {k}" + (f" like {like}" if like else "")
                     + f", --arch {arch} has {want_k}")
    proj = state.get(source_name("head.projection.weight", layout, pool_block))
    if proj is not None and np.ndim(proj) >= 2 and proj.shape[0] != model.num_classes:
        hints.append(f"the checkpoint has {proj.shape[0]} classes, the model {model.num_classes} "
                     f"(pass --num-classes {proj.shape[0]}" + (" or use a *_charades arch" if proj.shape[0] == 157
                                                               else "") + ")")
    if not any(re.match(r"(blocks\.|s\d+\.pathway0_|head\.|conv1_|res\d|res_conv1|pred_)", str(s)) for s in state):
        hints.append("this does not look like a ResNet-3D checkpoint")
    return hints


# --------------------------------------------------------------------------- test / verify helpers
def params_to_state_dict(flat: Mapping[str, np.ndarray], layout: str = "slowfast", *, counters: bool = True,
                         pool_block: bool = False) -> dict[str, np.ndarray]:
    """Torch-layout arrays named for ``layout`` from flat JAX params (the inverse port; tests
    use it to build checkpoints). ``counters`` adds BN ``num_batches_tracked`` (torch layouts)."""
    out: dict[str, np.ndarray] = {}
    for path, value in flat.items():
        sf = L.jax_to_slowfast(path)
        arr = L.jax_to_torch(np.asarray(value), L.source_ndim(sf, np.shape(value)))
        out[source_name(sf, layout, pool_block)] = arr
        if counters and layout != "caffe2" and path.endswith("/scale"):
            out[source_name(sf, layout, pool_block).rsplit(".", 1)[0] + "." + L.BN_COUNTER] = np.asarray(0, np.int64)
    return out


def pytorchvideo_state(conv, pool_block: bool = False) -> dict[str, np.ndarray]:
    """The conversion's *source* tensors under pytorchvideo ``create_resnet`` names (``pool_block``:
    numbered with I3D's ``stage1_pool`` block), reshaped to torch shapes where Caffe2 blobs lack
    trailing singleton dims. Independent of the JAX parameter mapping (only names are mapped)."""
    targets = _target_shapes(conv.arch, conv.model_options)
    src_pool_block = conv.layout == "pytorchvideo" and _pool_block(conv.source)
    out = {}
    for path, shape in targets.items():
        sf = L.jax_to_slowfast(path)
        src = np.asarray(conv.source[source_name(sf, conv.layout, src_pool_block)])
        want = L.torch_shape(shape, L.source_ndim(sf, shape))
        out[slowfast_to_pytorchvideo(sf, pool_block)] = np.ascontiguousarray(src.reshape(want), np.float32)
    return out


def build_torch_reference(conv, *, frames: int, image_size: int):
    """pytorchvideo ``create_resnet`` configured like torch hub ``slow_r50`` / ``i3d_r50``
    (stem kernel, ``stage_conv_a_kernel_size``, I3D's ``stage1_pool``), with the head pool
    kernel ``(frames // pool_t, S // 32, S // 32)`` and a softmax head, in eval mode, with the
    conversion's source weights loaded (every parameter and BN statistic must load)."""
    from torch import nn

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        from pytorchvideo.models.resnet import create_resnet

    cfg = build_model(conv.arch, **conv.model_options).config
    kwargs: dict[str, Any] = dict(model_depth=50, model_num_class=cfg.num_classes, stem_dim_out=cfg.width,
                                  head_activation=nn.Softmax, dropout_rate=0.0,
                                  head_pool_kernel_size=(frames // cfg.pool_t, image_size // 32, image_size // 32))
    if tuple(cfg.depths) != (3, 4, 6, 3):
        raise PortError(f"verify: pytorchvideo has no ResNet with stage depths {list(cfg.depths)}")
    if cfg.arch == "slow":  # hub slow_r50
        kwargs.update(stem_conv_kernel_size=(1, 7, 7))
    else:  # hub i3d_r50
        kwargs.update(stem_conv_kernel_size=(5, 7, 7), stage1_pool=nn.MaxPool3d,
                      stage_conv_a_kernel_size=((3, 1, 1), [(3, 1, 1), (1, 1, 1)], [(3, 1, 1), (1, 1, 1)],
                                                [(1, 1, 1), (3, 1, 1)]))
    model = create_resnet(**kwargs)
    load_reference_weights(model, pytorchvideo_state(conv, pool_block=cfg.arch == "i3d"), "pytorchvideo")
    return model.eval()


def verify(conv, *, image_size: int | None = None, frames: int | None = None, batch: int = 1,
           seed: int = 0) -> VerifyResult:
    """Compare the converted JAX clip model with the pytorchvideo reference on one random clip
    (:func:`weight_port.verification.compare`): softmax scores and logits. Defaults: the model's
    image size and head window (``config.window``) as the clip length."""
    cfg = build_model(conv.arch, **conv.model_options).config
    image_size = int(image_size or cfg.image_size)
    frames = int(frames or cfg.window)
    if image_size < 32 or frames < cfg.pool_t:
        raise PortError(f"verify: a {frames}-frame {image_size}px clip is too small for {conv.arch}")
    reference = build_torch_reference(conv, frames=frames, image_size=image_size)
    return compare(conv, head_activation_outputs(reference), {"image_size": image_size, "window": frames},
                   frames=frames, image_size=image_size, batch=batch, seed=seed)
