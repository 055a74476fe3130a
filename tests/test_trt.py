"""TensorRT: every exported graph converts (TensorRT-RTX builds ahead of time without a GPU),
the manifest and trtexec.sh describe every profile, and on a GPU the plans match ORT."""

from __future__ import annotations

import re
import shutil
import stat

import onnx
import pytest
import torch

from rgtp.engines.trt_build import TRTEXEC_SCRIPT, BuildOptions, build_trt, plan_jobs, tool_for
from rgtp.engines.trt_typed import typed_weights
from rgtp.package.manifest import Manifest
from tests.test_trt_recipes import check_script

pytest.importorskip("tensorrt_rtx_bindings", reason="TensorRT-RTX builder not installed")


def onnx_input_shapes(path) -> dict[str, tuple]:
    model = onnx.load(str(path), load_external_data=False)
    return {
        i.name: tuple(d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim)
        for i in model.graph.input
    }


def assert_fits(shapes: dict[str, tuple], declared: dict[str, tuple], k: int | None):
    """A static-K graph's inputs `shapes` fit the symbolic-K graph's `declared` at K = k
    (both keep the batch axis B symbolic)."""
    assert set(shapes) == set(declared)
    for name, shape in shapes.items():
        want = tuple(k if isinstance(d, str) and d != "B" else d for d in declared[name])
        assert shape == want, (name, shape, want)


@pytest.fixture(scope="module", params=["per-stage", "per-k"])
def built(request, tiny_package, tmp_path_factory):
    """The tiny detector's package (two stages, three K each) built in either layout: the
    graphs of every kind, at a fraction of vitdet-small's build time."""
    pkg = tmp_path_factory.mktemp("trt") / "pkg"
    shutil.copytree(tiny_package, pkg)
    options = BuildOptions(layout=request.param, timing_cache=pkg.parent / "timing.cache")
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


def expected_profiles(pkg, onnx_file: str, max_batch: int, opt_batch: int = 1) -> list[dict]:
    """The profiles of a plan built from `onnx_file`, from the ONNX graphs alone, each as
    {"min", "opt", "max"} input shapes: the batch axis B from 1 to `max_batch`, tuned at
    `opt_batch`; K a static graph's own; for a symbolic-K stage graph, that of each static
    graph of the stage (stage{i}_k{K}.onnx), by increasing K, each of which it must accept."""
    declared = onnx_input_shapes(pkg / onnx_file)
    graphs = [declared]
    if onnx_file.endswith("_kK.onnx"):
        stage = onnx_file.removesuffix("_kK.onnx")
        graphs = [onnx_input_shapes(p) for p in pkg.glob(f"{stage}_k*.onnx") if p.name != onnx_file]
        for shapes in graphs:
            assert_fits(shapes, declared, shapes["keep"][1])
        graphs.sort(key=lambda shapes: shapes["keep"][1])

    def at(shapes: dict[str, tuple], batch: int) -> dict[str, tuple[int, ...]]:
        return {n: tuple(batch if d == "B" else d for d in s) for n, s in shapes.items()}

    return [{"min": at(g, 1), "opt": at(g, opt_batch), "max": at(g, max_batch)} for g in graphs]


def test_manifest_profiles_match_the_onnx_graphs(built) -> None:
    """Profiles for one stream (the runtime's batch), not the package's max_batch."""
    pkg, info = built
    assert Manifest.load(pkg).plan.max_batch > 1
    max_batch = 1
    for p in info["plans"]:
        shapes = [
            {which: {n: tuple(s) for n, s in inputs.items()} for which, inputs in profile.items()}
            for profile in p["shapes"]
        ]
        assert shapes == expected_profiles(pkg, p["onnx"], max_batch), p["name"]
        if p["profiles"]:
            ks = sorted(p["profiles"], key=p["profiles"].get)
            assert [int(k) for k in ks] == [s["opt"]["keep"][1] for s in shapes]


def test_trtexec_script_parses_and_matches_the_onnx_graphs(built) -> None:
    pkg, info = built
    tool = tool_for(info["flavor"], info["version"])
    script = check_script((pkg / TRTEXEC_SCRIPT).read_text(), tool)
    graphs = {p.name for p in pkg.glob("*.onnx")}
    per_stage = info["layout"] == "per-stage"
    assert {s.onnx for s in script.values()} == {
        g for g in graphs if g.endswith("_kK.onnx") == per_stage or not g.startswith("stage")
    }
    for plan_file, s in script.items():
        expected = expected_profiles(pkg, s.onnx, 1)
        if s.onnx.startswith("stage"):  # one profile per K, for one stream
            assert s.profiles == [(p["min"], p["opt"], p["max"]) for p in expected], plan_file
            assert s.timed == [(i, p["opt"]) for i, p in enumerate(expected)], plan_file
        else:  # static graph: trtexec takes its shapes from the graph
            assert s.profiles == [] and s.timed == [(None, {})], plan_file
        assert (pkg / plan_file).stat().st_size > 0


