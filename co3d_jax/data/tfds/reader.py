"""Read a dataset prepared by :mod:`co3d_jax.data.tfds.builders` as a :class:`DatasetIndex`.

:func:`tfds_index` builds the index from the dataset's ``metadata.json`` (no example is read):
the same ids, labels, class list and missing videos as the folder path gives for the same data.
Each record carries a :class:`~co3d_jax.data.datasets.TfdsRef`; :func:`read_example` fetches the
example by position (one ArrayRecord data source per process and split, cached) and checks that
it is the video the index promised.
"""

from __future__ import annotations

import functools
import json
import os

from ..datasets import (DatasetIndex, TfdsRef, VideoRecord, canonical_split, charades_split, class_list,
                        label_indexer)
from ...extras import require
from . import DATASETS


class TfdsDatasetError(ValueError):
    """The TFDS folder does not hold a usable co3d-jax dataset."""


def _tfds():
    return require("tensorflow_datasets", "tfds", "reading a TFDS dataset")


def _version_key(name: str):
    try:
        return tuple(int(x) for x in name.split("."))
    except ValueError:
        return None


def find_builder_dir(data_dir: str, dataset: str) -> str:
    """The prepared dataset's version folder: ``data_dir`` itself if it holds ``dataset_info.json``,
    else the newest complete ``{data_dir}/co3d_{dataset}/{version}``."""
    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r} ({', '.join(DATASETS)})")
    if os.path.isfile(os.path.join(data_dir, "dataset_info.json")):
        return data_dir
    base = os.path.join(data_dir, DATASETS[dataset])
    versions = []
    if os.path.isdir(base):
        for name in os.listdir(base):
            key = _version_key(name)
            if key is not None and os.path.isfile(os.path.join(base, name, "dataset_info.json")):
                versions.append((key, name))
    if not versions:
        raise FileNotFoundError(f"no prepared {DATASETS[dataset]} dataset in {data_dir} (expected "
                                f"{base}/<version>/dataset_info.json; build it with "
                                f"python -m co3d_jax.data.tfds --dataset {dataset} --manual-dir ... --data-dir {data_dir})")
    return os.path.join(base, max(versions)[1])


def _metadata(builder_dir: str) -> dict:
    path = os.path.join(builder_dir, "metadata.json")
    try:
        with open(path, encoding="utf-8") as f:
            meta = json.load(f)
    except FileNotFoundError:
        raise TfdsDatasetError(f"{builder_dir} has no metadata.json: not built by co3d_jax.data.tfds") from None
    except json.JSONDecodeError as e:
        raise TfdsDatasetError(f"{path} is not valid JSON ({e})") from None
    if not isinstance(meta.get("splits"), dict):
        raise TfdsDatasetError(f"{path} lacks the co3d index ('splits'): not built by co3d_jax.data.tfds")
    with open(os.path.join(builder_dir, "dataset_info.json"), encoding="utf-8") as f:
        fmt = json.load(f).get("fileFormat", "tfrecord")
    if fmt not in ("array_record", "ARRAY_RECORD"):
        raise TfdsDatasetError(f"{builder_dir} is stored as {fmt}; co3d_jax reads ArrayRecord (random access): "
                               "rebuild without file_format")
    return meta


def _split_name(dataset: str, split: str) -> str:
    return charades_split(split) if dataset == "charades" else canonical_split(split)


def tfds_index(dataset: str, data_dir: str, split: str = "validate", classes="dataset") -> DatasetIndex:
    """The :class:`DatasetIndex` of ``split`` of the prepared ``dataset`` below ``data_dir``.

    Class indices follow the same rule as the folder path (``classes='dataset'``: sorted labels
    present in the split; ``'shipped'``: the 400 shipped names; Charades: the stored class list)."""
    builder_dir = os.path.abspath(find_builder_dir(data_dir, dataset))
    meta = _metadata(builder_dir)
    name = _split_name(dataset, split)
    if name not in meta["splits"]:
        raise TfdsDatasetError(f"{builder_dir} has no split {name!r} (it has {', '.join(sorted(meta['splits']))})")
    m = meta["splits"][name]
    if dataset == "charades":
        cls, label_of, missing = list(meta["classes"]), tuple, []
    else:
        cls = class_list(m["labels"], classes, "kinetics400")
        label_of, missing = label_indexer(cls), list(m.get("missing", []))
    records = [VideoRecord(vid, f"{builder_dir}#{name}/{i}", label_of(lbl), tfds=TfdsRef(builder_dir, name, i))
               for i, (vid, lbl) in enumerate(zip(m["ids"], m["labels"]))]
    return DatasetIndex(dataset, name, builder_dir, "tfds", cls, records, missing, multilabel=dataset == "charades",
                        skipped=list(m.get("skipped", [])))


@functools.lru_cache(maxsize=16)
def _source(builder_dir: str, split: str):
    return _tfds().builder_from_directory(builder_dir).as_data_source(split)


def _text(x) -> str:
    return x.decode("utf-8") if isinstance(x, bytes) else str(x)


def read_example(ref: TfdsRef, expect_id: str | None = None) -> dict:
    """The stored example at ``ref`` (``id`` decoded to ``str``); checks it is ``expect_id``."""
    source = _source(ref.builder_dir, ref.split)
    if not 0 <= ref.position < len(source):
        raise TfdsDatasetError(f"{ref.builder_dir} split {ref.split!r} has {len(source)} examples, "
                               f"asked for #{ref.position}")
    ex = dict(source[ref.position])
    ex["id"] = _text(ex["id"])
    if expect_id is not None and ex["id"] != expect_id:
        raise TfdsDatasetError(f"{ref.builder_dir} split {ref.split!r} example #{ref.position} is {ex['id']!r}, "
                               f"the index says {expect_id!r}: the dataset was modified after it was built")
    return ex
