"""Command line: ``python -m weight_port {convert,download,list} ...``.

Failures print one ``error: ...`` line on stderr and exit with status 2 (no traceback), a missing
optional package (torch, pytorchvideo, torchvision) too, naming the ``[port]`` extra
(:func:`co3d_jax.extras.cli_main`).
"""

from __future__ import annotations

import argparse
import sys
import warnings
from typing import Sequence

from co3d_jax.extras import cli_main

from .errors import PortError, VerificationError, one_line

EXIT_ERROR = 2

_DESCRIPTION = """\
Port X3D / CoX3D, Slow / CoSlow / I3D / CoI3D, R(2+1)D-18 and SlowFast-R50 weights to framework-free
co3d_jax .npz files.

Reads PySlowFast checkpoints ({'model_state': ...} with s1.pathway0_stem.* names; co3d uses
these), pytorchvideo checkpoints (blocks.* names, torch hub x3d_*, slow_r50, i3d_r50), Caffe2
.pkl checkpoints (PySlowFast model zoo, e.g. I3D_8x8_R50.pkl; read with a restricted unpickler),
torchvision R(2+1)D state dicts, or a bare state dict, optionally with a module./model. key
prefix. The layout is detected from the key names."""


def _options(args: argparse.Namespace) -> dict:
    opts = {}
    if args.num_classes is not None:
        opts["num_classes"] = args.num_classes
    if args.depth_factor is not None:
        opts["depth_factor"] = args.depth_factor
    return opts


def _cmd_convert(args: argparse.Namespace) -> int:
    from .convert import convert_file, require_verify, save_conversion, verify_fn
    from .pipeline import RecordedConfigWarning

    if not args.out.endswith(".npz"):
        raise PortError(f"--out {args.out}: the output must be a .npz file")
    if args.verify:
        require_verify(args.arch)  # before any work: a missing reference package is one line
    with warnings.catch_warnings():  # printed below as warning: lines
        warnings.simplefilter("ignore", RecordedConfigWarning)
        conv = convert_file(args.src, args.arch, layout=args.layout, **_options(args))
    n_arrays = sum(1 for _ in _leaves(conv.params))
    n_values = sum(a.size for a in _leaves(conv.params))
    print(f"read {args.src}: {conv.layout} layout ({conv.container}), {len(conv.source)} tensors")
    for note in conv.notes:
        print(f"  note: {note}")
    for w in conv.warnings:
        print(f"warning: {w}", file=sys.stderr)
    if args.verify:
        verify = verify_fn(conv.arch)
        result = verify(conv, image_size=args.verify_image_size, frames=args.verify_frames, seed=args.seed)
        print(result.report())
        if not result.worst_rel <= args.tolerance:
            raise VerificationError(f"verification failed: relative error {result.worst_rel:.3e} > tolerance "
                                    f"{args.tolerance:g}; {args.out} not written")
        print(f"  ok (tolerance {args.tolerance:g})")
    save_conversion(conv, args.out, args.src)
    print(f"wrote {args.out}: {args.arch}, {n_arrays} arrays, {n_values:,} values")
    return 0


def _leaves(tree):
    for v in tree.values():
        if isinstance(v, dict):
            yield from _leaves(v)
        else:
            yield v


def _cmd_download(args: argparse.Namespace) -> int:
    from .download import download

    download(args.name, args.out, arch=args.arch, url=args.url, sha256=args.sha256,
             progress=not args.no_progress, restart=args.restart, lock=False if args.no_lock else (args.lock or True))
    return 0