def test_fp16_plans_are_built_from_typed_graphs_kept_in_the_package(tiny_package, tmp_path):
    """A float16 build converts every graph (normalisations, Softmax and the rollout rows
    stay float32), keeps the typed graphs it built from, and its script builds from them;
    a rebuild at fp32 removes them."""
    pkg = tmp_path / "pkg"
    shutil.copytree(tiny_package, pkg)
    info = build_trt(pkg, BuildOptions(precision="fp16"), progress=False)
    assert (info["precision"], info["tf32"]) == ("fp16", False)
    m = Manifest.load(pkg)
    typed = info["typed_graphs"]
    assert set(typed) == {p["onnx"] for p in info["plans"]}
    for src, half in typed.items():
        assert half == f"trt/{src.removesuffix('.onnx')}.fp16.onnx"
        graph = onnx.load(str(pkg / half), load_external_data=False)
        assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in graph.graph.initializer)
        assert m.files[half]["sha256"] and m.files[typed_weights(half)]["sha256"]
    for p in info["plans"]:
        assert (pkg / p["file"]).stat().st_size > 0
    tool = tool_for(info["flavor"], info["version"])
    script = check_script((pkg / TRTEXEC_SCRIPT).read_text(), tool)
    assert {s.onnx for s in script.values()} == set(typed.values())
    info = build_trt(pkg, BuildOptions(precision="tf32"), progress=False)
    assert (info["precision"], info["tf32"], info["typed_graphs"]) == ("fp32", True, {})
    assert not list((pkg / "trt").glob("*.fp16.*"))
    assert not any(".fp16." in f for f in Manifest.load(pkg).files)


