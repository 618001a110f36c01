"""Dataset indexes: which videos to evaluate, their labels and the class list.

Kinetics-400, two layouts (§5.1):

* **co3d / PySlowFast folders** (:func:`kinetics_folder`): ``{root}/data/{split}/{label}/{ytid}_{start:06d}_{end:06d}.mp4``.
  If ``{root}/splits/{split}.json`` exists it is read as the reference does: the ActivityNet-style
  dict the Kinetics crawler writes, ``{ytid: {"subset": "validate", "annotations": {"label": "abseiling",
  "segment": [14.0, 24.0]}, ...}}``; the file is ``{root}/data/{subset}/{label}/{ytid}_{int(s):06d}_{int(e):06d}.mp4``
  (no label folder when the label is empty). Listed videos without a file are *missing* (counted, not
  evaluated), as in the reference. Without a split file the folder is scanned; a file there
  without a video extension (or a nested folder) is listed in ``DatasetIndex.skipped``.
* **Official annotation CSV** (:func:`kinetics_csv`): ``label,youtube_id,time_start,time_end,split``
  (the test CSV has no label) beside a folder of clips, found by file name
  ``{youtube_id}_{start:06d}_{end:06d}.<ext>`` (or ``{youtube_id}.<ext>``) anywhere below it.

Class index = position in the sorted set of labels present (the reference's rule; a missing class
shifts the indices and is warned about). ``classes="shipped"`` uses the 400 names shipped in
``kinetics400_classes.txt`` instead (folder names with ``_`` for spaces are matched to them).

Charades (:func:`charades`): the co3d/PySlowFast frame lists ``{root}/splits/{split}.csv``
(space-separated ``original_vido_id video_id frame_id path labels``) and ``{root}/splits/classes.txt``,
frames under ``{root}/data/Charades_v1_rgb/{path}``; video-level multi-hot labels (union over the
video's frames). ``split`` ``test`` reads ``val.csv`` (the reference tests on val).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import warnings
from collections import OrderedDict
from pathlib import Path

VIDEO_EXTENSIONS = (".mp4", ".webm", ".mkv", ".avi", ".mov", ".m4v")
SPLIT_ALIASES = {"val": "validate", "valid": "validate", "validation": "validate"}


@dataclasses.dataclass(frozen=True)
class TfdsRef:
    """Where a video lives in a prepared TFDS dataset: the builder's version folder, the split
    and the example's position (see :mod:`co3d_jax.data.tfds`)."""

    builder_dir: str
    split: str
    position: int


@dataclasses.dataclass(frozen=True)
class VideoRecord:
    """One video: ``id`` (unique, stable across runs), ``path`` (file or frame folder),
    ``label`` (class index, a tuple of indices for multi-label, or None), ``frames`` (Charades),
    ``tfds`` (set for a video stored in a TFDS dataset; then ``path`` only names it)."""

    id: str
    path: str
    label: int | tuple | None
    frames: tuple | None = None
    tfds: TfdsRef | None = None


@dataclasses.dataclass
class DatasetIndex:
    name: str
    split: str
    root: str
    layout: str
    classes: list
    records: list
    missing: list = dataclasses.field(default_factory=list)
    multilabel: bool = False
    skipped: list = dataclasses.field(default_factory=list)
    """Files found where videos are read but not used: ``{"path", "reason"}`` (e.g. a
    ``notes.txt`` in a class folder, or a file a TFDS build could not read)."""

    def summary(self) -> dict:
        return dict(name=self.name, split=self.split, root=self.root, layout=self.layout,
                    num_classes=len(self.classes), num_videos=len(self.records), num_missing=len(self.missing),
                    num_skipped=len(self.skipped))


def shipped_kinetics400_classes() -> list[str]:
    """The 400 Kinetics-400 class names, sorted (shipped with the package)."""
    with open(Path(__file__).with_name("kinetics400_classes.txt"), encoding="utf-8") as f:
        names = [line.strip() for line in f if line.strip()]
    return names


def normalise_label(name: str) -> str:
    return " ".join(name.strip().strip('"').replace("_", " ").split()).lower()


class ClassCountWarning(UserWarning):
    """A Kinetics split has fewer (or more) classes than the full dataset: indices follow the labels present."""


