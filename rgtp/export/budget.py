"""How long an export will take, asked before it starts: a plan of hundreds of graphs
(`--buckets` with every K from 1 to 200 is 810 graphs for vitdet-small) traces for hours, so
an export over `MAX_GRAPHS` graphs states its count and an estimate and needs confirmation.

The estimate comes from this machine and this model: one stage graph, the largest, is traced
here and timed (the stage graphs are most of any package), times the number of graphs.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable

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
    return around + sum(
        len(plan.buckets_of(i)) + int(symbolic) for i in range(len(plan.stages))
    )


def time_one_graph(model: nn.Module, plan: StagePlan, opset: int) -> float:
    """Seconds to trace the plan's largest static stage graph (the last stage's largest K:
    a bound on the others) to ONNX here, in this process."""
    from rgtp.export.onnx_graphs import example_inputs, export_graph
    from rgtp.models.stages import stage_modules

    stage = len(plan.stages) - 1
    k = max(plan.buckets_of(stage))
    spec = plan.stage_spec(stage, k)
    module = stage_modules(plan.family.encoder(model.eval()), plan)[stage]
    args = example_inputs(spec, k, plan.num_tokens, plan.prefix, batch=2)
    start = time.perf_counter()
    export_graph(module, spec, args, False, opset)
    return time.perf_counter() - start


def estimate(graphs: int, seconds_per_graph: float, workers: int) -> str:
    """The warning's words: the count and the time, sequential and with `workers`."""
    total = graphs * seconds_per_graph
    parallel = f"; {workers} workers divide it at best to {_duration(total / workers)}"
    return (
        f"this export writes {graphs} graphs (more than {MAX_GRAPHS}); one graph took "
        f"{seconds_per_graph:.1f} s to trace here, so about {_duration(total)} in all"
        + (parallel if workers > 1 else "")
    )


def confirm_export(
    graphs: int,
    seconds_per_graph: Callable[[], float],
    workers: int,
    yes: bool,
    interactive: bool | None = None,
) -> None:
    """Nothing for `graphs` <= MAX_GRAPHS. Above: the estimate on stderr, then go on with
    `yes`, ask at a terminal, or raise ExportBudgetError (non-interactive without `yes`).
    `seconds_per_graph` is called only then (it traces a graph)."""
    if graphs <= MAX_GRAPHS:
        return
    logger.warning("%s", estimate(graphs, seconds_per_graph(), workers))
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
