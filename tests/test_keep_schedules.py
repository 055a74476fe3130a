"""Keep schedules (one K per stage, docs/method.md): a stage keeps a subset of the tokens the
stage before ran on, by importance at its first block (Eq. 8). K = N everywhere is the dense
model, equal K everywhere is today's single K, ORT follows the torch reference, and the
plan, the package and the CLI name what is wrong with a schedule."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import numpy as np
import pytest
import torch

from rgtp.core.selection import FixedKeep, ScheduleKeep, keep_policy
from rgtp.export.package import export_package
from rgtp.package.manifest import Manifest
from rgtp.package.plan import StagePlan
from rgtp.runtime import Pipeline
from tests.conftest import assert_same_detections, moving_frames

N = 196  # the tiny detector: a 14 x 14 grid, two stages (blocks 0-2, 3-5), rollout 2 and 5
SCHEDULE = (60, 30)


@pytest.fixture(scope="module")
def scheduled(tiny_detector, tmp_path_factory):
    """The tiny detector exported with K = 40 for every stage and the schedule 60/30."""
    plan = StagePlan.create(tiny_detector.cfg, [40], schedules=[SCHEDULE])
    path = tmp_path_factory.mktemp("scheduled")
    export_package(tiny_detector, plan, path, symbolic=False, force=True, progress=False)
    return path, plan


def run(pipe: Pipeline, policy, frames) -> tuple[list, torch.Tensor]:
    stream = pipe.new_stream(policy=policy, reset_every=4)
    return [stream.step(f) for f in frames], stream.out_map


def test_the_plan_gives_each_stage_its_schedule_k(scheduled) -> None:
    _, plan = scheduled
    assert plan.buckets == (40, N)
    assert [plan.buckets_of(i) for i in range(2)] == [(40, 60, N), (30, 40, N)]
    assert StagePlan.from_dict(plan.to_dict()) == plan
    old = plan.to_dict()
    del old["stage_buckets"]  # a manifest from before schedules: every stage has `buckets`
    assert StagePlan.from_dict(old).buckets_of(1) == (40, N)
    assert "stage_buckets" not in StagePlan.create(plan.config, [40]).to_dict()


def test_the_package_holds_each_stage_its_own_graphs(scheduled) -> None:
    path, plan = scheduled
    manifest = Manifest.load(path)  # validates against the schema and checks every bucket
    assert manifest.plan == plan
    assert sorted(g.k for g in manifest.stage_graphs(1)) == [30, 40, N]
    assert not (path / "stage1_k60.onnx").exists()


@pytest.mark.parametrize("backend", ["torch", "ort"])
def test_keeping_all_tokens_at_every_stage_is_the_dense_model(scheduled, backend: str) -> None:
    pipe = Pipeline.load(scheduled[0], backend)
    frames = list(moving_frames(5, 224))
    dense, dense_map = run(pipe, None, frames)
    full, full_map = run(pipe, ScheduleKeep((N, N)), frames)
    for a, b in zip(dense, full, strict=True):
        assert torch.equal(a.keep, b.keep) and b.stage_k == (N, N)
    assert (dense_map - full_map).abs().max() <= 1e-5


@pytest.mark.parametrize("backend", ["torch", "ort"])
def test_an_equal_k_schedule_is_the_single_k(scheduled, tiny_detector, backend: str) -> None:
    path, _ = scheduled
    pipe = Pipeline.load(path, backend)
    frames = list(moving_frames(6, 224))
    single, single_map = run(pipe, FixedKeep(40), frames)
    equal, equal_map = run(pipe, ScheduleKeep((40, 40)), frames)
    for a, b in zip(single, equal, strict=True):
        assert torch.equal(a.keep, b.keep)
        assert b.stage_k == a.stage_k == ((N, N) if a.reset else (40, 40))
    assert (single_map - equal_map).abs().max() <= 1e-5


def test_later_stages_run_a_subset_and_dropped_tokens_keep_their_output(tiny_detector) -> None:
    pipe = Pipeline.from_model(tiny_detector, [], schedules=[SCHEDULE])
    stream = pipe.new_stream(policy=ScheduleKeep(SCHEDULE), reset_every=0)
    frames = list(moving_frames(4, 224))
    stream.step(frames[0])
    for frame in frames[1:]:
        before = stream.out_map.clone()
        r = stream.step(frame)
        assert r.k == 60 and r.stage_k == SCHEDULE and r.keep.numel() == 60
        changed = torch.nonzero((stream.out_map != before).any(dim=1)).squeeze(1)
        # the last stage wrote its 30 rows, all among the 60 stage 0 ran on
        assert 0 < changed.numel() <= 30 and set(changed.tolist()) <= set(r.keep.tolist())


def test_ort_follows_torch_with_a_schedule(scheduled, tiny_detector) -> None:
    path, plan = scheduled
    frames = list(moving_frames(9, 224))
    ort, ort_map = run(Pipeline.load(path, "ort"), ScheduleKeep(SCHEDULE), frames)
    ref = Pipeline.from_model(tiny_detector, plan.buckets, schedules=[SCHEDULE])
    torch_results, torch_map = run(ref, ScheduleKeep(SCHEDULE), frames)
    for a, b in zip(ort, torch_results, strict=True):
        assert torch.equal(a.keep, b.keep), f"frame {a.index}: kept tokens differ"
        assert a.stage_k == b.stage_k
        assert_same_detections(a.detections, b.detections)
    assert (ort_map - torch_map).abs().max() <= 1e-4
    assert sum(not r.reset for r in ort) == 6


@pytest.mark.parametrize(
    ("schedule", "message"),
    [
        ((60, 30, 20), "keep schedule 60/30/20 gives 3 K for a model with 2 stages"),
        ((30, 60), "keep schedule 30/60 increases at stage 1 (30 -> 60)"),
        ((300, 30), "keep schedule 300/30: K = 300 at stage 0 is outside 1..196 (N)"),
        (
            (60, 20),
            "keep schedule 60/20 needs K = 20 at stage 1, and the package has no such graph "
            "(stage 1 has K buckets [30, 40, 196]); export with --keep 60/20",
        ),
    ],
)
def test_a_schedule_the_package_cannot_run_is_refused(scheduled, schedule, message) -> None:
    path, _ = scheduled
    pipe = Pipeline.load(path, "ort")
    with pytest.raises(ValueError, match="^" + re.escape(message)):
        pipe.new_stream(policy=ScheduleKeep(schedule))


def test_a_plan_refuses_a_schedule_of_the_wrong_length(tiny_detector) -> None:
    with pytest.raises(ValueError, match="gives 3 K for a model with 2 stages"):
        StagePlan.create(tiny_detector.cfg, [40], schedules=[(60, 30, 20)])


def test_keep_policy_reads_a_schedule() -> None:
    assert keep_policy((96, 77)) == ScheduleKeep((96, 77))
    assert keep_policy(77) == keep_policy(np.int64(77)) == FixedKeep(77)
    assert keep_policy([96, np.int64(77)]).schedule == (96, 77)
    with pytest.raises(ValueError, match="increases at stage 2"):
        ScheduleKeep((96, 77, 80))


def test_cli_flops_counts_a_schedule_and_refuses_a_bad_one() -> None:
    def flops(*args: str) -> subprocess.CompletedProcess:
        cmd = [sys.executable, "-m", "rgtp", "flops", "--model", "vitdet-small", *args]
        return subprocess.run(cmd, capture_output=True, text=True)

    uniform, schedule = flops("--keep", "77", "--json"), flops("--keep", "96/85/69/58", "--json")
    assert uniform.returncode == schedule.returncode == 0, schedule.stderr
    a, b = json.loads(uniform.stdout), json.loads(schedule.stdout)
    assert b["k"] == [96, 85, 69, 58]
    # four stages of equal cost: the mean K of the schedule, 77, costs what K = 77 costs
    assert abs(a["pruned"]["backbone_gmacs"] - b["pruned"]["backbone_gmacs"]) < 1e-9
    bad = flops("--keep", "96/77/64")
    assert bad.returncode != 0
    assert "keep schedule 96/77/64 gives 3 K for a model with 4 stages" in bad.stderr


def test_a_shrunk_stage_reads_the_same_buffers_on_every_step(tiny_detector) -> None:
    """With static inputs (CUDA graphs), a stage running fewer tokens than the one before
    reads its tokens and rows from the stream's own (stage, K) buffers: fixed addresses."""
    pipe = Pipeline.from_model(tiny_detector, [], schedules=[SCHEDULE])
    pipe.engines.static_inputs = True
    addresses: list[dict[str, int]] = []
    engine = pipe.engines.stages[1][30]

    class Recording:
        spec = engine.spec

        def run(self, feeds):
            addresses.append({n: t.data_ptr() for n, t in feeds.items()})
            return engine.run(feeds)

    pipe.engines.stages[1][30] = Recording()
    stream = pipe.new_stream(policy=ScheduleKeep(SCHEDULE), reset_every=0)
    for frame in moving_frames(5, 224):
        stream.step(frame)
    assert len(addresses) == 4 and all(a == addresses[0] for a in addresses)
    assert addresses[0]["tokens"] == stream.state.subsets[1, 30][0].data_ptr()