def class_list(labels, classes: str | list, dataset: str) -> list[str]:
    """The class list: ``classes`` itself (a list), the sorted labels present (``"dataset"``, the
    reference's rule) or the shipped Kinetics-400 names (``"shipped"``)."""
    present = sorted(set(lbl for lbl in labels if lbl is not None))
    if isinstance(classes, (list, tuple)):
        return list(classes)
    if classes == "dataset":
        if dataset == "kinetics400" and present and len(present) not in (400, 600, 700):
            warnings.warn(f"found {len(present)} classes in the split (expected 400): class indices follow the "
                          "sorted labels present, as in the reference; pass classes='shipped' to use the full list",
                          ClassCountWarning)
        return present
    if classes == "shipped":
        return shipped_kinetics400_classes()
    raise ValueError(f"classes must be 'dataset', 'shipped' or a list, got {classes!r}")


def label_indexer(classes: list[str]):
    """``label name -> index in classes`` (exact, else after :func:`normalise_label`; None stays None)."""
    exact = {c: i for i, c in enumerate(classes)}
    norm = {normalise_label(c): i for i, c in enumerate(classes)}

    def index(label):
        if label is None:
            return None
        if label in exact:
            return exact[label]
        key = normalise_label(label)
        if key in norm:
            return norm[key]
        raise KeyError(f"label {label!r} is not in the class list")
    return index


def canonical_split(split: str) -> str:
    """Kinetics' split name (``val``/``valid``/``validation`` -> ``validate``)."""
    return SPLIT_ALIASES.get(split, split)


def clip_stem(ytid: str, start, end) -> str:
    return f"{ytid}_{int(float(start)):06d}_{int(float(end)):06d}"


def _rel(path: str, root: str) -> str:
    try:
        return os.path.relpath(path, root)
    except ValueError:
        return path


def kinetics_folder(root: str, split: str = "validate", classes: str | list = "dataset") -> DatasetIndex:
    """Kinetics in the co3d/PySlowFast folder layout (with or without ``splits/{split}.json``)."""
    split = canonical_split(split)
    root = os.path.abspath(root)
    data = os.path.join(root, "data")
    split_file = os.path.join(root, "splits", f"{split}.json")
    found: list[tuple[str, str, str | None]] = []   # (id, path, label)
    missing, skipped = [], []
    if os.path.isfile(split_file):
        layout = "kinetics-json"
        with open(split_file, encoding="utf-8") as f:
            annotations = json.load(f)
        if not isinstance(annotations, dict):
            raise ValueError(f"{split_file}: expected a JSON object keyed by YouTube id")
        for key, ann in annotations.items():
            try:
                a = ann["annotations"]
                start, end = a["segment"]
                subset = ann["subset"]
                label = a.get("label") or None
            except (KeyError, TypeError, ValueError):
                raise ValueError(f"{split_file}: entry {key!r} lacks subset/annotations.label/annotations.segment")
            name = f"{clip_stem(key, start, end)}.mp4"
            path = os.path.join(data, subset, label, name) if label else os.path.join(data, subset, name)
            vid = _rel(path, data)
            if os.path.exists(path):
                found.append((vid, path, label))
            else:
                missing.append(dict(id=vid, label=label))
    else:
        layout = "kinetics-folder"
        split_dir = os.path.join(data, split)
        if not os.path.isdir(split_dir):
            raise FileNotFoundError(f"neither {split_file} nor {split_dir} exists")
        for label in sorted(os.listdir(split_dir)):
            d = os.path.join(split_dir, label)
            if os.path.isdir(d):
                for name in sorted(os.listdir(d)):
                    path = os.path.join(d, name)
                    if name.lower().endswith(VIDEO_EXTENSIONS):
                        found.append((_rel(path, data), path, label))
                    else:
                        skipped.append(dict(path=_rel(path, data), reason=_skip_reason(path)))
            elif label.lower().endswith(VIDEO_EXTENSIONS):   # unlabelled (test) videos
                found.append((_rel(d, data), d, None))
            else:
                skipped.append(dict(path=_rel(d, data), reason=_skip_reason(d)))
    cls = class_list([lbl for _, _, lbl in found], classes, "kinetics400")
    index = label_indexer(cls)
    records = [VideoRecord(vid, path, index(lbl)) for vid, path, lbl in found]
    return DatasetIndex("kinetics400", split, root, layout, cls, records, missing, skipped=skipped)


def _skip_reason(path: str) -> str:
    if os.path.isdir(path):
        return "a folder inside a class folder (not scanned)"
    return f"not a video file (extensions read: {', '.join(VIDEO_EXTENSIONS)})"


