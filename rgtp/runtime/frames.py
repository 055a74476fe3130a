"""The frame contract: what a stream accepts as a frame, checked before any state changes,
and the geometry between a frame and the square model input.

Accepted: an RGB frame (H, W, 3), channels last, H and W >= 1, as a numpy array (not a
masked one: its mask would be dropped) or a torch tensor (on the CPU or the pipeline's
device), any strides. uint8 is 0..255; float frames
need the scale chosen when the stream is opened (pixel = value * float_scale) and must land
in [0, 255]. Anything else raises `FrameError` naming the problem and what is accepted.
"""

from __future__ import annotations

import math
import numbers

import numpy as np
import torch
import torch.nn.functional as F

from rgtp.package.family import FrameGeometry

RESIZE_POLICIES = ("letterbox", "stretch", "refuse")
ACCEPTED = "an RGB frame (H, W, 3) as a uint8 numpy array or torch tensor"
FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
REFUSED_DTYPE = (
    "is not accepted; pass uint8 RGB (0..255), or float with a scale chosen when the stream "
    "is opened (StreamOptions(float_scale=...))"
)


class FrameError(ValueError):
    """A frame outside the frame contract. Raised before the stream changes."""


def check_frame_options(resize: object, float_scale: object) -> None:
    """ValueError for a resize policy or float scale no frame could be read with."""
    if resize not in RESIZE_POLICIES:
        raise ValueError(f"resize must be one of {RESIZE_POLICIES}, got {resize!r}")
    if float_scale is not None and not (
        isinstance(float_scale, numbers.Real)
        and not isinstance(float_scale, bool)
        and 0 < float_scale < float("inf")
    ):
        raise ValueError(
            "float_scale must be a positive number (pixel = value * float_scale, e.g. 255.0 "
            f"for floats in [0, 1]) or None to refuse float frames; got {float_scale!r}"
        )


def frame_tensor(
    frame: object, device: torch.device, float_scale: float | None = None
) -> torch.Tensor:
    """A frame that keeps the contract -> its pixels (H, W, 3) float32 in [0, 255] on
    `device`. FrameError for anything else."""
    t = _as_tensor(frame)
    if t.device.type != "cpu" and not _same_device(t.device, device):
        raise FrameError(
            f"frame is on {t.device}; pass it on the CPU or on the pipeline's device ({device})"
        )
    if t.ndim != 3 or t.shape[2] != 3:
        hint = ""
        if t.ndim == 3 and t.shape[0] == 3:
            hint = " (channels first? use frame.permute(1, 2, 0) or np.moveaxis(frame, 0, -1))"
        elif t.ndim == 2:
            hint = " (grey? stack it to three channels)"
        raise FrameError(f"frame has shape {tuple(t.shape)}; expected {ACCEPTED}{hint}")
    if t.shape[0] == 0 or t.shape[1] == 0:
        raise FrameError(f"frame has no pixels: shape {tuple(t.shape)}")
    if t.dtype == torch.uint8:
        return t.to(device=device, dtype=torch.float32)
    if t.dtype not in FLOAT_DTYPES:
        raise FrameError(f"frame dtype {str(t.dtype).removeprefix('torch.')} {REFUSED_DTYPE}")
    if float_scale is None:
        raise FrameError(
            f"{str(t.dtype).removeprefix('torch.')} frame refused: the stream was opened "
            "without float_scale, so the range of its values is unknown; open it with "
            "float_scale=255.0 for values in [0, 1] or 1.0 for [0, 255], or pass uint8"
        )
    lo, hi = (float(v) for v in torch.aminmax(t))  # one pass, one sync; NaN propagates
    if math.isnan(lo) or math.isnan(hi):
        raise FrameError("frame has NaN values; frames must be finite")
    if lo == float("-inf") or hi == float("inf"):
        raise FrameError("frame has infinite values; frames must be finite")
    if lo * float_scale < 0 or hi * float_scale > 255:
        raise FrameError(
            f"frame values span [{lo:g}, {hi:g}], i.e. [{lo * float_scale:g}, "
            f"{hi * float_scale:g}] after float_scale={float_scale:g}; pixels must be in "
            "[0, 255]"
        )
    return t.to(device=device, dtype=torch.float32) * float_scale


