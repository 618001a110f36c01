"""Slow-8x8-R50 / CoSlow and I3D-R50 / CoI3D (clip and continual): one ResNet-3D definition.

Structure and names follow PySlowFast's ``ResNet`` (``model_arch`` ``slow``/``i3d``), which co3d
uses for the clip baselines and mirrors in ``CoResNet`` (reference co3d.md §2.2, §2.3):

* ``s1`` stem: ``conv`` (k_s,7,7) stride (1,2,2) pad (k_s//2,3,3), ``bn``, ``relu``, ``pool``
  MaxPool (1,3,3) stride (1,2,2) pad (0,1,1) (``-inf`` padding);
* stages ``s2..s5`` (depths 3, 4, 6, 3; width 64; outputs 256, 512, 1024, 2048) of bottleneck
  blocks ``res{i}``: ``branch2`` = ``a`` (k_t,1,1) pad (k_t//2,0,0), ``a_bn``, ``a_relu``, ``b``
  (1,3,3) stride (1,s,s) pad (0,1,1), ``b_bn``, ``b_relu``, ``c`` 1x1x1, ``c_bn``; skip =
  ``branch1`` 1x1x1 stride (1,s,s) + ``branch1_bn`` on block 0 of each stage, identity otherwise,
  delayed by the main branch's delay in stream mode; the block output is ReLU(skip + branch2);
* ``pathway0_pool`` between ``s2`` and ``s3``: Slow (1,1,1) (the identity; kept because both
  PyTorch models count it in ptflops), I3D MaxPool (2,1,1) stride (2,1,1), a real temporal
  stride: CoI3D emits only every 2nd frame (t = D, D+2, ...);
* ``head``: ``avg_pool`` AvgPool (window // pool_t, image_size // 32, image_size // 32) stride 1,
  (dropout: inference no-op), ``projection`` Dense 2048 -> num_classes, ``act`` softmax
  (Kinetics), sigmoid (Charades) or identity (logits).

Temporal kernels (``_TEMPORAL_KERNEL_BASIS``, each stage's list repeated and cut to its depth):
Slow stem 1, res2 [1], res3 [1], res4 [3], res5 [3]; I3D stem 5, res2 [3], res3 [3, 1],
res4 [3, 1], res5 [1, 3]. Params pytree paths mirror the PyTorch names exactly like X3D's, e.g.
``params["s4"]["res0"]["residual"]["branch2"]["a"]["kernel"]`` (``s4.pathway0_res0.branch2.a``)
and ``params["s2"]["res0"]["residual"]["skip"]["branch1_bn"]["var"]``.

Continual metadata (reference §2.2): CoSlow D = 9 + T_w - 1 (16 / 72 for T_w 8 / 64), RF 26 / 82,
padding 9, stride 1; CoI3D D = 24 / 80, RF 42 / 98, padding 17, stride 2. ``temporal_fill`` is
passed to the head pool only, as in co3d's ``CoResNet``, where it has no effect (the pool has
no padding and its fill is never emitted); the convs always use zero fill.

In stream mode the layers after ``pathway0_pool`` run under ``lax.cond``: on a step where no
stream's pool emits (every 2nd frame of CoI3D) they are skipped, not computed and discarded.

Registry names: ``slow_8x8_r50``, ``i3d_r50`` (clip); ``coslow_8``, ``coslow_64``, ``coi3d_8``,
``coi3d_64`` and any window ``coslow_<T_w>`` / ``coi3d_<T_w>`` (continual). Charades (157
classes, sigmoid head): ``slow_8x8_r50_charades``, ``coslow_8_charades``, ``coslow_64_charades``
(or the options ``num_classes=157, head_activation='sigmoid'`` on any name). Other options:
``image_size``, ``temporal_fill``, and ``width`` / ``depths`` (reduced test configurations;
pytorchvideo's ``stem_dim_out`` builds the same reduced widths).

Normalisation (reference §5.1): 0.45/0.225 for all except the I3D clip baseline, which co3d
evaluates with ImageNet statistics (CoI3D uses 0.45/0.225).

MACs (:func:`co3d_jax.flops.paper_macs`, ptflops 0.7.5 convention): Slow 54.987 and I3D 28.677
GMACs per clip (equal to ptflops on pytorchvideo's ``create_resnet`` plus PySlowFast's identity
``pathway0_pool`` for Slow, less pytorchvideo's 400-element output pool; 0.1 % below the
reference's 55.04 / 28.71 for co3d's SlowFast ResNet; the gap equals one op per residual-sum
output element, 57.7 M / 31.7 M, presumably the residual add counted there: not reproduced);
CoSlow 6.921 per frame; CoI3D 5.695 on an emitting step, 1.528 on the others, 3.611 on average
(:func:`co3d_jax.flops.paper_step_macs`).
"""

