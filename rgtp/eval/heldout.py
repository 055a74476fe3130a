"""Held-out synthetic video for a model: what `rgtp run --synthetic` feeds a package."""

from __future__ import annotations

import numpy as np

from rgtp.package.family import family_of


def synthetic_frames(config, count: int) -> list[np.ndarray]:
    """`count` frames of held-out synthetic video the model of `config` was trained for (its
    family's `synthetic_frames`: a SynthVID sequence for a detector, consecutive SynthMotion
    clips for a classifier)."""
    family = family_of(config)
    frames = getattr(family, "synthetic_frames", None)
    if frames is None:
        raise ValueError(f"the {family.name} family makes no synthetic video: give --video")
    return frames(config, count)
