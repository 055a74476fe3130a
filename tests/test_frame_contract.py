"""The frame contract (rgtp.runtime.frames): what a stream accepts, how frames of another
size are fitted, and that every refused frame names its problem and leaves the stream
intact (the next frames bit-identical to a stream that never saw it)."""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from rgtp.core.selection import FixedKeep
from rgtp.families.detection.boxes import postprocess
from rgtp.runtime import FrameError, Pipeline, StreamOptions
from rgtp.runtime.frames import to_model_input
from tests.conftest import moving_frames
from tests.stream_checks import assert_same_result, assert_stream_intact

SIZE = 224
# The random tiny head scores every location about 0.27: this keeps some dozens of boxes,
# so that detections are compared, without a thousand-box NMS per frame.
SCORE = 0.28


def pruned(pipe: Pipeline, **options: object) -> StreamOptions:
    return StreamOptions(
        policy=FixedKeep(pipe.plan.num_tokens // 4), task={"score_threshold": SCORE}, **options
    )


def good() -> np.ndarray:
    return next(moving_frames(1, SIZE, seed=3))


# (name, bad frame, stream options, the message the user sees)
REFUSED = [
    ("None", lambda: None, {}, r"frame is a NoneType; expected an RGB frame \(H, W, 3\)"),
    ("str", lambda: "frame.png", {}, r"frame is a str; expected"),
    ("bytes", lambda: b"\x00" * 12, {}, r"frame is a bytes; expected"),
    ("list", lambda: good().tolist(), {}, r"frame is a list; convert with np\.asarray"),
    (
        "PIL image",
        lambda: Image.fromarray(good()),
        {},
        r"frame is a PIL\.Image\.Image; convert with np\.asarray\(img\)",
    ),
    ("uint16", lambda: good().astype(np.uint16), {}, r"frame dtype uint16 is not accepted"),
    ("int8", lambda: good().astype(np.int8), {}, r"frame dtype int8 is not accepted"),
    ("bool", lambda: good() > 127, {}, r"frame dtype bool is not accepted"),
    ("int64", lambda: good().astype(np.int64), {}, r"frame dtype int64 is not accepted"),
    ("object", lambda: good().astype(object), {}, r"frame dtype object is not accepted"),
    (
        "torch int32",
        lambda: torch.from_numpy(good()).int(),
        {},
        r"frame dtype int32 is not accepted",
    ),
    (
        "torch complex",
        lambda: torch.from_numpy(good()).to(torch.complex64),
        {"float_scale": 1.0},
        r"frame dtype complex64 is not accepted",
    ),
    (
        "float without scale",
        lambda: good().astype(np.float32) / 255,
        {},
        r"float32 frame refused: the stream was opened without float_scale",
    ),
    (
        "torch float64 without scale",
        lambda: torch.from_numpy(good()).double(),
        {},
        r"float64 frame refused",
    ),
    (
        "NaN",
        lambda: np.where(good() > 200, np.nan, good() / 255).astype(np.float32),
        {"float_scale": 255.0},
        r"frame has NaN values; frames must be finite",
    ),
    (
        "Inf",
        lambda: np.where(good() > 200, np.inf, good()).astype(np.float32),
        {"float_scale": 1.0},
        r"frame has infinite values",
    ),
    (
        "1e30",
        lambda: np.full((SIZE, SIZE, 3), 1e30, np.float32),
        {"float_scale": 1.0},
        r"frame values span \[1e\+30, 1e\+30\].*pixels must be in \[0, 255\]",
    ),
    (
        "[0, 255] read with scale 255",
        lambda: good().astype(np.float32),
        {"float_scale": 255.0},
        r"after float_scale=255; pixels must be in \[0, 255\]",
    ),
    (
        "negative float",
        lambda: good().astype(np.float32) - 128,
        {"float_scale": 1.0},
        r"frame values span \[-",
    ),
    ("(H, W)", lambda: good()[..., 0], {}, r"frame has shape \(224, 224\).*grey\?"),
    ("(H, W, 4)", lambda: np.dstack([good(), good()[..., :1]]), {}, r"shape \(224, 224, 4\)"),
    ("(3, H, W)", lambda: good().transpose(2, 0, 1), {}, r"channels first\?"),
    ("(1, H, W, 3)", lambda: good()[None], {}, r"frame has shape \(1, 224, 224, 3\)"),
    ("(0, W, 3)", lambda: good()[:0], {}, r"frame has no pixels: shape \(0, 224, 3\)"),
    ("(H, 0, 3)", lambda: good()[:, :0], {}, r"frame has no pixels: shape \(224, 0, 3\)"),
    (
        "another size with resize='refuse'",
        lambda: good()[:200],
        {"resize": "refuse"},
        r"frame is 200 x 224 pixels, the model takes 224 x 224.*resize='refuse'",
    ),
    (
        "tensor on another device",
        lambda: torch.empty(SIZE, SIZE, 3, dtype=torch.uint8, device="meta"),
        {},
        r"frame is on meta; pass it on the CPU or on the pipeline's device",
    ),
    (
        "sparse tensor",
        lambda: torch.from_numpy(good()).to_sparse(),
        {},
        r"frame is a torch\.sparse_coo tensor",
    ),
]


@pytest.mark.parametrize(
    ("make", "options", "message"),
    [r[1:] for r in REFUSED],
    ids=[r[0] for r in REFUSED],
)
def test_a_refused_frame_names_its_problem_and_leaves_the_stream_intact(
    pipe, frames, make, options, message
) -> None:
    assert_stream_intact(
        pipe,
        frames,
        lambda s: s.step(make()),
        FrameError,
        message,
        pruned(pipe, **options),
    )


def test_frame_error_is_a_value_error_exported_from_the_runtime() -> None:
    assert issubclass(FrameError, ValueError)


def test_strided_readonly_and_tensor_frames_give_the_same_result(pipe, frames) -> None:
    """Negative strides (BGR -> RGB), read-only memory, non-contiguous tensors and tensors
    on the CPU are the same frame as a plain array."""
    bgr = [np.ascontiguousarray(f[..., ::-1]) for f in frames]
    views = {
        "negative strides": [b[..., ::-1] for b in bgr],
        "read-only": [np.frombuffer(f.tobytes(), np.uint8).reshape(f.shape) for f in frames],
        "torch": [torch.from_numpy(f) for f in frames],
        "torch non-contiguous": [
            torch.from_numpy(np.ascontiguousarray(f.transpose(2, 0, 1))).permute(1, 2, 0)
            for f in frames
        ],
        "float with scale 1": [f.astype(np.float64) for f in frames],
    }
    reference = pipe.new_stream(pruned(pipe))
    expected = [reference.step(f) for f in frames]
    for variant in views.values():
        stream = pipe.new_stream(pruned(pipe, float_scale=1.0))
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # e.g. torch's "array is not writable"
            got = [stream.step(f) for f in variant]
        for a, b in zip(got, expected, strict=True):
            assert_same_result(a, b)


def test_float_frames_in_zero_one_read_with_scale_255(pipe, frames) -> None:
    stream = pipe.new_stream(pruned(pipe, float_scale=255.0))
    reference = pipe.new_stream(pruned(pipe))
    for f in frames[:2]:
        got, want = stream.step(f.astype(np.float32) / 255), reference.step(f)
        assert torch.equal(got.keep, want.keep)
        assert torch.allclose(stream.out_map, reference.out_map, atol=1e-4)


def test_letterbox_fits_the_longer_side_and_pads_with_the_pixel_mean() -> None:
    mean = (123.675, 116.28, 103.53)
    wide = next(moving_frames(1, 448, seed=4))[:224]  # 224 x 448 (H x W)
    pixels, geometry = to_model_input(wide, SIZE, torch.device("cpu"), "letterbox", None, mean)
    assert pixels.shape == (1, 3, SIZE, SIZE)
    content = F.interpolate(
        torch.from_numpy(wide).permute(2, 0, 1)[None].float(),
        size=(112, 224),
        mode="bilinear",
        antialias=True,
        align_corners=False,
    )
    assert torch.equal(pixels[:, :, :112], content)
    grey = torch.tensor(mean).view(1, 3, 1, 1)
    assert torch.equal(pixels[:, :, 112:], grey.expand(1, 3, 112, 224))
    assert (geometry.height, geometry.width, geometry.sx, geometry.sy) == (224, 448, 2.0, 2.0)
    tall = wide.transpose(1, 0, 2)  # 448 x 224: padded on the right
    pixels, geometry = to_model_input(tall, SIZE, torch.device("cpu"), "letterbox", None, mean)
    assert torch.equal(pixels[..., 112:], grey.expand(1, 3, 224, 112))
    assert (geometry.sx, geometry.sy) == (2.0, 2.0)
    _, stretched = to_model_input(tall, SIZE, torch.device("cpu"), "stretch")
    assert (stretched.sx, stretched.sy) == (1.0, 2.0)


def test_letterboxed_detections_map_back_to_frame_pixels_clipped(tiny_detector) -> None:
    """A 112 x 224 frame needs no resize under letterbox: the model sees it on top of a
    mean-grey half, and every detection comes back in frame pixels inside the frame."""
    pipe = Pipeline.from_model(tiny_detector)
    frame = next(moving_frames(1, SIZE, seed=6))[:112]
    result = pipe.new_stream(score_threshold=0.0).step(frame)
    canvas = torch.tensor(tiny_detector.cfg.pixel_mean).view(1, 3, 1, 1).repeat(1, 1, SIZE, SIZE)
    canvas[:, :, :112] = torch.from_numpy(frame).permute(2, 0, 1).float()
    with torch.no_grad():
        boxes, scores = tiny_detector.head_from_map(tiny_detector.features(canvas))
    dets = postprocess(boxes[0], scores[0], score_threshold=0.0)
    clipped = torch.minimum(dets.boxes.clamp(min=0), torch.tensor([224.0, 112.0, 224.0, 112.0]))
    nonempty = (clipped[:, 2] > clipped[:, 0]) & (clipped[:, 3] > clipped[:, 1])
    assert len(result.detections) == int(nonempty.sum()) > 0
    assert torch.allclose(result.detections.boxes, clipped[nonempty], atol=1e-4)
    assert torch.allclose(result.detections.scores, dets.scores[nonempty], atol=1e-5)
    b = result.detections.boxes
    assert (b[:, :2] >= 0).all() and (b[:, 2] <= 224).all() and (b[:, 3] <= 112).all()


def test_square_frames_are_the_same_under_letterbox_and_stretch(pipe) -> None:
    for side in (SIZE, 2 * SIZE):
        frames = list(moving_frames(3, side, seed=2))
        a = pipe.new_stream(pruned(pipe, resize="letterbox"))
        b = pipe.new_stream(pruned(pipe, resize="stretch"))
        for f in frames:
            assert_same_result(a.step(f), b.step(f))


def test_stream_options_for_frames_are_checked_when_the_stream_opens(pipe) -> None:
    with pytest.raises(ValueError, match=r"resize must be one of \('letterbox', 'stretch'"):
        pipe.new_stream(resize="crop")
    for bad in (0, -1.0, float("nan"), float("inf"), True, "255"):
        with pytest.raises(ValueError, match="float_scale must be a positive number"):
            pipe.new_stream(float_scale=bad)


def test_stream_options_are_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        StreamOptions().resize = "stretch"  # type: ignore[misc]
