"""Your own head: the plan's head modes and the interface a user's head graph must have."""

from __future__ import annotations

import pytest

from rgtp.models.plan import GraphSpec, StagePlan, TensorSpec


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
