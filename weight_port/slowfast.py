"""Strict porter for SlowFast-R50 checkpoints -> co3d_jax ``slowfast_8x8_r50`` / ``slowfast_4x16_r50``.

Three layouts, all mapped through the PySlowFast torch names, which our params pytree mirrors
(:mod:`co3d_jax.models.slowfast`):

* ``slowfast``: PySlowFast / co3d torch names, e.g. ``s1.pathway1_stem.conv.weight``,
  ``s1_fuse.conv_f2s.weight``, ``s1_fuse.bn.running_var``, ``s3.pathway0_res0.branch1_bn.weight``,
  ``s4.pathway1_res2.branch2.a.weight``, ``head.projection.weight``.
* ``pytorchvideo``: ``create_slowfast`` / torch hub ``slowfast_r50`` names:
  ``blocks.0.multipathway_blocks.{p}.{conv,norm}``, ``blocks.{n}.multipathway_fusion.
  {conv_fast_to_slow,norm}`` (n = 0..3 <-> ``s{n+1}_fuse``), ``blocks.{S-1}.multipathway_blocks.{p}.
  res_blocks.{i}.{branch1_conv,branch1_norm,branch2.conv_{a,b,c},branch2.norm_{a,b,c}}`` and
  ``blocks.6.proj`` (``blocks.5`` is the parameter-free ``PoolConcatPathway``).
* ``caffe2``: the blobs of PySlowFast's Caffe2 ``.pkl`` model zoo files (co3d's weights,
  reference §3.1 ``SLOWFAST_{4x16,8x8}_R50.pkl``), renamed with PySlowFast's
  ``get_name_convert_func`` (reimplemented in :data:`CAFFE2_RULES`, same regexes in the same
  order; co3d ``models/slowfast/model_loading.py``): ``conv1_w`` / ``t_conv1_w`` (slow / fast
  stem), ``res_conv1_bn_{s,b,rm,riv}`` / ``t_res_conv1_bn_*``, ``res{S}_{i}_branch1_w``,
  ``res{S}_{i}_branch2{a,b,c}_w``, ``..._bn_{s,b,rm,riv}`` (``t_`` prefix: fast pathway),
  fusion ``t_pool1_subsample_w`` / ``t_pool1_subsample_bn_*`` (-> ``s1_fuse``) and
  ``t_res{n}_{last}_branch2c_bn_subsample_w`` / ``..._subsample_bn_*`` (-> ``s{n}_fuse``; the
  regex ignores the block index, the Caffe2 files carry the stage's last block: res2_2, res3_3,
  res4_5), ``pred_w`` / ``pred_b``. ``riv`` is used as the running variance, as PySlowFast does
  (no inversion). Solver blobs (``*_momentum``, ``lr``, ``model_iter``) are skipped, as
  PySlowFast skips them (it skips any name containing those words; we match exactly, as
  :mod:`weight_port.caffe2` does); any other unused blob is an error here (PySlowFast only logs
  it). A ``pred_w`` stored with trailing 1x1x1 dims is accepted.

Strictness as in :mod:`weight_port.convert`: every parameter filled with the right shape, every
tensor consumed (BN ``num_batches_tracked`` consumed and ignored), or one
:class:`~weight_port.errors.CheckpointMismatchError` listing missing / unexpected / mis-shaped
keys in the checkpoint's naming (for Caffe2, missing blobs are named by
:func:`slowfast_to_caffe2`). 8x8 and 4x16 differ only in the fusion kernels (7 vs 5), which the
hint of a mis-shaped ``conv_f2s`` points out.

:func:`verify` (``--verify``) compares the converted model with pytorchvideo's ``create_slowfast``
holding the source tensors under pytorchvideo names (:func:`pytorchvideo_state`).
"""

from __future__ import annotations

import dataclasses
import re
import warnings
from typing import TYPE_CHECKING, Any, Iterable, Mapping

