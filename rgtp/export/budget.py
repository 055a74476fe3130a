"""How long an export will take, asked before it starts: a plan of hundreds of graphs
(`--buckets` with every K from 1 to 200 is 810 graphs for vitdet-small) exports for many
minutes, so an export over `MAX_GRAPHS` graphs states its count and an estimate and needs
confirmation.

The estimate comes from this machine and this model, timed the way `export_package` works:
it traces each stage once with a symbolic K (in `workers` processes, with the graphs around
the stages) and derives the stage's graph at every K bucket from that trace (`fix_k`, in
the exporting process). One trace of the last stage and one derivation from it are timed.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from rgtp.package.plan import StagePlan

logger = logging.getLogger(__name__)

# More graphs than a typical package holds (a few buckets on a few stages, symbolic graphs
# and the graphs around the stages: 10-40), fewer than a mistyped bucket range gives.
MAX_GRAPHS = 64


class ExportBudgetError(ValueError):
    """A large export was not confirmed (`--yes`, or an answer at the terminal)."""


def graph_count(plan: StagePlan, symbolic: bool) -> int:
    """Graphs an export of `plan` writes: one per stage and K bucket, one symbolic-K graph
    per stage with `symbolic`, and the family's graphs around the stages (embed, head...)."""
    around = 1 + len(plan.extra_specs()) + (plan.head != "none")
    return around + sum(len(plan.buckets_of(i)) + int(symbolic) for i in range(len(plan.stages)))


@dataclass(frozen=True)
class ExportCost:
    """What an export does and what one of each took here.

    traces: graphs traced (embed, the family's others, rgtp's head, one symbolic graph a
    stage), `workers` at a time; derived: stage graphs at a K bucket derived from a trace,
    one after another; trace_s / derive_s: seconds one of each took (the last stage's)."""

    traces: int
    derived: int
    trace_s: float
    derive_s: float
    workers: int

    @property
    def seconds(self) -> float:
        rounds = math.ceil(self.traces / max(1, self.workers))
        return rounds * self.trace_s + self.derived * self.derive_s


def export_cost(
    model: nn.Module, plan: StagePlan, opset: int, workers: int | None = None
) -> ExportCost:
    """Time one symbolic-K trace of the plan's last stage and one derivation of its largest
    bucket from it, here (seconds of work: called only for an export over MAX_GRAPHS)."""
    from rgtp.export.onnx_graphs import SYMBOLIC_K, example_inputs, export_graph, fix_k
    from rgtp.export.parallel import export_workers
    from rgtp.models.stages import stage_modules

    stage = len(plan.stages) - 1
    n = plan.num_tokens
    module = stage_modules(plan.family.encoder(model.eval()), plan)[stage]
    spec = plan.stage_spec(stage, SYMBOLIC_K)
    # at a K unlike any bucket and two streams, as export_package traces
    args = example_inputs(spec, max(2, n // 2 + 1), n, plan.prefix, batch=2)
    start = time.perf_counter()
    graph = export_graph(module, spec, args, True, opset)
    traced = time.perf_counter()
    fix_k(graph, plan.stage_spec(stage, max(plan.buckets_of(stage))))
    derived = time.perf_counter()
    traces = 1 + len(plan.extra_specs()) + (plan.head == "rgtp") + len(plan.stages)
    return ExportCost(
        traces,
        sum(len(plan.buckets_of(i)) for i in range(len(plan.stages))),
        traced - start,
        derived - traced,
        export_workers(traces, workers),
    )


def estimate(graphs: int, cost: ExportCost) -> str:
    """The warning's words: the count, what one trace and one derivation took, the total."""
    return (
        f"this export writes {graphs} graphs (more than {MAX_GRAPHS}): {cost.traces} traced "
        f"({cost.workers} at a time; one took {cost.trace_s:.1f} s here) and {cost.derived} "
        f"derived from those traces (one took {cost.derive_s:.2f} s), about "
        f"{_duration(cost.seconds)} in all"
    )


def confirm_export(
    graphs: int,
    cost: Callable[[], ExportCost],
    yes: bool,
    interactive: bool | None = None,
) -> None:
    """Nothing for `graphs` <= MAX_GRAPHS. Above: the estimate as a warning, then go on with
    `yes`, ask at a terminal, or raise ExportBudgetError (non-interactive without `yes`).
    `cost` is called only then (it traces a graph)."""
    if graphs <= MAX_GRAPHS:
        return
    logger.warning("%s", estimate(graphs, cost()))
    if yes:
        return
    if interactive is None:
        interactive = sys.stdin.isatty()
    if interactive:
        answer = input("export anyway? [y/N] ").strip().lower()
        if answer in ("y", "yes"):
            return
    raise ExportBudgetError(
        f"not exporting {graphs} graphs without confirmation: pass --yes to export them, or "
        "fewer buckets (--buckets 64,128,256: every K is rounded up to the next bucket)"
    )


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
