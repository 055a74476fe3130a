"""rgtp: rollout-guided token pruning for video vision transformers."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("rgtp")
except PackageNotFoundError:  # a source tree on sys.path, not installed
    __version__ = "0+unknown"
