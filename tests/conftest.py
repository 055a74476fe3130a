"""Shared fixtures (small models with every code path live, moving test sequences, packages
built once per run) and the test tiers: `SLOW` below is the one list of the slow tier."""

from __future__ import annotations

import os

# Idle OpenMP threads sleep instead of spinning: with spinning, torch's two threads on a
# machine whose other core is busy crawl (2026-12-07, 2 cores shared with other test runs:
# four frames of `tiny_detector` took 0.2 s passive, 1-10 s spinning). Set before torch
# loads its OpenMP runtime; an OMP_WAIT_POLICY already set wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import dataclasses
import hashlib
import json
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import numpy as np
import pytest
import torch
from filelock import FileLock
from skimage import data as skdata
from skimage.transform import resize

from rgtp.families.classification.config import SpatialConfig, TemporalConfig, ViViTConfig
from rgtp.families.detection.config import DetectorConfig, HeadConfig
from rgtp.families.detection.detector import Detector
from rgtp.models.config import BackboneConfig
from rgtp.runtime import Pipeline

# A tiny ViViT: 96 px, a 6 x 6 grid, N = 36 patch tokens and the CLS; 16 frames = 8 time
# steps of 2 frames.
TINY_VIVIT = ViViTConfig(
    name="tiny-vivit",
    spatial=SpatialConfig(img_size=96, embed_dim=48, depth=4, num_heads=3),
    temporal=TemporalConfig(depth=1, num_heads=3),
    num_frames=16,
    num_classes=5,
)


def tiny_config(img_size: int = 224, window: int = 6, **backbone: object) -> DetectorConfig:
    """A fast detector whose windows need padding (grid 14 -> 18 with window 6)."""
    bb = BackboneConfig(
        img_size=img_size,
        embed_dim=96,
        depth=6,
        num_heads=3,
        window_size=window,
        global_blocks=(2, 5),
        pretrain_grid=img_size // 16,
    )
    return DetectorConfig(
        name="tiny",
        backbone=dataclasses.replace(bb, **backbone),
        head=HeadConfig(num_classes=4, neck_channels=48, head_channels=48, group_norm_groups=8),
    )


def randomize(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Give every parameter a random value, so zero-initialised parts (rel-pos tables,
    biases) are exercised by the tests."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("norm1.weight", "norm2.weight")) or ".norm.weight" in name:
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.05 * torch.randn(p.shape, generator=g))
    return model.eval()


@pytest.fixture(scope="session")
def tiny_detector() -> Detector:
    torch.manual_seed(0)
    return randomize(Detector(tiny_config()))