import numpy as np

from . import layouts as L
from .errors import PortError, summarise
from .r2plus1d import class_hint, torch_leaf
from .strict import build_model, cached_target_shapes, port_strict, resolve_layout
from .verification import VerifyResult, compare, head_activation_outputs, load_reference_weights

if TYPE_CHECKING:
    from .convert import Conversion

LAYOUTS = ("slowfast", "pytorchvideo", "caffe2")
_PREFIXES = ("slowfast_",)
_NUM_STAGES = 4

# PySlowFast slowfast/utils/c2_model_loading.py::get_name_convert_func (as in co3d), applied in order
# with re.sub; the non-local rules are irrelevant to SlowFast-R50 and left out.
CAFFE2_RULES: tuple[tuple[str, str], ...] = (
    (r"^t_pool1_subsample_bn_(.*)", r"s1_fuse.bn.\1"),
    (r"^t_pool1_subsample_(.*)", r"s1_fuse.conv_f2s.\1"),
    (r"^t_res([0-9]+)_([0-9]+)_branch2c_bn_subsample_bn_(.*)", r"s\1_fuse.bn.\3"),
    (r"^t_res([0-9]+)_([0-9]+)_branch2c_bn_subsample_(.*)", r"s\1_fuse.conv_f2s.\3"),
    (r"^res([0-9]+)_([0-9]+)_branch([0-9]+)([a-z])_(.*)", r"s\1.pathway0_res\2.branch\3.\4_\5"),
    (r"^res_conv1_bn_(.*)", r"s1.pathway0_stem.bn.\1"),
    (r"^conv1_xy(.*)", r"s1.pathway0_stem.conv_xy\1"),
    (r"^conv1_(.*)", r"s1.pathway0_stem.conv.\1"),
    (r"^res([0-9]+)_([0-9]+)_branch([0-9]+)_(.*)", r"s\1.pathway0_res\2.branch\3_\4"),
    (r"^res_conv1_(.*)", r"s1.pathway0_stem.conv.\1"),
    (r"^t_res([0-9]+)_([0-9]+)_branch([0-9]+)([a-z])_(.*)", r"s\1.pathway1_res\2.branch\3.\4_\5"),
    (r"^t_res_conv1_bn_(.*)", r"s1.pathway1_stem.bn.\1"),
    (r"^t_conv1_(.*)", r"s1.pathway1_stem.conv.\1"),
    (r"^t_res([0-9]+)_([0-9]+)_branch([0-9]+)_(.*)", r"s\1.pathway1_res\2.branch\3_\4"),
    (r"^t_res_conv1_(.*)", r"s1.pathway1_stem.conv.\1"),
    (r"pred_(.*)", r"head.projection.\1"),
    (r"(.*)b_bn_fc(.*)", r"\1se.fc\2"),
    (r"conv_5(.*)", r"head.conv_5\1"),
    (r"lin_5(.*)", r"head.lin_5\1"),
    (r"(.*)bn.b\Z", r"\1bn.bias"),
    (r"(.*)bn.s\Z", r"\1bn.weight"),
    (r"(.*)bn.rm\Z", r"\1bn.running_mean"),
    (r"(.*)bn.riv\Z", r"\1bn.running_var"),
    (r"(.*)[\._]b\Z", r"\1.bias"),
    (r"(.*)[\._]w\Z", r"\1.weight"),
)
CAFFE2_SKIP = ("*_momentum", "lr", "model_iter")  # solver state, as weight_port.caffe2.NON_PARAMETER_BLOBS
_BN_C2 = {"weight": "s", "bias": "b", "running_mean": "rm", "running_var": "riv"}