def test_fp32_plans_are_built_without_tf32_unless_asked(tiny_package, tmp_path, monkeypatch):
    from rgtp.engines import trt_build

    flags = []
    real = trt_build.PlanBuilder._config

    def config(self, network, profiles):
        made = real(self, network, profiles)
        flags.append(made.get_flag(self.trt.BuilderFlag.TF32))
        if self.flavor == "tensorrt_rtx":
            assert made.get_flag(self.trt.BuilderFlag.REQUIRE_USER_ALLOCATION)
        return made

    monkeypatch.setattr(trt_build.PlanBuilder, "_config", config)
    # one plan is enough: the embed graph
    monkeypatch.setattr(trt_build, "plan_jobs", lambda *a, **k: plan_jobs(*a, **k)[:1])
    pkg = tmp_path / "pkg"
    shutil.copytree(tiny_package, pkg)
    for precision in ("fp32", "tf32", "fp16"):
        build_trt(pkg, BuildOptions(precision=precision), progress=False)
    assert flags == [False, True, False]


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
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_trt_matches_onnx_runtime_on_gpu(small_packages, tmp_path, precision: str) -> None:
    """Same kept tokens and same detections as ORT, frame by frame. fp32 (TF32 off) must
    keep exactly ORT's tokens; fp16 may swap a few near the top-K cut."""
    from rgtp.core.selection import FixedKeep
    from rgtp.families.detection.boxes import Detections
    from rgtp.runtime import Pipeline
    from tests.conftest import assert_same_detections, synthvid_frames

    pkg = tmp_path / "pkg"
    shutil.copytree(small_packages["a"][0], pkg)
    build_trt(pkg, BuildOptions(precision=precision), progress=False)
    fp16 = precision == "fp16"
    k = Manifest.load(pkg).plan.buckets[0]
    trt_stream = Pipeline.load(pkg, "trt", device="cuda").new_stream(policy=FixedKeep(k))
    ort_stream = Pipeline.load(pkg, "ort").new_stream(policy=FixedKeep(k))
    for frame in synthvid_frames(6):
        a, b = trt_stream.step(frame), ort_stream.step(frame)
        kept_a, kept_b = set(a.keep.cpu().tolist()), set(b.keep.tolist())
        assert len(kept_a) == len(kept_b) == len(a.keep)
        if fp16:
            assert len(kept_a & kept_b) >= 0.9 * len(kept_b), f"frame {a.index}"
            assert abs(len(a.detections) - len(b.detections)) <= max(1, len(b.detections) // 10)
        else:
            assert kept_a == kept_b, f"frame {a.index}: kept tokens differ"
            on_cpu = Detections(*(t.cpu() for t in vars(a.detections).values()))
            assert_same_detections(on_cpu, b.detections, 1e-3, 0.5)


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


@pytest.mark.parametrize("backend", ["ort", "torch", "trt"])
def test_a_changed_plan_stops_every_backend(built, tmp_path, backend: str) -> None:
    from rgtp.package.manifest import ManifestError
    from rgtp.runtime import Pipeline

    src, info = built
    pkg = tmp_path / "pkg"
    shutil.copytree(src, pkg)
    victim = info["plans"][-1]["file"]
    data = bytearray((pkg / victim).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (pkg / victim).write_bytes(bytes(data))
    device = "cuda" if backend == "trt" else "cpu"
    with pytest.raises(ManifestError, match=rf"{re.escape(victim)}: sha256 differs"):
        Pipeline.load(pkg, backend, device=device)


def test_plans_record_the_hash_of_the_graph_they_were_built_from(tiny_package, tmp_path):
    """Unverified (`verify=False`), a changed graph is built, and its plan's provenance is
    the graph as built, not the manifest's record of it."""
    from rgtp.package.manifest import ManifestError, sha256_file

    pkg = tmp_path / "pkg"
    shutil.copytree(tiny_package, pkg)
    graph = pkg / "stage0_kK.onnx"
    data = graph.read_bytes()
    changed = data.replace(b"rgtp graph stage0_kK", b"rgtp graph stage0_kX")  # same size
    assert changed != data
    graph.write_bytes(changed)
    with pytest.raises(ManifestError, match=r"stage0_kK\.onnx: sha256 differs"):
        build_trt(pkg, BuildOptions(), progress=False)
    assert not (pkg / "trt").exists()
    info = build_trt(pkg, BuildOptions(), progress=False, verify=False)
    plan = next(p for p in info["plans"] if p["onnx"] == graph.name)
    recorded = Manifest.load(pkg).files[graph.name]["sha256"]
    assert plan["onnx_sha256"] == sha256_file(graph) != recorded
    for p in info["plans"]:  # as readable as the package they join
        assert stat.S_IMODE((pkg / p["file"]).stat().st_mode) == 0o644
    assert stat.S_IMODE((pkg / "trt").stat().st_mode) == 0o755


def test_a_failed_build_leaves_a_whole_package_without_plans(built, tmp_path, monkeypatch):
    from rgtp.engines import trt_build
    from rgtp.export.package import foreign_files
    from rgtp.runtime import Pipeline

    src, _ = built
    pkg = tmp_path / "pkg"
    shutil.copytree(src, pkg)
    real, calls = trt_build.PlanBuilder.build, []

    def fails_second(self, onnx_path, profiles):
        calls.append(onnx_path)
        if len(calls) == 2:
            raise RuntimeError("builder ran out of memory")
        return real(self, onnx_path, profiles)

    monkeypatch.setattr(trt_build.PlanBuilder, "build", fails_second)
    with pytest.raises(RuntimeError, match="out of memory"):
        build_trt(pkg, BuildOptions(), progress=False)
    m = Manifest.load(pkg)
    assert "trt" not in m.extra and not any(n.startswith("trt/") for n in m.files)
    assert foreign_files(pkg) == [] and not (pkg / "trt").exists()
    Pipeline.load(pkg, "ort")  # verifies: nothing listed is missing


def test_graphs_pruning_after_block0_and_a_users_head_convert(tiny_detector, tmp_path) -> None:
    """Stage 0 of a block0-mlp plan takes all N tokens but K kept indices (a static axis
    beside the symbolic one), and a user's head graph rides along: both build."""
    from rgtp.export.package import export_package
    from rgtp.export.user_head import read_user_head
    from rgtp.package.plan import StagePlan

    bb = tiny_detector.cfg.backbone
    head_path = tmp_path / "head.onnx"

    class Head(torch.nn.Module):
        def forward(self, m: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return m[:, :4] * 10, m[:, 4:7].sigmoid()

    torch.onnx.export(
        Head(),
        (torch.randn(bb.num_tokens, bb.embed_dim),),
        str(head_path),
        input_names=["map"],
        output_names=["boxes", "scores"],
        dynamo=True,
        verbose=False,
    )
    graph, spec = read_user_head(head_path)
    plan = StagePlan.create(
        tiny_detector.cfg, [49], prune_from="block0-mlp", head="onnx", user_head=spec
    )
    export_package(tiny_detector, plan, tmp_path / "pkg", progress=False, user_head=graph)
    info = build_trt(tmp_path / "pkg", BuildOptions(), progress=False)
    assert sorted(p["name"] for p in info["plans"]) == ["embed", "head", "stage0", "stage1"]
    stage0 = next(p for p in info["plans"] if p["name"] == "stage0")
    assert sorted(stage0["profiles"], key=int) == ["49", str(bb.num_tokens)]
