"""What a served model is set to: the backend its engines run on, how many streams it holds,
when an idle stream is freed, the largest frame it reads, and the stream options every
sequence is opened with.

Written by `rgtp triton` into the model's `config.pbtxt` (parameter `rgtp_settings`, JSON)
and read back by the model in the Triton backend stub, so the two cannot disagree. Checked
twice when the repository is written: on their own (`ServingSettings`) and against the
package's plan (`check_against`), so a repository whose every START would be refused is
never written.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

import torch

from rgtp.core.checks import check_int, check_real
from rgtp.core.selection import keep_policy
from rgtp.engines import BACKENDS
from rgtp.engines.base import EngineSet
from rgtp.package.plan import StagePlan
from rgtp.runtime import Stream, StreamOptions

# 4K UHD: a larger frame is refused before it is read (a few of 8000 x 8000 would take
# gigabytes, and a detector sees them at its input size anyway).
MAX_PIXELS = 3840 * 2160


@dataclass(frozen=True)
class ServingSettings:
    """backend: "ort", "torch" or "trt"; max_streams: sequences held at once (and the most
    requests one `execute` gets); idle_timeout_s: seconds after a sequence's last response
    when its stream is freed; max_pixels: the largest frame (H x W) a request may carry;
    float_scale: FRAME_FLOAT values are read as pixel = value * float_scale (255.0 for
    [0, 1]), None refuses float frames; keep (K, or one K per stage: a keep schedule) or
    mass (importance share): the keep policy (neither: dense); reset_every, reset, radius,
    scene_cut: as `StreamOptions`; score_threshold: a detector's (`StreamOptions.task`), None
    for its default."""

    backend: str = "ort"
    max_streams: int = 8
    idle_timeout_s: float = 30.0
    max_pixels: int = MAX_PIXELS
    float_scale: float | None = None
    keep: int | tuple[int, ...] | None = None
    mass: float | None = None
    reset_every: int = 8
    reset: str = "dense"
    radius: int = 1
    scene_cut: float | None = None
    score_threshold: float | None = None

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {self.backend!r}")
        check_int("max streams", self.max_streams, 1)
        check_real("idle timeout (seconds)", self.idle_timeout_s, 0.0, 86400.0, low_open=True)
        check_int("max pixels", self.max_pixels, 1)
        if isinstance(self.keep, list | tuple):  # a schedule, also as JSON gives it back
            object.__setattr__(self, "keep", tuple(self.keep))
        self.stream_options()  # every option checked now, not at the first sequence

    def stream_options(self) -> StreamOptions:
        """The options every sequence's stream is opened with."""
        return StreamOptions(
            policy=keep_policy(self.keep, self.mass),
            reset_every=self.reset_every,
            reset=self.reset,
            radius=self.radius,
            scene_cut=self.scene_cut,
            float_scale=self.float_scale,
            task={} if self.score_threshold is None else {"score_threshold": self.score_threshold},
        )

    def check_against(self, plan: StagePlan) -> None:
        """ValueError, with the message stream creation gives, if a sequence of a pipeline
        of `plan` could not be opened with these settings (a K the package has no bucket
        for, a radius beyond its grid, a checkerboard reset without its bucket, ...).

        Opens one stream on the plan alone, with no engines: the checks are `Stream`'s own,
        so they cannot drift from what a START would meet."""
        engines = EngineSet(plan, "check", torch.device("cpu"), None, None, [])  # type: ignore[arg-type]
        Stream(engines, self.stream_options())

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ServingSettings:
        return cls(**json.loads(text))
