"""What a family's torch checkpoints look like, as data: :class:`CheckpointSpec`.

Each model file declares one (``FAMILY = FamilySpec(..., checkpoints=...)``) in a section just
above its ``FAMILY``; the weight porter (:mod:`weight_port`) reads it and knows no family by
name. Everything here is plain Python on key names and shape tuples: no torch, no numpy, no
``weight_port``.

A spec says which layouts (namings) a family's checkpoints come in, how to tell them apart from
the key names (:attr:`CheckpointSpec.detect`), the checkpoint key of every JAX params path in
each layout (:attr:`CheckpointSpec.naming`), how tensors are re-laid (rule names the porter
implements: :data:`RELAYOUT_RULES`), and hints for a checkpoint that does not fit.

Also here: the naming rules several families share (:func:`jax_to_pyslowfast`,
:data:`CAFFE2_BN`) and small helpers for writing specs (:func:`vote`, :func:`class_hint`).
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Callable, Iterable, Mapping, Sequence

Shape = tuple[int, ...]

# JAX leaf -> torch parameter name (every family).
LEAF_TO_TORCH = {"kernel": "weight", "bias": "bias", "scale": "weight", "mean": "running_mean",
                 "var": "running_var"}
BN_LEAVES = ("scale", "bias", "mean", "var")
BN_COUNTER = "num_batches_tracked"  # BN buffer of torch state dicts; consumed, ignored

# Caffe2 BN blob suffixes (PySlowFast model zoo): ``_bn_s`` scale, ``_bn_b`` shift, ``_bn_rm`` running
# mean, ``_bn_riv`` the running variance as is (PySlowFast and co3d do not invert it).
CAFFE2_BN = {"s": "weight", "b": "bias", "rm": "running_mean", "riv": "running_var"}
CAFFE2_BN_INV = {v: k for k, v in CAFFE2_BN.items()}

# Tensor re-layout rules the porter implements (weight_port.tensors.RELAYOUT), by name:
RELAYOUT_RULES = (
    "torch",        # the torch rank; a Linear may carry trailing singleton dims (a Caffe2 FC as a conv)
    "torch_exact",  # exactly the torch shape
    "pyslowfast",   # a conv, or for a dense kernel a Linear (O, I) or a 1x1x1 conv (O, I, 1, 1, 1)
    "caffe2",       # the torch shape up to trailing singleton dims (Caffe2 blobs lose or gain them)
)


@dataclasses.dataclass(frozen=True)
class Source:
    """What a naming or hint function may look at: the checkpoint's ``layout``, its tensors'
    ``shapes`` by key (after prefix stripping), the JAX params to fill (``targets``: path ->
    shape), the model's ``arch``, ``config`` and ``num_classes``, and ``ignorable(key)``: keys the
    porter consumes without using (Caffe2 solver blobs in a blob layout)."""

    layout: str
    shapes: Mapping[str, Shape]
    targets: Mapping[str, Shape]
    arch: str
    config: Any
    num_classes: int
    ignorable: Callable[[str], bool] = lambda key: False


@dataclasses.dataclass(frozen=True)
class Naming:
    """How one checkpoint names the params: ``key(jax path)`` is the tensor's key in it (a key
    it lacks is reported missing); ``notes`` tell the user what was detected."""

    key: Callable[[str], str]
    notes: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class CheckpointSpec:
    """One family's torch checkpoints.

    * ``label``: the family in porter messages (``"the SlowFast porter handles ..."``);
    * ``layouts``: the namings accepted (``--layout``); ``detect(keys) -> layout | None`` picks
      one from the key names; ``unrecognised``: the message when it finds none;
    * ``naming(source) -> Naming``: the checkpoint key of every JAX path (:class:`Source`); it
      raises ``ValueError`` for a checkpoint it cannot name (e.g. two blobs for one parameter);
    * ``relayout``: layout -> re-layout rule name (:data:`RELAYOUT_RULES`), default ``"torch"``;
    * ``linear``: the JAX modules whose 2-D kernel is a torch ``Linear`` ``(O, I)``; the other
      2-D kernels are 1x1x1 convs ``(O, I, 1, 1, 1)``. ``None``: every 2-D kernel is a Linear;
    * ``blob_layouts``: layouts read from Caffe2 pickles (``.pkl``): no BN counters, solver
      blobs consumed and ignored;
    * ``optional_bns``: layout -> ``fn(targets) -> [JAX BN module paths]`` that checkpoints of
      that layout may lack entirely; the porter fills an absent one with an exact identity BN;
    * ``hints(source, key) -> [str]``: why a checkpoint may not fit (another size, class count);
    * ``recorded(config, source) -> [str]``: warnings when the training config a checkpoint records
      (PySlowFast's ``cfg`` as nested dicts, e.g. ``config["DATA"]["NUM_FRAMES"]``) describes
      another model than ``source.arch`` although the tensors fit (X3D-S and X3D-M share shapes).
    """

    label: str
    layouts: tuple[str, ...]
    detect: Callable[[Sequence[str]], str | None]
    unrecognised: str
    naming: Callable[[Source], Naming]
    relayout: Mapping[str, str] = dataclasses.field(default_factory=dict)
    linear: tuple[str, ...] | None = None
    blob_layouts: tuple[str, ...] = ()
    optional_bns: Mapping[str, Callable[[Mapping[str, Shape]], Iterable[str]]] = dataclasses.field(
        default_factory=dict)
    hints: Callable[[Source, Callable[[str], str]], list[str]] = lambda source, key: []
    recorded: Callable[[Mapping[str, Any], Source], list[str]] = lambda config, source: []

    def relayout_rule(self, layout: str) -> str:
        return self.relayout.get(layout, "torch")

    def is_linear(self, jax_path: str) -> bool:
        """Whether the 2-D kernel at ``jax_path`` is a torch Linear (else a 1x1x1 conv)."""
        return self.linear is None or jax_path.rsplit("/", 1)[0] in self.linear


# ------------------------------------------------------------------------------------ shared rules
def torch_leaf(path: str) -> str:
    """The torch parameter name of a JAX leaf (``kernel`` -> ``weight`` ...)."""
    leaf = path.rsplit("/", 1)[-1]
    if leaf not in LEAF_TO_TORCH:
        raise ValueError(f"no torch name for JAX parameter {path!r}")
    return LEAF_TO_TORCH[leaf]


def jax_to_pyslowfast(path: str) -> str:
    """PySlowFast's single-pathway name (X3D, Slow/I3D) of a JAX path:
    ``s2/res0/residual/branch2/se/gate/fc1/kernel`` -> ``s2.pathway0_res0.branch2.se.fc1.weight``."""
    *mods, leaf = path.split("/")
    if leaf not in LEAF_TO_TORCH or not mods:
        raise ValueError(f"no slowfast name for JAX parameter {path!r}")
    name = LEAF_TO_TORCH[leaf]
    if mods[0] == "s1":
        module = ["s1", "pathway0_stem", *mods[1:]]
    elif mods[0] == "head":
        module = mods
    elif re.fullmatch(r"s\d+", mods[0]) and len(mods) >= 4 and re.fullmatch(r"res\d+", mods[1]) \
            and mods[2] == "residual":
        rest = mods[3:]
        if rest[0] == "skip":             # skip/branch1, skip/branch1_bn
            rest = rest[1:]
        elif rest[:3] == ["branch2", "se", "gate"]:  # the SE's gate Sequential has no torch level
            rest = ["branch2", "se", *rest[3:]]
        module = [mods[0], f"pathway0_{mods[1]}", *rest]
    else:
        raise ValueError(f"no slowfast name for JAX parameter {path!r}")
    return ".".join([*module, name])


def vote(keys: Iterable[str], rules: Mapping[str, Callable[[str], bool]]) -> str | None:
    """The layout whose rule matches most ``keys`` (ties: the first in ``rules``), ``None`` if none matches."""
    keys = list(keys)
    votes = {layout: sum(bool(rule(k)) for k in keys) for layout, rule in rules.items()}
    best = max(votes, key=votes.get)
    return best if votes[best] else None


def class_hint(source: Source, key: str, advice: str = "pass --num-classes {n}") -> list[str]:
    """A hint when the classifier tensor ``key`` has another class count than the model."""
    shape = source.shapes.get(key)
    if shape is not None and len(shape) >= 2 and shape[0] != source.num_classes:
        return [f"the checkpoint has {shape[0]} classes, the model {source.num_classes} ("
                + advice.format(n=shape[0]) + ")"]
    return []


__all__ = ["BN_COUNTER", "BN_LEAVES", "CAFFE2_BN", "CAFFE2_BN_INV", "CheckpointSpec", "LEAF_TO_TORCH", "Naming",
           "RELAYOUT_RULES", "Source", "class_hint", "jax_to_pyslowfast", "torch_leaf", "vote"]