def _cmd_list(args: argparse.Namespace) -> int:
    from .download import SOURCES, resolve_url

    print(f"{'NAME':22s} {'LAYOUT':13s}    {'DEFAULT ARCH':21s} {'URL'}  SHA256")
    for row in SOURCES:
        print(f"{row.name:22s} {row.layout:13s} -> {row.arch:21s} {resolve_url(row)}  "
              f"sha256={row.sha256 or 'unpinned'}")
    print("(unpinned: the first verified download records its sha256 in DIR/weights.lock.json; "
          "later downloads must match it)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The ``argparse`` parser with the ``convert``, ``download`` and ``list`` subcommands."""
    from .download import MIRROR_ENV
    from .pipeline import FAMILIES

    layouts = list(dict.fromkeys(name for f in FAMILIES for name in f.checkpoints.layouts))

    parser = argparse.ArgumentParser(prog="python -m weight_port", description=_DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    c = sub.add_parser("convert", help="convert a checkpoint file to a .npz params file",
                       description="Convert an X3D, Slow/I3D, R(2+1)D or SlowFast checkpoint (PySlowFast, "
                                   "pytorchvideo, torchvision, Caffe2 .pkl or bare state dict) to a co3d_jax .npz, "
                                   "strictly: every tensor consumed, every parameter filled.")
    c.add_argument("src", metavar="SRC", help="PyTorch checkpoint (.pyth/.pth/.pt), loaded with weights_only=True, "
                                              "or a Caffe2 .pkl (Slow/I3D and SlowFast archs; restricted unpickler)")
    c.add_argument("--arch", required=True,
                   help="co3d_jax model name (continual models use their clip model's weights): "
                        + "; ".join(f"{f.description}: {f.names_help}" for f in FAMILIES))
    c.add_argument("--out", required=True, metavar="DST.npz", help="output params file")
    c.add_argument("--layout", default="auto", choices=("auto", *layouts),
                   help="key naming of SRC (default: detect from the key names): "
                        + "; ".join(f"{f.description}: {', '.join(f.checkpoints.layouts)}" for f in FAMILIES)
                        + " (caffe2: a Caffe2 .pkl)")
    c.add_argument("--num-classes", type=int, default=None, metavar="N", help="model option num_classes (default 400)")
    c.add_argument("--depth-factor", type=float, default=None, metavar="F",
                   help="model option depth_factor of X3D archs (default per arch)")
    c.add_argument("--verify", action="store_true",
                   help="compare the JAX model with a torch reference holding the same weights (pytorchvideo "
                        "create_x3d / create_resnet / create_slowfast, torchvision r2plus1d_18) on one random "
                        "clip (needs pytorchvideo or torchvision); the .npz is written only if it passes")
    c.add_argument("--verify-image-size", type=int, default=None, metavar="S",
                   help="crop size of the verification clip (default: the model's)")
    c.add_argument("--verify-frames", type=int, default=None, metavar="T",
                   help="frames of the verification clip (default: the model's head window or clip length)")
    c.add_argument("--tolerance", type=float, default=1e-4, metavar="REL",
                   help="largest accepted relative error of --verify (default 1e-4)")
    c.add_argument("--seed", type=int, default=0, help="seed of the verification clip")
    c.set_defaults(func=_cmd_convert)

    d = sub.add_parser("download", help="download a public checkpoint and convert it",
                       description="Download a checkpoint from the URL table (see `list`), resuming a partial "
                                   "DIR/<file>.part, verify it (that it loads and converts strictly, and its sha256: "
                                   "--sha256, else the digest recorded in the lock file by the first verified "
                                   "download) and convert it to DIR/<arch>.npz. The first verified download of a row "
                                   "records its sha256 in the lock file (default DIR/weights.lock.json; commit it). "
                                   f"${MIRROR_ENV}=BASE_URL replaces the table's base URL.")
    d.add_argument("name", metavar="NAME", help="table row: x3d_xs, x3d_s, x3d_m, x3d_l, pytorchvideo_x3d_s, ..., "
                                                "slow_8x8_r50, slow_8x8_r50_charades, i3d_r50, pytorchvideo_i3d_r50")
    d.add_argument("--out", required=True, metavar="DIR", help="directory for the checkpoint and the .npz")
    d.add_argument("--arch", default=None, help="convert for this co3d_jax model (default: the row's arch)")
    d.add_argument("--url", default=None, help="download from this URL instead of the table's")
    d.add_argument("--sha256", default=None, metavar="HEX", help="require this sha256 digest")
    d.add_argument("--lock", default=None, metavar="PATH",
                   help="lock file of recorded digests (default DIR/weights.lock.json): the first verified download "
                        "of a row records its sha256, later ones must match it")
    d.add_argument("--no-lock", action="store_true", help="neither read nor write a lock file")
    d.add_argument("--restart", action="store_true", help="discard a partial or existing file and start over")
    d.add_argument("--no-progress", action="store_true", help="no progress bar")
    d.set_defaults(func=_cmd_download)

    ls = sub.add_parser("list", help="show the URL table", description="Show the checkpoint URL table.")
    ls.set_defaults(func=_cmd_list)
    return parser


@cli_main
def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status (0 ok, 2 error; a missing optional package, e.g. torch
    or pytorchvideo, is one ``error:`` line naming it and the ``[port]`` extra, status 2)."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except PortError as e:
        print(f"error: {one_line(e)}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
