"""TFDS builders ``co3d_kinetics400`` and ``co3d_charades`` (manual download; see the package doc).

Each builder indexes its manual folder with the same code as the folder path
(:mod:`co3d_jax.data.datasets`), writes one example per video in index order
(``disable_shuffling``) and stores the index itself (ids, label names, missing videos, classes)
in the dataset's ``metadata.json``, so a reader lists the videos and builds the class index
without reading a single example.

Importing this module registers both builders with TFDS (it imports ``tensorflow_datasets``).
"""

from __future__ import annotations

import dataclasses
import os
import re
import sys
import warnings

import numpy as np

from ...extras import require

tfds = require("tensorflow_datasets", "tfds", "the TFDS builders")

from ..datasets import (SPLIT_ALIASES, DatasetIndex, canonical_split, charades, charades_frame_root, charades_split,
                        kinetics_csv, kinetics_folder, label_indexer, shipped_kinetics400_classes)

KINETICS_SPLITS = ("train", "validate", "test")
CHARADES_SPLITS = ("train", "val")
CHARADES_NUM_CLASSES = 157
_STEM = re.compile(r"^(?P<ytid>.+)_(?P<start>\d{6})_(?P<end>\d{6})$")

_KINETICS_MANUAL = """\
Put Kinetics-400 in the manual folder in one of two layouts:
  * co3d/PySlowFast folders: data/{train,validate,test}/{label}/{ytid}_{start:06d}_{end:06d}.mp4,
    optionally with splits/{split}.json (the crawler's JSON); or
  * the official annotation CSVs (label,youtube_id,time_start,time_end,split) as
    annotations/{split}.csv or {split}.csv, with the clips anywhere below the folder.
"""

_CHARADES_MANUAL = """\
Put Charades v1 RGB frames and the PySlowFast frame lists in the manual folder:
  splits/{train,val}.csv (original_vido_id video_id frame_id path labels), splits/classes.txt
  (optional) and data/Charades_v1_rgb/{video}/{video}-{frame:06d}.jpg.
"""

_CITATION = """\
@inproceedings{hedegaard2022co3d,
  title={Continual 3D Convolutional Neural Networks for Real-time Processing of Videos},
  author={Hedegaard, Lukas and Iosifidis, Alexandros},
  booktitle={European Conference on Computer Vision (ECCV)},
  year={2022}
}"""