def to_model_input(
    frame: object,
    size: int,
    device: torch.device,
    resize: str = "letterbox",
    float_scale: float | None = None,
    pad_pixel: tuple[float, float, float] = (0.0, 0.0, 0.0),
) -> tuple[torch.Tensor, FrameGeometry]:
    """A frame (see the module docstring) -> pixels (1, 3, size, size) float32 RGB in
    [0, 255], and its geometry.

    resize: "letterbox" (ViTDet's test-time resize: the longer side to `size`, the rest
    padded at the bottom and right with `pad_pixel`, the model's pixel mean, which is zero
    after normalisation), "stretch" (both sides to `size`), "refuse" (FrameError unless the
    frame is size x size). A square frame is resized the same way by letterbox and stretch.
    """
    x = frame_tensor(frame, device, float_scale).permute(2, 0, 1).unsqueeze(0)
    h, w = x.shape[2:]
    if resize == "refuse" and (h, w) != (size, size):
        raise FrameError(
            f"frame is {h} x {w} pixels, the model takes {size} x {size}, and the stream was "
            "opened with resize='refuse'; resize frames yourself or open it with "
            "resize='letterbox' or 'stretch'"
        )
    if resize == "stretch":
        nh = nw = size
    else:  # detectron2's ResizeShortestEdge(max_size=size) rounding
        scale = size / max(h, w)
        nh, nw = max(1, int(h * scale + 0.5)), max(1, int(w * scale + 0.5))
    if (nh, nw) != (h, w):
        x = F.interpolate(x, size=(nh, nw), mode="bilinear", antialias=True, align_corners=False)
    if (nh, nw) != (size, size):
        canvas = torch.tensor(pad_pixel, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        canvas = canvas.expand(1, 3, size, size).clone()
        canvas[:, :, :nh, :nw] = x
        x = canvas
    return x.contiguous(), FrameGeometry(h, w, w / nw, h / nh)


def _as_tensor(frame: object) -> torch.Tensor:
    """numpy arrays and torch tensors as a torch tensor without a copy where possible."""
    if isinstance(frame, torch.Tensor):
        if frame.layout != torch.strided:
            raise FrameError(f"frame is a {frame.layout} tensor; expected {ACCEPTED} (dense)")
        return frame
    if isinstance(frame, np.ma.MaskedArray):
        # Its data would be read and its mask silently dropped: refused, since which pixel
        # a masked one should become (black, the mean, a neighbour) is the caller's choice.
        raise FrameError(
            "frame is a numpy masked array; rgtp cannot honour its mask: fill the masked "
            "pixels yourself (e.g. frame.filled(0)) and pass the plain array"
        )
    if isinstance(frame, np.ndarray):
        kind, size = frame.dtype.kind, frame.dtype.itemsize
        if not ((kind == "u" and size == 1) or (kind == "f" and size in (2, 4, 8))):
            raise FrameError(f"frame dtype {frame.dtype} {REFUSED_DTYPE}")
        # torch reads neither negative strides (frame[..., ::-1]), other byte orders nor,
        # without a warning, read-only memory: copy only then.
        native = frame.astype(frame.dtype.newbyteorder("="), copy=False)
        return torch.from_numpy(np.require(native, requirements=("C", "W")))
    kind = type(frame)
    module = kind.__module__.split(".")[0]
    name = kind.__qualname__ if module == "builtins" else f"{kind.__module__}.{kind.__qualname__}"
    hint = ""
    if module == "PIL":
        hint = "; convert with np.asarray(img)"
    elif isinstance(frame, list | tuple):
        hint = "; convert with np.asarray(frame, dtype=np.uint8)"
    raise FrameError(f"frame is a {name}{hint}; expected {ACCEPTED}")


def _same_device(a: torch.device, b: torch.device) -> bool:
    """a is b, where an index of None means the current device of that type."""
    if a.type != b.type:
        return False
    current = torch.cuda.current_device() if a.type == "cuda" else 0
    return (a.index if a.index is not None else current) == (
        b.index if b.index is not None else current
    )
