"""The authors' ViViT pruning (cache-free, `PruningConfig.paper(..., cls_token=True)`) through
the shared path: plan, exported stage graphs, every backend, the runtime's streams, batched
streams. The reference is `CacheFreeStepper`, itself tested against the authors' definition
in tests/test_paper_vivit.py."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from rgtp.core.selection import FixedKeep
from rgtp.families.classification.vivit import ViViT
from rgtp.models.cache_free_stage import CacheFreeStage, CacheFreeStepper
from rgtp.models.config import PruningConfig
from rgtp.package.manifest import Manifest
from rgtp.package.plan import StagePlan
from rgtp.runtime import Pipeline
from tests.conftest import TINY_VIVIT, moving_frames, randomize

# 96 px: a 6 x 6 grid, N = 36 patch tokens and the CLS; 20 time steps of 2 frames.
CFG = dataclasses.replace(TINY_VIVIT, pruning=PruningConfig.paper(96, cls_token=True))
GRID, N = CFG.spatial.grid, CFG.spatial.num_tokens
K, CHECKER = 14, 18  # 18: the checkerboard's
OPTIONS = {"policy": FixedKeep(K), "reset_every": 8, "reset": "checkerboard", "radius": 1}


@pytest.fixture(scope="module")
def vivit() -> ViViT:
    torch.manual_seed(0)
    return randomize(ViViT(CFG))


@pytest.fixture(scope="module")
def frames() -> list[np.ndarray]:
    return list(moving_frames(40, 96, seed=3, speed=4.0))


@pytest.fixture(scope="module")
def package(vivit, exported_package) -> Path:
    return exported_package(vivit, StagePlan.create(CFG, (K, CHECKER)))


def reference(model: ViViT, frames: list[np.ndarray], k: int) -> list[tuple]:
    """`CacheFreeStepper` on the clip: (kept (K,), CLS feature (C,), importance (N,)) a step."""
    clip = torch.from_numpy(np.stack(frames)).permute(3, 0, 1, 2)[None].float()
    stepper = CacheFreeStepper(CacheFreeStage(model.spatial.blocks), GRID, k, 8, radius=1)
    out = []
    with torch.no_grad():
        for t in range(len(frames) // 2):
            z, tokens = model.embed(clip[:, :, 2 * t : 2 * t + 2])
            step = stepper.step(z[0], tokens[0])
            out.append((step.keep, model.cls_features(step.tokens[None])[0], step.importance))
    return out


def run(pipe: Pipeline, frames: list[np.ndarray], **options) -> list:
    stream = pipe.new_stream(**(OPTIONS | options))
    return [r for r in map(stream.step, frames) if r is not None]


def assert_matches_reference(results: list, ref: list[tuple], tol: float) -> None:
    assert len(results) == len(ref)
    for i, (r, (keep, feature, importance)) in enumerate(zip(results, ref, strict=True)):
        assert torch.equal(r.keep.sort().values, keep.sort().values), f"step {i}"
        assert (r.feature - feature).abs().max() <= tol, f"step {i}"
        assert (r.importance - importance).abs().max() <= tol, f"step {i}"


def test_the_plan_is_one_stage_without_caches() -> None:
    plan = StagePlan.create(CFG, (K, CHECKER))
    assert plan.cache_free and plan.stages == (tuple(range(CFG.spatial.depth)),)
    assert plan.prune_from == "block0-mlp" and plan.cached_blocks(0) == ()
    spec = plan.stage_spec(0, K)
    d = CFG.spatial.embed_dim // CFG.spatial.num_heads
    assert [(t.name, t.shape) for t in spec.inputs] == [
        ("tokens", ("B", 1 + N, 48)),
        ("keep", ("B", 1 + K)),
    ]
    assert [(t.name, t.shape) for t in spec.outputs] == [
        ("tokens_out", ("B", 1 + K, 48)),
        ("attn_0", ("B", 1 + K, 1 + N)),
        *[(f"attn_{b}", ("B", 1 + K, 1 + K)) for b in range(1, CFG.spatial.depth)],
        ("keys_0", ("B", N, d)),
    ]
    assert StagePlan.from_dict(plan.to_dict()) == plan


@pytest.mark.parametrize(
    ("change", "says"),
    [
        ({"partition": "per-block"}, "one stage of every block"),
        ({"prune_from": "input"}, "pruning after block 0's attention"),
        ({"rollout_blocks": (3,)}, "every one of them rolled out through"),
        ({"schedules": [(K,)]}, "no keep schedules"),
    ],
)
def test_a_cache_free_plan_refuses_what_it_cannot_run(change, says) -> None:
    with pytest.raises(ValueError, match=says):
        StagePlan.create(CFG, (K,), **change)


def test_a_stream_refuses_settings_its_stages_were_not_exported_for(vivit) -> None:
    pipe = Pipeline.from_model(vivit, (K, CHECKER))
    with pytest.raises(ValueError, match="exported for cache-free pruning"):
        pipe.new_stream(pruning=PruningConfig())
    ours = Pipeline.from_model(randomize(ViViT(TINY_VIVIT)), (K, CHECKER))
    with pytest.raises(ValueError, match="exported for no cache-free pruning"):
        ours.new_stream(pruning=CFG.pruning)


def test_the_runtime_stream_is_the_authors_step(vivit, frames) -> None:
    """Torch engines: every step's kept set, CLS feature and importance those of
    `CacheFreeStepper` (dense step 0, checkerboard resets at 8 and 16, top-K between)."""
    results = run(Pipeline.from_model(vivit, (K, CHECKER)), frames)
    assert [r.k for r in results[:10]] == [N, *[K] * 7, CHECKER, K]
    assert_matches_reference(results, reference(vivit, frames, K), 1e-5)


def test_keeping_every_token_is_the_dense_model(vivit, frames) -> None:
    clip = frames[: CFG.num_frames]
    results = run(Pipeline.from_model(vivit, (K, CHECKER)), clip, policy=FixedKeep(N))
    tensor = torch.from_numpy(np.stack(clip)).permute(3, 0, 1, 2)[None].float()
    with torch.no_grad():
        features = vivit.clip_features(tensor)[0]
        probs = vivit.temporal_head(features[None])[0].softmax(-1)
    assert (torch.stack([r.feature for r in results]) - features).abs().max() <= 1e-5
    assert (results[-1].scores - probs).abs().max() <= 1e-5


def test_batched_streams_equal_streams_alone(vivit, frames) -> None:
    pipe = Pipeline.from_model(vivit, (K, CHECKER))
    alone = [run(pipe, frames[i:]) for i in (0, 4)]
    streams = [pipe.new_stream(**OPTIONS) for _ in range(2)]
    together: list[list] = [[], []]
    for t in range(len(frames) - 4):
        out = pipe.step_many(streams, [frames[t], frames[t + 4]])
        for i, r in enumerate(out):
            if r is not None:
                together[i].append(r)
    for got, want in zip(together, alone, strict=True):
        for a, b in zip(got, want, strict=False):
            assert torch.equal(a.keep, b.keep)
            assert (a.feature - b.feature).abs().max() <= 1e-5


def test_the_package_holds_one_graph_per_bucket_and_no_caches(package) -> None:
    manifest = Manifest.load(package)
    stages = [g for g in manifest.graphs if g.kind == "stage"]
    assert sorted(g.k for g in stages if isinstance(g.k, int)) == [K, CHECKER, N]
    assert all("cache" not in t.name for g in stages for t in g.inputs)
    assert manifest.plan.cache_free


@pytest.mark.parametrize("backend", ["ort", "openvino"])
def test_exported_graphs_run_the_authors_step(vivit, frames, package, backend) -> None:
    """The package on ONNX Runtime and OpenVINO: the same kept sets as the reference on every
    step, features and importance within float32 rounding of a different kernel order."""
    pytest.importorskip("openvino" if backend == "openvino" else "onnxruntime")
    results = run(Pipeline.load(package, backend=backend), frames)
    assert_matches_reference(results, reference(vivit, frames, K), 1e-4)


def test_rgtp_check_passes_the_cache_free_package(package) -> None:
    from rgtp.export.check import check_package

    report = check_package(package, progress=False)
    assert report.passed, report
    assert {g.name for g in report.graphs} >= {f"stage0_k{K}", f"stage0_k{CHECKER}"}


def test_tensorrt_builds_the_cache_free_graphs(package, tmp_path) -> None:
    """The ahead-of-time TensorRT-RTX build (no GPU): one plan for the stage with a profile
    per K bucket; the all-tokens input is static beside the symbolic K."""
    pytest.importorskip("tensorrt_rtx_bindings", reason="TensorRT-RTX builder not installed")
    from rgtp.engines.trt_build import BuildOptions, build_trt

    pkg = tmp_path / "pkg"
    shutil.copytree(package, pkg)
    info = build_trt(pkg, BuildOptions(), progress=False)
    stage = next(p for p in info["plans"] if p["name"] == "stage0")
    assert sorted(stage["profiles"], key=int) == [str(K), str(CHECKER), str(N)]
