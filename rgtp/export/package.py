"""`rgtp export`: a model and a stage plan -> a directory of ONNX graphs and a manifest.

Layout:
    manifest.json           every graph's interface and every file's sha256
    model.safetensors       the model's weights (torch backend, `rgtp check` reference);
                            left out with `reference=False` (`--no-reference`)
    embed.onnx, head.onnx   (+ embed.weights, head.weights)
    temporal.onnx, ...      the family's further graphs (+ NAME.weights)
    stage{i}_k{K}.onnx      one static graph per stage and K bucket
    stage{i}_kK.onnx        the same stage with a symbolic K axis (TensorRT profiles)
    stage{i}.weights        external data shared by all variants of stage i

Nothing of the user's is ever deleted: an export writes into a temporary sibling
directory `.NAME.rgtp-tmp-HOST-PID-XXXX` and replaces `out` only when complete, and only if `out`
is absent, empty, or an earlier rgtp package holding nothing but its own files (`force`).
"""

from __future__ import annotations

import contextlib
import importlib.metadata as md
import json
import os
import re
import secrets
import shutil
import signal
import socket
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

import onnx
import torch
from torch import nn
from tqdm import tqdm

from rgtp._optional import require
from rgtp.export.onnx_graphs import (
    DEFAULT_OPSET,
    SYMBOLIC_K,
    ExportError,
    check_opset,
    example_inputs,
    export_graph,
    fix_k,
    graph_opset,
)
from rgtp.export.parallel import export_workers, traced
from rgtp.export.quantize import Int8Settings, quantize_graph
from rgtp.export.weights_file import SharedWeights
from rgtp.models.checkpoint_files import save_weights
from rgtp.models.stages import stage_modules
from rgtp.package.manifest import (
    MANIFEST,
    PARTIAL_MANIFEST,
    PRIVATE_MODES,
    PUBLIC_MODES,
    GraphRecord,
    Manifest,
    record_files,
)
from rgtp.package.plan import GraphSpec, StagePlan

MODEL_WEIGHTS = "model.safetensors"
# `.NAME.rgtp-tmp-HOST-PID-XXXX`: an export in progress; `.NAME.rgtp-old-HOST-PID-XXXX`: the package
# it replaces, between being set aside and being deleted. The pid tells stale from live.
_WORK_DIR = re.compile(r"^\.(?P<name>.+)\.rgtp-(?P<what>tmp|old)-(?P<host>\w+)-(?P<pid>\d+)-\w+$")
# the host, as it appears in work directory names: a pid means something only on its host
# (a package directory may be on a file system that several machines share)
_HOST = re.sub(r"\W", "_", socket.gethostname().split(".")[0]) or "localhost"


