"""Importing the public reference implementations (timm, segment-anything, Hugging Face
transformers) for parity tests.

timm and SAM import torchvision at module level for code our tests never call (data
transforms, FrozenBatchNorm2d). PyPI's torchvision wheels are CUDA builds whose compiled
operators do not load beside the CPU torch wheel this project pins, so when torchvision is
unusable we install a placeholder that satisfies those imports. Any use of a placeholder
attribute returns another placeholder, never data: the model code under test is timm's and
SAM's own. transformers does the opposite: it probes for torchvision and, finding one, reads
its version, so it is imported with the placeholder out of sight.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import types
from collections.abc import Iterator
from contextlib import contextmanager

import pytest


class _Placeholder(type):
    def __getattr__(cls, name: str) -> type:
        if name.startswith("__"):
            raise AttributeError(name)
        return _Placeholder(name, (), {})

    def __call__(cls, *args: object, **kwargs: object) -> type:
        return cls


class _PlaceholderFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, name, path, target=None):
        if name == "torchvision" or name.startswith("torchvision."):
            return importlib.machinery.ModuleSpec(name, self, is_package=True)
        return None

    def create_module(self, spec):
        module = types.ModuleType(spec.name)
        module.__path__ = []

        def attr(name: str) -> type:
            if name.startswith("__"):
                raise AttributeError(name)
            return _Placeholder(name, (), {})

        module.__getattr__ = attr
        return module

    def exec_module(self, module):
        pass


def _ensure_torchvision_importable() -> None:
    try:
        import torchvision  # noqa: F401
    except Exception:
        for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
            del sys.modules[name]
        if not any(isinstance(f, _PlaceholderFinder) for f in sys.meta_path):
            sys.meta_path.insert(0, _PlaceholderFinder())


def import_timm_sam_module():
    """timm's `vision_transformer_sam` module, or skip if timm is not installed."""
    _ensure_torchvision_importable()
    pytest.importorskip("timm")
    return importlib.import_module("timm.models.vision_transformer_sam")


def import_sam_image_encoder():
    """segment-anything's `ImageEncoderViT`, or skip if it is not installed."""
    _ensure_torchvision_importable()
    pytest.importorskip("segment_anything")
    return importlib.import_module("segment_anything.modeling.image_encoder").ImageEncoderViT


@contextmanager
def _placeholder_hidden() -> Iterator[None]:
    finders = [f for f in sys.meta_path if isinstance(f, _PlaceholderFinder)]
    modules = {
        n: m
        for n, m in sys.modules.items()
        if (n == "torchvision" or n.startswith("torchvision.")) and finders
    }
    for f in finders:
        sys.meta_path.remove(f)
    for n in modules:
        del sys.modules[n]
    try:
        yield
    finally:
        sys.meta_path[:0] = finders
        sys.modules.update(modules)


def import_hf_vitdet() -> types.ModuleType:
    """transformers' `modeling_vitdet` module (VitDetConfig, VitDetModel, VitDetBackbone), or
    skip if transformers is not installed."""
    with _placeholder_hidden():
        pytest.importorskip("transformers")
        return importlib.import_module("transformers.models.vitdet.modeling_vitdet")