# ------------------------------------------------------------------------------------ names
def jax_to_slowfast(path: str) -> str:
    """``s2/pathway1/res0/residual/skip/branch1/kernel`` -> ``s2.pathway1_res0.branch1.weight``;
    ``s1/pathway0_stem/bn/var`` -> ``s1.pathway0_stem.bn.running_var``;
    ``s3_fuse/conv_f2s/kernel`` -> ``s3_fuse.conv_f2s.weight``; ``head/projection/bias``."""
    *mods, _ = path.split("/")
    leaf = torch_leaf(path)
    if len(mods) >= 4 and re.fullmatch(r"s\d+", mods[0]) and re.fullmatch(r"pathway\d", mods[1]) \
            and re.fullmatch(r"res\d+", mods[2]) and mods[3] == "residual":
        rest = [m for m in mods[4:] if m != "skip"]
        return ".".join([mods[0], f"{mods[1]}_{mods[2]}", *rest, leaf])
    if mods and (re.fullmatch(r"s\d+(_fuse)?", mods[0]) or mods[0] == "head"):
        return ".".join([*mods, leaf])
    raise PortError(f"internal: no PySlowFast name for JAX parameter {path!r}")


_PV_BLOCK = {"branch1": "branch1_conv", "branch1_bn": "branch1_norm",
             **{f"branch2.{x}": f"branch2.conv_{x}" for x in "abc"},
             **{f"branch2.{x}_bn": f"branch2.norm_{x}" for x in "abc"}}


def slowfast_to_pytorchvideo(key: str, num_stages: int = _NUM_STAGES) -> str | None:
    """PySlowFast name -> pytorchvideo ``create_slowfast`` name (``None`` if it has none)."""
    module, param = key.rsplit(".", 1)
    if m := re.fullmatch(r"s1\.pathway(\d)_stem\.(conv|bn)", module):
        return f"blocks.0.multipathway_blocks.{m[1]}.{'conv' if m[2] == 'conv' else 'norm'}.{param}"
    if m := re.fullmatch(r"s(\d+)_fuse\.(conv_f2s|bn)", module):
        sub = "conv_fast_to_slow" if m[2] == "conv_f2s" else "norm"
        return f"blocks.{int(m[1]) - 1}.multipathway_fusion.{sub}.{param}"
    if m := re.fullmatch(r"s(\d+)\.pathway(\d)_res(\d+)\.(.+)", module):
        sub = _PV_BLOCK.get(m[4])
        if sub is None or int(m[1]) < 2:
            return None
        return f"blocks.{int(m[1]) - 1}.multipathway_blocks.{m[2]}.res_blocks.{m[3]}.{sub}.{param}"
    if module == "head.projection":
        return f"blocks.{num_stages + 2}.proj.{param}"
    return None


def caffe2_to_slowfast(blob: str) -> str:
    """PySlowFast's Caffe2 -> PyTorch name conversion (:data:`CAFFE2_RULES` in order)."""
    for pattern, repl in CAFFE2_RULES:
        blob = re.sub(pattern, repl, blob)
    return blob


def slowfast_to_caffe2(key: str, stage_depths: tuple[int, ...] = (3, 4, 6, 3)) -> str | None:
    """Inverse of :func:`caffe2_to_slowfast` for SlowFast-R50 parameters (for naming missing
    blobs; fusion blobs carry the stage's last block index)."""
    module, param = key.rsplit(".", 1)

    def suffix(bn: bool) -> str:
        return ("bn_" + _BN_C2[param]) if bn else {"weight": "w", "bias": "b"}[param]

    try:
        if m := re.fullmatch(r"s1\.pathway(\d)_stem\.(conv|bn)", module):
            t = "t_" if m[1] == "1" else ""
            return f"{t}conv1_w" if m[2] == "conv" else f"{t}res_conv1_{suffix(True)}"
        if m := re.fullmatch(r"s(\d+)_fuse\.(conv_f2s|bn)", module):
            n = int(m[1])
            base = "t_pool1_subsample" if n == 1 else f"t_res{n}_{stage_depths[n - 2] - 1}_branch2c_bn_subsample"
            return f"{base}_{suffix(m[2] == 'bn')}"
        if m := re.fullmatch(r"s(\d+)\.pathway(\d)_res(\d+)\.(branch1|branch1_bn|branch2\.([abc])(_bn)?)", module):
            t = "t_" if m[2] == "1" else ""
            branch = "branch1" if m[4].startswith("branch1") else f"branch2{m[5]}"
            bn = m[4] == "branch1_bn" or bool(m[6])
            return f"{t}res{m[1]}_{m[3]}_{branch}_{suffix(bn)}"
        if module == "head.projection":
            return f"pred_{suffix(False)}"
    except KeyError:
        return None
    return None


