"""The `rgtp` command line: thin wrappers over the Python API, no logic of their own."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence

COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {}


def command(fn: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    COMMANDS[fn.__name__.removeprefix("cmd_")] = fn
    return fn


def _ints(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}"
        ) from None


def _int_at_least(low: int) -> Callable[[str], int]:
    """argparse type: an integer >= low, refused at parse time (e.g. --synthetic 0)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < low:
            raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {text!r}")
        return value

    return parse


def _ints_at_least(low: int) -> Callable[[str], list[int]]:
    """argparse type: comma-separated integers, each >= low, at least one."""

    def parse(text: str) -> list[int]:
        values = _ints(text)
        if not values or min(values) < low:
            raise argparse.ArgumentTypeError(
                f"expected comma-separated integers >= {low}, got {text!r}"
            )
        return values

    return parse


def _keep(text: str) -> int | tuple[int, ...]:
    """argparse type: K (an integer >= 1), or a keep schedule of one K per stage, never
    increasing ("96/77/64/48"; its length is checked against the model's stages)."""
    try:
        values = tuple(int(v) for v in text.split("/"))
    except ValueError:
        values = ()
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(
            f"expected K (an integer >= 1) or a keep schedule of one K per stage such as "
            f"96/77/64/48, got {text!r}"
        )
    if len(values) == 1:
        return values[0]
    from rgtp.core.selection import check_schedule

    try:
        return check_schedule(values, len(values), max(values))
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _keeps(text: str) -> list[int | tuple[int, ...]]:
    """argparse type: comma-separated `_keep` values ("64,77,96/85/69/58"), at least one."""
    return [_keep(v) for v in text.split(",") if v.strip()] or [_keep("")]


def _share(text: str) -> float:
    """argparse type: a number in (0, 1] (--mass)."""
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1], got {text!r}")
    return value


def _milliseconds(text: str) -> float:
    """argparse type: a finite number of milliseconds > 0 (--latency-budget)."""
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0.0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"expected milliseconds > 0, got {text!r}")
    return value


def _opset(text: str) -> int:
    from rgtp.export.onnx_graphs import ExportError, check_opset

    try:
        return check_opset(int(text))
    except ExportError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None


def _tolerance(name: str) -> Callable[[str], float]:
    def parse(text: str) -> float:
        from rgtp.export.check import CheckError, tolerance

        try:
            return tolerance(name, float(text))
        except CheckError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None

    return parse


@command
def cmd_flops(args: argparse.Namespace) -> int:
    from rgtp.families import get_config

    cfg = get_config(args.model, args.size)
    return {"detection": _flops_detector, "classification": _flops_classifier}[cfg.family](
        args, cfg
    )


_CONVENTION_NAMES = {
    "paper": "the authors' count: windows computed whole",
    "executed": "what rgtp runs",
}


def _check_k(args: argparse.Namespace, enc) -> int:
    k = args.k if args.k is not None else enc.num_tokens
    if not isinstance(k, int):
        raise ValueError("keep schedules (one K per stage) are for detectors; give one --keep K")
    if not 0 < k <= enc.num_tokens:
        raise ValueError(f"--keep must be in 1..{enc.num_tokens} (N at {enc.img_size} px)")
    return k


def _flops_detector(args: argparse.Namespace, cfg) -> int:
    from rgtp.core.selection import schedule_name
    from rgtp.families.detection.flops import block_keeps, frame_macs, schedule_macs

    bb = cfg.backbone
    k = args.k if args.k is not None else bb.num_tokens
    if isinstance(k, int):
        k = _check_k(args, bb)
    else:
        block_keeps(bb, k)  # a keep schedule: one K per stage of the default cut
    prune_from = _prune_from(args)
    conv = args.convention
    rows = {
        "dense": frame_macs(bb, None, args.radius, cfg, convention=conv),
        "pruned": frame_macs(bb, k, args.radius, cfg, prune_from, conv),
        "average": schedule_macs(bb, k, args.reset_every, args.radius, cfg, prune_from, conv),
    }
    report = {
        "model": args.model,
        "size": bb.img_size,
        "num_tokens": bb.num_tokens,
        "k": k if isinstance(k, int) else list(k),
        "convention": conv,
        "prune_from": prune_from,
        "reset_every": args.reset_every,
        "radius": args.radius,
        **{
            name: {f"{k}_gmacs": v / 1e9 for k, v in m.as_dict().items()}
            for name, m in rows.items()
        },
    }
    report["average_over_dense"] = rows["average"].backbone / rows["dense"].backbone
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(
        f"{args.model} at {bb.img_size}x{bb.img_size}: N = {bb.num_tokens} tokens, "
        f"keep K = {k if isinstance(k, int) else schedule_name(k) + ' (per stage)'}, reset "
        f"every {args.reset_every} frames, pruning from {prune_from}"
    )
    print(
        f"GFLOPs, {conv} convention ({_CONVENTION_NAMES[conv]}): "
        "multiply-accumulates of the backbone, x1e9"
    )
    parts = list(rows["dense"].as_dict())
    print(f"{'part':<16}" + "".join(f"{name:>12}" for name in rows))
    for p in parts:
        print(f"{p:<16}" + "".join(f"{m.as_dict()[p] / 1e9:>12.2f}" for m in rows.values()))
    print(
        f"average backbone GFLOPs per frame: {rows['average'].backbone / 1e9:.1f} "
        f"({100 * report['average_over_dense']:.1f} % of dense)"
    )
    return 0