from __future__ import annotations

import dataclasses

from ..layers import Activation, BatchNorm, Conv, Dense, IdentityPool, Pool, Sequential, StridedSequential
from ..model import Model
from ..normalisation import IMAGENET, KINETICS
from .blocks import res_block
from .spec import FamilySpec, Pattern, Reported

# _TEMPORAL_KERNEL_BASIS (PySlowFast / co3d CoResNet): stem, res2..res5
TEMPORAL_KERNELS = {
    "slow": ((1,), (1,), (1,), (3,), (3,)),
    "i3d": ((5,), (3,), (3, 1), (3, 1), (1, 3)),
}
POOL_T = {"slow": 1, "i3d": 2}  # _POOL1[arch][0]: pathway0_pool temporal kernel = stride


@dataclasses.dataclass(frozen=True)
class ResNet3DConfig:
    """Hyper-parameters. ``window`` is the head's temporal pool in *input* frames (``T_w``; the
    clip length of the clip models); the pool kernel is ``window // pool_t`` post-pool steps."""

    arch: str = "slow"               # "slow" or "i3d"
    image_size: int = 256
    window: int = 8
    frame_rate: int = 8
    num_classes: int = 400
    head_activation: str = "softmax"  # "softmax" (Kinetics), "sigmoid" (Charades), "identity" (logits)
    temporal_fill: str = "zeros"     # head pool only (co3d CoResNet); no effect on outputs
    depths: tuple = (3, 4, 6, 3)
    width: int = 64

    def __post_init__(self):
        object.__setattr__(self, "depths", tuple(int(d) for d in self.depths))
        if len(self.depths) != 4:
            raise ValueError(f"ResNet3D: depths must list 4 stages, got {self.depths}")
        if self.arch not in TEMPORAL_KERNELS:
            raise ValueError(f"ResNet3D: arch must be one of {sorted(TEMPORAL_KERNELS)}, got {self.arch!r}")
        if self.window // self.pool_t < 1:
            raise ValueError(f"ResNet3D: window {self.window} is shorter than the temporal pool {self.pool_t}")
        if self.image_size // 32 < 1:
            raise ValueError(f"ResNet3D: image_size {self.image_size} must be at least 32")

    @property
    def pool_t(self) -> int:
        return POOL_T[self.arch]

    def stage_kernels(self, stage: int) -> list[int]:
        """Temporal kernel of ``conv_a`` for every block of stage ``stage`` (0 = res2)."""
        basis = list(TEMPORAL_KERNELS[self.arch][stage + 1])
        depth = self.depths[stage]
        return (basis * depth)[:depth]


