"""SynthMotion: video-classification clips composed from real photographs, whose classes need
time to tell apart.

A class is an object and the way it moves: one of `OBJECTS` (SynthVID's cat, cup and
motorcycle sprites, cut from scikit-image photographs) doing one of `MOTIONS`. Around it,
SynthVID's camera pans and zooms over a real photograph, clutter (SynthVID objects of the other
kinds) drifts slowly, and distractors (the other kinds too, never the class's) do the same
four motions, drawn independently of the class: neither "something moves left" nor the
background gives the class away; the model has to see which object moves how.

One frame does not reveal the motion, by construction:
- a motion only advances a phase that is uniform at frame 0: the horizontal position on a
  torus for left/right (the object leaves one side and comes back in at the other, drawn on
  both sides while it crosses), the log-size around a cycle for approaching/receding (the
  object grows to `size_range[1]` of the frame and starts again at `size_range[0]`, or the
  reverse). So every frame of a clip has the same distribution, whatever the motion;
- the frames of a clip of one seed are a function of the seed and the time only, except for
  the direction of the target's phase: frame 0 is the same image for all four motions;
- `hold` consecutive frames show the same instant (2 by default, ViViT's tubelet depth), so
  a time step of the model holds no motion at all; motion lives between time steps.

The motion per time step is large (10-16 % of the frame width sideways, 12-18 % of the size
cycle in depth, at hold 2): at half that, a small ViViT trained from scratch on these CPUs
placed the target no more precisely than one step's motion, and after 3000 steps told the
motion in half the held-out clips.

`Clip.target_cover` says where the target is seen in every frame, at a coarse grid: training
can use it to teach the spatial encoder to find the target (the classifier's trainer,
`rgtp.families.classification.tools.train`).

Everything is drawn from `np.random.default_rng(seed)`; the class of a seed is
`seed % len(CLASSES)`, so consecutive seeds are balanced. Training seeds lie below
`HELDOUT_SEED_BASE`, held-out ones above (`training_seeds`, `heldout_seeds`, as SynthVID's).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from rgtp.data.synthvid import CLASSES as SPRITES
from rgtp.data.synthvid import (
    HELDOUT_SEED_BASE,
    Layer,
    _bilinear,
    _Camera,
    _class_sprite,
    _Object,
    _resize,
    composite,
    heldout_seeds,
    training_seeds,
)

OBJECTS: tuple[str, ...] = ("cat", "cup", "motorcycle")
MOTIONS: tuple[str, ...] = ("left", "right", "approaching", "receding")
CLASSES: tuple[str, ...] = tuple(f"{obj} {motion}" for obj in OBJECTS for motion in MOTIONS)
# Distractors and clutter: the SynthVID kinds that are no class's object.
_OTHER_KINDS: tuple[int, ...] = tuple(i for i, n in enumerate(SPRITES) if n not in OBJECTS)
COVER_CELL = 8  # pixels per side of a cell of Clip.target_cover (divides ViT patch sizes)

# The world (camera pan and zoom, clutter) runs at this fraction of the clip's clock:
# SynthVID's camera is sized for 64-frame sequences at 256 px and would otherwise sweep
# whole frame widths in a 16-frame clip, outrunning the objects whose motion is the class.
_WORLD_RATE = 0.25

__all__ = [
    "CLASSES",
    "COVER_CELL",
    "HELDOUT_SEED_BASE",
    "MOTIONS",
    "OBJECTS",
    "Clip",
    "SynthMotionConfig",
    "generate_clip",
    "heldout_seeds",
    "label_of",
    "training_clips",
    "training_seeds",
]


@dataclass(frozen=True)
class SynthMotionConfig:
    size: int = 128  # square frame side in pixels
    num_frames: int = 16
    hold: int = 2  # consecutive frames showing the same instant
    min_distractors: int = 1
    max_distractors: int = 2
    min_clutter: int = 1
    max_clutter: int = 3
    # longest side of a moving object, as a fraction of the frame side
    size_range: tuple[float, float] = (0.25, 0.6)
    # per frame, drawn uniformly per object: left/right in frame widths, approaching/receding
    # in turns of the log-size cycle
    shift_speed: tuple[float, float] = (0.05, 0.08)
    size_speed: tuple[float, float] = (0.06, 0.09)

    def __post_init__(self) -> None:
        if self.hold < 1 or self.num_frames % self.hold:
            raise ValueError(f"num_frames {self.num_frames} is not a multiple of hold {self.hold}")
        if not 0 <= self.min_distractors <= self.max_distractors:
            raise ValueError("need 0 <= min_distractors <= max_distractors")
        if not 0 <= self.min_clutter <= self.max_clutter:
            raise ValueError("need 0 <= min_clutter <= max_clutter")
        if self.size % COVER_CELL:
            raise ValueError(f"size {self.size} is not a multiple of {COVER_CELL} pixels")


@dataclass
class Clip:
    """frames: (T, size, size, 3) uint8 RGB; label: index into CLASSES; target_phase: (T, 2)
    float the target's horizontal centre (fraction of the frame width, on the torus) and its
    place on the log-size cycle (0: smallest, 1: largest) in every frame; target_cover:
    (T, size / COVER_CELL, size / COVER_CELL) float32 in [0, 1], the fraction of each
    COVER_CELL-pixel cell the target covers, after occlusion by the objects in front of it."""

    seed: int
    frames: np.ndarray
    label: int
    target_phase: np.ndarray
    target_cover: np.ndarray

    @property
    def object(self) -> str:
        return OBJECTS[self.label // len(MOTIONS)]

    @property
    def motion(self) -> str:
        return MOTIONS[self.label % len(MOTIONS)]


def label_of(seed: int) -> int:
    """The class of the clip a seed names."""
    return seed % len(CLASSES)


class _Mover:
    """An object doing one of MOTIONS: a jittered sprite and two phases in [0, 1).

    x_phase: horizontal centre as a fraction of the frame width, on a torus. size_phase:
    position on the log-size cycle from size_range[0] to size_range[1] of the frame side.
    A motion advances one phase by `speed` per frame; the other stays.
    """

    def __init__(self, rng: np.random.Generator, kind: int, cfg: SynthMotionConfig) -> None:
        self.kind = kind
        self.size_range = cfg.size_range
        self.x_phase, self.size_phase = rng.uniform(0, 1, 2)
        self.cy = rng.uniform(0.25, 0.75) * cfg.size
        self.shift_speed = rng.uniform(*cfg.shift_speed)
        self.size_speed = rng.uniform(*cfg.size_speed)
        rgb, alpha, self.fill = _class_sprite(kind)
        # Render the sprite once at its largest size; frames resample it down.
        self.sprite_side = cfg.size_range[1] * cfg.size
        h, w = alpha.shape
        aspect = rng.uniform(0.85, 1.15)
        f = self.sprite_side / max(h, w * aspect)
        shape = (max(round(h * f), 2), max(round(w * aspect * f), 2))
        rgb = _resize(rgb, shape)
        alpha = _resize(alpha, shape)
        if rng.integers(2):
            rgb, alpha = rgb[:, ::-1], alpha[:, ::-1]
        gain, contrast = rng.uniform(0.8, 1.2, 2)
        mean = rgb.mean(axis=(0, 1))
        rgb = np.clip(((rgb - mean) * contrast + mean) * gain, 0, 1)
        # Premultiplied, with a zero border so resampling fades to transparent at the edge.
        rgba = np.concatenate([rgb * alpha[:, :, None], alpha[:, :, None]], axis=2)
        self.sprite = np.pad(rgba, ((1, 1), (1, 1), (0, 0))).astype(np.float32)

    def phases(self, motion: str, u: float) -> tuple[float, float]:
        """(x_phase, size_phase) at clip time u (frames) doing `motion`."""
        x, s = self.x_phase, self.size_phase
        if motion in ("left", "right"):
            x += (1 if motion == "right" else -1) * self.shift_speed * u
        else:
            s += (1 if motion == "approaching" else -1) * self.size_speed * u
        return x % 1.0, s % 1.0

    def layers(self, motion: str, u: float, frame_size: int, track_id: int) -> list[Layer]:
        """The object at time u: one layer, or two while it crosses the left/right edge."""
        x, s = self.phases(motion, u)
        lo, hi = self.size_range
        scale = lo * (hi / lo) ** s * frame_size / self.sprite_side
        h, w = (np.array(self.sprite.shape[:2]) - 2) * scale
        top, left = self.cy - h / 2, x * frame_size - w / 2
        placed = (
            _place(self.sprite, scale, top, left + shift, frame_size)
            for shift in (-frame_size, 0, frame_size)
        )
        return [
            Layer(y0, x0, rgba, self.fill * h * w, self.kind, track_id)
            for y0, x0, rgba in placed
            if rgba is not None
        ]


def _place(
    sprite: np.ndarray, scale: float, top: float, left: float, frame_size: int
) -> tuple[int, int, np.ndarray | None]:
    """Resample a bordered sprite (h + 2, w + 2, 4) at `scale` with its top-left corner at
    frame pixel (top, left). Returns the clipped (y0, x0, rgba) with rgba None if the sprite
    lies wholly outside the frame."""
    h, w = (np.array(sprite.shape[:2]) - 2) * scale
    y0, y1 = max(int(np.floor(top)), 0), min(int(np.ceil(top + h)), frame_size)
    x0, x1 = max(int(np.floor(left)), 0), min(int(np.ceil(left + w)), frame_size)
    if y1 <= y0 or x1 <= x0:
        return y0, x0, None
    # Frame pixel centres -> sprite pixel indices (+1 for the zero border).
    ys = (np.arange(y0, y1) + 0.5 - top) / scale + 0.5
    xs = (np.arange(x0, x1) + 0.5 - left) / scale + 0.5
    return y0, x0, _bilinear(sprite, ys, xs)


class _Scene:
    """Everything one seed fixes for one target object. No draw depends on the target's
    motion: the four motions of the object in one scene differ only in where its phase
    goes, and are rendered from the same scene."""

    def __init__(self, seed: int, cfg: SynthMotionConfig, obj: int) -> None:
        rng = np.random.default_rng(seed)
        self.cfg = cfg
        self.camera = _Camera(rng, cfg.size)
        self.clutter = [
            _other_kind_object(rng, i, cfg.size)
            for i in range(rng.integers(cfg.min_clutter, cfg.max_clutter + 1))
        ]
        n = int(rng.integers(cfg.min_distractors, cfg.max_distractors + 1))
        kinds, motions = rng.choice(_OTHER_KINDS, size=n), rng.choice(MOTIONS, size=n)
        self.distractors = [
            (_Mover(rng, int(k), cfg), str(m)) for k, m in zip(kinds, motions, strict=True)
        ]
        self.target = _Mover(rng, SPRITES.index(OBJECTS[obj]), cfg)
        self.order = rng.permutation(n + 1)  # back to front; index n is the target

    def time(self, t: int) -> float:
        """The instant frame t shows, in frames: `hold` frames in a row show the same one."""
        return float(t - t % self.cfg.hold)

    def render(self, t: int, motion: str) -> tuple[np.ndarray, np.ndarray]:
        """Frame t (S, S, 3) uint8 with the target doing `motion`, and the target's cover
        (S / COVER_CELL, S / COVER_CELL) float32."""
        cfg = self.cfg
        u = self.time(t)
        world = u * _WORLD_RATE
        movers = [*self.distractors, (self.target, motion)]
        layers = [x for obj in self.clutter if (x := obj.layer(world, cfg.size))]
        # the target's alpha, then dimmed by every layer drawn over it
        alpha = np.zeros((cfg.size, cfg.size), dtype=np.float32)
        for i in self.order:
            mover, how = movers[i]
            placed = mover.layers(how, u, cfg.size, len(self.clutter) + int(i))
            for layer in placed:
                h, w = layer.rgba.shape[:2]
                region = alpha[layer.y0 : layer.y0 + h, layer.x0 : layer.x0 + w]
                if i == len(self.distractors):
                    region += layer.rgba[:, :, 3]
                else:
                    region *= 1 - layer.rgba[:, :, 3]
            layers += placed
        image, *_ = composite(self.camera.view(world, cfg.size), layers)
        cells = cfg.size // COVER_CELL
        cover = alpha.clip(0, 1).reshape(cells, COVER_CELL, cells, COVER_CELL).mean(axis=(1, 3))
        return image, cover

    def clip(self, seed: int, label: int) -> Clip:
        """The clip of this scene whose target does the motion of `label`."""
        cfg, motion = self.cfg, MOTIONS[label % len(MOTIONS)]
        frames = np.empty((cfg.num_frames, cfg.size, cfg.size, 3), dtype=np.uint8)
        cells = cfg.size // COVER_CELL
        cover = np.empty((cfg.num_frames, cells, cells), dtype=np.float32)
        for t in range(cfg.num_frames):
            if t % cfg.hold == 0:
                frames[t], cover[t] = self.render(t, motion)
            else:
                frames[t], cover[t] = frames[t - 1], cover[t - 1]
        phase = [self.target.phases(motion, self.time(t)) for t in range(cfg.num_frames)]
        return Clip(seed, frames, label, np.array(phase, dtype=np.float32), cover)


def _other_kind_object(rng: np.random.Generator, track_id: int, frame_size: int) -> _Object:
    """A SynthVID object (its sizes and smooth paths) of a kind that is no class's object."""
    while True:
        obj = _Object(rng, track_id, frame_size)
        if obj.label in _OTHER_KINDS:
            return obj