def _flops_classifier(args: argparse.Namespace, cfg) -> int:
    from rgtp.families.classification.flops import KINETICS_VIEWS, view_macs

    sp = cfg.spatial
    k = _check_k(args, sp)
    views = KINETICS_VIEWS[0] * KINETICS_VIEWS[1]
    reset_every = max(args.reset_every, 1)
    from rgtp.core.selection import checkerboard_size

    board = checkerboard_size(sp.grid) if args.reset == "checkerboard" else None
    rows = {"dense": view_macs(cfg), "pruned": view_macs(cfg, k, reset_every, board)}
    report = {
        "model": args.model,
        "size": sp.img_size,
        "frames": cfg.num_frames,
        "num_tokens": sp.num_tokens,
        "k": k,
        "reset_every": reset_every,
        "reset": args.reset,
        "convention": args.convention,  # both count the same: no windowed blocks
        "views": views,
        **{
            name: {f"{part}_gmacs_per_view": v / 1e9 for part, v in m.as_dict().items()}
            for name, m in rows.items()
        },
        "dense_tmacs_per_video": rows["dense"].total * views / 1e12,
        "pruned_tmacs_per_video": rows["pruned"].total * views / 1e12,
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(
        f"{args.model} at {sp.img_size}x{sp.img_size}, {cfg.num_frames} frames "
        f"({cfg.num_steps} time steps of {sp.tubelet}): N = {sp.num_tokens} patch tokens + CLS, "
        f"keep K = {k}, a {args.reset} reset every {reset_every} time steps"
    )
    print(
        f"GFLOPs, {args.convention} convention (paper and executed agree for this model): "
        "multiply-accumulates, x1e9, per view (one clip)"
    )
    print(f"{'part':<16}" + "".join(f"{name:>12}" for name in rows))
    for p in rows["dense"].as_dict():
        print(f"{p:<16}" + "".join(f"{m.as_dict()[p] / 1e9:>12.2f}" for m in rows.values()))
    print(
        f"per video over {KINETICS_VIEWS[0]} clips x {KINETICS_VIEWS[1]} crops = {views} views: "
        f"dense {report['dense_tmacs_per_video']:.3f} TFLOPs, pruned "
        f"{report['pruned_tmacs_per_video']:.3f} TFLOPs "
        f"({100 * rows['pruned'].total / rows['dense'].total:.1f} % of dense)"
    )
    return 0


def _load_model(args: argparse.Namespace):
    """The named model (any family) at --size with --weights, the shipped weights, or
    --random-init.

    Every encoder tensor must load; tensors outside it (a detector's neck and head, a
    ViViT's temporal transformer under a timm image checkpoint) the checkpoint lacks keep
    their random values only with --allow-missing-head, and the log says so.
    """
    from rgtp.families import get_config, shipped_weights
    from rgtp.package.family import family_of

    cfg = get_config(args.model, args.size)
    family = family_of(cfg)
    model = family.build(cfg)
    path = args.weights or (None if args.random_init else shipped_weights(args.model))
    if path is None and not args.random_init:
        raise ValueError(
            f"no weights for {args.model}: pass --weights PATH, or --random-init for timing work"
        )
    # with your own head (export --head none / --head-onnx) rgtp's neck and head are unused
    own_head = getattr(args, "head", "rgtp") != "rgtp" or getattr(args, "head_onnx", None)
    if path is not None:
        fmt = args.weights_format if args.weights else "rgtp"
        strict = not (args.allow_missing_head or own_head)
        report = family.load_checkpoint(model, path, fmt, strict)
        print(f"weights {path}: {report.summary()}", file=sys.stderr)
        if report.missing:
            why = "your own head replaces them" if own_head else "--allow-missing-head"
            print(
                f"warning: {why}: {len(report.missing)} tensors outside the encoder "
                "are not in the checkpoint and keep random values",
                file=sys.stderr,
            )
    return model.eval()


def _add_weights_flags(p: argparse.ArgumentParser) -> None:
    from rgtp.families.detection.checkpoints import FORMATS

    p.add_argument("--weights", default=None, help="checkpoint (.safetensors, .pth/.bin, .pkl)")
    p.add_argument(
        "--weights-format",
        default="auto",
        choices=FORMATS,
        help="naming of --weights (auto: told from its keys)",
    )
    p.add_argument(
        "--allow-missing-head",
        action="store_true",
        help="neck/head tensors missing from --weights keep random values (backbone: never)",
    )
    p.add_argument("--random-init", action="store_true", help="no weights (for timing work)")


@command
def cmd_export(args: argparse.Namespace) -> int:
    from rgtp.export.package import export_package
    from rgtp.package.plan import StagePlan

    head, user_graph, user_spec = args.head, None, None
    if args.head_onnx:
        from rgtp.export.user_head import read_user_head

        user_graph, user_spec = read_user_head(args.head_onnx)
        head = "onnx"
    model = _load_model(args)
    model.cfg = _export_pruning(args, model.cfg)
    plan = StagePlan.create(
        model.cfg,
        [*args.buckets, *(k for k in args.ks if isinstance(k, int))],
        args.partition,
        args.fusion,
        _prune_from(args),
        head,
        user_spec,
        schedules=[k for k in args.ks if not isinstance(k, int)],
        max_batch=args.max_batch,
    )
    manifest = export_package(
        model,
        plan,
        args.out,
        opset=args.opset,
        symbolic=not args.no_symbolic,
        workers=args.workers,
        force=args.force,
        progress=not args.quiet,
        private=args.private,
        user_head=user_graph,
    )
    size = sum(f["bytes"] for f in manifest.files.values())
    if plan.stage_buckets is None:
        cut = f"{len(plan.stages)} stages x {len(plan.buckets)} buckets {list(plan.buckets)}"
    else:
        cut = (
            f"{len(plan.stages)} stages, K buckets per stage {list(map(list, plan.stage_buckets))}"
        )
    print(f"exported {len(manifest.graphs)} graphs ({cut}) to {args.out}: {size / 2**20:.1f} MiB")
    return 0


@command
def cmd_check(args: argparse.Namespace) -> int:
    from rgtp.export.check import check_package

    report = check_package(args.package, atol=args.atol, rtol=args.rtol, progress=not args.quiet)
    for problem in report.problems:
        print(f"FAIL {problem}")
    for note in report.notes:
        print(f"note: {note}")
    if report.graphs:
        print(f"{'graph':<16}{'max abs err':>14}{'max rel err':>14}  result")
        for g in report.graphs:
            status = "ok" if g.passed else f"FAIL (atol {args.atol}, rtol {args.rtol})"
            print(f"{g.name:<16}{g.max_abs:>14.3g}{g.max_rel:>14.3g}  {status}")
    print("check passed" if report.passed else "check FAILED")
    return 0 if report.passed else 1


def _prune_from(args: argparse.Namespace) -> str:
    """Where the exported graphs start pruning: --prune-from, else the authors' place (after
    block 0's attention) with --paper, else at the input."""
    if args.prune_from is not None:
        return args.prune_from
    return "block0-mlp" if args.paper else "input"


def _export_pruning(args: argparse.Namespace, cfg):
    """The model config with the pruning flags applied (--paper: the authors' settings), so
    that the package's manifest carries them and its streams use them by default."""
    import dataclasses

    return dataclasses.replace(cfg, pruning=_pruning(args, cfg.pruning, cfg.encoder.img_size))


def _add_partition_flag(p: argparse.ArgumentParser) -> None:
    from rgtp.package.plan import PARTITIONS

    p.add_argument(
        "--partition",
        default="per-global",
        choices=PARTITIONS,
        help="how the encoder's blocks are cut into stages: each ending at a global block, "
        "one block each, or one stage",
    )


def _add_reset_flag(p: argparse.ArgumentParser) -> None:
    from rgtp.core.selection import RESETS

    p.add_argument(
        "--reset",
        default="dense",
        choices=RESETS,
        help="what a reset step keeps: all tokens, or the authors' ViViT 1-in-2 checkerboard "
        "(needs the K = ceil(N/2) bucket)",
    )


def _add_prune_from_flag(p: argparse.ArgumentParser) -> None:
    from rgtp.package.plan import PRUNE_FROM

    p.add_argument(
        "--prune-from",
        choices=PRUNE_FROM,
        default=None,
        help="where the graphs start pruning: the input, or after block 0's attention (the "
        "authors'); default: block0-mlp with --paper, else input",
    )


def _pruning(args: argparse.Namespace, model_default, img_size: int):
    """The model's pruning settings with any command-line overrides (--paper: the authors'
    at this input size)."""
    import dataclasses

    from rgtp.models.config import PruningConfig

    base = PruningConfig.paper(img_size) if args.paper else model_default
    changes = {
        "rollout_pool": getattr(args, "rollout_pool", None),
        "rollout_blocks": tuple(args.rollout_blocks) if args.rollout_blocks else None,
        "similarity": args.similarity,
        "novelty_share": args.novelty_share,
        "novelty": args.novelty,
        "track_union": args.track_union,
        "target_threshold": args.target_threshold,
    }
    return dataclasses.replace(base, **{k: v for k, v in changes.items() if v is not None})


def _add_pruning_flags(p: argparse.ArgumentParser) -> None:
    from rgtp.core.tracking import SIMILARITIES
    from rgtp.models.config import NOVELTIES

    g = p.add_argument_group("pruning (default: the model's settings, see the manifest)")
    g.add_argument(
        "--paper",
        action="store_true",
        help="the authors' settings (PruningConfig.paper): their rollout, 2x2-pooled below "
        "1024 px; exporting, also pruning after block 0's attention",
    )
    g.add_argument(
        "--rollout-pool",
        type=_int_at_least(1),
        default=None,
        help="roll out over attention rows pooled N x N on the token grid (1: unpooled)",
    )
    g.add_argument("--rollout-blocks", type=_ints, default=None, help="global blocks, e.g. 8,11")
    g.add_argument("--similarity", default=None, choices=SIMILARITIES)
    g.add_argument("--novelty-share", type=float, default=None)
    g.add_argument(
        "--novelty",
        default=None,
        choices=NOVELTIES,
        help="what the novelty share compares a token with: its tracked match in the last "
        "step, or what its cache was computed from",
    )
    g.add_argument(
        "--track-union",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="tracked importance = max(own, matched source's); --no-track-union: the paper's",
    )
    g.add_argument("--target-threshold", type=float, default=None)


def _add_stream_flags(p: argparse.ArgumentParser, latency_budget: bool) -> None:
    """A stream's keep policy (one of --keep, --mass and, where a process measures its own
    frames, --latency-budget), reset schedule and tracking radius (`_policy` reads them)."""
    keep = p.add_mutually_exclusive_group()
    keep.add_argument(
        "--keep",
        dest="k",
        type=_keep,
        help="tokens kept per pruned frame (K), or one K per stage (96/77/64/48)",
    )
    keep.add_argument("--mass", type=_share, help="keep the smallest bucket with this share")
    if latency_budget:
        keep.add_argument(
            "--latency-budget",
            type=_milliseconds,
            metavar="MS",
            help="keep the largest bucket expected to run a frame within MS on this machine, "
            "learnt from the running frames",
        )
    p.add_argument("--reset-every", type=_int_at_least(0), default=8)
    _add_reset_flag(p)
    p.add_argument("--radius", type=_int_at_least(0), default=1)


def _policy(args: argparse.Namespace):
    from rgtp.core.selection import keep_policy

    if args.k is not None or args.mass is not None:
        return keep_policy(args.k, args.mass)
    if getattr(args, "latency_budget", None) is not None:
        from rgtp.runtime.latency_budget import LatencyBudget

        return LatencyBudget(args.latency_budget)
    return None


def _synthetic_frames(config, count: int) -> list:
    """`count` frames of held-out synthetic video the model was trained for: a SynthVID
    sequence for a detector, consecutive SynthMotion clips for a classifier."""
    import itertools

    if config.family == "classification":
        from rgtp.eval.classify import data_config, heldout_clips

        per_clip = config.num_frames
        clips = heldout_clips(-(-count // per_clip), data_config(config))
        return list(itertools.chain.from_iterable(c.frames for c in clips))[:count]
    from rgtp.data.synthvid import SynthVIDConfig, generate_sequence, heldout_seeds

    seq = generate_sequence(
        heldout_seeds(1)[0], SynthVIDConfig(size=config.encoder.img_size, num_frames=count)
    )
    return list(seq.frames)


@command
def cmd_run(args: argparse.Namespace) -> int:
    import warnings

    from rgtp.runtime import Pipeline
    from rgtp.runtime.run import run_and_write, summarize

    pipe = Pipeline.load(args.package, backend=args.backend, device=args.device)
    config = pipe.plan.config
    stream = pipe.new_stream(
        policy=_policy(args),
        reset_every=args.reset_every,
        reset=args.reset,
        radius=args.radius,
        pruning=_pruning(args, config.pruning, config.encoder.img_size),
    )
    skipped: list[int] = []
    if args.video:
        from rgtp.runtime.video import VideoReader

        reader = VideoReader(args.video, args.max_frames, args.skip_bad_frames)
        frames, total, skipped = reader, args.max_frames, reader.skipped
    else:
        frames, total = iter(_synthetic_frames(config, args.synthetic)), args.synthetic
    with warnings.catch_warnings(record=True) as caught:
        try:
            results, paths = run_and_write(
                stream, frames, args.out, config.class_names, total, not args.quiet, skipped
            )
        finally:
            for w in caught:
                print(f"warning: {w.message}", file=sys.stderr)
    s = summarize(results, skipped=skipped)
    if not s["steps"]:
        print(f"error: no step could be run ({len(skipped)} frames skipped)", file=sys.stderr)
        return 1
    ms = s["ms_per_step"]
    skips = f", skipped {len(skipped)} undecodable frames" if args.skip_bad_frames else ""
    print(
        f"{s['frames']} frames, {s['steps']} steps on {pipe.backend} ({pipe.device}){skips}: "
        f"mean K {s['mean_k']:.0f} of {pipe.plan.num_tokens}, {ms['total']:.1f} ms/step "
        f"({ms['outside_engine']:.1f} ms outside engine calls); wrote "
        f"{', '.join(str(p) for p in dict.fromkeys(paths.values()))}"
    )
    return 0


@command
def cmd_build(args: argparse.Namespace) -> int:
    from pathlib import Path

    from rgtp.engines.trt_build import BuildOptions, build_trt

    if args.backend != "trt":
        print("error: only --backend trt builds ahead of time (ort and torch need no build)")
        return 2
    options = BuildOptions(
        precision=args.precision,
        layout=args.layout,
        timing_cache=Path(args.timing_cache) if args.timing_cache else None,
        mem_pool_size=args.mem_pool_size,
        compute_capabilities=tuple(args.compute_capability) if args.compute_capability else None,
        opt_batch=args.opt_batch,
    )
    info = build_trt(args.package, options, progress=not args.quiet, verify=not args.no_verify)
    print(
        f"built {len(info['plans'])} plans with {info['flavor']} {info['version']} for "
        f"{info['device']} (compute capability {info['compute_capability']}, "
        f"{info['precision']}, {info['layout']}); trtexec commands in "
        f"{Path(args.package) / info['trtexec']}"
    )
    return 0


@command
def cmd_triton(args: argparse.Namespace) -> int:
    from rgtp.serving import ServingSettings, write_repository

    settings = ServingSettings(
        backend=args.backend,
        max_streams=args.max_streams,
        idle_timeout_s=args.idle_timeout,
        float_scale=args.float_scale,
        keep=args.k,
        mass=args.mass,
        reset_every=args.reset_every,
        reset=args.reset,
        radius=args.radius,
        **({} if args.max_pixels is None else {"max_pixels": args.max_pixels}),
    )
    model = write_repository(args.package, args.out, settings, force=args.force)
    print(
        f"wrote model {model.name} to {args.out}; start the server with: "
        f"rgtp serve {args.out}"
    )
    return 0


def _port(text: str) -> int:
    """argparse type: a TCP port, 1..65535."""
    port = _int_at_least(1)(text)
    if port > 65535:
        raise argparse.ArgumentTypeError(f"expected a TCP port (1..65535), got {text!r}")
    return port


@command
def cmd_serve(args: argparse.Namespace) -> int:
    from rgtp.serving.server import TritonServer, serve

    def ready(server: TritonServer) -> None:
        assert server.process is not None
        print(
            f"tritonserver ready (pid {server.process.pid}), serving "
            f"{', '.join(server.models)} from {server.repository}: HTTP {server.http_url}, "
            f"gRPC {server.grpc_url}, metrics http://{server.metrics_url}/metrics; log "
            f"{server.log_path}; SIGTERM or Ctrl-C stops it",
            flush=True,
        )

    server = TritonServer(
        args.repository,
        args.http_port,
        args.grpc_port,
        args.metrics_port,
        address=args.address,
        env=args.env,
    )
    return serve(server, ready)


def _pipeline(
    args: argparse.Namespace, model, buckets: list[int], schedules: Sequence[Sequence[int]] = ()
):
    """A pipeline of `model` on --backend: torch in memory, else an exported package of
    fixed-K graphs (--package if it holds this export, else exported there or into a
    temporary directory; stderr says which); `schedules`' K as their stages' buckets."""
    from rgtp.export.ensure import ensure_package
    from rgtp.package.plan import StagePlan
    from rgtp.runtime import Pipeline

    if args.backend == "torch":
        return Pipeline.from_model(
            model,
            buckets,
            partition=args.partition,
            prune_from=_prune_from(args),
            schedules=schedules,
        )
    plan = StagePlan.create(
        model.cfg, buckets, args.partition, prune_from=_prune_from(args), schedules=schedules
    )
    # fixed-K graphs only: eval loads one session per (stage, K), and exports faster
    package = ensure_package(model, plan, args.package, symbolic=False, progress=not args.quiet)
    return Pipeline.load(package, backend=args.backend, device=args.device)


def _write_table(args: argparse.Namespace, title: str, table: str, records: list) -> None:
    from pathlib import Path

    print(table)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(records, indent=1))
    if args.markdown:
        Path(args.markdown).parent.mkdir(parents=True, exist_ok=True)
        Path(args.markdown).write_text(f"# {title}\n\n{table}\n")


@command
def cmd_eval(args: argparse.Namespace) -> int:
    model = _load_model(args)
    evaluate = {"detection": _eval_detector, "classification": _eval_classifier}
    return evaluate[model.cfg.family](args, model)


def _eval_detector(args: argparse.Namespace, model) -> int:
    from rgtp.eval.evaluate import EvalSetting, evaluate, radius_table, results_table

    ks = args.ks or []
    # the pruning flags as the model's own, so that its stages return the rows they roll out
    model.cfg = _export_pruning(args, model.cfg)
    pipe = _pipeline(
        args,
        model,
        [k for k in ks if isinstance(k, int)],
        [k for k in ks if not isinstance(k, int)],
    )
    pruning = _pruning(args, pipe.plan.config.pruning, pipe.plan.encoder.img_size)
    if args.ablate_r:
        if not ks:
            raise ValueError("--ablate-r needs one --keep value to ablate at")
        settings = [
            EvalSetting(ks[0], r, s, args.reset_every, pruning)
            for s in args.sampling
            for r in args.ablate_r
        ]
    else:
        sampling = args.sampling[0]
        settings = (
            []
            if args.no_dense
            else [EvalSetting(None, args.radius, sampling, args.reset_every, pruning)]
        )
        settings += [EvalSetting(k, args.radius, sampling, args.reset_every, pruning) for k in ks]
    records = evaluate(pipe, settings, args.sequences, args.frames, progress=not args.quiet)
    title = f"{args.model} SynthVID {pipe.plan.encoder.img_size}"
    table = radius_table(records) if args.ablate_r else results_table(records, title)
    _write_table(args, title, table, [r.to_dict() for r in records])
    return 0


def _eval_classifier(args: argparse.Namespace, model) -> int:
    """Top-1 on SynthMotion's held-out clips: dense, pruned at each --keep, and pruned with
    the temporal transformer fine-tuned at that K where its file exists (`rgtp
    finetune-temporal`; --finetuned-dir says where to look), with GFLOPs per clip."""
    import copy
    from pathlib import Path

    from rgtp.eval.classify import data_config, heldout_clips
    from rgtp.eval.classify_pruned import classifier_table, format_table, rows_as_dicts
    from rgtp.families import shipped_weights
    from rgtp.train.finetune_temporal import finetuned_path, load_temporal

    if any(not isinstance(k, int) for k in args.ks or []):
        raise ValueError("keep schedules (one K per stage) are for detectors; give single K")
    if args.backend != "torch":
        print("note: the classifier table runs the PyTorch reference engines", file=sys.stderr)
    weights = Path(args.weights) if args.weights else shipped_weights(args.model)
    finetuned = {}
    for k in args.ks or []:
        path = finetuned_path(weights, k) if weights else None
        if path is not None and args.finetuned_dir:
            path = Path(args.finetuned_dir) / path.name
        if path is not None and path.exists():
            finetuned[k] = load_temporal(copy.deepcopy(model), path).eval()
            print(f"fine-tuned temporal transformer at K={k}: {path}", file=sys.stderr)
    clips = heldout_clips(args.clips, data_config(model.cfg))
    rows = classifier_table(
        model,
        clips,
        args.ks or [],
        finetuned,
        max(args.reset_every, 1),
        args.reset,
        progress=not args.quiet,
        radius=args.radius,
        pruning=_pruning(args, model.cfg.pruning, model.cfg.spatial.img_size),
        dense=not args.no_dense,
    )
    title = f"{args.model} SynthMotion {model.cfg.spatial.img_size}"
    _write_table(args, title, format_table(rows, len(clips)), rows_as_dicts(rows))
    return 0


@command
def cmd_demo(args: argparse.Namespace) -> int:
    if args.model == "vivit-small":
        from rgtp.demo_classifier import run_classifier_demo

        fraction = args.k_fraction or 0.4
        run_classifier_demo(args.out, fraction, args.clips, progress=not args.quiet)
        return 0
    from rgtp.demo import run_demo

    fraction = args.k_fraction or 0.3
    run_demo(args.out, fraction, args.sequences, args.frames, progress=not args.quiet)
    return 0


@command
def cmd_train(args: argparse.Namespace) -> int:
    from rgtp.families import get_config

    family = get_config(args.model).family
    return {"detection": _train_detector, "classification": _train_classifier}[family](args)


def _given(args: argparse.Namespace, *names: str) -> dict:
    """The training flags given on the command line (the rest keep the config's defaults)."""
    out = {n: getattr(args, n) for n in names if getattr(args, n) is not None}
    return out | ({"bf16": False} if args.fp32 else {})


def _train_detector(args: argparse.Namespace) -> int:
    from pathlib import Path

    from rgtp.train.trainer import TrainConfig, train

    tc = TrainConfig(
        model=args.model, **_given(args, "steps", "batch_size", "lr", "seed", "workers")
    )
    out = args.out or f"rgtp/weights/{args.model}.safetensors"
    summary = train(tc, Path(out), progress=not args.quiet)
    last = summary["log"][-1]
    print(
        f"trained {tc.steps} steps in {summary['minutes']:.1f} min; final losses "
        + ", ".join(f"{k} {last[k]:.3f}" for k in ("cls", "box", "ctr"))
        + f"; wrote {out}"
    )
    return 0


def _train_classifier(args: argparse.Namespace) -> int:
    from pathlib import Path

    from rgtp.train.vivit_trainer import ViViTTrainConfig, train

    tc = ViViTTrainConfig(
        model=args.model, **_given(args, "steps", "batch_size", "lr", "seed", "workers")
    )
    out = args.out or f"rgtp/weights/{args.model}.safetensors"
    summary = train(tc, Path(out), heldout=args.heldout, progress=not args.quiet)
    held = summary.get("heldout", {})
    print(
        f"trained {tc.steps} steps in {summary['minutes']:.1f} min; held-out top-1 "
        f"{held.get('dense', float('nan')):.3f} over {held.get('clips', 0)} clips; wrote {out}"
    )
    return 0


@command
def cmd_finetune_temporal(args: argparse.Namespace) -> int:
    from pathlib import Path

    from rgtp.families import shipped_weights
    from rgtp.train.finetune_temporal import FinetuneConfig, finetune_temporal, finetuned_path

    model = _load_model(args)
    if model.cfg.family != "classification":
        raise ValueError(f"{args.model} has no temporal transformer; choose a ViViT model")
    weights = Path(args.weights) if args.weights else shipped_weights(args.model)
    out = Path(args.out) if args.out else finetuned_path(weights, args.k)
    fc = FinetuneConfig(
        k=args.k,
        reset_every=args.reset_every,
        reset=args.reset,
        clips=args.clips,
        epochs=args.epochs,
        lr=args.lr,
        seed=args.seed,
    )
    log = finetune_temporal(model, fc, out, progress=not args.quiet)
    print(
        f"fine-tuned the temporal transformer at K={args.k} on {fc.clips} clips "
        f"({fc.epochs} epochs, {log['minutes']:.1f} min); wrote {out}"
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    from rgtp.core.rollout import FUSIONS
    from rgtp.engines import BACKENDS, LAYOUTS
    from rgtp.engines.trt_build import PRECISIONS
    from rgtp.export.onnx_graphs import DEFAULT_OPSET
    from rgtp.families import model_names
    from rgtp.families.detection.flops import CONVENTIONS

    parser = argparse.ArgumentParser(
        prog="rgtp",
        description="Rollout-guided token pruning for video ViTs: export, engines, runtime.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("flops", help="analytic GFLOPs (MACs) per frame, dense and pruned")
    p.add_argument("--model", default="vitdet-b", choices=model_names())
    p.add_argument("--size", type=_int_at_least(1), default=None, help="input side in pixels")
    p.add_argument(
        "--keep",
        dest="k",
        type=_keep,
        default=None,
        help="tokens kept per pruned frame (K), or one K per stage (96/77/64/48)",
    )
    p.add_argument(
        "--reset-every",
        type=_int_at_least(0),
        default=8,
        help="R: a dense frame every R frames (0: only the first)",
    )
    p.add_argument("--radius", type=_int_at_least(0), default=1, help="tracking window radius r")
    _add_reset_flag(p)
    p.add_argument("--paper", action="store_true", help="the authors' pruning point (block0-mlp)")
    _add_prune_from_flag(p)
    p.add_argument(
        "--convention",
        default="paper",
        choices=CONVENTIONS,
        help="paper: windowed blocks computed whole (the authors' GFLOPs); executed: what rgtp "
        "runs (each window's rows for the kept queries only)",
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")

    p = sub.add_parser("export", help="export embed, stage x K-bucket and head graphs to ONNX")
    p.add_argument("--model", default="vitdet-small", choices=model_names())
    _add_weights_flags(p)
    p.add_argument("--size", type=int, default=None, help="input side in pixels")
    p.add_argument("--buckets", type=_ints, default=[], help="K buckets, e.g. 64,128,256")
    p.add_argument(
        "--keep",
        dest="ks",
        type=_keeps,
        default=[],
        help="keep schedules to serve (one K per stage, e.g. 96/77/64/48): each stage gets "
        "its own K as a bucket",
    )
    _add_partition_flag(p)
    p.add_argument("--fusion", default="rms", choices=FUSIONS, help="head fusion for rollout")
    p.add_argument("--opset", type=_opset, default=DEFAULT_OPSET, help="ONNX opset, 18 or later")
    p.add_argument("--no-symbolic", action="store_true", help="skip the symbolic-K graphs")
    p.add_argument(
        "--workers",
        type=_int_at_least(1),
        default=None,
        help="processes tracing graphs at once (default: one per core)",
    )
    p.add_argument(
        "--max-batch",
        type=_int_at_least(1),
        default=8,
        help="the most streams one stage call runs together (Pipeline.step_many); TensorRT "
        "profiles span 1..this",
    )
    head = p.add_mutually_exclusive_group()
    head.add_argument(
        "--head",
        choices=("rgtp", "none"),
        default="rgtp",
        help="none: backbone only; your application runs its own head (step(frame, head=...))",
    )
    head.add_argument(
        "--head-onnx",
        default=None,
        metavar="HEAD.onnx",
        help="your ONNX head: input the backbone map (N, C) or (1, C, H, W), outputs boxes "
        "(M, 4) in pixels and scores (M, classes)",
    )
    _add_prune_from_flag(p)
    _add_pruning_flags(p)
    p.add_argument(
        "--force",
        action="store_true",
        help="replace --out if it is an earlier rgtp package (nothing else is ever deleted)",
    )
    p.add_argument(
        "--private",
        action="store_true",
        help="package readable by its owner only (0700/0600; default 0755/0644)",
    )
    p.add_argument("--out", required=True)
    p.add_argument("--quiet", action="store_true")

    p = sub.add_parser("check", help="verify a package's files and compare ORT with PyTorch")
    p.add_argument("package")
    p.add_argument("--atol", type=_tolerance("atol"), default=1e-4)
    p.add_argument("--rtol", type=_tolerance("rtol"), default=1e-3)
    p.add_argument("--quiet", action="store_true")

    p = sub.add_parser("run", help="run a package over a video, writing detections and timings")
    p.add_argument("package")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--video", help="a video file (anything FFmpeg reads)")
    src.add_argument(
        "--synthetic", type=_int_at_least(1), metavar="N", help="N frames of a SynthVID video"
    )
    p.add_argument("--max-frames", type=_int_at_least(1), default=None)
    p.add_argument(
        "--skip-bad-frames",
        action="store_true",
        help="skip undecodable video frames (counted in the summary) instead of stopping",
    )
    p.add_argument("--backend", default="ort", choices=BACKENDS)
    p.add_argument("--device", default="cpu")
    _add_stream_flags(p, latency_budget=True)
    p.add_argument("--out", required=True)
    p.add_argument("--quiet", action="store_true")
    _add_pruning_flags(p)

    p = sub.add_parser("eval", help="mAP50, GFLOPs and ms/frame on SynthVID's held-out split")
    p.add_argument("--model", default="vitdet-small", choices=model_names())
    _add_weights_flags(p)
    p.add_argument("--size", type=int, default=None)
    p.add_argument("--backend", default="ort", choices=BACKENDS)
    p.add_argument("--device", default="cpu")
    p.add_argument(
        "--package",
        default=None,
        help="reuse the package in this directory if it is this export, else export into it",
    )
    _add_partition_flag(p)
    p.add_argument(
        "--keep",
        dest="ks",
        type=_keeps,
        default=None,
        help="K values and keep schedules (one K per stage), e.g. 64,77,96/85/69/58",
    )
    p.add_argument("--radius", type=_int_at_least(0), default=1)
    p.add_argument("--reset-every", type=_int_at_least(0), default=8)
    p.add_argument(
        "--sampling", type=_ints_at_least(1), default=[1], help="frame sampling, e.g. 1,4"
    )
    p.add_argument(
        "--ablate-r", type=_ints_at_least(0), default=None, help="tracking radii, e.g. 0,1,2,3"
    )
    p.add_argument("--no-dense", action="store_true", help="skip the dense reference run")
    _add_prune_from_flag(p)
    _add_reset_flag(p)
    p.add_argument("--sequences", type=_int_at_least(1), default=30, help="detectors: videos")
    p.add_argument("--frames", type=_int_at_least(1), default=64, help="detectors: per video")
    p.add_argument(
        "--clips", type=_int_at_least(1), default=600, help="classifiers: held-out clips"
    )
    p.add_argument(
        "--finetuned-dir",
        default=None,
        help="classifiers: where NAME.temporal-kK.safetensors files are (default: beside "
        "the weights)",
    )
    p.add_argument("--json", default=None)
    p.add_argument("--markdown", default=None)
    p.add_argument("--quiet", action="store_true")
    _add_pruning_flags(p)

    p = sub.add_parser("demo", help="end-to-end demo on a shipped model and the CPU")
    p.add_argument("--model", default="vitdet-small", choices=("vitdet-small", "vivit-small"))
    p.add_argument("--out", default="out/demo")
    p.add_argument(
        "--keep-fraction",
        dest="k_fraction",
        type=float,
        default=None,
        help="K / N (default per model)",
    )
    p.add_argument("--sequences", type=int, default=8, help="detector: held-out videos")
    p.add_argument("--frames", type=int, default=64, help="detector: frames per video")
    p.add_argument("--clips", type=int, default=60, help="classifier: held-out clips")
    p.add_argument("--quiet", action="store_true")

    p = sub.add_parser("train", help="train a model from scratch (seeded, reproducible)")
    p.add_argument("--model", default="vitdet-small", choices=model_names())
    p.add_argument("--steps", type=_int_at_least(1), default=None, help="default: the config's")
    p.add_argument("--batch-size", type=_int_at_least(1), default=None)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--workers", type=_int_at_least(1), default=None, help="data processes")
    p.add_argument("--fp32", action="store_true", help="no bf16 autocast")
    p.add_argument(
        "--heldout", type=int, default=600, help="classifiers: held-out clips scored at the end"
    )
    p.add_argument("--out", default=None, help="default rgtp/weights/MODEL.safetensors")
    p.add_argument("--quiet", action="store_true")

    p = sub.add_parser(
        "finetune-temporal",
        help="fine-tune a ViViT's temporal transformer on its pruned encoder's outputs",
    )
    p.add_argument("--model", default="vivit-small", choices=model_names())
    _add_weights_flags(p)
    p.add_argument("--size", type=int, default=None)
    p.add_argument(
        "--keep", dest="k", type=_int_at_least(1), required=True, help="K, tokens kept per step"
    )
    p.add_argument("--reset-every", type=_int_at_least(1), default=8)
    _add_reset_flag(p)
    p.add_argument("--clips", type=_int_at_least(1), default=480, help="training clips")
    p.add_argument("--epochs", type=_int_at_least(1), default=10)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="default: beside the weights, NAME.temporal-kK")
    p.add_argument("--quiet", action="store_true")

    p = sub.add_parser("build", help="build TensorRT plans for an exported package")
    p.add_argument("package")
    p.add_argument("--backend", default="trt", choices=["trt"])
    p.add_argument(
        "--precision",
        default="fp32",
        choices=PRECISIONS,
        help="fp32: float32 throughout (TF32 off); tf32: float32 with TF32 matmuls and "
        "convolutions; fp16: float16 graphs, normalisations, Softmax and rollout rows in float32",
    )
    p.add_argument(
        "--layout",
        default="per-stage",
        choices=LAYOUTS,
        help="per-stage: one plan per stage with a profile per K (weights once); per-k: one "
        "plan per (stage, K)",
    )
    p.add_argument(
        "--opt-batch",
        type=_int_at_least(1),
        default=1,
        help="the largest batch (streams per stage call) the stage plans take, and the one "
        "they are tuned for: 1, what rgtp's TensorRT runtime runs (more only for plans "
        "another runtime batches; up to the package's --max-batch)",
    )
    p.add_argument(
        "--timing-cache",
        default=None,
        help="timing cache file, read before and written after the build (TensorRT; "
        "TensorRT-RTX has none)",
    )
    p.add_argument(
        "--mem-pool-size",
        type=_int_at_least(1),
        default=None,
        metavar="MIB",
        help="workspace pool limit in MiB (trtexec's --memPoolSize=workspace:MIB)",
    )
    p.add_argument(
        "--compute-capability",
        action="append",
        default=None,
        help="TensorRT-RTX target, e.g. SM89 (repeatable); default: this GPU, else SM89",
    )
    p.add_argument(
        "--no-verify",
        action="store_true",
        help="skip the sha256 check of the package's files (verified elsewhere); warns",
    )
    p.add_argument("--quiet", action="store_true")

    p = sub.add_parser("triton", help="write a Triton model repository serving a package")
    p.add_argument("package")
    p.add_argument("--out", required=True, help="the repository directory to write")
    p.add_argument("--backend", default="ort", choices=BACKENDS)
    p.add_argument(
        "--max-streams",
        type=_int_at_least(1),
        default=8,
        help="sequences served at once (the most requests one execute gets)",
    )
    p.add_argument(
        "--idle-timeout",
        type=float,
        default=30.0,
        metavar="S",
        help="seconds without a request after which a sequence's stream is freed",
    )
    p.add_argument(
        "--max-pixels",
        type=_int_at_least(1),
        default=None,
        help="the largest frame (height x width) a request may carry; larger ones are "
        "refused before they are read (default: 4K UHD, 3840 x 2160)",
    )
    p.add_argument(
        "--float-scale",
        type=float,
        default=None,
        help="read FRAME_FLOAT values as pixel = value * SCALE (255 for [0, 1], 1 for "
        "[0, 255]); default: float frames are refused",
    )
    _add_stream_flags(p, latency_budget=False)
    p.add_argument("--force", action="store_true", help="replace a repository rgtp wrote there")

    p = sub.add_parser(
        "serve", help="run Triton on a repository rgtp triton wrote, until SIGTERM or Ctrl-C"
    )
    p.add_argument("repository", help="the model repository (rgtp triton --out)")
    p.add_argument(
        "--address",
        default="127.0.0.1",
        help="the address HTTP, gRPC and metrics listen on (0.0.0.0: every interface)",
    )
    p.add_argument("--http-port", type=_port, default=8000)
    p.add_argument("--grpc-port", type=_port, default=8001)
    p.add_argument("--metrics-port", type=_port, default=8002)
    p.add_argument(
        "--env",
        metavar="DIR",
        default=None,
        help="the Python environment tritonserver and its Python backend stub come from "
        "(rgtp, numpy<2, nvidia-pytriton: make serve-env builds .venv-serve); default "
        "$RGTP_SERVE_ENV, else this Python's if it can host the stub, else the checkout's "
        ".venv-serve",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command.replace("-", "_")](args)
    except (ValueError, FileNotFoundError, FileExistsError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
