"""Held-out synthetic video for a model: what `rgtp run --synthetic` feeds a package."""

from __future__ import annotations

import itertools

import numpy as np


def synthetic_frames(config, count: int) -> list[np.ndarray]:
    """`count` frames of held-out synthetic video the model of `config` was trained for: a
    SynthVID sequence for a detector, consecutive SynthMotion clips for a classifier."""
    if config.family == "classification":
        from rgtp.eval.classify import data_config, heldout_clips

        per_clip = config.num_frames
        clips = heldout_clips(-(-count // per_clip), data_config(config))
        return list(itertools.chain.from_iterable(c.frames for c in clips))[:count]
    from rgtp.data.synthvid import SynthVIDConfig, generate_sequence, heldout_seeds

    seq = generate_sequence(
        heldout_seeds(1)[0], SynthVIDConfig(size=config.encoder.img_size, num_frames=count)
    )
    return list(seq.frames)