def generate_clip(
    seed: int, cfg: SynthMotionConfig = SynthMotionConfig(), label: int | None = None
) -> Clip:
    """The clip named by seed: cfg.num_frames frames of cfg.size px.

    `label` overrides the seed's class (the scene stays the seed's): for controls that show
    one scene under several motions.
    """
    label = label_of(seed) if label is None else label
    if not 0 <= label < len(CLASSES):
        raise ValueError(f"label must be in 0..{len(CLASSES) - 1}, got {label}")
    return _Scene(seed, cfg, label // len(MOTIONS)).clip(seed, label)


def training_clips(seed: int, cfg: SynthMotionConfig = SynthMotionConfig()) -> Iterator[Clip]:
    """Endless, seed-deterministic stream of training clips.

    Each random training scene yields its object's four motions in turn (as
    `generate_clip(s, cfg, label)` would): building a scene costs about three renderings of
    a clip, and four clips that differ only in the motion teach what the class is about.
    """
    rng = np.random.default_rng(seed)
    while True:
        s = int(rng.integers(HELDOUT_SEED_BASE))
        first = label_of(s) - label_of(s) % len(MOTIONS)
        scene = _Scene(s, cfg, first // len(MOTIONS))
        for label in range(first, first + len(MOTIONS)):
            yield scene.clip(s, label)
