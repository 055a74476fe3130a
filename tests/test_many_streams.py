"""Many streams per engine call (`Pipeline.step_many`): streams that run a stage at the same
K share one call on the stage graphs' batch axis, and every stream gets what it would get
alone, bit for bit, on ONNX Runtime and PyTorch, for detectors and classifiers, with mixed
K, keep schedules and reset steps. A failing stream is left unchanged; the others step."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rgtp.core.selection import FixedKeep, ScheduleKeep
from rgtp.package.plan import BATCH, StagePlan
from rgtp.runtime import FrameError, Pipeline, StepManyError
from tests.conftest import TINY_SCHEDULE, moving_frames, randomize
from tests.stream_checks import assert_same_result, assert_state_unchanged, snapshot

SCHEDULE = TINY_SCHEDULE  # the tiny detector's two stages; `tiny_package` holds its graphs


@pytest.fixture(scope="module")
def videos(tiny_detector) -> list[list[np.ndarray]]:
    size = tiny_detector.cfg.backbone.img_size
    return [list(moving_frames(7, size, seed=s)) for s in range(8)]


def policies(count: int) -> list:
    """Streams choosing different K, so a frame's streams split into several groups."""
    kinds = [FixedKeep(20), FixedKeep(40), ScheduleKeep(SCHEDULE), FixedKeep(20)]
    return [kinds[i % len(kinds)] for i in range(count)]


def assert_batched_equals_alone(pipe: Pipeline, videos, count: int, rtol: float = 0.0) -> None:
    """Batched streams keep the tokens, and give the results, the streams give alone; their
    maintained outputs are equal bit for bit, or (`rtol`) within that share of the map's
    largest magnitude (reduced-precision kernels may round per batch size)."""
    options = [dict(policy=p, reset_every=3) for p in policies(count)]
    alone = [pipe.new_stream(**o) for o in options]
    together = [pipe.new_stream(**o) for o in options]
    for t in range(len(videos[0])):
        want = [s.step(v[t]) for s, v in zip(alone, videos, strict=False)]
        got = pipe.step_many(together, [v[t] for v in videos[:count]])
        for a, b in zip(got, want, strict=True):
            assert_same_result(a, b)
    assert [r.stage_k for r in got] == [r.stage_k for r in want]
    for a, b in zip(alone, together, strict=True):
        if rtol == 0.0:
            assert torch.equal(a.out_map, b.out_map)
        else:
            diff = (a.out_map - b.out_map).abs().max()
            assert diff <= rtol * a.out_map.abs().max()


class CountingEngines:
    """Wraps every stage engine of a pipeline to record the batch of each call."""

    def __init__(self, pipe: Pipeline) -> None:
        self.batches: list[int] = []
        for stage in pipe.engines.stages:
            for k, engine in stage.items():
                stage[k] = self._wrap(engine)

    def _wrap(self, engine):
        batches, run = self.batches, engine.run

        class Counted:
            spec = engine.spec

            def run(self, feeds):
                batches.append(feeds["tokens"].shape[0])
                return run(feeds)

        return Counted()


@pytest.mark.parametrize(
    "count, layout", [(4, "per-stage"), (8, "per-stage"), (8, "per-k-prepacked")]
)
def test_streams_batched_on_ort_equal_the_streams_alone(
    tiny_package, videos, count, layout
) -> None:
    """One session per stage (the default), or per (stage, K) with packed weights: either
    way ORT's two threads split a stream's rows alike alone and batched."""
    options = {"layout": "per-k", "prepack": True} if layout == "per-k-prepacked" else {}
    pipe = Pipeline.load(tiny_package, "ort", **options)
    assert pipe.engines.info["prepacked_stages"] == "True"
    calls = CountingEngines(pipe)
    assert_batched_equals_alone(pipe, videos, count)
    # the batched calls carried several streams, never more than the package's max_batch
    assert max(calls.batches) == 4
    assert sum(b > 1 for b in calls.batches) > 0


def test_unpacked_weights_batch_within_float_rounding(tiny_package, videos) -> None:
    """Per-k sessions keep their weights unpacked (one copy for every K bucket); MLAS then
    splits the rows of a call by their count, so a batched stream may differ from itself
    alone in the last bits: the same tokens here, maps within 1e-5."""
    pipe = Pipeline.load(tiny_package, "ort", layout="per-k")
    assert pipe.engines.info["prepacked_stages"] == "False"
    alone = [pipe.new_stream(policy=FixedKeep(20)) for _ in range(4)]
    together = [pipe.new_stream(policy=FixedKeep(20)) for _ in range(4)]
    for t in range(4):
        want = [s.step(v[t]) for s, v in zip(alone, videos, strict=False)]
        got = pipe.step_many(together, [v[t] for v in videos[:4]])
        for a, b in zip(got, want, strict=True):
            assert torch.equal(a.keep, b.keep)
    for a, b in zip(alone, together, strict=True):
        assert (a.out_map - b.out_map).abs().max() <= 1e-5


