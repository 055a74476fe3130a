"""A package to load: exported where there is none, reused where one of the same model,
weights and cut is. What `rgtp eval`, the demo and the benchmarks export before they load.

Loading is the caller's (`Pipeline.load(ensure_package(...), backend)`): the runtime sits
above the exporter.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

from rgtp.export.onnx_graphs import ExportError
from rgtp.export.package import export_package
from rgtp.export.quantize import Int8Settings
from rgtp.package.manifest import MANIFEST, Manifest, package_file
from rgtp.package.plan import PARTITIONS, StagePlan, partition_blocks

logger = logging.getLogger(__name__)


def ensure_package(
    model: nn.Module,
    plan: StagePlan,
    package: str | Path | None = None,
    symbolic: bool = True,
    fresh: bool = False,
    progress: bool = True,
    int8: Int8Settings | None = None,
) -> Path:
    """The directory of a package of `model` cut as `plan`, with symbolic-K graphs or not.

    `package` None: exported into a new temporary directory; a directory without a package
    (or, with `fresh`, an earlier rgtp package, which is replaced): exported there. A
    package already there is reused if it holds `model`'s weights and `plan`'s model,
    partition, pruning point, head, every K bucket and rollout block asked for (more are
    fine) and its graphs' precision (`int8`: quantized so; None: float32);
    otherwise ExportError naming what differs. With `progress`, one line on stderr says
    what is exported, or which package is reused.
    """
    path = Path(package) if package is not None else Path(tempfile.mkdtemp(prefix="rgtp-"))
    if (path / MANIFEST).is_file() and not fresh:
        manifest = Manifest.load(path)
        differences = plan_differences(manifest.plan, plan)
        want = "fp32" if int8 is None else "int8"
        if manifest.precision != want:
            differences.append(f"its graphs are {manifest.precision}, not {want}")
        if not differences and manifest.model_weights is None:
            differences = ["it holds no weights to compare with the model's (--no-reference)"]
        elif not differences and not _same_weights(
            model, package_file(path, manifest.model_weights)
        ):
            differences = [f"its weights ({manifest.model_weights}) are not the model's"]
        if differences:
            raise ExportError(
                f"{path} holds a package other than asked for: {'; '.join(differences)}. "
                "Name another directory, or remove this one"
            )
        if progress:
            logger.info("reusing the package in %s: %s", path, describe(manifest.plan))
        return path
    if progress:
        graphs = "fixed- and symbolic-K graphs" if symbolic else "fixed-K graphs only"
        logger.info("exporting %s; %s; to %s", describe(plan), graphs, path)
    export_package(model, plan, path, symbolic=symbolic, force=fresh, progress=progress, int8=int8)
    return path


def describe(plan: StagePlan) -> str:
    """The cut of a plan in the words of `rgtp export`'s options."""
    return (
        f"{_model(plan)}, partition {_partition(plan)}, K buckets {list(plan.buckets)}, "
        + (
            ""
            if plan.stage_buckets is None
            else f"per stage {[list(b) for b in plan.stage_buckets]}, "
        )
        + f"pruning from {plan.prune_from}, head fusion {plan.fusion}, head {plan.head}, "
        f"rollout blocks {list(plan.rollout_blocks or ())}"
    )


def plan_differences(have: StagePlan, want: StagePlan) -> list[str]:
    """What a package cut as `have` lacks to serve as one cut as `want`, in user's terms."""
    out = []
    if (have.config.name, have.encoder) != (want.config.name, want.encoder):
        out.append(f"it holds {_model(have)}, not {_model(want)}")
    for what, a, b in (
        ("partition", _partition(have), _partition(want)),
        ("pruning from", have.prune_from, want.prune_from),
        ("head fusion", have.fusion, want.fusion),
        ("head", have.head, want.head),
    ):
        if a != b:
            out.append(f"its {what} is {a}, not {b}")
    missing = sorted(set(want.buckets) - set(have.buckets))
    if missing:
        out.append(f"it has no K buckets {missing} (it has {list(have.buckets)})")
    if len(have.stages) == len(want.stages):  # keep schedules' K, a stage's own
        for i in range(len(want.stages)):
            own = sorted(set(want.buckets_of(i)) - set(have.buckets_of(i)) - set(missing))
            if own:
                out.append(
                    f"its stage {i} has no K buckets {own} (it has {list(have.buckets_of(i))})"
                )
    if have.max_batch < want.max_batch:
        out.append(f"its stages run at most {have.max_batch} streams a call, not {want.max_batch}")
    rows = sorted(set(want.rollout_blocks or ()) - set(have.rollout_blocks or ()))
    if rows:
        out.append(
            f"it returns no attention rows for rollout blocks {rows} (it returns them for "
            f"{list(have.rollout_blocks or ())})"
        )
    return out


def _model(plan: StagePlan) -> str:
    return f"{plan.config.name} (N = {plan.num_tokens} tokens)"


def _partition(plan: StagePlan) -> str:
    """The name of the plan's partition (`rgtp export --partition`), else its stages."""
    for name in PARTITIONS:
        if tuple(partition_blocks(plan.encoder, name)) == plan.stages:
            return name
    return str([list(s) for s in plan.stages])


def _same_weights(model: nn.Module, path: Path) -> bool:
    try:
        saved = load_file(str(path))
    except Exception as e:  # safetensors' own error type: a file that is not a weights file
        raise ExportError(f"{path}: cannot read it ({e})") from e
    state = model.state_dict()
    return saved.keys() == state.keys() and all(
        torch.equal(saved[name], state[name].detach().cpu()) for name in saved
    )
