"""Model definitions: the dense ViTDet-style detector and its stage split for pruning."""

from rgtp.models.config import BackboneConfig, DetectorConfig, HeadConfig
from rgtp.models.detector import Detector
from rgtp.models.registry import get_config, model_names

__all__ = [
    "BackboneConfig",
    "Detector",
    "DetectorConfig",
    "HeadConfig",
    "get_config",
    "model_names",
]