def _is_solver_blob(blob: str) -> bool:
    """SGD momentum buffers, the learning rate and the iteration counter (PySlowFast skips any
    name *containing* momentum / lr / model_iter; we match exactly, like weight_port.caffe2)."""
    return blob.endswith("_momentum") or blob in ("lr", "model_iter")


def detect_layout(keys: Iterable[str]) -> str | None:
    """``'pytorchvideo'`` (``blocks.*.multipathway_*``), ``'slowfast'`` (``s1.pathway0_stem.*`` ...),
    ``'caffe2'`` (``conv1_w``, ``t_conv1_w``, ``res2_0_branch2a_w``, ``pred_w`` ...) or ``None``."""
    keys = list(keys)
    votes = {
        "pytorchvideo": sum(k.startswith("blocks.") and "multipathway" in k for k in keys),
        "slowfast": sum(bool(re.match(r"(s\d+\.pathway\d_|s\d+_fuse\.|head\.)", k)) for k in keys),
        "caffe2": sum(bool(re.match(r"(t_)?(conv1_|res_conv1_|res\d+_\d+_branch|pool1_subsample|pred_)", k))
                      for k in keys),
    }
    best = max(votes, key=votes.get)
    return best if votes[best] else None


# ------------------------------------------------------------------------------------ conversion
def _hints(state, model, layout: str, source_name) -> Any:
    def hints(missing, unexpected, misshaped) -> list[str]:
        out = []
        cfg = model.config
        fuse = source_name("s1_fuse/conv_f2s/kernel")
        w = state.get(fuse)
        if w is not None and np.ndim(w) == 5 and w.shape[2] != cfg.fusion_kernel_size:
            like = {7: "slowfast_8x8_r50", 5: "slowfast_4x16_r50"}.get(int(w.shape[2]))
            out.append(f"the checkpoint's fusion kernel is {w.shape[2]}" + (f" like {like}" if like else "")
                       + f", --arch {model.name} has {cfg.fusion_kernel_size}")
        out += class_hint(state, source_name("head/projection/kernel"), model.num_classes)
        return out
    return hints


