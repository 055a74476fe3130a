"""Your own head: the plan's head modes and the interface a user's head graph must have."""

from __future__ import annotations

import pytest
import torch

from rgtp.package.plan import GraphSpec, StagePlan, TensorSpec


def _user_head(inp: tuple, boxes: tuple, scores: tuple) -> GraphSpec:
    return GraphSpec(
        "my_head",
        (TensorSpec("features", inp, "float32"),),
        (TensorSpec("b", boxes, "float32"), TensorSpec("s", scores, "float32")),
    )


def test_plan_records_a_user_head_and_round_trips(tiny_detector) -> None:
    cfg = tiny_detector.cfg
    c, g = cfg.backbone.embed_dim, cfg.backbone.grid
    spec = _user_head((1, c, g, g), (1, 50, 4), (1, 50, 3))
    plan = StagePlan.create(cfg, [49], head="onnx", user_head=spec)
    again = StagePlan.from_dict(plan.to_dict())
    assert again == plan
    assert again.head_spec().inputs == spec.inputs and again.head_spec().name == "head"
    none = StagePlan.create(cfg, [49], head="none")
    assert StagePlan.from_dict(none.to_dict()).head == "none"
    with pytest.raises(ValueError, match="no head"):
        none.head_spec()


@pytest.mark.parametrize(
    ("inp", "boxes", "scores", "message"),
    [
        ((1, 7, 14, 14), (50, 4), (50, 3), "backbone map"),
        ((196, 96), (50, 5), (50, 3), "boxes"),
        ((196, 96), (50, 4), (40, 3), "boxes"),
    ],
)
def test_a_user_head_of_the_wrong_shape_is_refused(
    tiny_detector, inp: tuple, boxes: tuple, scores: tuple, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        StagePlan.create(
            tiny_detector.cfg, [], head="onnx", user_head=_user_head(inp, boxes, scores)
        )
    with pytest.raises(ValueError, match="user head"):
        StagePlan.create(tiny_detector.cfg, [], head="onnx")


# ---------------------------------------------------------------- a user's two-stage head


class TwoStageHead(torch.nn.Module):
    """A small two-stage-style detection head, as a user would bring one: an RPN-like conv
    tower scores A anchors per location and regresses their boxes (Faster R-CNN's delta
    decoding), then a second conv classifies every proposal. No torchvision.

    features (1, C, H, W) -> boxes (H*W*A, 4) in input pixels, scores (H*W*A, classes)."""

    def __init__(self, dim: int, grid: int, stride: int, classes: int = 3) -> None:
        super().__init__()
        self.anchors_per_cell = 2
        a = self.anchors_per_cell
        self.rpn = torch.nn.Conv2d(dim, 32, 3, padding=1)
        self.objectness = torch.nn.Conv2d(32, a, 1)
        self.deltas = torch.nn.Conv2d(32, 4 * a, 1)
        self.classify = torch.nn.Conv2d(32, a * classes, 1)
        self.classes = classes
        centres = (torch.arange(grid, dtype=torch.float32) + 0.5) * stride
        cy, cx = torch.meshgrid(centres, centres, indexing="ij")
        sizes = torch.tensor([2.0 * stride, 4.0 * stride])
        anchors = torch.stack(
            [cx[..., None].expand(grid, grid, a), cy[..., None].expand(grid, grid, a)]
            + [sizes.expand(grid, grid, a)] * 2,
            dim=-1,
        )  # (H, W, A, 4) as (cx, cy, w, h)
        self.register_buffer("anchors", anchors.reshape(-1, 4))

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = torch.relu(self.rpn(features))
        a, c = self.anchors_per_cell, self.classes
        obj = self.objectness(h).permute(0, 2, 3, 1).reshape(-1, 1)
        d = self.deltas(h).permute(0, 2, 3, 1).reshape(-1, 4)
        cls = self.classify(h).permute(0, 2, 3, 1).reshape(-1, c)
        anc = self.anchors
        cx = anc[:, 0] + d[:, 0] * anc[:, 2]
        cy = anc[:, 1] + d[:, 1] * anc[:, 3]
        w = anc[:, 2] * torch.exp(d[:, 2].clamp(max=4.0))
        hh = anc[:, 3] * torch.exp(d[:, 3].clamp(max=4.0))
        boxes = torch.stack([cx - w / 2, cy - hh / 2, cx + w / 2, cy + hh / 2], dim=1)
        scores = torch.sigmoid(obj) * torch.softmax(cls, dim=1)
        assert boxes.shape[0] == h.shape[2] * h.shape[3] * a
        return boxes, scores


def _user_head_for(detector) -> TwoStageHead:
    from tests.conftest import randomize

    bb = detector.cfg.backbone
    torch.manual_seed(3)
    head = TwoStageHead(bb.embed_dim, bb.grid, bb.patch_size)
    return randomize(head, seed=3)


def _dense_detections(detector, head, frame):
    """The dense backbone map and the head's detections on it, in frame pixels."""
    from rgtp.families.detection.boxes import detections_to_frame, postprocess
    from rgtp.runtime.frames import to_model_input
    from tests.test_pruned_loop import dense_reference

    fmap, _ = dense_reference(detector, frame)
    grid = detector.cfg.backbone.grid
    with torch.no_grad():
        boxes, scores = head(fmap.t().reshape(1, -1, grid, grid))
    _, geometry = to_model_input(frame, detector.cfg.backbone.img_size, torch.device("cpu"))
    return fmap, detections_to_frame(geometry, postprocess(boxes, scores, 0.02, 0.6, 100))


def test_your_own_head_with_all_tokens_equals_the_dense_model(tiny_detector) -> None:
    """--head none: the runtime hands the maintained map to your head and forms s_L from what
    it returns; with K = N both equal the dense model's."""
    from rgtp.core.selection import FixedKeep
    from rgtp.families.detection.boxes import postprocess
    from rgtp.runtime import Pipeline
    from tests.conftest import assert_same_detections, moving_frames

    n = tiny_detector.cfg.backbone.num_tokens
    head = _user_head_for(tiny_detector)
    pipe = Pipeline.from_model(tiny_detector, [n // 4], head="none")
    assert pipe.engines.head is None
    stream = pipe.new_stream(policy=FixedKeep(n))

    def my_head(features: torch.Tensor):
        boxes, scores = head(features)
        dets = postprocess(boxes, scores, 0.02, 0.6, 100)
        return dets.boxes, dets.scores, dets.labels

    with pytest.raises(ValueError, match="no head"):
        stream.step(next(moving_frames(1, 224)))
    worst = 0.0
    for frame in moving_frames(6, 224, seed=4):
        result = stream.step(frame, head=my_head)
        fmap, dets = _dense_detections(tiny_detector, head, frame)
        worst = max(worst, (stream.out_map - fmap).abs().max().item())
        assert_same_detections(result.detections, dets, score_tol=1e-5, box_tol=1e-4)
        assert stream.feature_map.shape == (1, fmap.shape[1], 14, 14)
    assert worst <= 1e-5, worst
    # a pruned stream runs on what your head returned
    pruned = pipe.new_stream(policy=FixedKeep(n // 4))
    results = [pruned.step(f, head=my_head) for f in moving_frames(4, 224, seed=4)]
    assert [r.k for r in results] == [n, n // 4, n // 4, n // 4]


def test_a_head_that_returns_junk_leaves_the_stream_intact(tiny_detector) -> None:
    from rgtp.families.detection.family import HeadOutputError
    from rgtp.runtime import Pipeline
    from tests.conftest import moving_frames

    n = tiny_detector.cfg.backbone.num_tokens
    pipe = Pipeline.from_model(tiny_detector, [n // 4], head="none")
    frames = list(moving_frames(3, 224))
    stream = pipe.new_stream()
    good = lambda f: (torch.tensor([[10.0, 10.0, 60.0, 60.0]]), torch.tensor([0.9]))  # noqa: E731
    stream.step(frames[0], head=good)
    before = {k: v.clone() for k, v in stream.state.tensors().items()}
    for junk, message in [
        (lambda f: "boxes", "must return"),
        (lambda f: (torch.zeros(2, 4), torch.zeros(3)), "one length"),
        (lambda f: (torch.full((1, 4), float("nan")), torch.ones(1)), "NaN"),
    ]:
        with pytest.raises(HeadOutputError, match=message):
            stream.step(frames[1], head=junk)
        after = stream.state.tensors()
        assert all(torch.equal(before[k], after[k]) for k in before)
        assert stream.state.frame_index == 1


def test_a_users_onnx_head_rides_in_the_package(tiny_detector, tmp_path) -> None:
    """--head-onnx: the user's graph is copied into the package, hashed, checked, and run by
    the ORT and torch backends; K = N equals the dense model with that head."""
    import shutil

    from rgtp.cli import main
    from rgtp.core.selection import FixedKeep
    from rgtp.export.package import export_package
    from rgtp.export.user_head import read_user_head
    from rgtp.runtime import Pipeline
    from tests.conftest import assert_same_detections, moving_frames

    cfg = tiny_detector.cfg
    bb = cfg.backbone
    head = _user_head_for(tiny_detector).eval()
    path = tmp_path / "head.onnx"
    example = torch.randn(1, bb.embed_dim, bb.grid, bb.grid)
    with torch.no_grad():
        torch.onnx.export(
            head,
            (example,),
            str(path),
            input_names=["features"],
            output_names=["boxes", "scores"],
            dynamo=True,
            verbose=False,
        )
    graph, spec = read_user_head(path)
    n = bb.num_tokens
    # K = N alone is run here: no pruned bucket, no symbolic-K graphs
    plan = StagePlan.create(cfg, [], head="onnx", user_head=spec)
    pkg = tmp_path / "pkg"
    export_package(tiny_detector, plan, pkg, symbolic=False, progress=False, user_head=graph)

    for backend, tol in (("torch", 1e-5), ("ort", 1e-4)):
        pipe = Pipeline.load(pkg, backend=backend)
        stream = pipe.new_stream(policy=FixedKeep(n))
        for frame in moving_frames(3, 224, seed=6):
            result = stream.step(frame)
            fmap, dets = _dense_detections(tiny_detector, head, frame)
            assert (stream.out_map - fmap).abs().max().item() <= tol, backend
            # boxes are pixel coordinates up to 224: float32 rounding in the head (ORT in
            # both backends, torch in the reference) reaches 1e-4 px, so 1e-3 px is the bound
            assert_same_detections(result.detections, dets, score_tol=tol, box_tol=1e-3)

    assert main(["check", str(pkg), "--quiet"]) == 0
    tampered = tmp_path / "tampered"
    shutil.copytree(pkg, tampered)
    blob = bytearray((tampered / "head.onnx").read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    (tampered / "head.onnx").write_bytes(bytes(blob))
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["check", str(tampered), "--quiet"]) == 1
    assert "FAIL head.onnx: sha256 differs" in out.getvalue()


def test_a_head_graph_outside_the_contract_is_refused(tmp_path) -> None:
    from rgtp.export.user_head import UserHeadError, read_user_head

    with pytest.raises(UserHeadError, match="not found"):
        read_user_head(tmp_path / "missing.onnx")
    (tmp_path / "text.onnx").write_text("not a graph")
    with pytest.raises(UserHeadError, match="not a valid ONNX graph"):
        read_user_head(tmp_path / "text.onnx")

    class Dynamic(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return x.flatten(2).transpose(1, 2)[..., :4], x.flatten(2).transpose(1, 2)[..., 4:7]

    path = tmp_path / "dynamic.onnx"
    batch = torch.export.Dim("batch", min=1, max=8)
    torch.onnx.export(
        Dynamic(),
        (torch.randn(2, 8, 4, 4),),
        str(path),
        input_names=["x"],
        dynamic_shapes=({0: batch},),
        dynamo=True,
        verbose=False,
    )
    with pytest.raises(UserHeadError, match="static shapes"):
        read_user_head(path)


def test_a_headless_package_loads_and_runs_your_head(tiny_detector, tmp_path) -> None:
    from rgtp.core.selection import FixedKeep
    from rgtp.export.package import export_package
    from rgtp.runtime import Pipeline
    from tests.conftest import assert_same_detections, moving_frames

    n = tiny_detector.cfg.backbone.num_tokens
    # K = N alone is run here: no pruned bucket, no symbolic-K graphs
    plan = StagePlan.create(tiny_detector.cfg, [], head="none")
    manifest = export_package(tiny_detector, plan, tmp_path / "pkg", symbolic=False, progress=False)
    assert not [g for g in manifest.graphs if g.kind == "head"]
    head = _user_head_for(tiny_detector)

    def my_head(features: torch.Tensor):
        from rgtp.families.detection.boxes import postprocess

        d = postprocess(*head(features), 0.02, 0.6, 100)
        return d.boxes, d.scores, d.labels

    for backend in ("ort", "torch"):
        pipe = Pipeline.load(tmp_path / "pkg", backend=backend)
        assert pipe.engines.head is None
        stream = pipe.new_stream(policy=FixedKeep(n))
        for frame in moving_frames(2, 224, seed=8):
            got = stream.step(frame, head=my_head)
            fmap, want = _dense_detections(tiny_detector, head, frame)
            assert (stream.out_map - fmap).abs().max() <= 1e-4
            assert_same_detections(got.detections, want, score_tol=1e-5, box_tol=1e-3)
