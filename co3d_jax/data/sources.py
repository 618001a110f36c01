"""Where a dataset comes from: files in one of the layouts :mod:`co3d_jax.data.datasets` reads, or a
dataset prepared by :mod:`co3d_jax.data.tfds`. :func:`open_dataset` builds the index from either;
:func:`video_media` and :func:`frame_media` give the decoders what a record points at.

The TFDS reader is imported only when a TFDS dataset or record is used, so the folder path never
imports ``co3d_jax.data.tfds`` or ``tensorflow_datasets``.
"""

from __future__ import annotations

from .datasets import DatasetIndex, VideoRecord, charades, kinetics_csv, kinetics_folder


def video_media(record: VideoRecord):
    """What the decoders read for ``record``: the file path, or the stored bytes (TFDS)."""
    if record.tfds is None:
        return record.path
    from .tfds.reader import read_example
    return read_example(record.tfds, record.id)["video"]


def frame_media(record: VideoRecord) -> tuple:
    """The frames of a frame-folder record (Charades): paths, or the stored JPEG bytes (TFDS)."""
    if record.tfds is None:
        return record.frames or ()
    from .tfds.reader import read_example
    return tuple(read_example(record.tfds, record.id)["frames"])


def open_dataset(name: str, root: str, split: str = "validate", annotations: str | None = None,
                 classes: str | list = "dataset", source: str = "files") -> DatasetIndex:
    """Build the index for ``name`` (``kinetics400`` or ``charades``). For Kinetics, ``annotations``
    (an official CSV) selects the CSV layout with ``root`` as the clips folder; otherwise the
    folder layout is used. ``source="tfds"``: ``root`` is a TFDS ``data_dir`` holding the dataset
    prepared by :mod:`co3d_jax.data.tfds` (needs ``tensorflow-datasets``, not TensorFlow)."""
    if source == "tfds":
        from .tfds.reader import tfds_index
        return tfds_index(name, root, split, classes)
    if source != "files":
        raise ValueError(f"unknown source {source!r} (files, tfds)")
    if name == "kinetics400":
        if annotations:
            return kinetics_csv(annotations, root, split, classes)
        return kinetics_folder(root, split, classes)
    if name == "charades":
        return charades(root, split)
    raise ValueError(f"unknown dataset {name!r} (kinetics400, charades)")