def _read_bytes(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def _unreadable(path: str) -> str | None:
    """Why ``path`` cannot be read (permissions, a folder, a dangling link), or None."""
    try:
        with open(path, "rb") as f:
            f.read(1)
    except OSError as e:
        return f"cannot read: {type(e).__name__}: {e.strerror or e}"
    return None


def _without_unreadable(index: DatasetIndex) -> DatasetIndex:
    """``index`` less the videos whose file cannot be read, which join ``index.skipped`` (each is
    reported on stderr); the build goes on with the rest, as evaluation does with a bad video."""
    keep, skipped = [], list(index.skipped)
    for r in index.records:
        why = _unreadable(r.path)
        if why is None:
            keep.append(r)
        else:
            skipped.append(dict(path=r.id, reason=why))
            print(f"warning: {r.path}: {why}; left out of the TFDS dataset", file=sys.stderr, flush=True)
    return dataclasses.replace(index, records=keep, skipped=skipped)


def _stem_fields(record_id: str) -> tuple[str, int, int]:
    stem = os.path.splitext(os.path.basename(record_id))[0]
    m = _STEM.match(stem)
    if m is None:
        return stem, -1, -1
    return m["ytid"], int(m["start"]), int(m["end"])


def _find_kinetics_csv(root: str, split: str) -> str | None:
    names = [split] + [alias for alias, canon in SPLIT_ALIASES.items() if canon == split]
    for name in names:
        for cand in (os.path.join(root, "annotations", f"{name}.csv"), os.path.join(root, f"{name}.csv"),
                     os.path.join(root, f"kinetics_400_{name}.csv")):
            if os.path.isfile(cand):
                return cand
    return None


def kinetics_indexes(root: str, splits=None) -> dict[str, DatasetIndex]:
    """The folder-path index of every Kinetics split found in ``root`` (or of ``splits``)."""
    root = os.path.abspath(root)
    out = {}
    for split in splits or KINETICS_SPLITS:
        split = canonical_split(split)
        if split not in KINETICS_SPLITS:
            raise ValueError(f"unknown Kinetics split {split!r} ({', '.join(KINETICS_SPLITS)})")
        with warnings.catch_warnings():   # "found N classes": the class list is rebuilt at read time
            warnings.simplefilter("ignore")
            if (os.path.isfile(os.path.join(root, "splits", f"{split}.json"))
                    or os.path.isdir(os.path.join(root, "data", split))):
                out[split] = kinetics_folder(root, split, "dataset")
            elif (csv_path := _find_kinetics_csv(root, split)) is not None:
                out[split] = kinetics_csv(csv_path, root, split, "dataset")
            elif splits:
                raise FileNotFoundError(f"{root}: no Kinetics split {split!r} (data/{split}/, splits/{split}.json "
                                        f"or annotations/{split}.csv)")
    if not out:
        raise FileNotFoundError(f"{root}: no Kinetics-400 split found.\n{_KINETICS_MANUAL}")
    return out


class _ManualBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """What both builders share: ArrayRecord by default, a ``splits`` filter, examples in index
    order and the co3d index in ``metadata.json``."""

    def __init__(self, *, splits=None, **kwargs):
        """``splits``: build only these (default: every split found in the manual folder)."""
        self._wanted_splits = tuple(splits) if splits else None
        kwargs.setdefault("file_format", "array_record")   # TFRecord writing would need TensorFlow
        super().__init__(**kwargs)

    def _dataset_info(self, description: str, features: dict, homepage: str) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(builder=self, description=description,
                                     features=tfds.features.FeaturesDict(features), homepage=homepage,
                                     citation=_CITATION, metadata=tfds.core.MetadataDict(), disable_shuffling=True)


class Co3dKinetics400(_ManualBuilder):
    """Kinetics-400 clips, stored as their encoded files (decoded by co3d_jax when read)."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Encoded video files, co3d/PySlowFast folder or official CSV layouts."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = _KINETICS_MANUAL

    def _info(self) -> tfds.core.DatasetInfo:
        return self._dataset_info(
            "Kinetics-400 video clips as encoded files, with the class of each clip.",
            {
                "id": tfds.features.Text(doc="path below data/ (folders) or the clip stem (CSV)"),
                "video": tfds.features.Tensor(shape=(), dtype=np.object_, doc="the encoded video file"),
                "file_name": tfds.features.Text(),
                "label": tfds.features.ClassLabel(names=shipped_kinetics400_classes(),
                                                  doc="class among the 400; -1 when unlabelled (test)"),
                "label_name": tfds.features.Text(doc="the label as written in the source ('' if none)"),
                "youtube_id": tfds.features.Text(),
                "time_start": tfds.features.Scalar(dtype=np.int32, doc="seconds; -1 if unknown"),
                "time_end": tfds.features.Scalar(dtype=np.int32, doc="seconds; -1 if unknown"),
            },
            "https://github.com/LukasHedegaard/co3d")

    def _split_generators(self, dl_manager):
        indexes = kinetics_indexes(os.fspath(dl_manager.manual_dir), self._wanted_splits)
        shipped = label_indexer(shipped_kinetics400_classes())
        label_ids = {None: -1}   # label as written -> ClassLabel id (-1: unlabelled)
        meta = {}
        indexes = {split: _without_unreadable(index) for split, index in indexes.items()}
        for split, index in indexes.items():
            names = [None if r.label is None else index.classes[r.label] for r in index.records]
            for name in sorted(set(names) - set(label_ids)):
                try:
                    label_ids[name] = shipped(name)
                except KeyError:
                    raise ValueError(f"label {name!r} in split {split!r} is not one of the 400 Kinetics-400 "
                                     "classes (co3d_jax/data/kinetics400_classes.txt)") from None
            meta[split] = dict(layout=index.layout, ids=[r.id for r in index.records], labels=names,
                               missing=index.missing, skipped=index.skipped)
        self.info.metadata["splits"] = meta
        return {split: self._generate_examples(index, meta[split]["labels"], label_ids)
                for split, index in indexes.items()}

    def _generate_examples(self, index: DatasetIndex, names, label_ids: dict):
        for record, name in zip(index.records, names):
            ytid, start, end = _stem_fields(record.id)
            yield record.id, {
                "id": record.id,
                "video": _read_bytes(record.path),
                "file_name": os.path.basename(record.path),
                "label": label_ids[name],
                "label_name": name or "",
                "youtube_id": ytid,
                "time_start": start,
                "time_end": end,
            }


class Co3dCharades(_ManualBuilder):
    """Charades v1 RGB frames (encoded JPEGs) with video-level multi-hot labels."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Encoded JPEG frames from the PySlowFast frame lists."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = _CHARADES_MANUAL

    def _info(self) -> tfds.core.DatasetInfo:
        return self._dataset_info(
            "Charades v1 videos as their RGB JPEG frames, with every action in the video.",
            {
                "id": tfds.features.Text(doc="original_vido_id"),
                "frames": tfds.features.Sequence(tfds.features.Tensor(shape=(), dtype=np.object_),
                                                 doc="encoded JPEG frames in frame-list order"),
                "frame_paths": tfds.features.Sequence(tfds.features.Text(), doc="below Charades_v1_rgb/"),
                "labels": tfds.features.Sequence(tfds.features.ClassLabel(num_classes=CHARADES_NUM_CLASSES)),
            },
            "https://prior.allenai.org/projects/charades")

    def _split_generators(self, dl_manager):
        root = os.fspath(dl_manager.manual_dir)
        wanted = [charades_split(s) for s in (self._wanted_splits or ())]
        indexes = {}
        for split in wanted or CHARADES_SPLITS:
            if split not in CHARADES_SPLITS:
                raise ValueError(f"unknown Charades split {split!r} ({', '.join(CHARADES_SPLITS)})")
            lists = [os.path.join(root, d, f"{split}.csv") for d in ("splits", "frame_lists")]
            if any(os.path.isfile(p) for p in lists):
                indexes[split] = charades(root, split)
            elif wanted:
                raise FileNotFoundError(f"{root}: no splits/{split}.csv")
        if not indexes:
            raise FileNotFoundError(f"{root}: no Charades frame list found.\n{_CHARADES_MANUAL}")
        meta = {}
        for split, index in indexes.items():
            bad = sorted({c for r in index.records for c in r.label if not 0 <= c < CHARADES_NUM_CLASSES})
            if bad:
                raise ValueError(f"Charades {split}.csv: class ids {bad} outside 0..{CHARADES_NUM_CLASSES - 1}")
            meta[split] = dict(layout=index.layout, ids=[r.id for r in index.records],
                               labels=[list(r.label) for r in index.records])
        self.info.metadata["classes"] = list(next(iter(indexes.values())).classes)
        self.info.metadata["splits"] = meta
        return {split: self._generate_examples(index) for split, index in indexes.items()}

    def _generate_examples(self, index: DatasetIndex):
        frame_root = charades_frame_root(index.root)
        for record in index.records:
            frames = []
            for p in record.frames:
                why = "is missing" if not os.path.isfile(p) else _unreadable(p)
                if why is None:
                    frames.append(_read_bytes(p))
                else:  # kept empty: reading the video then fails with a message, as a missing file does
                    warnings.warn(f"Charades {record.id}: frame {p} {why}")
                    frames.append(b"")
            yield record.id, {
                "id": record.id,
                "frames": frames,
                "frame_paths": [os.path.relpath(p, frame_root) for p in record.frames],
                "labels": list(record.label),
            }
