"""Inputs refused where they enter, with a message naming the problem, instead of passing
and failing later (a user head graph that breaks its declared interface, a head callable's
logits, a masked frame, NaN weights, a malicious pickle, an export of hundreds of graphs)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

# ---------------------------------------------------------------- a user head that lies


def lying_head(c: int, grid: int, computed: int, declared: int, classes: int = 3):
    """A head graph (1, C, grid, grid) -> boxes, scores that computes `computed` rows and
    declares `declared`: ONNX's checker does not compare the two."""
    n = grid * grid
    const = {
        "shape": [n, c],
        "starts": [0, 0],
        "box_ends": [computed, 4],
        "score_starts": [0, 4],
        "score_ends": [computed, 4 + classes],
    }
    inits = [
        helper.make_tensor(k, TensorProto.INT64, [len(v)], v)
        for k, v in const.items()  # Reshape and Slice read their shapes from tensors
    ]
    nodes = [
        helper.make_node("Reshape", ["features", "shape"], ["rows"]),
        helper.make_node("Slice", ["rows", "starts", "box_ends"], ["raw"]),
        helper.make_node("Abs", ["raw"], ["boxes"]),
        helper.make_node("Slice", ["rows", "score_starts", "score_ends"], ["logits"]),
        helper.make_node("Sigmoid", ["logits"], ["scores"]),
    ]
    graph = helper.make_graph(
        nodes,
        "my_head",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, [1, c, grid, grid])],
        [
            helper.make_tensor_value_info("boxes", TensorProto.FLOAT, [declared, 4]),
            helper.make_tensor_value_info("scores", TensorProto.FLOAT, [declared, classes]),
        ],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def test_a_head_graph_computing_other_shapes_than_it_declares_is_refused(tmp_path) -> None:
    from rgtp.export.user_head import UserHeadError, read_user_head

    honest = tmp_path / "honest.onnx"
    onnx.save(lying_head(96, 14, computed=100, declared=100), str(honest))
    _, spec = read_user_head(honest)
    assert [tuple(t.shape) for t in spec.outputs] == [(100, 4), (100, 3)]

    liar = tmp_path / "liar.onnx"
    onnx.save(lying_head(96, 14, computed=100, declared=256), str(liar))
    with pytest.raises(UserHeadError) as e:
        read_user_head(liar)
    assert str(e.value) == (
        f"{liar}: output boxes is declared (256, 4) but computes (100, 4) on a map of shape "
        "(1, 96, 14, 14); output scores is declared (256, 3) but computes (100, 3) on a map "
        "of shape (1, 96, 14, 14)"
    )


def test_rgtp_export_refuses_the_lying_head_before_exporting(tmp_path, capsys) -> None:
    from rgtp.cli import main

    liar = tmp_path / "liar.onnx"
    onnx.save(lying_head(96, 14, computed=100, declared=256), str(liar))
    out = tmp_path / "pkg"
    assert main(["export", "--head-onnx", str(liar), "--out", str(out), "--quiet"]) != 0
    err = capsys.readouterr().err
    assert "output boxes is declared (256, 4) but computes (100, 4)" in err, err
    assert not out.exists()


def test_rgtp_check_runs_the_head_graph_of_a_package(
    tiny_detector, tmp_path, quick_export, capsys
) -> None:
    """A package whose head graph lies (written without `read_user_head`'s run) fails
    `rgtp check` on that graph. (quick_export: the other graphs are stand-ins, whose
    interface lines are not this test's.)"""
    from rgtp.cli import main
    from rgtp.export.onnx_graphs import graph_interface
    from rgtp.export.package import export_package
    from rgtp.package.plan import StagePlan

    cfg = tiny_detector.cfg
    c, g = cfg.backbone.embed_dim, cfg.backbone.grid
    graph = lying_head(c, g, computed=100, declared=256)
    plan = StagePlan.create(cfg, [20], head="onnx", user_head=graph_interface(graph, "my_head"))
    pkg = tmp_path / "pkg"
    export_package(tiny_detector, plan, pkg, progress=False, user_head=graph)
    assert main(["check", str(pkg), "--quiet"]) == 1
    out = capsys.readouterr().out
    assert (
        "FAIL head.onnx: your head graph: output boxes is declared (256, 4) but computes "
        f"(100, 4) on a map of shape (1, {c}, {g}, {g})"
    ) in out, out


