"""A step's engine outputs: checked for NaN and Inf once before anything is committed, and
the family task's view of the step's engines."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch

from rgtp.engines.base import EngineError, EngineSet


class EngineOutputError(EngineError):
    """An engine returned NaN or Inf. The frame is refused and the stream is unchanged."""


class OutputChecks:
    """Finiteness of every engine output of a frame, checked once before anything is
    committed. A tensor's sum is non-finite if any element is (or if the values overflow
    float32 together, which no sane activation does), and sums cost a tenth of isfinite."""

    def __init__(self) -> None:
        self.sums: list[tuple[str, str, torch.Tensor]] = []

    def add(self, graph: str, outputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        # summed in float32: a float16 sum of a whole map overflows where no element does
        self.sums += [
            (graph, n, t.sum(dtype=torch.float32))
            for n, t in outputs.items()
            if t.is_floating_point()
        ]
        return outputs

    def raise_if_not_finite(self) -> None:
        finite = torch.stack([s for _, _, s in self.sums]).isfinite().cpu()
        if not bool(finite.all()):
            bad = [(g, n) for (g, n, _), ok in zip(self.sums, finite, strict=True) if not ok]
            first = bad[0][0]  # later engines only inherit its NaNs
            names = ", ".join(n for g, n in bad if g == first)
            raise EngineOutputError(
                f"engine {first} returned NaN or Inf ({names}); the frame was refused and the "
                "stream is unchanged"
            )


class EngineRunner:
    """A task's view of the step's engines (`rgtp.package.family.GraphRunner`): graphs by
    name, every output added to the step's finiteness checks."""

    def __init__(
        self,
        engines: EngineSet,
        checks: OutputChecks,
        static: Callable[[str, torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        self.engines, self.checks, self.static = engines, checks, static

    def __call__(self, graph: str, feeds: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if self.static is not None:  # the stream's own buffers, for engines replaying graphs
            feeds = {n: self.static(f"{graph}_{n}", t) for n, t in feeds.items()}
        return self.checks.add(graph, self.engines.graph(graph).run(feeds))

    def check_finite(self) -> None:
        self.checks.raise_if_not_finite()
