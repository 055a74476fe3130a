"""What a served model is set to: the backend its engines run on, how many streams it holds,
when an idle stream is freed, and the stream options every sequence is opened with.

Written by `rgtp triton` into the model's `config.pbtxt` (parameter `rgtp_settings`, JSON)
and read back by the model in the Triton backend stub, so the two cannot disagree.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

from rgtp.core.checks import check_int, check_real
from rgtp.core.selection import keep_policy
from rgtp.engines import BACKENDS
from rgtp.runtime import StreamOptions

# Float frames (input FRAME_FLOAT) carry pixel values in [0, 255], as uint8 frames do.
FLOAT_FRAME_SCALE = 1.0


@dataclass(frozen=True)
class ServingSettings:
    """backend: "ort", "torch" or "trt"; max_streams: sequences held at once (Triton's
    `max_candidate_sequences`, and the most requests one `execute` gets); idle_timeout_s:
    seconds after a sequence's last request when its stream is freed; keep (K, or one K per
    stage: a keep schedule) or mass (importance share): the keep policy (neither: dense);
    reset_every, reset, radius,
    score_threshold: as `StreamOptions`."""

    backend: str = "ort"
    max_streams: int = 8
    idle_timeout_s: float = 30.0
    keep: int | tuple[int, ...] | None = None
    mass: float | None = None
    reset_every: int = 8
    reset: str = "dense"
    radius: int = 1
    score_threshold: float = StreamOptions.score_threshold

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {self.backend!r}")
        check_int("max streams", self.max_streams, 1)
        check_real("idle timeout (seconds)", self.idle_timeout_s, 0.0, 86400.0, low_open=True)
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
            score_threshold=self.score_threshold,
            float_scale=FLOAT_FRAME_SCALE,
        )

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ServingSettings:
        return cls(**json.loads(text))