def convert_state_dict(state: Mapping[str, np.ndarray], arch: str, *, layout: str = "auto",
                       source_label: str = "checkpoint", container: str = "bare",
                       **model_options: Any) -> Conversion:
    """Convert a SlowFast-R50 state dict or Caffe2 blob dict (numpy arrays) for
    ``create_model(arch, **model_options)`` (``slowfast_8x8_r50`` / ``slowfast_4x16_r50``).

    ``layout``: ``"auto"`` (detect from the names), ``"slowfast"``, ``"pytorchvideo"`` or
    ``"caffe2"``. A shared ``module.``/``model.`` prefix is stripped (torch layouts).
    Raises :class:`CheckpointMismatchError` or :class:`PortError`.
    """
    notes: list[str] = []
    if layout != "caffe2":
        state, stripped = L.strip_prefixes(state)
        notes += [f"stripped key prefix {p!r}" for p in stripped]
    layout = resolve_layout(layout, state, detect_layout, LAYOUTS, label=source_label, scope=" for SlowFast",
                            unrecognised="unrecognised SlowFast checkpoint layout: neither PySlowFast names "
                                         "(s1.pathway0_stem.*), pytorchvideo names (blocks.*.multipathway_*) nor "
                                         "Caffe2 blobs (conv1_w, t_conv1_w, res2_0_branch2a_w, ...)")

    model = build_model(arch, "SlowFast", _PREFIXES, **model_options)
    targets = cached_target_shapes(arch, tuple(sorted(model_options.items())))
    depths = tuple(model.config.stage_depths)
    state = dict(state)
    ignorable = lambda k: False  # noqa: E731
    counter: str | None = L.BN_COUNTER

    if layout == "slowfast":
        def source_name(path: str) -> str:
            return jax_to_slowfast(path)
    elif layout == "pytorchvideo":
        def source_name(path: str) -> str:
            name = slowfast_to_pytorchvideo(jax_to_slowfast(path), len(depths))
            if name is None:  # pragma: no cover - every JAX leaf has a pytorchvideo name
                raise PortError(f"internal: no pytorchvideo name for {path}")
            return name
    else:  # caffe2: rename blobs with PySlowFast's rules, then look up PySlowFast names
        counter = None
        wanted = {jax_to_slowfast(p) for p in targets}
        by_name: dict[str, str] = {}
        duplicates: list[str] = []
        for blob in state:
            name = caffe2_to_slowfast(blob)
            if name in wanted:
                if name in by_name:
                    duplicates.append(f"{blob} (also {by_name[name]} -> {name})")
                by_name.setdefault(name, blob)
        skipped = sorted(b for b in state if b not in by_name.values() and _is_solver_blob(b))
        if skipped:
            notes.append(f"skipped {len(skipped)} Caffe2 solver blobs (momentum / lr / model_iter)")
        if duplicates:
            raise PortError(f"{source_label}: several Caffe2 blobs map to one parameter: {summarise(duplicates)}")

        def source_name(path: str) -> str:
            sf = jax_to_slowfast(path)
            return by_name.get(sf) or slowfast_to_caffe2(sf, depths) or f"<blob for {sf}>"

        ignorable = _is_solver_blob

    flat = port_strict(state, targets, source_name, label=source_label, arch=arch, layout=layout, counter=counter,
                       ignorable=ignorable, hints=_hints(state, model, layout, source_name))
    from co3d_jax.params import unflatten

    from .convert import Conversion  # lazy: convert.py may dispatch to this module
    source = {k: v for k, v in state.items() if not (layout == "caffe2" and _is_solver_blob(k))}
    return Conversion(params=unflatten(flat), arch=arch, model_options=dict(model_options), layout=layout,
                      source=source, notes=notes, container=container)


def convert_file(src: str, arch: str, *, layout: str = "auto", **model_options: Any) -> Conversion:
    """Read a checkpoint and convert it: a ``.pkl`` is a Caffe2 pickle (read with
    ``weight_port.caffe2.load_caffe2_blobs``), anything else a torch file (``weights_only``)."""
    if src.endswith(".pkl") or layout == "caffe2":
        from .caffe2 import load_caffe2_blobs  # restricted unpickler -> dict[str, np.ndarray]

        blobs = load_caffe2_blobs(src)
        return convert_state_dict(blobs, arch, layout="caffe2", source_label=src, container="caffe2 blobs",
                                  **model_options)
    from .checkpoint import read_checkpoint

    state, container = read_checkpoint(src)
    return convert_state_dict(state, arch, layout=layout, source_label=src, container=container, **model_options)


