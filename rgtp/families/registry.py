"""Named model configurations of every family, and the weights shipped for them."""

from __future__ import annotations

import dataclasses
from importlib import resources
from pathlib import Path
from typing import Any

from rgtp.families.classification.config import VIVIT_CONFIGS
from rgtp.models.config import BackboneConfig, DetectorConfig, HeadConfig, PruningConfig

# ImageNet VID's 30 classes are the paper's benchmark; vitdet-b keeps that head size.
_CONFIGS: dict[str, DetectorConfig] = {
    "vitdet-b": DetectorConfig(
        name="vitdet-b",
        backbone=BackboneConfig(
            img_size=1024,
            embed_dim=768,
            depth=12,
            num_heads=12,
            window_size=14,
            global_blocks=(2, 5, 8, 11),
            pretrain_grid=14,
        ),
        # ViTDet's simple feature pyramid (strides 4 to 32), so that detectron2's model-zoo
        # `simfp_2..5` weights load as they are.
        head=HeadConfig(
            num_classes=30,
            neck_channels=256,
            scale_factors=(4.0, 2.0, 1.0, 0.5),
            head_channels=256,
            group_norm_groups=32,
        ),
    ),
    "vitdet-small": DetectorConfig(
        name="vitdet-small",
        backbone=BackboneConfig(
            img_size=256,
            embed_dim=192,
            depth=12,
            num_heads=3,
            window_size=8,
            global_blocks=(2, 5, 8, 11),
            pretrain_grid=16,
        ),
        # SynthVID's classes (rgtp.data.synthvid.CLASSES; a test keeps the two equal)
        head=HeadConfig(
            num_classes=6,
            neck_channels=96,
            head_channels=96,
            group_norm_groups=16,
            class_names=("cat", "cup", "astronaut", "rocket", "motorcycle", "horse"),
        ),
        # Measured on SynthVID's held-out split (docs/pruning-small-model.md): this
        # from-scratch model spreads rollout mass to context through its early global
        # blocks, and its raw patch embeddings differ in norm, so rollout runs through the
        # last global block, tracking matches by cosine, and 15 % of K goes to new content.
        # Objects move under a token per frame on its 16 x 16 grid, so tracked importance
        # is the union of where content was and where it went (track_union).
        pruning=PruningConfig(
            rollout_blocks=(11,), similarity="cosine", novelty_share=0.15, track_union=True
        ),
    ),
}


_ALL: dict[str, Any] = {**_CONFIGS, **VIVIT_CONFIGS}


def model_names() -> list[str]:
    return sorted(_ALL)


def get_config(name: str, img_size: int | None = None) -> Any:
    """The named configuration (`DetectorConfig`, `ViViTConfig`), optionally at another
    input size."""
    try:
        cfg = _ALL[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; choose from {model_names()}") from None
    if img_size is not None and img_size != cfg.encoder.img_size:
        # the encoder is the config's `backbone` or `spatial` field
        field = next(f.name for f in dataclasses.fields(cfg) if getattr(cfg, f.name) is cfg.encoder)
        cfg = dataclasses.replace(
            cfg, **{field: dataclasses.replace(cfg.encoder, img_size=img_size)}
        )
    return cfg


def shipped_weights(name: str) -> Path | None:
    """Path of the weights shipped in the package for `name`, if any."""
    path = resources.files("rgtp") / "weights" / f"{name}.safetensors"
    return Path(str(path)) if path.is_file() else None
