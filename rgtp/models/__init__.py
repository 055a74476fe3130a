"""Model definitions: the dense ViTDet-style detector and its stage split for pruning, and
the ViViT factorised-encoder video classifier."""

from rgtp.models.config import BackboneConfig, DetectorConfig, HeadConfig
from rgtp.models.detector import Detector
from rgtp.models.registry import get_config, model_names
from rgtp.models.vivit import ViViT
from rgtp.models.vivit_config import ViViTConfig, get_vivit_config

__all__ = [
    "BackboneConfig",
    "Detector",
    "DetectorConfig",
    "HeadConfig",
    "ViViT",
    "ViViTConfig",
    "get_config",
    "get_vivit_config",
    "model_names",
]
