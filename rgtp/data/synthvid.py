"""SynthVID: video object-detection sequences composed from real photographs.

No video detection dataset or pretrained detector can be downloaded where this project is
built, so we compose one from the photographs bundled with scikit-image: six object classes
cut from real photos (soft alpha masks, one a real silhouette over a real texture) move over
other real photos and textures while the camera pans and zooms. Everything is drawn from
`np.random.default_rng(seed)`, so a seed names a sequence exactly.

Seeds: training uses seeds below `HELDOUT_SEED_BASE`; `heldout_seeds` lie above it.
Time: an object's motion is defined on "base frames" u; frame t of a sequence shows
u = t * sampling, so `sampling=4` is the paper's 1/4 sampling (4x faster apparent motion
along the same trajectories).
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from dataclasses import dataclass
from types import ModuleType

import numpy as np

from rgtp._optional import require

CLASSES: tuple[str, ...] = ("cat", "cup", "astronaut", "rocket", "motorcycle", "horse")

# what needs scikit-image, as a missing-extra message names it (rgtp._optional.require)
_USE = "synthetic video (SynthVID, SynthMotion)"


def _photos() -> ModuleType:
    """scikit-image's bundled photographs (`skimage.data`), imported when first drawn."""
    return require("skimage.data", "eval", _USE)


