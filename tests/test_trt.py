"""TensorRT: every exported graph converts (TensorRT-RTX builds ahead of time without a GPU),
the manifest and trtexec.sh describe every profile, and on a GPU the plans match ORT."""

from __future__ import annotations

import shlex
import shutil

import onnx
import pytest
import torch

from rgtp.engines.trt_build import TRTEXEC_SCRIPT, BuildOptions, build_trt
from rgtp.export.manifest import Manifest

pytest.importorskip("tensorrt_rtx_bindings", reason="TensorRT-RTX builder not installed")


def onnx_input_shapes(path) -> dict[str, tuple]:
    model = onnx.load(str(path), load_external_data=False)
    return {
        i.name: tuple(d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim)
        for i in model.graph.input
    }


def parse_shapes(text: str) -> dict[str, tuple[int, ...]]:
    out = {}
    for item in text.split(","):
        name, dims = item.rsplit(":", 1)
        out[name] = tuple(int(d) for d in dims.split("x"))
    return out


def assert_fits(shapes: dict[str, tuple[int, ...]], declared: dict[str, tuple], k: int | None):
    assert set(shapes) == set(declared)
    for name, shape in shapes.items():
        want = tuple(k if isinstance(d, str) else d for d in declared[name])
        assert shape == want, (name, shape, want)


@pytest.fixture(scope="module", params=["per-stage", "per-k"])
def built(request, small_packages, tmp_path_factory):
    pkg = tmp_path_factory.mktemp("trt") / "pkg"
    shutil.copytree(small_packages["a"][0], pkg)
    options = BuildOptions(
        per_k_plans=request.param == "per-k", timing_cache=pkg.parent / "timing.cache"
    )
    info = build_trt(pkg, options, progress=False)
    return pkg, info


def test_every_graph_builds_and_the_manifest_records_it(built) -> None:
    pkg, info = built
    m = Manifest.load(pkg)
    assert m.extra["trt"] == info
    assert info["flavor"] in ("tensorrt", "tensorrt_rtx") and info["version"]
    names = {p["name"] for p in info["plans"]}
    stages = range(len(m.plan.stages))
    if info["layout"] == "per-k":
        assert names == {"embed", "head"} | {
            f"stage{i}_k{k}" for i in stages for k in m.plan.buckets
        }
    else:
        assert names == {"embed", "head"} | {f"stage{i}" for i in stages}
    for p in info["plans"]:
        assert (pkg / p["file"]).stat().st_size > 0
        assert m.files[p["file"]]["sha256"]
        if p["name"].startswith("stage"):
            assert sorted(int(k) for k in p["profiles"]) == [
                k
                for k in m.plan.buckets
                if info["layout"] == "per-stage" or p["name"].endswith(f"_k{k}")
            ]


def test_profiles_in_manifest_and_trtexec_match_the_onnx_graphs(built) -> None:
    pkg, info = built
    for p in info["plans"]:
        declared = onnx_input_shapes(pkg / p["onnx"])
        ks = sorted(p["profiles"], key=p["profiles"].get) if p["profiles"] else [None]
        for shapes, k in zip(p["shapes"], ks, strict=True):
            assert_fits({n: tuple(s) for n, s in shapes.items()}, declared, int(k) if k else None)
    script = (pkg / TRTEXEC_SCRIPT).read_text().splitlines()
    timed = {}
    for line in script:
        if line.startswith("trtexec --loadEngine"):
            args = dict(a.lstrip("-").split("=", 1) for a in shlex.split(line)[1:])
            timed.setdefault(args["loadEngine"], []).append((int(args["profile"]), args["shapes"]))
        elif line.startswith("trtexec --onnx"):
            args = shlex.split(line)[1:]
            onnx_file = next(a.split("=", 1)[1] for a in args if a.startswith("--onnx="))
            mins = [a.split("=", 1)[1] for a in args if a.startswith("--minShapes=")]
            for text in mins:
                assert_fits(
                    parse_shapes(text),
                    onnx_input_shapes(pkg / onnx_file),
                    parse_shapes(text)["keep"][0],
                )
    for p in info["plans"]:
        runs = sorted(timed[p["file"]])
        assert [i for i, _ in runs] == list(range(len(p["shapes"])))
        for (index, text), shapes in zip(runs, p["shapes"], strict=True):
            assert parse_shapes(text) == {n: tuple(s) for n, s in shapes.items()}, index