# ------------------------------------------------------------------------------------ --verify
def pytorchvideo_state(conv: Conversion) -> dict[str, np.ndarray]:
    """The conversion's source tensors under pytorchvideo ``create_slowfast`` names: as they are
    for a pytorchvideo file, else renamed (Caffe2 blobs by :func:`caffe2_to_slowfast`, then
    :func:`slowfast_to_pytorchvideo`). Only names are mapped, never layouts."""
    if conv.layout == "pytorchvideo":
        return dict(conv.source)
    out: dict[str, np.ndarray] = {}
    for key, value in conv.source.items():
        name = slowfast_to_pytorchvideo(caffe2_to_slowfast(key) if conv.layout == "caffe2" else key)
        if name is None or name in out:
            raise PortError(f"verify: no distinct pytorchvideo name for {conv.layout} key {key!r}")
        out[name] = value
    return out


def build_torch_reference(conv: Conversion, *, frames: int, image_size: int):
    """pytorchvideo ``create_slowfast`` configured like torch hub ``slowfast_r50`` (8x8: fusion
    kernel 7, stride alpha = 4) or its 4x16 counterpart (kernel 5, alpha 8), from the model's
    config, with PySlowFast's head pool kernels for the clip (``(frames // alpha, S // 32, S // 32)``,
    ``(frames, S // 32, S // 32)``) and a softmax head, in eval mode, holding the conversion's source
    tensors (every parameter and BN statistic must load)."""
    from torch import nn

    with warnings.catch_warnings():  # pytorchvideo's import calls the deprecated torch.jit.script
        warnings.simplefilter("ignore", FutureWarning)
        from pytorchvideo.models.slowfast import create_slowfast

    cfg = build_model(conv.arch, "SlowFast", _PREFIXES, **conv.model_options).config
    if cfg.depth not in (50, 101, 152):
        raise PortError(f"verify: pytorchvideo has no SlowFast of depth {cfg.depth}")
    clip_cfg = dataclasses.replace(cfg, image_size=image_size, clip_length=frames)
    width = cfg.width_per_group
    model = create_slowfast(model_depth=cfg.depth, model_num_class=cfg.num_classes,
                            slowfast_channel_reduction_ratio=(cfg.beta_inv,),
                            slowfast_conv_channel_fusion_ratio=cfg.fusion_conv_channel_ratio,
                            slowfast_fusion_conv_kernel_size=(cfg.fusion_kernel_size, 1, 1),
                            slowfast_fusion_conv_stride=(cfg.alpha, 1, 1), stem_dim_outs=(width, width // cfg.beta_inv),
                            head_pool_kernel_sizes=clip_cfg.head_pool_kernels, head_activation=nn.Softmax,
                            dropout_rate=0.0)
    load_reference_weights(model, pytorchvideo_state(conv), "pytorchvideo")
    return model.eval()


def pack_pathways(x, alpha: int) -> list:
    """pytorchvideo hub ``PackPathway`` on a torch clip ``(B, C, T, H, W)``: ``[slow, fast]``, the
    slow pathway the ``T // alpha`` frames at ``linspace(0, T - 1)``."""
    import torch

    t = x.shape[2]
    return [torch.index_select(x, 2, torch.linspace(0, t - 1, t // alpha).long()), x]


def verify(conv: Conversion, *, image_size: int | None = None, frames: int | None = None, batch: int = 1,
           seed: int = 0) -> VerifyResult:
    """``--verify``: the converted model against pytorchvideo's SlowFast on one random clip
    (:func:`weight_port.verification.compare`). Defaults: the model's image size and clip length
    (fast frames)."""
    cfg = build_model(conv.arch, "SlowFast", _PREFIXES, **conv.model_options).config
    image_size = int(image_size or cfg.image_size)
    frames = int(frames or cfg.clip_length)
    if image_size < 32 or frames < cfg.alpha:
        raise PortError(f"verify: a {frames}-frame {image_size}px clip is too small for {conv.arch}")
    reference = build_torch_reference(conv, frames=frames, image_size=image_size)
    outputs = head_activation_outputs(reference, prepare=lambda x: pack_pathways(x, cfg.alpha))
    return compare(conv, outputs, {"image_size": image_size, "clip_length": frames},
                   frames=frames, image_size=image_size, batch=batch, seed=seed)