def _resize(image: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """`image` (h, w[, c]) resampled to `shape` (bilinear, anti-aliased), as float64."""
    return require("skimage.transform", "eval", _USE).resize(
        image, shape, order=1, anti_aliasing=True
    )


HELDOUT_SEED_BASE = 1_000_000_000

# Real photographs and textures the camera looks at; none is an object source.
_BACKGROUNDS: tuple[str, ...] = (
    "grass",
    "gravel",
    "brick",
    "hubble_deep_field",
    "moon",
    "camera",
    "page",
    "coins",
    "immunohistochemistry",
    "retina",
    "cell",
)

_SOURCE_SIDE = 256  # longest side of the cached class sprites: sharp up to 512 px frames
_MIN_SIZE, _MAX_SIZE = 24.0, 110.0  # object longest side in pixels at a 256 px frame
_MIN_VISIBLE = 0.3  # annotate an object only if this fraction of it is visible
_MIN_BOX_SIDE = 6  # pixels


@dataclass(frozen=True)
class SynthVIDConfig:
    size: int = 256  # square frame side in pixels
    num_frames: int = 64
    sampling: int = 1  # frame t shows base frame t * sampling of the motion
    min_objects: int = 2
    max_objects: int = 6


@dataclass
class Sequence:
    seed: int
    frames: np.ndarray  # (T, size, size, 3) uint8 RGB
    boxes: list[np.ndarray]  # per frame (D_t, 4) float32 x1, y1, x2, y2 pixels
    labels: list[np.ndarray]  # per frame (D_t,) int64 in [0, len(CLASSES))
    track_ids: list[np.ndarray]  # per frame (D_t,) int64, stable per object


@dataclass(frozen=True)
class Layer:
    """One object as it lands in one frame.

    rgba: (h, w, 4) float32, RGB premultiplied by alpha, all in [0, 1]; its top-left pixel
    sits at frame pixel (y0, x0) and it lies inside the frame. full_area: pixels with
    alpha > 0.5 of the whole object, before clipping to the frame and occlusion.
    """

    y0: int
    x0: int
    rgba: np.ndarray
    full_area: float
    label: int
    track_id: int


# ----------------------------------------------------------------------------- sources


def _superellipse_alpha(h: int, w: int, power: float, feather: float = 0.06) -> np.ndarray:
    """Soft mask (h, w) float32 of the superellipse inscribed in an h x w box.

    alpha is 0.5 on the curve |x|^p + |y|^p = 1 and ramps over `feather` (a fraction of the
    radius) so an object blends into the background instead of showing a cut edge.
    """
    y = (np.arange(h, dtype=np.float32) + 0.5) / h * 2 - 1
    x = (np.arange(w, dtype=np.float32) + 0.5) / w * 2 - 1
    r = (np.abs(y)[:, None] ** power + np.abs(x)[None, :] ** power) ** (1 / power)
    return np.clip((1 - r) / feather + 0.5, 0, 1).astype(np.float32)


def _photo_crop(
    image: np.ndarray, y: tuple[int, int], x: tuple[int, int], power: float
) -> tuple[np.ndarray, np.ndarray]:
    """Crop rows y[0]:y[1], columns x[0]:x[1] of a uint8 RGB photo.

    Returns rgb (h, w, 3) float32 in [0, 1] and a superellipse alpha (h, w) float32.
    """
    rgb = image[y[0] : y[1], x[0] : x[1]].astype(np.float32) / 255
    return rgb, _superellipse_alpha(rgb.shape[0], rgb.shape[1], power)


def _astronaut() -> tuple[np.ndarray, np.ndarray]:
    """Head-and-shoulders bust: union of a head ellipse and a shoulders ellipse, so the
    flag and the shuttle model beside her stay out."""
    rgb = _photos().astronaut()[10:512, 10:380].astype(np.float32) / 255
    h, w = rgb.shape[:2]
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)

    def ellipse(cy: float, cx: float, ry: float, rx: float) -> np.ndarray:
        r = np.sqrt(((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2)
        return np.clip((1 - r) / 0.06 + 0.5, 0, 1)

    head = ellipse(cy=120, cx=215, ry=115, rx=85)
    shoulders = ellipse(cy=470, cx=185, ry=330, rx=178)
    return rgb, np.maximum(head, shoulders).astype(np.float32)


def _horse() -> tuple[np.ndarray, np.ndarray]:
    """The horse silhouette as alpha over the wood grain of the coffee photo's table."""
    silhouette = ~_photos().horse()  # the stored image is a black horse on white
    filters = require("skimage.filters", "eval", _USE)
    alpha = filters.gaussian(silhouette.astype(np.float32), sigma=1.5).astype(np.float32)
    # The table right of the saucer, grain turned horizontal and stretched to the horse.
    wood = np.rot90(_photos().coffee()[:, 490:]).astype(np.float32) / 255
    rgb = _resize(wood, alpha.shape).astype(np.float32)
    return rgb, alpha


@functools.cache
def _class_sprite(label: int) -> tuple[np.ndarray, np.ndarray, float]:
    """Class template: rgb (h, w, 3) and alpha (h, w) float32 with longest side
    _SOURCE_SIDE, and the fraction of its h x w box where alpha > 0.5."""
    name = CLASSES[label]
    if name == "cat":
        rgb, alpha = _photo_crop(_photos().chelsea(), (0, 300), (30, 400), power=2.2)
    elif name == "cup":
        rgb, alpha = _photo_crop(_photos().coffee(), (15, 392), (72, 482), power=2.0)
    elif name == "astronaut":
        rgb, alpha = _astronaut()
    elif name == "rocket":
        rgb, alpha = _photo_crop(_photos().rocket(), (118, 412), (290, 356), power=2.5)
    elif name == "motorcycle":
        rgb, alpha = _photo_crop(_photos().stereo_motorcycle()[0], (60, 458), (88, 695), power=4.0)
    else:
        rgb, alpha = _horse()
    h, w = alpha.shape
    f = _SOURCE_SIDE / max(h, w)
    shape = (round(h * f), round(w * f))
    rgb = _resize(rgb, shape).astype(np.float32)
    alpha = _resize(alpha, shape).astype(np.float32)
    return rgb, alpha, float((alpha > 0.5).mean())


@functools.cache
def _background(name: str) -> np.ndarray:
    """Background photo (H, W, 3) float32 in [0, 1]; grayscale ones repeated to RGB."""
    image = getattr(_photos(), name)()
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    return np.ascontiguousarray(image[:, :, :3], dtype=np.float32) / 255


# ---------------------------------------------------------------------------- sampling


def _bilinear(image: np.ndarray, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
    """Sample image (H, W, C) at the grid ys (h,) x xs (w,) -> (h, w, C) float32.

    Coordinates are in pixel-index units (pixel centres at integers) and clamp to the
    border. Separable, and only the columns the grid touches are read, so sampling a frame
    out of a large photo costs about as much as the frame itself.
    """
    h_img, w_img = image.shape[:2]
    xa = int(np.clip(np.floor(xs.min()), 0, w_img - 2))
    xb = int(np.clip(np.floor(xs.max()) + 2, xa + 2, w_img))
    window = image[:, xa:xb]
    y0 = np.clip(np.floor(ys), 0, h_img - 2).astype(np.intp)
    wy = np.clip(ys - y0, 0, 1).astype(np.float32)[:, None, None]
    rows = window[y0] * (1 - wy) + window[y0 + 1] * wy
    xs = xs - xa
    x0 = np.clip(np.floor(xs), 0, window.shape[1] - 2).astype(np.intp)
    wx = np.clip(xs - x0, 0, 1).astype(np.float32)[None, :, None]
    return rows[:, x0] * (1 - wx) + rows[:, x0 + 1] * wx


def _sinusoid(u: float, amp: np.ndarray, omega: np.ndarray, phase: np.ndarray) -> np.ndarray:
    """Sum over the last axis of amp * sin(omega * u + phase); bounded, so nothing drifts
    away for good however long a sequence or coarse its sampling."""
    return (amp * np.sin(omega * u + phase)).sum(axis=-1)


def _periods(
    rng: np.random.Generator, low: float, high: float, shape: tuple[int, ...]
) -> np.ndarray:
    """Angular frequencies (shape) for periods uniform in [low, high] base frames."""
    return 2 * np.pi / rng.uniform(low, high, shape)


# ------------------------------------------------------------------------------- scene


class _Object:
    """One object instance: its jittered sprite and its smooth path over base frames u."""

    def __init__(self, rng: np.random.Generator, track_id: int, frame_size: int) -> None:
        self.track_id = track_id
        self.label = int(rng.integers(len(CLASSES)))
        rgb, alpha, fill = _class_sprite(self.label)
        unit = frame_size / 256  # sizes and speeds are quoted for a 256 px frame

        # Size (longest side, px) = base * exp(amp * sin(.)), kept within [min, max].
        amp = rng.uniform(0.1, 0.3)
        lo, hi = np.log(_MIN_SIZE) + amp, np.log(_MAX_SIZE) - amp
        self.size_base = np.exp(rng.uniform(lo, hi)) * unit
        self.size_amp, self.size_omega = amp, _periods(rng, 60, 240, ())
        self.size_phase = rng.uniform(0, 2 * np.pi)

        # Centre path in frame pixels: a slow sweep plus a faster wobble on each axis. The
        # sweep often carries the object out of the frame and back in.
        self.centre = rng.uniform(0.2, 0.8, 2) * frame_size
        self.path_amp = (
            np.stack([rng.uniform(0.1, 0.45, 2), rng.uniform(0.01, 0.05, 2)], axis=1) * frame_size
        )
        self.path_omega = np.stack([_periods(rng, 120, 400, (2,)), _periods(rng, 20, 60, (2,))], 1)
        self.path_phase = rng.uniform(0, 2 * np.pi, (2, 2))

        # Appearance: aspect, flip, brightness and contrast differ per instance.
        aspect = rng.uniform(0.85, 1.15)
        flip = bool(rng.integers(2))
        gain, contrast = rng.uniform(0.8, 1.2), rng.uniform(0.8, 1.2)
        # Render the sprite once at its largest size; frames resample it (at most 2x down).
        side = self.size_base * np.exp(self.size_amp)
        h, w = alpha.shape
        f = side / max(h, w * aspect)
        shape = (max(round(h * f), 2), max(round(w * aspect * f), 2))
        rgb = _resize(rgb, shape)
        alpha = _resize(alpha, shape)
        if flip:
            rgb, alpha = rgb[:, ::-1], alpha[:, ::-1]
        mean = rgb.mean(axis=(0, 1))
        rgb = np.clip(((rgb - mean) * contrast + mean) * gain, 0, 1)
        # Premultiplied, with a zero border so resampling fades to transparent at the edge.
        rgba = np.concatenate([rgb * alpha[:, :, None], alpha[:, :, None]], axis=2)
        self.sprite = np.pad(rgba, ((1, 1), (1, 1), (0, 0))).astype(np.float32)
        self.sprite_side = side
        self.fill = fill

    def layer(self, u: float, frame_size: int) -> Layer | None:
        """The object at base frame u, clipped to the frame; None if wholly outside."""
        scale = self.size_base * np.exp(
            self.size_amp * np.sin(self.size_omega * u + self.size_phase)
        )
        scale /= self.sprite_side
        h, w = (np.array(self.sprite.shape[:2]) - 2) * scale
        cy, cx = self.centre + _sinusoid(u, self.path_amp, self.path_omega, self.path_phase)
        top, left = cy - h / 2, cx - w / 2
        y0, y1 = max(int(np.floor(top)), 0), min(int(np.ceil(top + h)), frame_size)
        x0, x1 = max(int(np.floor(left)), 0), min(int(np.ceil(left + w)), frame_size)
        if y1 <= y0 or x1 <= x0:
            return None
        # Frame pixel centres -> sprite pixel indices (+1 for the zero border).
        ys = (np.arange(y0, y1) + 0.5 - top) / scale + 0.5
        xs = (np.arange(x0, x1) + 0.5 - left) / scale + 0.5
        rgba = _bilinear(self.sprite, ys, xs)
        return Layer(y0, x0, rgba, self.fill * h * w, self.label, self.track_id)


class _Camera:
    """A square view window panning and zooming slowly over one background photo."""

    def __init__(self, rng: np.random.Generator, frame_size: int) -> None:
        self.name = _BACKGROUNDS[int(rng.integers(len(_BACKGROUNDS)))]
        image = _background(self.name)
        gray = bool(np.all(image[::16, ::16, 0] == image[::16, ::16, 1]))
        # Grayscale textures get a colour cast, colour photos a milder one.
        self.tint = rng.uniform(0.55, 1.1, 3) if gray else rng.uniform(0.85, 1.1, 3)
        self.tint = self.tint.astype(np.float32)
        # The view covers at most 70% of the photo's short side so there is room to pan, and
        # at most the frame side: the photo is always magnified, never aliased.
        h, w = image.shape[:2]
        self.zoom_amp = rng.uniform(0.05, 0.15)
        view_max = min(0.7 * min(h, w), frame_size * rng.uniform(0.55, 1.0))
        self.view_base = view_max / (1 + self.zoom_amp)
        self.zoom_omega, self.zoom_phase = _periods(rng, 300, 800, ()), rng.uniform(0, 2 * np.pi)
        room = (np.array([h, w]) - view_max) / 2
        self.pan_centre = np.array([h, w]) / 2
        self.pan_amp = room * rng.uniform(0.4, 1.0, 2)
        self.pan_omega, self.pan_phase = _periods(rng, 200, 600, (2,)), rng.uniform(0, 2 * np.pi, 2)

    def view(self, u: float, frame_size: int) -> np.ndarray:
        """Background at base frame u: (frame_size, frame_size, 3) float32 in [0, 1]."""
        side = self.view_base * (1 + self.zoom_amp * np.sin(self.zoom_omega * u + self.zoom_phase))
        cy, cx = self.pan_centre + self.pan_amp * np.sin(self.pan_omega * u + self.pan_phase)
        grid = (np.arange(frame_size, dtype=np.float64) + 0.5) * (side / frame_size) - 0.5
        image = _background(self.name)
        return _bilinear(image, grid + cy - side / 2, grid + cx - side / 2) * self.tint


class _Scene:
    """Everything one seed fixes; renders any frame on its own, so training can draw a few
    frames of many scenes without rendering whole sequences."""

    def __init__(self, seed: int, cfg: SynthVIDConfig) -> None:
        if cfg.sampling < 1 or not 1 <= cfg.min_objects <= cfg.max_objects:
            raise ValueError(f"invalid SynthVIDConfig {cfg}")
        # Draw order does not depend on num_frames or sampling: one seed is one world.
        rng = np.random.default_rng(seed)
        self.cfg = cfg
        self.camera = _Camera(rng, cfg.size)
        n = int(rng.integers(cfg.min_objects, cfg.max_objects + 1))
        objects = [_Object(rng, track_id, cfg.size) for track_id in range(n)]
        self.back_to_front = [objects[i] for i in rng.permutation(n)]

    def render(self, t: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Frame t -> image (S, S, 3) uint8, boxes (D, 4) float32, labels (D,), track ids (D,)."""
        u = float(t * self.cfg.sampling)
        layers = [obj.layer(u, self.cfg.size) for obj in self.back_to_front]
        return composite(self.camera.view(u, self.cfg.size), [x for x in layers if x])


def composite(
    background: np.ndarray, layers: list[Layer]
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Blend layers (back to front) over background (S, S, 3) float32 in [0, 1].

    Returns image (S, S, 3) uint8, boxes (D, 4) float32 x1, y1, x2, y2 (pixel edges),
    labels (D,) int64 and track ids (D,) int64, ordered front to back. A box is the tight box
    of the object's visible alpha > 0.5 after occlusion by the layers in front; objects less
    than _MIN_VISIBLE visible or with a box side under _MIN_BOX_SIDE get none.
    """
    frame = background.copy()
    for layer in layers:
        region = frame[
            layer.y0 : layer.y0 + layer.rgba.shape[0], layer.x0 : layer.x0 + layer.rgba.shape[1]
        ]
        region *= 1 - layer.rgba[:, :, 3:]
        region += layer.rgba[:, :, :3]
    image = (np.clip(frame, 0, 1) * 255 + 0.5).astype(np.uint8)

    covered = np.zeros(background.shape[:2], dtype=bool)
    boxes, labels, track_ids = [], [], []
    for layer in reversed(layers):
        h, w = layer.rgba.shape[:2]
        cover = covered[layer.y0 : layer.y0 + h, layer.x0 : layer.x0 + w]
        solid = layer.rgba[:, :, 3] > 0.5
        visible = solid & ~cover
        cover |= solid
        if visible.sum() < _MIN_VISIBLE * layer.full_area:
            continue
        rows, cols = np.flatnonzero(visible.any(axis=1)), np.flatnonzero(visible.any(axis=0))
        box = (
            layer.x0 + cols[0],
            layer.y0 + rows[0],
            layer.x0 + cols[-1] + 1,
            layer.y0 + rows[-1] + 1,
        )
        if min(box[2] - box[0], box[3] - box[1]) < _MIN_BOX_SIDE:
            continue
        boxes.append(box)
        labels.append(layer.label)
        track_ids.append(layer.track_id)
    return (
        image,
        np.array(boxes, dtype=np.float32).reshape(-1, 4),
        np.array(labels, dtype=np.int64),
        np.array(track_ids, dtype=np.int64),
    )


# --------------------------------------------------------------------------------- API


def generate_sequence(seed: int, cfg: SynthVIDConfig = SynthVIDConfig()) -> Sequence:
    """The sequence named by seed: cfg.num_frames frames of cfg.size px, with ground truth."""
    scene = _Scene(seed, cfg)
    frames = np.empty((cfg.num_frames, cfg.size, cfg.size, 3), dtype=np.uint8)
    seq = Sequence(seed, frames, [], [], [])
    for t in range(cfg.num_frames):
        frames[t], boxes, labels, track_ids = scene.render(t)
        seq.boxes.append(boxes)
        seq.labels.append(labels)
        seq.track_ids.append(track_ids)
    return seq


def training_seeds(n: int) -> list[int]:
    """n sequence seeds for training; every seed below HELDOUT_SEED_BASE is a training seed."""
    return list(range(n))


def heldout_seeds(n: int) -> list[int]:
    """n sequence seeds never used for training."""
    return [HELDOUT_SEED_BASE + i for i in range(n)]


def training_samples(
    seed: int, cfg: SynthVIDConfig = SynthVIDConfig(), frames_per_scene: int = 4
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Endless, seed-deterministic stream of training frames from random training scenes.

    Yields image (S, S, 3) uint8, boxes (D, 4) float32 x1, y1, x2, y2 pixels, labels (D,)
    int64. Each scene contributes frames_per_scene distinct frames among its num_frames, so
    building a scene (sprite resizing) is paid once for several samples.
    """
    rng = np.random.default_rng(seed)
    while True:
        scene = _Scene(int(rng.integers(HELDOUT_SEED_BASE)), cfg)
        ts = rng.choice(cfg.num_frames, size=min(frames_per_scene, cfg.num_frames), replace=False)
        for t in ts:
            image, boxes, labels, _ = scene.render(int(t))
            yield image, boxes, labels
