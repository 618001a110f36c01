"""Build a TFDS dataset from a manual folder (see ``co3d_jax.data.tfds``).

    python -m co3d_jax.data.tfds --dataset kinetics400 --manual-dir K400_ROOT --data-dir TFDS_DIR [--split validate]
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from ...extras import cli_main, require
from . import DATASETS


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m co3d_jax.data.tfds", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="Needs tensorflow-datasets and array-record (pip install 'co3d-jax[tfds]'), "
                                       "not TensorFlow. Prints a JSON line with the dataset folder and split sizes.")
    p.add_argument("--dataset", required=True, choices=sorted(DATASETS))
    p.add_argument("--manual-dir", required=True, help="the dataset in a layout co3d_jax.data reads")
    p.add_argument("--data-dir", required=True, help="TFDS data_dir to write into")
    p.add_argument("--split", action="append", default=[], dest="splits",
                   help="build only this split (repeatable; default: every split found)")
    return p


def build(dataset: str, manual_dir: str, data_dir: str, splits=()) -> dict:
    """Prepare ``dataset`` from ``manual_dir`` into ``data_dir``; returns where and how many."""
    tfds = require("tensorflow_datasets", "tfds", "building a TFDS dataset")

    from .builders import Co3dCharades, Co3dKinetics400

    if not os.path.isdir(manual_dir):
        raise FileNotFoundError(f"--manual-dir {manual_dir} is not a folder")
    cls = Co3dKinetics400 if dataset == "kinetics400" else Co3dCharades
    builder = cls(data_dir=data_dir, splits=tuple(splits) or None)
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
    skipped = {split: m.get("skipped", []) for split, m in builder.info.metadata.get("splits", {}).items()}
    return dict(dataset=DATASETS[dataset], builder_dir=os.fspath(builder.data_dir),
                splits={name: info.num_examples for name, info in builder.info.splits.items()},
                skipped={k: v for k, v in skipped.items() if v})


@cli_main
def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        out = build(args.dataset, args.manual_dir, args.data_dir, args.splits)
    except (FileNotFoundError, ValueError, AssertionError) as e:  # TFDS asserts on an empty manual dir
        print(f"error: {str(e).splitlines()[0]}", file=sys.stderr)
        return 2
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