@pytest.fixture(scope="session")
def pipe(tiny_detector) -> Pipeline:
    """`tiny_detector` on torch engines at K = N/4 and K = N (N = 196)."""
    n = tiny_detector.cfg.backbone.num_tokens
    return Pipeline.from_model(tiny_detector, buckets=[n // 4, n])


@pytest.fixture(scope="session")
def frames() -> list[np.ndarray]:
    """Four 224-px moving frames for `pipe` (modules needing other frames override this)."""
    return list(moving_frames(4, 224, speed=8.0))


def moving_frames(num: int, size: int, seed: int = 0, speed: float = 5.0) -> Iterator[np.ndarray]:
    """A camera panning over a real photograph with a bright square crossing it:
    (size, size, 3) uint8 RGB frames."""
    rng = np.random.default_rng(seed)
    big = (resize(skdata.astronaut(), (3 * size, 3 * size), anti_aliasing=True) * 255).astype(
        np.uint8
    )
    pos = rng.uniform(0, size, 2)
    vel = rng.uniform(-1, 1, 2) * speed
    for t in range(num):
        y, x = (pos + t * vel).astype(int) % (2 * size)
        frame = big[y : y + size, x : x + size].copy()
        oy, ox = int(size * 0.3 + 3 * t) % (size - 40), int(size * 0.6 - 2 * t) % (size - 40)
        frame[oy : oy + 40, ox : ox + 40] = (255, 200, 40)
        yield frame


def small_detector() -> Detector:
    """vitdet-small with its shipped weights when present, else a fixed random init."""
    from rgtp.families import get_config, shipped_weights
    from rgtp.families.detection.checkpoints import load_weights

    torch.manual_seed(0)
    det = Detector(get_config("vitdet-small"))
    path = shipped_weights("vitdet-small")
    if path is not None:
        load_weights(det, path)
    else:
        randomize(det)
    return det.eval()


def package_key(model: torch.nn.Module, plan, options: Mapping[str, object]) -> str:
    """What a package holds, as a digest: the model's weights, the plan and the export
    options (a user head graph by its bytes)."""
    h = hashlib.sha256(json.dumps(plan.to_dict(), sort_keys=True).encode())
    for name, value in sorted(options.items()):
        if hasattr(value, "SerializeToString"):
            value = hashlib.sha256(value.SerializeToString()).hexdigest()
        h.update(f"{name}={value!r};".encode())
    for name, t in model.state_dict().items():
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


@pytest.fixture(scope="session")
def exported_package(tmp_path_factory) -> Callable[..., Path]:
    """`export(model, plan, **options)`: the package directory of `model` for `plan`, exported
    (`export_package`, `options` as it takes them) the first time a test of the run asks for
    that content, in any worker, and shared afterwards, so modules asking for the same
    package share one export. Read it; copy it before changing anything in it."""
    from rgtp.export.package import export_package

    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        # pytest-xdist gives each worker its own directory under one per run: the packages
        # live beside them, so a package two workers ask for is exported once
        root = root.parent
    shared = root / "packages"
    shared.mkdir(exist_ok=True)

    def export(model: torch.nn.Module, plan, **options) -> Path:
        key = package_key(model, plan, options)[:20]
        path = shared / f"{plan.config.name}-{key}" / "pkg"
        # a worker asking for a package another is exporting waits for it; export_package
        # puts a package in place only once it is complete
        with FileLock(shared / f"{key}.lock"):
            if not path.is_dir():
                path.parent.mkdir(exist_ok=True)
                export_package(model, plan, path, progress=False, **options)
        return path

    return export


# The tiny detector's shared package: K below and above the area of its 6 x 6 windows, one
# keep schedule (a K per stage), at most four streams a stage call.
TINY_KS = (20, 40)
TINY_SCHEDULE = (40, 20)


def tiny_plan(cfg: DetectorConfig):
    from rgtp.package.plan import StagePlan

    return StagePlan.create(cfg, TINY_KS, schedules=[TINY_SCHEDULE], max_batch=4)


@pytest.fixture(scope="session")
def tiny_package(tiny_detector, exported_package) -> Path:
    """`tiny_detector` exported for `tiny_plan` (N = 196, two stages, symbolic-K graphs too):
    the package of the many-streams, kept-windows, serving, ORT-threads and TensorRT tests."""
    return exported_package(tiny_detector, tiny_plan(tiny_detector.cfg))


class LazyPackages(Mapping):
    """{name: (package dir, model, plan)}, each package exported when first read."""

    def __init__(self, export: Callable[..., Path], model, plans: Mapping[str, object]):
        self._export, self._model, self._plans = export, model, plans

    def __getitem__(self, name: str) -> tuple:
        plan = self._plans[name]
        return self._export(self._model, plan), self._model, plan

    def __iter__(self) -> Iterator[str]:
        return iter(self._plans)

    def __len__(self) -> int:
        return len(self._plans)


@pytest.fixture(scope="session")
def small_packages(exported_package) -> Mapping[str, tuple]:
    """vitdet-small exported twice: "a" with K = 64, 128 in one stage per global block,
    "b" with K = 96 in one stage. {name: (package dir, detector, plan)}; each package is
    exported the first time a test reads it."""
    from rgtp.package.plan import StagePlan

    det = small_detector()
    plans = {
        "a": StagePlan.create(det.cfg, [64, 128], "per-global"),
        "b": StagePlan.create(det.cfg, [96], "whole"),
    }
    return LazyPackages(exported_package, det, plans)


def one_node_graph(module, spec, args, symbolic_k=False, opset=18):
    """A stand-in for tracing (`rgtp.export.package.export_graph`): one Identity node that
    declares ai.onnx opset 20. A package exported with it has real weights, manifest and
    files around graphs no runtime runs: for tests of everything but the graphs."""
    import onnx

    x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])
    y = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])
    node = onnx.helper.make_node("Identity", ["x"], ["y"])
    graph = onnx.helper.make_graph([node], spec.name, [x], [y])
    return onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 20)])


@pytest.fixture
def quick_export(monkeypatch) -> None:
    """export_package with tracing replaced by `one_node_graph`: everything else (weights,
    manifest, temporary directory, replacement) is real, and a package takes well under a
    second instead of seconds a graph."""
    from rgtp.export import package as package_module

    monkeypatch.setattr(package_module, "export_graph", one_node_graph)


