"""rgtp: rollout-guided token pruning for video vision transformers."""

__version__ = "0.1.0"
