"""The detector's configuration: backbone (`rgtp.models.config.BackboneConfig`), neck and
head, pixel normalisation, and the named configurations."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

from rgtp.models.config import BackboneConfig, PruningConfig, check_family, dataclass_from_dict


@dataclass(frozen=True)
class HeadConfig:
    """Simple feature pyramid neck plus an FCOS-style anchor-free head."""

    num_classes: int = 80
    neck_channels: int = 256
    scale_factors: tuple[float, ...] = (2.0, 1.0, 0.5)
    head_convs: int = 2
    head_channels: int = 128
    group_norm_groups: int = 16
    class_names: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        unknown = set(self.scale_factors) - {4.0, 2.0, 1.0, 0.5}
        if unknown:
            raise ValueError(f"unsupported pyramid scale factors {sorted(unknown)}")
        if self.class_names and len(self.class_names) != self.num_classes:
            raise ValueError(f"{len(self.class_names)} class names for {self.num_classes} classes")


@dataclass(frozen=True)
class DetectorConfig:
    """A whole detector: backbone, neck and head, plus the pixel normalisation it expects."""

    family: ClassVar[str] = "detection"  # `rgtp.families`
    name: str
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    pixel_mean: tuple[float, float, float] = (123.675, 116.28, 103.53)
    pixel_std: tuple[float, float, float] = (58.395, 57.12, 57.375)
    pruning: PruningConfig = field(default_factory=PruningConfig)

    def __post_init__(self) -> None:
        self.pruning.blocks(self.backbone.global_blocks)  # fail at construction

    @property
    def encoder(self) -> BackboneConfig:
        """The transformer that pruning runs on."""
        return self.backbone

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.head.class_names

    def to_dict(self) -> dict[str, Any]:
        return {"family": self.family, **asdict(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DetectorConfig:
        check_family(cls, data)
        return cls(
            name=data["name"],
            backbone=dataclass_from_dict(BackboneConfig, data["backbone"]),
            head=dataclass_from_dict(HeadConfig, data["head"]),
            pixel_mean=tuple(data["pixel_mean"]),
            pixel_std=tuple(data["pixel_std"]),
            pruning=dataclass_from_dict(PruningConfig, data.get("pruning", {})),
        )


# ImageNet VID's 30 classes are the paper's benchmark; vitdet-b keeps that head size.
DETECTOR_CONFIGS: dict[str, DetectorConfig] = {
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