def test_streams_batched_on_torch_equal_the_streams_alone(tiny_detector, videos) -> None:
    pipe = Pipeline.from_model(tiny_detector, [20, 40], schedules=[SCHEDULE])
    assert pipe.plan.max_batch == 8
    assert_batched_equals_alone(pipe, videos, 8)


def test_a_classifier_batches_its_tubelets(tmp_path) -> None:
    """ViViT: a frame that only fills a time step gives None for every stream alike."""
    from rgtp.families.classification.vivit import ViViT
    from tests.test_vivit_pruned import CFG

    torch.manual_seed(0)
    pipe = Pipeline.from_model(randomize(ViViT(CFG)), [14, 24], "per-block")
    clips = [list(moving_frames(8, 96, seed=s, speed=4.0)) for s in range(3)]
    options = [FixedKeep(14), FixedKeep(24), FixedKeep(14)]
    alone = [pipe.new_stream(policy=p) for p in options]
    together = [pipe.new_stream(policy=p) for p in options]
    for t in range(8):
        want = [s.step(c[t]) for s, c in zip(alone, clips, strict=True)]
        got = pipe.step_many(together, [c[t] for c in clips])
        assert (got[0] is None) == (t % 2 == 0)
        for a, b in zip(got, want, strict=True):
            assert_same_result(a, b)


def test_a_bad_frame_fails_its_stream_only(tiny_package, videos) -> None:
    pipe = Pipeline.load(tiny_package, "ort")
    streams = [pipe.new_stream(policy=FixedKeep(20)) for _ in range(3)]
    reference = [pipe.new_stream(policy=FixedKeep(20)) for _ in range(3)]
    for t in range(2):
        pipe.step_many(streams, [v[t] for v in videos[:3]])
        for s, v in zip(reference, videos, strict=False):
            s.step(v[t])
    before = snapshot(streams[1])
    frames = [videos[0][2], np.zeros((5, 5), np.uint8), videos[2][2]]
    with pytest.raises(StepManyError, match=r"1 of 3 streams failed \(stream 1: FrameError") as e:
        pipe.step_many(streams, frames)
    assert list(e.value.errors) == [1] and isinstance(e.value.errors[1], FrameError)
    assert e.value.results[1] is None
    assert_state_unchanged(streams[1], before)
    for j in (0, 2):  # the others stepped, as they would have alone
        assert_same_result(e.value.results[j], reference[j].step(videos[j][2]))


def test_step_many_refuses_what_it_cannot_batch(tiny_package, tiny_detector, videos) -> None:
    pipe = Pipeline.load(tiny_package, "ort")
    a, b = pipe.new_stream(), pipe.new_stream()
    frame = videos[0][0]
    with pytest.raises(ValueError, match="2 streams and 1 frames"):
        pipe.step_many([a, b], [frame])
    with pytest.raises(ValueError, match="a stream appears twice"):
        pipe.step_many([a, a], [frame, frame])
    other = Pipeline.from_model(tiny_detector, [20]).new_stream()
    with pytest.raises(ValueError, match="streams of this pipeline"):
        pipe.step_many([a, other], [frame, frame])
    assert pipe.step_many([], []) == []


def test_every_stage_graph_leads_with_the_batch_axis(tiny_detector) -> None:
    plan = StagePlan.create(tiny_detector.cfg, [20], max_batch=2)
    spec = plan.stage_spec(1, 20)
    assert all(t.shape[0] == BATCH for t in (*spec.inputs, *spec.outputs))
    assert StagePlan.from_dict(plan.to_dict()).max_batch == 2
    with pytest.raises(ValueError, match="max_batch must be an integer >= 1, got 0"):
        StagePlan.create(tiny_detector.cfg, [20], max_batch=0)


def test_tensorrt_profiles_span_the_batch_and_refuse_a_larger_opt(tiny_package) -> None:
    from rgtp.engines.base import EngineError
    from rgtp.engines.trt_build import plan_jobs
    from rgtp.package.manifest import Manifest

    manifest = Manifest.load(tiny_package)
    jobs = plan_jobs(manifest, "per-k", opt_batch=2)
    stage = next(j for j in jobs if j.ks)
    (profile,) = stage.profiles
    assert [profile.min["keep"][0], profile.opt["keep"][0], profile.max["keep"][0]] == [1, 2, 4]
    embed = next(j for j in jobs if j.name == "embed")
    assert embed.profiles[0].min == embed.profiles[0].max  # static graphs stay static
    with pytest.raises(EngineError, match="opt_batch 5 exceeds the package's max_batch 4"):
        plan_jobs(manifest, "per-k", opt_batch=5)