def bottleneck(c_in: int, c_out: int, inner: int, k_t: int, stride: int) -> Sequential:
    return Sequential.of(
        ("a", Conv(c_in, inner, (k_t, 1, 1), 1, (k_t // 2, 0, 0))),
        ("a_bn", BatchNorm(inner)),
        ("a_relu", Activation("relu")),
        ("b", Conv(inner, inner, (1, 3, 3), (1, stride, stride), (0, 1, 1))),
        ("b_bn", BatchNorm(inner)),
        ("b_relu", Activation("relu")),
        ("c", Conv(inner, c_out)),
        ("c_bn", BatchNorm(c_out)),
    )


def stem(c_out: int, k_t: int) -> Sequential:
    """ResNet stem: ``(k_t, 7, 7)`` conv stride (1, 2, 2), BN, ReLU, ``(1, 3, 3)`` max pool stride (1, 2, 2)."""
    return Sequential.of(
        ("conv", Conv(3, c_out, (k_t, 7, 7), (1, 2, 2), (k_t // 2, 3, 3))),
        ("bn", BatchNorm(c_out)),
        ("relu", Activation("relu")),
        ("pool", Pool("max", (1, 3, 3), (1, 2, 2), (0, 1, 1))),
    )


def _block(c_in: int, c_out: int, inner: int, k_t: int, stride: int) -> Sequential:
    """CoResBlock: ``Sequential(BroadcastReduce(skip, branch2), ReLU)`` (reference §2.3)."""
    return res_block(bottleneck(c_in, c_out, inner, k_t, stride), c_in, c_out, stride)


def build_resnet3d(cfg: ResNet3DConfig) -> Sequential:
    """The Slow/I3D network as a :class:`StridedSequential` (``s1``, ``s2``, ``pathway0_pool``,
    ``s3``, ``s4``, ``s5``, ``head``)."""
    w = cfg.width
    children = [("s1", stem(w, TEMPORAL_KERNELS[cfg.arch][0][0]))]
    c_in = w
    for s, depth in enumerate(cfg.depths):
        c_out, inner = w * 4 * 2 ** s, w * 2 ** s
        stride = 1 if s == 0 else 2
        kernels = cfg.stage_kernels(s)
        blocks = [(f"res{i}", _block(c_in if i == 0 else c_out, c_out, inner, kernels[i], stride if i == 0 else 1))
                  for i in range(depth)]
        children.append((f"s{s + 2}", Sequential.of(*blocks)))
        c_in = c_out
        if s == 0:
            p = cfg.pool_t
            pool = IdentityPool() if p == 1 else Pool("max", (p, 1, 1), (p, 1, 1), 0)
            children.append(("pathway0_pool", pool))
    final = cfg.image_size // 32
    head = Sequential.of(
        ("avg_pool", Pool("avg", (cfg.window // cfg.pool_t, final, final), 1, 0, temporal_fill=cfg.temporal_fill)),
        ("projection", Dense(c_in, cfg.num_classes)),
        ("act", Activation(cfg.head_activation)),
    )
    children.append(("head", head))
    return StridedSequential.of(*children)


ARCHS = {
    # arch -> (image size, clip-model normalisation)
    "slow": (256, KINETICS),
    "i3d": (224, IMAGENET),
}


def resnet3d(arch: str, *, continual: bool, window: int | None = None, name: str | None = None,
             **options) -> Model:
    """Build Slow-8x8-R50 / I3D-R50 (``continual=False``) or CoSlow / CoI3D with head window
    ``window`` (input frames; default 8). ``options``: :class:`ResNet3DConfig` fields
    (``image_size``, ``num_classes``, ``head_activation``, ``temporal_fill``, ...)."""
    if arch not in ARCHS:
        raise ValueError(f"unknown ResNet-3D arch {arch!r}; choose from {sorted(ARCHS)}")
    unknown = set(options) - {f.name for f in dataclasses.fields(ResNet3DConfig)} - {"normalisation"}
    if unknown or "arch" in options:
        raise TypeError(f"unknown ResNet-3D options {sorted(unknown | ({'arch'} & set(options)))}")
    size, clip_norm = ARCHS[arch]
    normalisation = options.pop("normalisation", KINETICS if continual else clip_norm)
    base = dict(arch=arch, image_size=size, window=8, frame_rate=8)
    if window is not None:
        base["window"] = int(window)
    cfg = ResNet3DConfig(**{**base, **options})
    default = {"slow": ("coslow", "slow_8x8_r50"), "i3d": ("coi3d", "i3d_r50")}[arch]
    name = name or (f"{default[0]}_{cfg.window}" if continual else default[1])
    return Model(name=name, net=build_resnet3d(cfg), image_size=cfg.image_size,
                 clip_length=8 if continual else cfg.window, frame_rate=cfg.frame_rate,
                 num_classes=cfg.num_classes, normalisation=normalisation, config=cfg, continual=continual)


CHARADES = dict(num_classes=157, head_activation="sigmoid")

# ------------------------------------------------------------------------------------ the family
_VARIANTS = {
    "slow_8x8_r50": dict(arch="slow", continual=False),
    "i3d_r50": dict(arch="i3d", continual=False),
    "slow_8x8_r50_charades": dict(arch="slow", continual=False, **CHARADES),
}
for _w in (8, 64):
    _VARIANTS[f"coslow_{_w}"] = dict(arch="slow", continual=True, window=_w)
    _VARIANTS[f"coi3d_{_w}"] = dict(arch="i3d", continual=True, window=_w)
    _VARIANTS[f"coslow_{_w}_charades"] = dict(arch="slow", continual=True, window=_w, **CHARADES)


_CONTINUAL_PREFIX = {"slow": "coslow", "i3d": "coi3d"}


def _pattern_options(m) -> dict:
    arch = next(a for a, p in _CONTINUAL_PREFIX.items() if p == m[1])
    return dict(arch=arch, continual=True, window=int(m[2]), **(CHARADES if m[3] else {}))


def _pattern_name(o: dict) -> str:
    charades = all(o.get(k) == v for k, v in CHARADES.items())
    return f"{_CONTINUAL_PREFIX[o['arch']]}_{o['window']}" + ("_charades" if charades else "")


# ------------------------------------------------------------------------------------ torch checkpoints
# The porter's knowledge of Slow/I3D checkpoints (weight_port reads CHECKPOINTS; see
# models/checkpoints.py); CoSlow/CoI3D use the clip models' weights unchanged. Three layouts, all
# named through PySlowFast's names (jax_to_pyslowfast, as for X3D):
# * "slowfast": PySlowFast ResNet (co3d's clip Slow/I3D): s1.pathway0_stem.conv.weight,
#   s2.pathway0_res0.branch1_bn.running_var, s4.pathway0_res2.branch2.a.weight, head.projection.weight;
# * "pytorchvideo": create_resnet / torch hub slow_r50, i3d_r50: blocks.0.{conv,norm},
#   blocks.{b}.res_blocks.{i}.{branch1_conv,branch1_norm,branch2.conv_{a,b,c},branch2.norm_{a,b,c}},
#   blocks.{h}.proj; block b of stage s{n} is n - 1, except that pytorchvideo's I3D inserts its
#   temporal pool as blocks.2, shifting res3..res5 to blocks.3..5 and the head to blocks.6 (detected
#   from a blocks.6.* key, accepted for either arch);
# * "caffe2": PySlowFast / video-nonlocal-net Caffe2 pickles (I3D_8x8_R50.pkl): conv1_w,
#   res_conv1_bn_{s,b,rm,riv}, res{S}_{i}_branch1_w, res{S}_{i}_branch2{a,b,c}_w, ..._bn_*, pred_{w,b};
#   blobs that differ from the torch shape by trailing singleton dims are reshaped.
import re  # noqa: E402

from .checkpoints import CAFFE2_BN, CAFFE2_BN_INV, CheckpointSpec, Naming, class_hint, jax_to_pyslowfast, vote  # noqa: E402,E501


def slowfast_to_pytorchvideo(key: str, pool_block: bool = False) -> str | None:
    """pytorchvideo ``create_resnet`` name of a PySlowFast ResNet key. ``pool_block``: the file
    numbers its blocks with a ``stage1_pool`` block at index 2 (pytorchvideo's I3D)."""
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
    if module == "s1.pathway0_stem.bn" and param in CAFFE2_BN_INV:
        return f"res_conv1_bn_{CAFFE2_BN_INV[param]}"
    if module == "head.projection" and param in ("weight", "bias"):
        return f"pred_{param[0]}"
    block = r"s(\d+)\.pathway0_res(\d+)\.(branch1|branch1_bn|branch2\.([abc])|branch2\.([abc])_bn)"
    if m := re.fullmatch(block, module):
        base = f"res{m[1]}_{m[2]}_branch" + ("1" if m[3].startswith("branch1") else f"2{m[4] or m[5]}")
        if m[3].endswith("_bn"):
            return f"{base}_bn_{CAFFE2_BN_INV[param]}" if param in CAFFE2_BN_INV else None
        return f"{base}_w" if param == "weight" else None
    return None


def caffe2_to_slowfast(name: str) -> str | None:
    """PySlowFast name of a Caffe2 ResNet blob (``None``: not a ResNet parameter blob)."""
    if name == "conv1_w":
        return "s1.pathway0_stem.conv.weight"
    if m := re.fullmatch(r"res_conv1_bn_(s|b|rm|riv)", name):
        return f"s1.pathway0_stem.bn.{CAFFE2_BN[m[1]]}"
    if m := re.fullmatch(r"pred_([wb])", name):
        return f"head.projection.{'weight' if m[1] == 'w' else 'bias'}"
    if m := re.fullmatch(r"res(\d+)_(\d+)_branch(1|2[abc])_(w|bn_s|bn_b|bn_rm|bn_riv)", name):
        branch = "branch1" if m[3] == "1" else f"branch2.{m[3][1]}"
        if m[4] == "w":
            return f"s{m[1]}.pathway0_res{m[2]}.{branch}.weight"
        return f"s{m[1]}.pathway0_res{m[2]}.{branch}_bn.{CAFFE2_BN[m[4][3:]]}"
    return None


def has_pool_block(keys) -> bool:
    """Whether pytorchvideo keys are numbered with I3D's ``stage1_pool`` block (a ``blocks.6.*`` key)."""
    return any(k.startswith("blocks.6.") for k in keys)


def pyslowfast_name(key: str, layout: str, pool_block: bool = False) -> str:
    """The ``layout`` name of a PySlowFast ResNet key."""
    if layout == "slowfast":
        return key
    name = slowfast_to_pytorchvideo(key, pool_block) if layout == "pytorchvideo" else slowfast_to_caffe2(key)
    if name is None:  # pragma: no cover - every JAX ResNet-3D leaf has a name in each layout
        raise ValueError(f"internal: no {layout} name for {key}")
    return name


def _naming(src) -> Naming:
    notes = []
    pool_block = src.layout == "pytorchvideo" and has_pool_block(src.shapes)
    if pool_block:
        notes.append("pytorchvideo block numbering with a stage-1 pool block (blocks.2): res3..res5 are "
                     "blocks.3..5, the head blocks.6")
    if ignored := sum(map(src.ignorable, src.shapes)):
        notes.append(f"ignored {ignored} non-parameter Caffe2 blobs (*_momentum, lr, model_iter)")
    return Naming(lambda path: pyslowfast_name(jax_to_pyslowfast(path), src.layout, pool_block), tuple(notes))


def _hints(src, key) -> list[str]:
    """Why a checkpoint may not fit: the other arch's stem kernel, other classes, not a ResNet-3D at all."""
    hints = []
    w = src.shapes.get(key("s1/conv/kernel"))
    k = int(w[2]) if w is not None and len(w) == 5 else None
    want_k = {"slow": 1, "i3d": 5}[src.config.arch]
    if k is not None and k != want_k:
        like = {1: "Slow (slow_8x8_r50, coslow_*)", 5: "I3D (i3d_r50, coi3d_*)"}.get(k)
        hints.append(f"the checkpoint's stem has temporal kernel {k}" + (f" like {like}" if like else "")
                     + f", --arch {src.arch} has {want_k}")
    proj = src.shapes.get(key("head/projection/kernel"))
    charades = proj is not None and len(proj) >= 2 and proj[0] == 157
    hints += class_hint(src, key("head/projection/kernel"),
                        "pass --num-classes {n}" + (" or use a *_charades arch" if charades else ""))
    if not any(re.match(r"(blocks\.|s\d+\.pathway0_|head\.|conv1_|res\d|res_conv1|pred_)", str(s)) for s in src.shapes):
        hints.append("this does not look like a ResNet-3D checkpoint")
    return hints


CHECKPOINTS = CheckpointSpec(
    label="Slow/CoSlow/I3D/CoI3D",
    layouts=("slowfast", "pytorchvideo", "caffe2"),
    detect=lambda keys: vote(keys, {"pytorchvideo": lambda k: k.startswith("blocks."),
                                    "slowfast": lambda k: re.match(r"(s\d+\.pathway0_|head\.)", k),
                                    "caffe2": lambda k: caffe2_to_slowfast(k) is not None}),
    unrecognised="unrecognised state dict layout: neither PySlowFast ResNet names (s1.pathway0_stem.*, "
                 "s2.pathway0_res0.*, head.projection.*), pytorchvideo names (blocks.*) nor Caffe2 blobs "
                 "(conv1_w, res2_0_branch2a_w, pred_w)",
    naming=_naming,
    relayout={"slowfast": "torch_exact", "pytorchvideo": "torch_exact", "caffe2": "caffe2"},
    linear=("head/projection",),
    blob_layouts=("caffe2",),
    hints=_hints,
)
# ------------------------------------------------------------------------------------ end of torch checkpoints

FAMILY = FamilySpec(
    name="resnet3d",
    description="Slow/CoSlow/I3D/CoI3D",
    build=resnet3d,
    variants=_VARIANTS,
    patterns=(Pattern(r"(coslow|coi3d)_(\d+)(_charades)?", _pattern_options,
                      "coslow_<window>, coi3d_<window> (+ _charades)", _pattern_name),),
    reported={
        "slow_8x8_r50": Reported(67.42, 54.87), "coslow_8": Reported(65.90, 6.90),
        "coslow_64": Reported(73.05, 6.90), "i3d_r50": Reported(63.98, 28.61),
        "coi3d_8": Reported(59.58, 5.68), "coi3d_64": Reported(56.86, 5.68),
    },
    paper_batch=lambda name: 8,  # co3d's profiling scripts (reference §5.5)
    checkpoints=CHECKPOINTS,
)


__all__ = ["FAMILY", "ResNet3DConfig", "TEMPORAL_KERNELS", "build_resnet3d", "resnet3d"]