def synthvid_frames(num: int, size: int = 256) -> list[np.ndarray]:
    from rgtp.data.synthvid import SynthVIDConfig, generate_sequence, heldout_seeds

    seq = generate_sequence(heldout_seeds(2)[1], SynthVIDConfig(size=size, num_frames=num))
    return list(seq.frames)


def assert_same_detections(a, b, score_tol: float = 1e-4, box_tol: float = 1e-3) -> None:
    """Equal detection sets up to order: boxes of equal score may come out of NMS in either
    order, so every detection of `a` must have its own counterpart in `b`."""
    assert len(a) == len(b), (len(a), len(b))
    free = torch.ones(len(b), dtype=torch.bool)
    for box, score, label in zip(a.boxes, a.scores, a.labels, strict=True):
        close = (
            free
            & (b.labels == label)
            & ((b.scores - score).abs() <= score_tol)
            & ((b.boxes - box).abs().amax(dim=1) <= box_tol)
        )
        assert close.any(), f"no counterpart for {box.tolist()} {score.item():.5f} {label.item()}"
        free[torch.nonzero(close)[0, 0]] = False


# The slow tier, in one place (`make test-fast` runs `-m "not slow"`; `make test` runs all).
# Per test module: the tests (by name) and the fixtures (every test using one) that take
# seconds, mostly ONNX exports through torch's dynamo exporter, ViT-B-scale parity checks,
# training runs and real servers; "*" is the whole module. docs/testing.md says what stays
# fast for each module.
SLOW: dict[str, set[str]] = {
    "test_cache_free_export": {"package"},  # an export, its check and TensorRT build
    "test_check_classifier": {"*"},  # checks test_vivit_pruned's package (an export)
    "test_checkpoints": {"test_timm_samvit_base_patch16_at_672_matches"},  # ViT-B at 672 px
    "test_checkpoints_published": {  # vitdet-b, Hugging Face models, exports through the CLI
        "test_model_zoo_vitdet_b_loads_unedited_and_matches_references",
        "test_hugging_face_vitdet_matches_its_output",
        "test_model_zoo_export_needs_the_head_flag",
        "test_checkpoint_matching_almost_nothing_fails_the_export",
        "test_unknown_or_wrong_format_is_explained",
        "test_hugging_face_errors_name_the_keys_in_the_file",
    },
    "test_cli_classifier": {  # an export, and runs over rendered clips
        "package",
        "test_eval_prints_the_papers_table",
        "test_finetune_temporal_writes_beside_the_weights",
    },
    "test_cli_conventions": {  # the shared tiny package; eval renders its held-out videos
        "tiny_package",
        "test_eval_json_keeps_its_file_and_takes_stdout",
    },
    "test_demo": {"*"},  # both demos, end to end
    "test_early_refusals": {"test_the_cost_is_timed_by_tracing_and_deriving_a_stage"},  # a trace
    "test_eval_viz": {"test_the_shipped_model_keeps_its_accuracy_when_pruned"},  # vitdet-small
    "test_export_ort": {"*"},  # every test reads small_packages or tiny_package
    "test_export_parallel": {  # exports, traces
        "test_parallel_tracing_writes_the_package_a_sequential_export_writes",
        "test_graphs_derived_from_the_symbolic_trace_compute_the_traced_ones",
    },
    "test_flops": {  # the CLI in subprocesses (test_cli_classifier runs `flops` in-process)
        "test_cli_prints_and_writes_json",
        "test_cli_names_the_convention_of_every_table",
    },
    "test_fuzz": {"*"},  # hypothesis, 60 examples a property
    "test_int8_caches": {"int8_caches_package"},  # the tiny package exported, static int8
    "test_gpu_path": {  # the GPU benchmark's dry run; vitdet-small replayed against eager
        "test_gpu_benchmark_dry_run_on_the_cpu",
        "test_a_stream_on_replayed_graphs_equals_the_eager_stream",
    },
    "test_keep_schedules": {  # an export; the CLI in subprocesses
        "scheduled",
        "test_rgtp_eval_compares_a_schedule_with_a_single_k",
        "test_cli_flops_counts_a_schedule_and_refuses_a_bad_one",
    },
    "test_kept_windows": {"tiny_package"},  # an export per stage partition (one shared)
    "test_many_streams": {"tiny_package", "test_a_classifier_batches_its_tubelets"},  # exports
    "test_openvino": {"small_packages", "tiny_package"},  # exports; seconds a compiled shape
    "test_optional": {"test_the_core_runs_a_pipeline_without_the_extras"},  # a fresh interpreter
    "test_own_head": {  # exports
        "test_a_users_onnx_head_rides_in_the_package",
        "test_a_head_graph_outside_the_contract_is_refused",
        "test_a_headless_package_loads_and_runs_your_head",
    },
    "test_package_trust": {"small_packages"},  # copies of it (the export guards stay fast)
    "test_paper_preset": {"test_the_paper_preset_streams_on_every_backend_alike"},  # an export
    # quantizing a vitdet-small package; static int8 through the shared tiny package
    "test_paper_vivit": {"test_export_with_paper_exports_the_cache_free_vivit"},  # an export
    "test_precision": {"int8_package", "tiny_package"},
    "test_pruned_loop": {  # ORT on tiny_package; 8 threads x 8 streams
        "tiny_package",
        "test_eight_threads_of_eight_streams_equal_sequential_runs",
    },
    "test_rollout_rows": {"package"},  # an export
    # 22 tiny-detector frames on the torch engines (the CLI's run, then the test's own)
    "test_run_video": {"test_run_overlay_writes_the_demo_pictures_for_a_detector"},
    "test_serve_lifecycle": {"small_packages"},  # real servers on it
    "test_serving_sequences": {"tiny_package"},  # an export (shared)
    "test_synthmotion": {"test_last_frame_position_and_size_do_not_tell_the_motion"},  # 80 clips
    "test_third_family": {  # exports a package of the third family
        "test_its_package_checks_clean",
        "test_it_runs_pruned_on_onnx_runtime_as_on_pytorch",
        "test_keeping_all_tokens_is_the_dense_model",
    },
    "test_triton_repository": {"package"},  # small_packages
    "test_triton_server": {"*"},  # a real Triton server
    "test_trt": {"*"},  # tiny_package, small_packages and TensorRT-RTX builds
    "test_trt_typed": {"small_packages"},
    "test_video_errors": {"small_packages"},  # the CLI on it
    "test_vivit": {"test_spatial_encoder_matches_timm_vit_b16"},  # ViT-B/16
    "test_vivit_checkpoints": {  # vivit-b's 115 M tensors built, saved, loaded and run twice
        "test_vivit_b_authors_checkpoint_loads_through_the_cli_loader"
    },
    "test_vivit_pruned": {"package"},  # an export
    "test_vivit_train": {  # training runs
        "test_training_is_seeded",
        "test_temporal_phase_from_saved_joint_weights_matches_one_run",
        "test_saved_weights_load_back_into_the_model",
        "test_shipped_weights_are_small_and_need_time",  # 48 clips through vivit-small
    },
}


