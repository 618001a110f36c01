"""Data: dataset indexes (Kinetics-400 folder/CSV layouts, Charades frame lists), reference-exact
temporal sampling and decoding (PyAV, OpenCV fallback), the evaluation transforms (numpy reference
and device taps), training augmentation, the input pipeline shared by evaluation and fine-tuning
(Grain worker processes, device prefetch, transforms on the device: ``pipeline``, ``eval_loader``,
``train_loader``) and metrics. See ``docs/evaluation.md`` and ``docs/finetuning.md``."""

from .datasets import DatasetIndex, VideoRecord, charades, kinetics_csv, kinetics_folder, shipped_kinetics400_classes
from .eval_loader import ClipSpec, EvalLoader, EvalWindow, Sample, load_sample, load_window
from .metrics import average_precision, batch_mean_accuracy, label_rank, mean_average_precision, topk_accuracy
from .sampling import centered_window, charades_indices, clip_size, temporal_indices, torch_linspace_f32
from .sources import open_dataset
from .transforms import CropTaps, center_crop_taps, eval_transform, resize_crop
from .video import VideoError, decode_clip

__all__ = [
    "DatasetIndex", "VideoRecord", "charades", "kinetics_csv", "kinetics_folder", "open_dataset",
    "shipped_kinetics400_classes", "ClipSpec", "EvalLoader", "EvalWindow", "Sample", "load_sample", "load_window",
    "average_precision", "batch_mean_accuracy", "label_rank", "mean_average_precision", "topk_accuracy",
    "centered_window", "charades_indices", "clip_size", "temporal_indices", "torch_linspace_f32",
    "CropTaps", "center_crop_taps", "eval_transform", "resize_crop", "VideoError", "decode_clip",
]