# ---------------------------------------------------------------- a head callable's values


@pytest.mark.parametrize(
    ("returned", "message"),
    [
        (
            (torch.tensor([[1.0, 1.0, 9.0, 9.0]] * 2), torch.tensor([0.5, 2.0])),
            "your head's scores must be probabilities in [0, 1]; they span [0.5, 2] (logits? "
            "apply a sigmoid or softmax in your head)",
        ),
        (
            (torch.tensor([[1.0, 1.0, 9.0, 9.0]]), torch.tensor([-4.97])),
            "your head's scores must be probabilities in [0, 1]; they span [-4.97, -4.97] "
            "(logits? apply a sigmoid or softmax in your head)",
        ),
        (
            (torch.tensor([[1.0, 1.0, 9.0, 9.0]] * 2), torch.tensor([0.9, 0.8]), [1.0, 2.5]),
            "your head's labels must be integer class indices; got float32 values such as [2.5]",
        ),
        (
            (torch.tensor([[1.0, 1.0, 9.0, 9.0]]), torch.tensor([0.9]), torch.tensor([-1])),
            "your head's labels must be class indices >= 0; got -1",
        ),
    ],
)
def test_a_head_callables_logits_and_fractional_labels_are_refused(
    tiny_detector, returned, message
) -> None:
    from rgtp.families.detection.family import HeadOutputError, user_detections

    with pytest.raises(HeadOutputError) as e:
        user_detections(returned, torch.device("cpu"))
    assert str(e.value) == message
    # probabilities and whole-number labels, float or int, are what a head returns
    dets = user_detections(
        (torch.tensor([[1.0, 1.0, 9.0, 9.0]]), torch.tensor([1.0]), [3.0]), torch.device("cpu")
    )
    assert dets.labels.tolist() == [3] and dets.labels.dtype == torch.int64


def test_a_stream_refuses_a_head_callables_logits_and_stays_unchanged(pipe) -> None:
    from rgtp.families.detection.family import HeadOutputError
    from tests.conftest import moving_frames

    frames = list(moving_frames(2, 224))
    stream = pipe.new_stream()
    box = torch.tensor([[10.0, 10.0, 60.0, 60.0]])
    stream.step(frames[0], head=lambda f: (box, torch.tensor([0.9])))
    before = {k: v.clone() for k, v in stream.state.tensors().items()}
    with pytest.raises(HeadOutputError, match="scores must be probabilities"):
        stream.step(frames[1], head=lambda f: (box, torch.tensor([2.0])))
    assert stream.state.frame_index == 1
    after = stream.state.tensors()
    assert all(torch.equal(before[k], after[k]) for k in before)


# ---------------------------------------------------------------- a masked frame


def test_a_masked_frame_is_refused(pipe) -> None:
    from rgtp.runtime.frames import FrameError

    frame = np.ma.masked_array(
        np.full((224, 224, 3), 128, np.uint8), mask=np.zeros((224, 224, 3), bool)
    )
    frame.mask[:50] = True
    stream = pipe.new_stream()
    with pytest.raises(FrameError) as e:
        stream.step(frame)
    assert str(e.value) == (
        "frame is a numpy masked array; rgtp cannot honour its mask: fill the masked pixels "
        "yourself (e.g. frame.filled(0)) and pass the plain array"
    )
    assert stream.state.frame_index == 0
    stream.step(frame.filled(0))  # what the message says works
    assert stream.state.frame_index == 1


# ---------------------------------------------------------------- checkpoints