# Modules whose tests run last in one process: once OpenVINO has compiled models, this
# process can no longer fork (`rgtp.export.parallel.fork_unsafe`), so the exports of every
# other module would trace one graph at a time.
LAST = ("test_openvino",)

# Under pytest-xdist (`make test`: one module a worker at a time, `--dist loadfile`), the
# longest modules go first, so that none of them is left running alone at the end while the
# other workers idle (2026-12-07, `-n 3` on 2 cores: test_openvino last, 839 s). Seconds
# they took under `-n 3` that day, longest first; a worker that has run OpenVINO traces its
# later exports one graph at a time, which the other workers' load makes up for.
LONGEST = (
    "test_openvino",  # 285 s
    "test_serve_lifecycle",  # 164 s
    "test_trt",  # 144 s
    "test_package_trust",  # 144 s
    "test_own_head",  # 134 s
    "test_demo",  # 134 s
    "test_keep_schedules",  # 129 s
    "test_precision",  # 127 s
    "test_kept_windows",  # 125 s
    "test_triton_server",  # 100 s
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        slow = SLOW.get(item.path.stem, set())
        name = getattr(item, "originalname", item.name)
        if "*" in slow or name in slow or slow & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
    # stable sorts: the rest keep their order
    if os.environ.get("PYTEST_XDIST_WORKER"):
        rank = {stem: i for i, stem in enumerate(LONGEST)}
        items.sort(key=lambda item: rank.get(item.path.stem, len(LONGEST)))
    else:
        items.sort(key=lambda item: item.path.stem in LAST)
