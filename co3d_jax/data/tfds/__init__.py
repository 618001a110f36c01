"""TensorFlow Datasets builders for Kinetics-400 and Charades, and reading them back.

Build (needs ``pip install 'co3d-jax[tfds]'``: ``tensorflow-datasets`` and ``array-record``,
**not** TensorFlow)::

    python -m co3d_jax.data.tfds --dataset kinetics400 --manual-dir K400_ROOT --data-dir TFDS_DIR
    python -m co3d_jax.data.tfds --dataset charades --manual-dir CHARADES_ROOT --data-dir TFDS_DIR

The manual folder is a dataset in one of the layouts :mod:`co3d_jax.data.datasets` reads (the
co3d/PySlowFast Kinetics folders, the official Kinetics CSVs beside a folder of clips, the
Charades frame lists). Examples keep the *encoded* files: a Kinetics example holds the video file's
bytes, a Charades example the bytes of every JPEG frame. Decoding happens when the data is read,
with the same decoders and the same reference sampling as the folder path, so a model evaluated
from TFDS gets exactly the frames it gets from the files. Datasets are written as ArrayRecord
(random access, no TensorFlow needed to write or read).

Read::

    python -m experiments.evaluate --dataset kinetics400 --source tfds --root TFDS_DIR ...

or, in Python, :func:`co3d_jax.data.open_dataset` with ``source="tfds"``; TFDS users can also open
the data directly, e.g. ``tfds.builder_from_directory(TFDS_DIR + "/co3d_kinetics400/1.0.0")
.as_data_source("validate")``, or ``tfds.data_source("co3d_kinetics400", data_dir=TFDS_DIR)``
after ``import co3d_jax.data.tfds.builders`` (which registers the builders).

Nothing in the default (folder) path imports this package or ``tensorflow_datasets``.
"""

DATASETS = {"kinetics400": "co3d_kinetics400", "charades": "co3d_charades"}
"""co3d-jax dataset name -> TFDS builder name."""
