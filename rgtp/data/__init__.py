"""Datasets: SynthVID (generated from real photographs), ImageNet VID, COCO annotations."""

from rgtp.data.coco import load_coco, sequences_to_coco, write_coco
from rgtp.data.imagenet_vid import (
    VID_CLASSES,
    FrameAnnotation,
    iter_frames,
    list_sequences,
    load_sequence_annotations,
)
from rgtp.data.synthvid import (
    CLASSES,
    HELDOUT_SEED_BASE,
    Sequence,
    SynthVIDConfig,
    generate_sequence,
    heldout_seeds,
    training_samples,
    training_seeds,
)

__all__ = [
    "CLASSES",
    "HELDOUT_SEED_BASE",
    "VID_CLASSES",
    "FrameAnnotation",
    "Sequence",
    "SynthVIDConfig",
    "generate_sequence",
    "heldout_seeds",
    "iter_frames",
    "list_sequences",
    "load_coco",
    "load_sequence_annotations",
    "sequences_to_coco",
    "training_samples",
    "training_seeds",
    "write_coco",
]