def _versions(opset: int) -> dict[str, str]:
    out = {"opset": str(opset)}
    for pkg in ("rgtp", "torch", "onnx", "onnxscript"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = "unknown"
    return out


def _write_graph(
    model: onnx.ModelProto, directory: Path, file: str, weights: SharedWeights
) -> None:
    weights.externalize(model)
    onnx.save(model, str(directory / file))


def export_package(
    model: nn.Module,
    plan: StagePlan,
    out: str | Path,
    opset: int = DEFAULT_OPSET,
    symbolic: bool = True,
    force: bool = False,
    progress: bool = True,
    private: bool = False,
    user_head: onnx.ModelProto | None = None,
    workers: int | None = None,
    int8: Int8Settings | None = None,
    reference: bool = True,
) -> Manifest:
    """Export every graph of `plan` for `model` (a model of the plan's family: `Detector`,
    `ViViT`) into the directory `out`.

    The head follows `plan.head`: rgtp's own (traced from the model), "onnx" (the user's
    graph `user_head`, from `export.user_head.read_user_head`, copied in as head.onnx), or
    "none" (no head graph).

    `out` must be absent, an empty directory, or (with `force`) an earlier rgtp package that
    holds only files rgtp wrote; anything else is refused (ExportError) before any work.
    The package is written to a temporary sibling directory and moved to `out` only when
    complete; an earlier package is set aside first and deleted only once the new one is in
    place. Interrupted (exception, Ctrl-C, SIGTERM), nothing is left behind. Directories
    are made 0755 and files 0644, or 0700/0600 with `private`. `workers`: processes tracing
    graphs at once (`export.parallel`); None: one per core. `int8`: rgtp's graphs are
    quantized so (`export.quantize`) and the manifest says how; None: float32 graphs.
    `reference`: write the model's weights as model.safetensors, which the torch backend and
    `rgtp check`'s comparison load; without, the package holds each weight once (in the
    graphs' weight files), as a deployment needs."""
    require("onnxscript", "export")  # torch.onnx's exporter writes through it
    check_opset(opset)
    if model.cfg != plan.config:
        raise ExportError("the model's config differs from the plan's")
    if (plan.head == "onnx") != (user_head is not None):
        raise ExportError("a user head graph goes with a plan whose head is 'onnx', and only so")
    out = destination(out, force)
    with _sigterm_raises():
        tmp = _work_dir(out)
        try:
            manifest = _export_into(
                model.eval(),
                plan,
                tmp,
                opset,
                symbolic,
                progress,
                user_head,
                workers,
                int8,
                reference,
            )
            set_modes(tmp, private)
            move_into_place(tmp, destination(out, force))  # `out` may have changed meanwhile
            return manifest
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise


def _work_dir(out: Path) -> Path:
    """A new temporary directory beside `out`, named for `out` and this process, after
    removing those of dead processes."""
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_work_dirs(out.parent)
        return Path(tempfile.mkdtemp(prefix=_work_name(out, "tmp"), dir=out.parent))
    except OSError as e:
        raise ExportError(f"cannot write in {out.parent} ({e.strerror or e})") from e


def destination(out: str | Path, force: bool) -> Path:
    """`out` as a path an export may write to (see `export_package`), else ExportError
    saying why not and what is accepted."""
    if not str(out).strip():
        raise ExportError("the output directory is empty (''); name a directory to export to")
    path = Path(out)
    resolved, cwd = path.resolve(), Path.cwd().resolve()
    if resolved == cwd or resolved in cwd.parents:
        what = (
            "the file system root"
            if resolved.parent == resolved
            else "the working directory"
            if resolved == cwd
            else "a parent of the working directory"
        )
        raise ExportError(
            f"refusing to export into '{out}': it is {what} ({resolved}); "
            "name a new or empty directory"
        )
    if path.is_symlink():
        raise ExportError(f"'{out}' is a symbolic link; name the directory it points to")
    if not path.exists():
        return path
    if not path.is_dir():
        raise ExportError(
            f"'{out}' is a file; an export writes a directory: name a new or empty one"
        )
    if not any(path.iterdir()):
        return path
    foreign = foreign_files(path)
    if foreign is None:
        raise ExportError(
            f"'{out}' is not empty and holds no rgtp package (no {MANIFEST}); rgtp deletes "
            "nothing it did not write, even with --force: name a new or empty directory"
        )
    if foreign:
        shown = ", ".join(foreign[:5]) + (
            f" and {len(foreign) - 5} more" if len(foreign) > 5 else ""
        )
        raise ExportError(
            f"'{out}' holds an rgtp package and files rgtp did not write ({shown}); "
            "rgtp deletes nothing it did not write: move them out first"
        )
    if not force:
        raise ExportError(f"'{out}' holds an rgtp package; pass --force to replace it")
    return path


def foreign_files(directory: Path) -> list[str] | None:
    """The entries of package `directory` that its manifest does not account for (sorted,
    relative); None when `directory` holds no rgtp manifest at all."""
    try:
        d = json.loads((directory / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    if not (isinstance(d, dict) and "schema_version" in d and isinstance(d.get("files"), dict)):
        return None
    own = {MANIFEST, PARTIAL_MANIFEST, *map(str, d["files"])}  # (a rewrite cut short)
    own_dirs = {str(p) for name in own for p in PurePosixPath(name).parents}
    foreign = []
    for path in directory.rglob("*"):
        rel = path.relative_to(directory).as_posix()
        if rel in own or (rel in own_dirs and path.is_dir() and not path.is_symlink()):
            continue
        if not any(rel.startswith(f + "/") for f in foreign):  # a foreign folder: name it once
            foreign.append(rel)
    return sorted(foreign)


def remove_stale_work_dirs(parent: Path) -> list[Path]:
    """Clean up after exports killed without a chance to (SIGKILL, power loss): delete the
    work directories in `parent` whose process is gone. A package set aside for its
    replacement whose replacement never arrived is put back instead. Returns what was
    deleted."""
    removed = []
    for entry in parent.iterdir():
        m = _WORK_DIR.match(entry.name)
        if not m or m["host"] != _HOST or entry.is_symlink() or not entry.is_dir():
            continue
        if _alive(int(m["pid"])):
            continue
        home = parent / m["name"]
        if m["what"] == "old" and not (home.exists() or home.is_symlink()):
            entry.rename(home)
            continue
        shutil.rmtree(entry, ignore_errors=True)
        removed.append(entry)
    return removed


def _work_name(out: Path, what: str) -> str:
    """The name of a work directory for `out` without its random suffix."""
    return f".{out.name}.rgtp-{what}-{_HOST}-{os.getpid()}-"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


class _Terminated(BaseException):
    """SIGTERM during an export, raised so that the export cleans up after itself."""


@contextlib.contextmanager
def _sigterm_raises() -> Iterator[None]:
    """Within: SIGTERM raises `_Terminated`; once the block has cleaned up, the signal is
    delivered again to the previous handler (by default: the process ends). Only the main
    thread may set signal handlers; elsewhere SIGTERM keeps its handler."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def terminated(signum: int, frame: object) -> None:
        raise _Terminated

    if signal.getsignal(signal.SIGTERM) == signal.SIG_IGN:  # ignored: the export goes on
        yield
        return
    previous = signal.signal(signal.SIGTERM, terminated)
    try:
        yield
    except _Terminated:
        signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)
        raise ExportError("export interrupted by SIGTERM; nothing was written") from None
    finally:
        signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)


def set_modes(root: Path, private: bool = False) -> None:
    """chmod every directory and file under `root` (itself included): 0755/0644 so other
    users (e.g. a server's account) can read the package, or 0700/0600 with `private`."""
    dir_mode, file_mode = PRIVATE_MODES if private else PUBLIC_MODES
    root.chmod(dir_mode)
    for base, dirs, files in os.walk(root):
        for d in dirs:
            (Path(base) / d).chmod(dir_mode)
        for f in files:
            (Path(base) / f).chmod(file_mode)


def move_into_place(tmp: Path, out: Path) -> None:
    """Put the complete directory `tmp` (a package, a Triton repository) at `out`. What was
    at `out` (an empty directory or an earlier one of the same kind) is renamed aside first
    and deleted only once `tmp` is in place, so any failure leaves it where it was."""
    if not out.exists():
        tmp.rename(out)
        return
    aside = out.with_name(_work_name(out, "old") + secrets.token_hex(4))
    out.rename(aside)
    try:
        tmp.rename(out)
    except BaseException:
        aside.rename(out)
        raise
    shutil.rmtree(aside)


def _export_into(
    model: nn.Module,
    plan: StagePlan,
    directory: Path,
    opset: int,
    symbolic: bool,
    progress: bool,
    user_head: onnx.ModelProto | None,
    workers: int | None = None,
    int8: Int8Settings | None = None,
    reference: bool = True,
) -> Manifest:
    n = plan.num_tokens
    family = plan.family
    around = {"embed": plan.embed_spec(), **plan.extra_specs()}
    if plan.head != "none":
        around["head"] = plan.head_spec()
    modules = family.modules(model, plan)
    # Each stage is traced once, with a symbolic K; its graph at every bucket is derived from
    # that trace (`fix_k`: a fraction of a second, where a trace takes seconds)
    jobs: list[tuple[str, int | None, int | str | None]] = [("embed", None, None)]
    jobs += [("stage", i, SYMBOLIC_K) for i in range(len(plan.stages))]
    jobs += [(name, None, None) for name in around if name != "embed"]
    stage_graphs = sum(len(plan.buckets_of(i)) + symbolic for i in range(len(plan.stages)))

    if reference:
        save_weights(model, directory / MODEL_WEIGHTS)
    records: list[GraphRecord] = []
    opsets: set[int] = set()  # what the exporter wrote, which is not always what was asked
    weight_files: dict[str, SharedWeights] = {}
    quantized: list[str] = []  # the graphs `int8` lowered
    stages = stage_modules(family.encoder(model), plan)

    def spec_of(job: tuple[str, int | None, int | str | None]) -> GraphSpec:
        kind, stage, k = job
        if kind == "stage":
            assert stage is not None and k is not None
            return plan.stage_spec(stage, k)
        return around[kind]

    def trace(job: tuple[str, int | None, int | str | None]) -> onnx.ModelProto:
        kind, stage, k = job
        spec = spec_of(job)
        if kind == "stage":
            assert stage is not None
            module = stages[stage]
            # symbolic graphs are traced at a K unlike any bucket, and every stage graph
            # at two streams, so no size specialises
            trace_k = k if isinstance(k, int) else max(2, n // 2 + 1)
            args = example_inputs(spec, trace_k, n, plan.prefix, batch=2)
        elif kind == "head" and user_head is not None:
            graph = onnx.ModelProto()
            graph.CopyFrom(user_head)  # its own opset: not one of the exporter's
            return graph
        else:
            module = modules[kind]
            # pixels in [0, 255] for the embed graph; features elsewhere
            scale = 255.0 if kind == "embed" else 1.0
            args = tuple(torch.rand(t.concrete({})) * scale for t in spec.inputs)
        return export_graph(module, spec, args, isinstance(k, str), opset)

    def variants(
        job: tuple[str, int | None, int | str | None], graph: onnx.ModelProto
    ) -> Iterator[tuple[tuple[str, int | None, int | str | None], onnx.ModelProto]]:
        """The graphs one trace gives, in the package's order: a stage's at each bucket,
        then its symbolic graph where asked for (last: writing it moves its weights out)."""
        kind, stage, _ = job
        if kind != "stage":
            yield job, graph
            return
        assert stage is not None
        for k in plan.buckets_of(stage):
            yield ("stage", stage, k), fix_k(graph, plan.stage_spec(stage, k))
        if symbolic:
            yield job, graph

    bar = tqdm(total=len(around) + stage_graphs, desc="export", unit="graph", disable=not progress)
    graphs = traced(jobs, trace, export_workers(len(jobs), workers), directory)
    try:
        with contextlib.closing(graphs):
            for (kind, stage, k), graph in (v for g in graphs for v in variants(*g)):
                spec = spec_of((kind, stage, k))
                bar.set_postfix_str(spec.name)
                bar.update()
                ours = not (kind == "head" and user_head is not None)
                if ours:
                    opsets.add(graph_opset(graph))
                if ours and int8 is not None:
                    graph = quantize_graph(graph, int8)
                    quantized.append(spec.name)
                wname = f"stage{stage}.weights" if kind == "stage" else f"{kind}.weights"
                if wname not in weight_files:
                    weight_files[wname] = SharedWeights(directory / wname)
                file = f"{spec.name}.onnx"
                _write_graph(graph, directory, file, weight_files[wname])
                record_kind = kind if kind in ("embed", "stage", "head") else "extra"
                records.append(_record(spec, record_kind, file, wname, plan, stage, k))
    finally:
        bar.close()
        for w in weight_files.values():
            w.close()
    if len(opsets) != 1:
        raise ExportError(f"the graphs were written with different opsets {sorted(opsets)}")
    (written,) = opsets
    files = [*([MODEL_WEIGHTS] if reference else []), *weight_files, *(r.file for r in records)]
    manifest = Manifest(
        plan=plan,
        graphs=records,
        files=record_files(directory, files),
        model_weights=MODEL_WEIGHTS if reference else None,
        opset=written,
        versions=_versions(written),
        quantization=None if int8 is None else int8.record(quantized),
    )
    manifest.save(directory)
    return manifest


def _record(
    spec: GraphSpec,
    kind: str,
    file: str,
    weights: str,
    plan: StagePlan,
    stage: int | None,
    k: int | str | None,
) -> GraphRecord:
    return GraphRecord(
        name=spec.name,
        kind=kind,
        file=file,
        inputs=list(spec.inputs),
        outputs=list(spec.outputs),
        stage=stage,
        blocks=list(plan.stages[stage]) if stage is not None else None,
        k=k,
        weights=weights,
    )