def rgtp(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rgtp", *args], capture_output=True, text=True)


def test_rgtp_run_takes_a_schedule_and_names_a_wrong_one(scheduled, tmp_path) -> None:
    path, _ = scheduled
    ok = rgtp("run", str(path), "--synthetic", "3", "--keep", "60/30", "--out", str(tmp_path))
    assert ok.returncode == 0, ok.stderr
    # (196 + 45 + 45) / 3: frame 0 is dense, then the stages' mean of 60 and 30
    assert "mean K 95 of 196" in ok.stdout
    long = rgtp("run", str(path), "--synthetic", "2", "--keep", "60/30/20", "--out", str(tmp_path))
    assert long.returncode != 0
    assert "keep schedule 60/30/20 gives 3 K for a model with 2 stages" in long.stderr
    up = rgtp("run", str(path), "--synthetic", "2", "--keep", "30/60", "--out", str(tmp_path))
    assert up.returncode == 2 and "keep schedule 30/60 increases at stage 1" in up.stderr
    bad = rgtp("run", str(path), "--synthetic", "2", "--keep", "60/x", "--out", str(tmp_path))
    assert bad.returncode == 2 and "or a keep schedule of one K per stage" in bad.stderr


def test_rgtp_eval_compares_a_schedule_with_a_single_k(tmp_path) -> None:
    out = tmp_path / "e.json"
    args = ["--sequences", "1", "--frames", "4", "--backend", "torch", "--no-dense", "--quiet"]
    proc = rgtp(
        "eval", "--model", "vitdet-small", "--keep", "77,96/85/69/58", *args, "--json", str(out)
    )
    assert proc.returncode == 0, proc.stderr
    records = {r["k"]: r for r in json.loads(out.read_text())}
    assert set(records) == {77, "96/85/69/58"}
    # equal GFLOPs: the schedule's mean K is 77 and the four stages cost alike
    assert records[77]["gflops"] == pytest.approx(records["96/85/69/58"]["gflops"], rel=1e-12)
    assert "K=96/85/69/58 (30 %)" in proc.stdout


def test_a_classifier_keeps_its_cls_token_through_a_schedule() -> None:
    """ViViT (a CLS prefix, rollout through every block): each stage runs its K patch tokens
    and the CLS, and equal K at every stage is the single K."""
    from rgtp.families.classification.vivit import ViViT
    from tests.conftest import randomize
    from tests.test_vivit_pruned import CFG

    torch.manual_seed(0)
    pipe = Pipeline.from_model(
        randomize(ViViT(CFG)), [24], "per-block", schedules=[(24, 18, 14, 14)]
    )
    frames = list(moving_frames(12, 96, seed=3, speed=4.0))

    def steps(policy) -> list:
        stream = pipe.new_stream(policy=policy)
        return [r for r in map(stream.step, frames) if r is not None]

    scheduled = steps(ScheduleKeep((24, 18, 14, 14)))
    assert [r.stage_k for r in scheduled][1:] == [(24, 18, 14, 14)] * 5
    assert all(torch.isfinite(r.scores).all() for r in scheduled if r.scores is not None)
    for a, b in zip(steps(ScheduleKeep((24,) * 4)), steps(FixedKeep(24)), strict=True):
        assert torch.equal(a.keep, b.keep) and torch.equal(a.feature, b.feature)


def test_a_package_without_a_schedules_graphs_is_not_reused(scheduled) -> None:
    from rgtp.export.ensure import plan_differences

    _, plan = scheduled
    plain = StagePlan.create(plan.config, [40])
    assert plan_differences(plan, plain) == []  # more graphs than asked for: it serves
    assert plan_differences(plain, plan) == [
        "its stage 0 has no K buckets [60] (it has [40, 196])",
        "its stage 1 has no K buckets [30] (it has [40, 196])",
    ]


def test_loading_some_buckets_keeps_each_stage_its_own(scheduled) -> None:
    from rgtp.engines.base import EngineError

    path, _ = scheduled
    pipe = Pipeline.load(path, "ort", buckets=[60, 30])
    assert [sorted(s) for s in pipe.engines.stages] == [[60, N], [30, N]]
    pipe.new_stream(policy=ScheduleKeep(SCHEDULE))  # served
    with pytest.raises(EngineError, match=r"no K buckets \[20\]; it has \[30, 40, 60, 196\]"):
        Pipeline.load(path, "ort", buckets=[20])