def test_fp16_plans_convert(small_packages, tmp_path) -> None:
    """A float16 build of one stage (strongly typed on TensorRT-RTX: converted graph)."""
    pkg = tmp_path / "pkg"
    shutil.copytree(small_packages["b"][0], pkg)
    info = build_trt(pkg, BuildOptions(fp16=True), progress=False)
    assert info["precision"] == "fp16"
    assert all((pkg / p["file"]).stat().st_size > 0 for p in info["plans"])


def _trt_gpu_available() -> bool:
    if not torch.cuda.is_available():
        return False
    try:
        import tensorrt as trt

        return hasattr(trt, "Builder")
    except Exception:
        return False


@pytest.mark.gpu
@pytest.mark.skipif(not _trt_gpu_available(), reason="needs a CUDA GPU and TensorRT")
@pytest.mark.parametrize(("fp16", "rtol"), [(False, 1e-3), (True, 2e-2)])
def test_trt_matches_onnx_runtime_on_gpu(small_packages, tmp_path, fp16: bool, rtol: float):
    from rgtp.core.selection import FixedKeep
    from rgtp.runtime import Pipeline
    from tests.conftest import synthvid_frames

    pkg = tmp_path / "pkg"
    shutil.copytree(small_packages["a"][0], pkg)
    build_trt(pkg, BuildOptions(fp16=fp16), progress=False)
    k = Manifest.load(pkg).plan.buckets[0]
    trt_stream = Pipeline.load(pkg, "trt", device="cuda").new_stream(policy=FixedKeep(k))
    ort_stream = Pipeline.load(pkg, "ort").new_stream(policy=FixedKeep(k))
    for frame in synthvid_frames(6):
        trt_stream.step(frame)
        ort_stream.step(frame)
        a, b = trt_stream.out_map.cpu(), ort_stream.out_map
        assert ((a - b).norm() / b.norm()).item() <= rtol


def test_unusable_plans_are_refused_before_any_frame(built, tmp_path) -> None:
    from rgtp.engines.base import EngineError
    from rgtp.engines.trt_backend import validate_plans

    src, info = built
    pkg = tmp_path / "pkg"
    shutil.copytree(src, pkg)
    flavor, version = info["flavor"], info["version"]
    cap = (
        (8, 9)
        if info["compute_capability"].startswith("SM")
        else tuple(int(x) for x in info["compute_capability"].split("."))
    )
    m = Manifest.load(pkg)
    assert validate_plans(pkg, m, flavor, version, cap) == info
    with pytest.raises(EngineError, match=r"built by .* installed is"):
        validate_plans(pkg, m, flavor, "0.0.1", cap)
    with pytest.raises(EngineError, match="compute capability"):
        validate_plans(pkg, m, flavor, version, (7, 0))
    stage_plan = next(p for p in m.extra["trt"]["plans"] if p["name"].startswith("stage0"))
    stage_plan["onnx_sha256"] = "0" * 64
    with pytest.raises(EngineError, match="built from another"):
        validate_plans(pkg, m, flavor, version, cap)
    m = Manifest.load(pkg)
    if info["layout"] == "per-stage":
        stage_plan = next(p for p in m.extra["trt"]["plans"] if p["name"] == "stage0")
        stage_plan["profiles"].pop(str(m.plan.buckets[0]))
        with pytest.raises(EngineError, match="no optimization profile for K"):
            validate_plans(pkg, m, flavor, version, cap)
    del m.extra["trt"]
    with pytest.raises(EngineError, match="no TensorRT plans"):
        validate_plans(pkg, m, flavor, version, cap)