def kinetics_csv(csv_path: str, clips_root: str, split: str | None = "validate",
                 classes: str | list = "dataset") -> DatasetIndex:
    """Kinetics from the official annotation CSV and a folder of clips (searched recursively)."""
    clips_root = os.path.abspath(clips_root)
    want = None if split is None else canonical_split(split)
    by_stem: dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(clips_root):
        dirnames.sort()
        for name in sorted(filenames):
            stem, ext = os.path.splitext(name)
            if ext.lower() in VIDEO_EXTENSIONS:
                by_stem.setdefault(stem, os.path.join(dirpath, name))
    rows = []
    with open(csv_path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        need = {"youtube_id", "time_start", "time_end"}
        if not need <= set(reader.fieldnames or ()):
            raise ValueError(f"{csv_path}: expected columns label,youtube_id,time_start,time_end,split; "
                             f"got {reader.fieldnames}")
        for row in reader:
            if want is not None and row.get("split") and canonical_split(row["split"].strip()) != want:
                continue
            rows.append(row)
    found, missing = [], []
    for row in rows:
        stem = clip_stem(row["youtube_id"].strip(), row["time_start"], row["time_end"])
        label = (row.get("label") or "").strip() or None
        path = by_stem.get(stem) or by_stem.get(row["youtube_id"].strip())
        if path is None:
            missing.append(dict(id=stem, label=label))
        else:
            found.append((stem, path, label))
    cls = class_list([lbl for _, _, lbl in found], classes, "kinetics400")
    index = label_indexer(cls)
    records = [VideoRecord(vid, path, index(lbl)) for vid, path, lbl in found]
    return DatasetIndex("kinetics400", split or "all", clips_root, "kinetics-csv", cls, records, missing)


def charades_frame_root(root: str) -> str:
    """The folder the Charades frame lists' paths are relative to."""
    frame_root = os.path.join(root, "data", "Charades_v1_rgb")
    return frame_root if os.path.isdir(frame_root) else os.path.join(root, "Charades_v1_rgb")


def charades_split(split: str) -> str:
    """Charades' split name: the validation aliases and ``test`` (the reference tests on val) -> ``val``."""
    return "val" if split in ("validate", "validation", "test", "val") else split


def charades(root: str, split: str = "val") -> DatasetIndex:
    """Charades v1 RGB frames with the PySlowFast frame lists (video-level multi-hot labels)."""
    root = os.path.abspath(root)
    split = charades_split(split)
    ann_dir = os.path.join(root, "splits")
    if not os.path.isdir(ann_dir) and os.path.isdir(os.path.join(root, "frame_lists")):
        ann_dir = os.path.join(root, "frame_lists")
    classes_file = os.path.join(ann_dir, "classes.txt")
    if os.path.isfile(classes_file):
        with open(classes_file, encoding="utf-8") as f:
            classes = [c.strip() for c in f if c.strip()]
    else:
        classes = [f"c{i:03d}" for i in range(157)]
    frame_root = charades_frame_root(root)
    videos: "OrderedDict[str, dict]" = OrderedDict()
    with open(os.path.join(ann_dir, f"{split}.csv"), encoding="utf-8") as f:
        header = f.readline().split()
        cols = {name: i for i, name in enumerate(header)}
        for need in ("original_vido_id", "video_id", "path"):
            if need not in cols:
                raise ValueError(f"{split}.csv: expected columns 'original_vido_id video_id frame_id path labels', got {header}")
        for line in f:
            parts = line.split()
            if not parts:
                continue
            vid = parts[cols["video_id"]]
            v = videos.setdefault(vid, dict(name=parts[cols["original_vido_id"]], paths=[], labels=set()))
            v["paths"].append(parts[cols["path"]])
            if "labels" in cols and len(parts) > cols["labels"]:
                for tok in parts[cols["labels"]].strip('"').split(","):
                    tok = tok.strip().strip('"')
                    if tok and tok.lower() != "nan":
                        v["labels"].add(int(float(tok)))
    records = []
    for vid, v in videos.items():
        paths = tuple(os.path.join(frame_root, p) for p in v["paths"])
        records.append(VideoRecord(v["name"], os.path.dirname(paths[0]) if paths else frame_root,
                                   tuple(sorted(v["labels"])), frames=paths))
    return DatasetIndex("charades", split, root, "charades-frames", classes, records, [], multilabel=True)
