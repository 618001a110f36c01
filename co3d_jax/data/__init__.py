"""Evaluation data: dataset indexes (Kinetics-400 folder/CSV layouts, Charades frame lists),
reference-exact temporal sampling and decoding (PyAV, OpenCV fallback), numpy eval transforms,
multi-process sample loading and metrics. See ``docs/evaluation.md``."""

from .datasets import DatasetIndex, VideoRecord, charades, kinetics_csv, kinetics_folder, shipped_kinetics400_classes
from .loader import ClipSpec, Sample, iterate_samples, load_sample
from .metrics import average_precision, batch_mean_accuracy, label_rank, mean_average_precision, topk_accuracy
from .sampling import centered_window, charades_indices, clip_size, temporal_indices, torch_linspace_f32
from .sources import open_dataset
from .transforms import eval_transform, resize_crop
from .video import VideoError, decode_clip

__all__ = [
    "DatasetIndex", "VideoRecord", "charades", "kinetics_csv", "kinetics_folder", "open_dataset",
    "shipped_kinetics400_classes", "ClipSpec", "Sample", "iterate_samples", "load_sample",
    "average_precision", "batch_mean_accuracy", "label_rank", "mean_average_precision", "topk_accuracy",
    "centered_window", "charades_indices", "clip_size", "temporal_indices", "torch_linspace_f32",
    "eval_transform", "resize_crop", "VideoError", "decode_clip",
]