def test_nan_weights_are_refused_naming_the_tensors(tmp_path) -> None:
    from safetensors.torch import save_file

    from rgtp.models.checkpoint_files import CheckpointError, read_state_dict

    w = torch.randn(8, 4)
    w[2, 1] = float("nan")
    inf = torch.ones(3)
    inf[0] = float("inf")
    path = tmp_path / "nan.safetensors"
    save_file({"blocks.0.attn.qkv.weight": w, "norm.bias": inf, "ok": torch.ones(2)}, str(path))
    with pytest.raises(CheckpointError) as e:
        read_state_dict(path)
    assert str(e.value) == (
        f"{path}: 2 tensor(s) hold NaN or Inf values: blocks.0.attn.qkv.weight (1 of 32 "
        "values), norm.bias (1 of 3 values); a checkpoint's weights must be finite (a "
        "diverged training run or a damaged conversion?)"
    )
    pth = tmp_path / "nan.pth"
    torch.save({"model": {"w": torch.full((2, 2), float("nan"))}}, pth)
    with pytest.raises(CheckpointError, match=r"nan.pth: 1 tensor\(s\) hold NaN or Inf values: w "):
        read_state_dict(pth)


def test_a_family_loader_refuses_nan_weights(tiny_detector, tmp_path) -> None:
    """The detection family's loader reads through read_state_dict: NaN never reaches the
    model, which keeps its weights."""
    from safetensors.torch import save_file

    from rgtp.families.detection.checkpoints import load_weights
    from rgtp.models.checkpoint_files import CheckpointError

    sd = {k: v.clone() for k, v in tiny_detector.state_dict().items()}
    name = next(k for k in sd if k.endswith("qkv.weight"))
    sd[name][0, 0] = float("nan")
    path = tmp_path / "tiny.safetensors"
    save_file(sd, str(path))
    from rgtp.families.detection.detector import Detector
    from tests.conftest import randomize, tiny_config

    model = randomize(Detector(tiny_config()), seed=1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(CheckpointError, match=f"{name} \\(1 of"):
        load_weights(model, path)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


class _System:
    """A pickled call of os.system, as a malicious checkpoint holds one."""

    def __reduce__(self):
        import os

        return (os.system, ("echo pwned",))


def test_a_malicious_torch_checkpoint_is_named_not_called_damaged(tmp_path) -> None:
    from rgtp.models.checkpoint_files import CheckpointError, read_state_dict

    path = tmp_path / "evil.pth"
    torch.save({"w": torch.zeros(2), "x": _System()}, path)
    with pytest.raises(CheckpointError) as e:
        read_state_dict(path)
    module = __import__("os").system.__module__  # posix here, nt on Windows
    assert str(e.value) == (
        f"{path}: not loadable as weights only: it needs {module}.system, which weights-only "
        "loading refuses to run (a file of weights never calls it: do not load this one "
        "unless you trust its source); save the state dict with safetensors"
    )
    assert "damaged" not in str(e.value)
    # a truncated archive is still called what it is
    cut = tmp_path / "cut.pth"
    cut.write_bytes(path.read_bytes()[:300])
    with pytest.raises(CheckpointError, match="damaged zip archive"):
        read_state_dict(cut)


# ---------------------------------------------------------------- an export of many graphs


def test_graph_count_is_what_an_export_writes(tiny_detector) -> None:
    from rgtp.export.budget import graph_count
    from rgtp.package.plan import StagePlan
    from tests.conftest import tiny_plan

    plan = tiny_plan(tiny_detector.cfg)  # 2 stages, buckets 20, 40 and N = 196 each
    assert graph_count(plan, symbolic=True) == 2 + 2 * (3 + 1)
    wide = StagePlan.create(tiny_detector.cfg, list(range(1, 197)), head="none")
    assert graph_count(wide, symbolic=False) == 1 + 2 * 196


# vitdet-small's plan for every K from 1 to 200: 4 stages x 201 buckets (N = 256 too) and
# 4 symbolic graphs, embed and head; 1 + 1 + 4 graphs traced, 804 derived from them
COST = dict(traces=6, derived=804, trace_s=12.0, derive_s=0.5)


def test_the_estimate_counts_traces_by_worker_round_and_derivations_one_by_one() -> None:
    from rgtp.export.budget import ExportCost, estimate

    one = ExportCost(**COST, workers=1)
    assert one.seconds == 6 * 12.0 + 804 * 0.5
    assert ExportCost(**COST, workers=4).seconds == 2 * 12.0 + 804 * 0.5
    assert estimate(810, ExportCost(**COST, workers=4)) == (
        "this export writes 810 graphs (more than 64): 6 traced (4 at a time; one took 12.0 s "
        "here) and 804 derived from those traces (one took 0.50 s), about 7 min in all"
    )


def test_a_large_export_warns_and_needs_confirmation(caplog) -> None:
    from rgtp.export.budget import ExportBudgetError, ExportCost, confirm_export

    timed = []

    def cost() -> ExportCost:
        timed.append(1)
        return ExportCost(**COST, workers=4)

    confirm_export(64, cost, yes=False, interactive=False)  # at the limit: silent
    assert not timed and not caplog.records
    with pytest.raises(ExportBudgetError) as e:
        confirm_export(810, cost, yes=False, interactive=False)
    assert str(e.value) == (
        "not exporting 810 graphs without confirmation: pass --yes to export them, or fewer "
        "buckets (--buckets 64,128,256: every K is rounded up to the next bucket)"
    )
    warning = (
        "this export writes 810 graphs (more than 64): 6 traced (4 at a time; one took 12.0 s "
        "here) and 804 derived from those traces (one took 0.50 s), about 7 min in all"
    )
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [("WARNING", warning)]
    caplog.clear()
    confirm_export(810, cost, yes=True, interactive=False)
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [("WARNING", warning)]


@pytest.mark.parametrize(("answer", "goes_on"), [("y", True), ("yes", True), ("", False)])
def test_at_a_terminal_the_large_export_is_asked_about(monkeypatch, answer, goes_on) -> None:
    from rgtp.export.budget import ExportBudgetError, ExportCost, confirm_export

    asked = []
    monkeypatch.setattr("builtins.input", lambda prompt: asked.append(prompt) or answer)
    cost = lambda: ExportCost(**COST, workers=1)  # noqa: E731
    if goes_on:
        confirm_export(100, cost, yes=False, interactive=True)
    else:
        with pytest.raises(ExportBudgetError, match="not exporting 100 graphs"):
            confirm_export(100, cost, yes=False, interactive=True)
    assert asked == ["export anyway? [y/N] "]


def test_the_cost_is_timed_by_tracing_and_deriving_a_stage(tiny_detector) -> None:
    from rgtp.export.budget import export_cost
    from tests.conftest import tiny_plan

    cost = export_cost(tiny_detector, tiny_plan(tiny_detector.cfg), 18, workers=1)
    # embed, head and 2 stages traced; 2 stages x 3 buckets derived
    assert (cost.traces, cost.derived, cost.workers) == (4, 6, 1)
    assert cost.trace_s > 0 and cost.derive_s > 0


def test_rgtp_export_of_hundreds_of_graphs_stops_without_yes(tmp_path, capfd, monkeypatch) -> None:
    """The CLI counts vitdet-small's graphs, warns, and exports nothing (stdin is not a
    terminal under pytest). The timing is test_the_cost_is_timed_by_tracing_and_deriving's:
    a vitdet-small trace takes half a minute here."""
    from rgtp.cli import main
    from rgtp.export import budget

    planned = []

    def cost(model, plan, opset, workers):
        planned.append(plan)
        return budget.ExportCost(**COST, workers=4)

    monkeypatch.setattr(budget, "export_cost", cost)
    out = tmp_path / "pkg"
    buckets = ",".join(str(k) for k in range(1, 201))
    argv = ["export", "--model", "vitdet-small", "--random-init", "--buckets", buckets]
    assert main([*argv, "--out", str(out), "--quiet"]) != 0
    err = capfd.readouterr().err
    assert "warning: this export writes 810 graphs (more than 64): 6 traced" in err, err
    assert "error: not exporting 810 graphs without confirmation: pass --yes" in err
    assert not out.exists()
    (plan,) = planned
    assert len(plan.stages) == 4 and len(plan.buckets) == 201  # COST's counts are this plan's
