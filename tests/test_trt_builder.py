"""The plan builder's hygiene against a fake TensorRT module: one timing cache for every
plan, attached with its return value checked and saved once; TF32 cleared unless asked;
compute capabilities only where TensorRT-RTX takes them; the flavour a package names is
the one imported."""

from __future__ import annotations

import importlib
from pathlib import Path
from types import SimpleNamespace

import pytest

from rgtp.engines import trt_build
from rgtp.engines.base import EngineError
from rgtp.engines.trt_build import BuildOptions, PlanBuilder, Profile, import_tensorrt


class FakeCache:
    made = 0

    def __init__(self, blob: bytes) -> None:
        FakeCache.made += 1
        self.blob, self.serialized = blob, 0

    def serialize(self) -> bytes:
        self.serialized += 1
        return self.blob + b"+entries"


class FakeConfig:
    def __init__(self, trt: FakeTrt) -> None:
        self.trt, self.flags, self.cache = trt, {"TF32"}, None

    def create_timing_cache(self, blob: bytes) -> FakeCache:
        return FakeCache(blob)

    def set_timing_cache(self, cache: FakeCache, ignore_mismatch: bool) -> bool:
        self.cache = cache
        return self.trt.accept_cache

    def clear_flag(self, flag: str) -> None:
        self.flags.discard(flag)

    def set_flag(self, flag: str) -> None:
        self.flags.add(flag)


class FakeTrt:
    """The calls PlanBuilder makes of `tensorrt` 10.x, on a network of static inputs."""

    __version__ = "10.13.0"
    BuilderFlag = SimpleNamespace(TF32="TF32", REQUIRE_USER_ALLOCATION="USER_ALLOCATION")
    NetworkDefinitionCreationFlag = SimpleNamespace(STRONGLY_TYPED=0)
    MemoryPoolType = SimpleNamespace(WORKSPACE="WORKSPACE")

    def __init__(self) -> None:
        self.accept_cache = True
        self.configs: list[FakeConfig] = []
        trt = self

        class Builder:
            def __init__(self, logger: object) -> None:
                pass

            def create_network(self, flags: int) -> SimpleNamespace:
                return SimpleNamespace(num_inputs=0, flags=flags)

            def create_builder_config(self) -> FakeConfig:
                trt.configs.append(FakeConfig(trt))
                return trt.configs[-1]

            def build_serialized_network(self, network: object, config: FakeConfig) -> bytes:
                return b"plan"

        class OnnxParser:
            def __init__(self, network: object, logger: object) -> None:
                pass

            def parse_from_file(self, path: str) -> bool:
                return True

        class Logger:
            WARNING = 2

            def __init__(self, level: int) -> None:
                pass

        self.Builder, self.OnnxParser, self.Logger = Builder, OnnxParser, Logger


@pytest.fixture
def fake_trt(monkeypatch) -> FakeTrt:
    trt = FakeTrt()
    FakeCache.made = 0
    monkeypatch.setattr(trt_build, "import_tensorrt", lambda flavor=None: (trt, "tensorrt"))
    return trt


FRAME = {"frame": (1, 3, 32, 32)}
STATIC = [Profile(FRAME, FRAME, FRAME)]


def test_one_timing_cache_serves_every_plan_and_is_saved_once(fake_trt, tmp_path) -> None:
    path = tmp_path / "timing.cache"
    path.write_bytes(b"old")
    builder = PlanBuilder(BuildOptions(timing_cache=path))
    for name in ("embed", "stage0", "head"):
        assert builder.build(Path(f"{name}.onnx"), STATIC) == b"plan"
    plan_configs = fake_trt.configs[1:]  # the first only made the cache
    assert FakeCache.made == 1 and len(plan_configs) == 3
    assert all(c.cache is builder.cache for c in plan_configs)
    assert builder.cache.blob == b"old" and builder.cache.serialized == 0
    builder.save_timing_cache()
    assert builder.cache.serialized == 1 and path.read_bytes() == b"old+entries"
    assert not (tmp_path / "timing.cache.tmp").exists()


def test_a_timing_cache_tensorrt_refuses_stops_the_build(fake_trt, tmp_path) -> None:
    fake_trt.accept_cache = False
    builder = PlanBuilder(BuildOptions(timing_cache=tmp_path / "other-gpu.cache"))
    with pytest.raises(EngineError, match=r"other-gpu\.cache: a timing cache of another GPU"):
        builder.build(Path("embed.onnx"), STATIC)


@pytest.mark.parametrize("precision, tf32", [("fp32", False), ("tf32", True), ("fp16", False)])
def test_tf32_only_when_asked(fake_trt, precision: str, tf32: bool) -> None:
    PlanBuilder(BuildOptions(precision=precision)).build(Path("embed.onnx"), STATIC)
    assert ("TF32" in fake_trt.configs[-1].flags) == tf32


def test_tensorrt_refuses_compute_capabilities_it_cannot_target(fake_trt) -> None:
    with pytest.raises(EngineError, match="--compute-capability targets TensorRT-RTX"):
        PlanBuilder(BuildOptions(compute_capabilities=("SM89",)))


def test_the_flavour_a_package_names_is_the_one_imported(monkeypatch) -> None:
    full = SimpleNamespace(Builder=object, __version__="10.13.0")
    rtx = SimpleNamespace(Builder=object, __version__="1.7.1")
    modules = {"tensorrt": full, "tensorrt_rtx_bindings": rtx}
    monkeypatch.setattr(importlib, "import_module", lambda name: modules[name])
    assert import_tensorrt() == (full, "tensorrt")  # either will do: the first
    assert import_tensorrt("tensorrt_rtx") == (rtx, "tensorrt_rtx")
    modules["tensorrt"] = SimpleNamespace()  # PyPI's stub: no Builder
    assert import_tensorrt() == (rtx, "tensorrt_rtx")
    with pytest.raises(EngineError, match=r"install TensorRT 10/11.*plans were built by tensorrt"):
        import_tensorrt("tensorrt")
