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


def _share(text: str) -> float:
    """argparse type: a number in (0, 1] (--mass)."""
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1], got {text!r}")
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
    from rgtp.models import get_config
    from rgtp.models.flops import frame_macs, schedule_macs

    cfg = get_config(args.model, args.size)
    bb = cfg.backbone
    keep = args.keep if args.keep is not None else bb.num_tokens
    if not 0 < keep <= bb.num_tokens:
        print(
            f"error: --keep must be in 1..{bb.num_tokens} (N at {bb.img_size} px)", file=sys.stderr
        )
        return 2
    prune_from = _prune_from(args)
    rows = {
        "dense": frame_macs(bb, None, args.radius, cfg),
        "pruned": frame_macs(bb, keep, args.radius, cfg, prune_from),
        "average": schedule_macs(bb, keep, args.reset_every, args.radius, cfg, prune_from),
    }
    report = {
        "model": args.model,
        "size": bb.img_size,
        "num_tokens": bb.num_tokens,
        "keep": keep,
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
        f"keep K = {keep}, reset every {args.reset_every} frames, pruning from {prune_from}"
    )
    print("GFLOPs in the paper's convention: multiply-accumulates of the backbone, x1e9")
    parts = list(rows["dense"].as_dict())
    print(f"{'part':<16}" + "".join(f"{name:>12}" for name in rows))
    for p in parts:
        print(f"{p:<16}" + "".join(f"{m.as_dict()[p] / 1e9:>12.2f}" for m in rows.values()))
    print(
        f"average backbone GFLOPs per frame: {rows['average'].backbone / 1e9:.1f} "
        f"({100 * report['average_over_dense']:.1f} % of dense)"
    )
    return 0


def _load_detector(args: argparse.Namespace):
    """The named model at --size with --weights, the shipped weights, or --random-init.

    Every backbone tensor must load; neck and head tensors the checkpoint lacks keep their
    random values only with --allow-missing-head, and the log says so.
    """
    from rgtp.models import Detector, get_config
    from rgtp.models.checkpoints import load_weights
    from rgtp.models.registry import shipped_weights

    detector = Detector(get_config(args.model, args.size))
    path = args.weights or shipped_weights(args.model)
    if path is None and not args.random_init:
        raise ValueError(
            f"no weights for {args.model}: pass --weights PATH, or --random-init for timing work"
        )
    # with your own head (export --head none / --head-onnx) rgtp's neck and head are unused
    own_head = getattr(args, "head", "rgtp") != "rgtp" or getattr(args, "head_onnx", None)
    if path is not None:
        fmt = args.weights_format if args.weights else "rgtp"
        strict = not (args.allow_missing_head or own_head)
        report = load_weights(detector, path, fmt, strict=strict)
        print(f"weights {path}: {report.summary()}", file=sys.stderr)
        if report.missing:
            why = "your own head replaces them" if own_head else "--allow-missing-head"
            print(
                f"warning: {why}: {len(report.missing)} neck and head tensors "
                "are not in the checkpoint and keep random values",
                file=sys.stderr,
            )
    return detector.eval()


def _add_weights_flags(p: argparse.ArgumentParser) -> None:
    from rgtp.models.checkpoints import FORMATS

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
    from rgtp.models.plan import StagePlan

    head, user_graph, user_spec = args.head, None, None
    if args.head_onnx:
        from rgtp.export.user_head import read_user_head

        user_graph, user_spec = read_user_head(args.head_onnx)
        head = "onnx"
    detector = _load_detector(args)
    detector.cfg = _export_pruning(args, detector.cfg)
    plan = StagePlan.create(
        detector.cfg,
        args.buckets,
        args.stages,
        args.fusion,
        _prune_from(args),
        head,
        user_spec,
    )
    manifest = export_package(
        detector,
        plan,
        args.out,
        opset=args.opset,
        symbolic=not args.no_symbolic,
        force=args.force,
        progress=not args.quiet,
        private=args.private,
        user_head=user_graph,
    )
    size = sum(f["bytes"] for f in manifest.files.values())
    print(
        f"exported {len(manifest.graphs)} graphs ({len(plan.stages)} stages x "
        f"{len(plan.buckets)} buckets {list(plan.buckets)}) to {args.out}: {size / 2**20:.1f} MiB"
    )
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

    return dataclasses.replace(cfg, pruning=_pruning(args, cfg.pruning, cfg.backbone.img_size))


def _add_prune_from_flag(p: argparse.ArgumentParser) -> None:
    from rgtp.models.plan import PRUNE_FROM

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
        "track_union": args.track_union,
        "target_threshold": args.target_threshold,
    }
    return dataclasses.replace(base, **{k: v for k, v in changes.items() if v is not None})


def _add_pruning_flags(p: argparse.ArgumentParser) -> None:
    from rgtp.core.tracking import SIMILARITIES

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
        "--track-union",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="tracked importance = max(own, matched source's); --no-track-union: the paper's",
    )
    g.add_argument("--target-threshold", type=float, default=None)


def _policy(args: argparse.Namespace):
    from rgtp.core.selection import FixedKeep, MassKeep

    if args.keep is not None:
        return FixedKeep(args.keep)
    if args.mass is not None:
        return MassKeep(args.mass)
    return None


@command
def cmd_run(args: argparse.Namespace) -> int:
    import warnings

    from rgtp.runtime import Pipeline
    from rgtp.runtime.run import run_and_write, summarize

    pipe = Pipeline.load(args.package, backend=args.backend, device=args.device)
    stream = pipe.new_stream(
        policy=_policy(args),
        reset_every=args.reset_every,
        radius=args.radius,
        pruning=_pruning(args, pipe.plan.config.pruning, pipe.plan.config.backbone.img_size),
    )
    skipped: list[int] = []
    if args.video:
        from rgtp.runtime.video import VideoReader

        reader = VideoReader(args.video, args.max_frames, args.skip_bad_frames)
        frames, total, skipped = reader, args.max_frames, reader.skipped
    else:
        from rgtp.data.synthvid import SynthVIDConfig, generate_sequence, heldout_seeds

        size = pipe.plan.config.backbone.img_size
        seq = generate_sequence(
            heldout_seeds(1)[0], SynthVIDConfig(size=size, num_frames=args.synthetic)
        )
        frames, total = iter(seq.frames), args.synthetic
    with warnings.catch_warnings(record=True) as caught:
        try:
            results, paths = run_and_write(
                stream,
                frames,
                args.out,
                pipe.plan.config.head.class_names,
                total,
                not args.quiet,
                skipped,
            )
        finally:
            for w in caught:
                print(f"warning: {w.message}", file=sys.stderr)
    if not results:
        print(f"error: no frame could be run ({len(skipped)} skipped)", file=sys.stderr)
        return 1
    s = summarize(results, skipped=skipped)
    ms = s["ms_per_frame"]
    skips = f", skipped {len(skipped)} undecodable frames" if args.skip_bad_frames else ""
    print(
        f"{s['frames']} frames on {pipe.backend} ({pipe.device}){skips}: mean K "
        f"{s['mean_k']:.0f} of {pipe.plan.num_tokens}, {ms['total']:.1f} ms/frame "
        f"({ms['outside_engine']:.1f} ms outside engine calls); wrote "
        f"{', '.join(str(p) for p in paths.values())}"
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
        fp16=args.fp16,
        per_k_plans=args.per_k_plans,
        timing_cache=Path(args.timing_cache) if args.timing_cache else None,
        workspace_mb=args.workspace,
        compute_capabilities=tuple(args.compute_capability) if args.compute_capability else None,
    )
    info = build_trt(args.package, options, progress=not args.quiet, verify=not args.no_verify)
    print(
        f"built {len(info['plans'])} plans with {info['flavor']} {info['version']} for "
        f"{info['device']} (compute capability {info['compute_capability']}, "
        f"{info['precision']}, {info['layout']}); trtexec commands in "
        f"{Path(args.package) / info['trtexec']}"
    )
    return 0


def _pipeline(args: argparse.Namespace, buckets: list[int]):
    """A pipeline of the detector on --backend: torch in memory, else an exported package
    (--package if it exists, else exported there or into a temporary directory)."""
    import tempfile
    from pathlib import Path

    from rgtp.export.package import export_package
    from rgtp.models.plan import StagePlan
    from rgtp.runtime import Pipeline

    detector = _load_detector(args)
    if args.backend == "torch":
        return Pipeline.from_detector(detector, buckets, prune_from=_prune_from(args))
    package = Path(args.package) if args.package else Path(tempfile.mkdtemp(prefix="rgtp-eval-"))
    if not (package / "manifest.json").is_file():
        plan = StagePlan.create(detector.cfg, buckets, prune_from=_prune_from(args))
        export_package(detector, plan, package, symbolic=False, force=True, progress=True)
    pipe = Pipeline.load(package, backend=args.backend, device=args.device)
    missing = sorted(set(buckets) - set(pipe.plan.buckets))
    if missing:
        raise ValueError(f"{package} has no K buckets {missing}; export them or drop --package")
    return pipe


@command
def cmd_eval(args: argparse.Namespace) -> int:
    from pathlib import Path

    from rgtp.eval.evaluate import EvalSetting, evaluate, radius_table, results_table

    keeps = args.keep or []
    pipe = _pipeline(args, keeps)
    pruning = _pruning(args, pipe.plan.config.pruning, pipe.plan.config.backbone.img_size)
    if args.ablate_r:
        if not keeps:
            raise ValueError("--ablate-r needs one --keep value to ablate at")
        settings = [
            EvalSetting(keeps[0], r, s, args.reset_every, pruning)
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
        settings += [
            EvalSetting(k, args.radius, sampling, args.reset_every, pruning) for k in keeps
        ]
    records = evaluate(pipe, settings, args.sequences, args.frames, progress=not args.quiet)
    title = f"{args.model} SynthVID {pipe.plan.config.backbone.img_size}"
    table = radius_table(records) if args.ablate_r else results_table(records, title)
    print(table)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps([r.to_dict() for r in records], indent=1))
    if args.markdown:
        Path(args.markdown).parent.mkdir(parents=True, exist_ok=True)
        Path(args.markdown).write_text(f"# {title}\n\n{table}\n")
    return 0


@command
def cmd_demo(args: argparse.Namespace) -> int:
    from rgtp.demo import run_demo

    run_demo(args.out, args.keep_fraction, args.sequences, args.frames, progress=not args.quiet)
    return 0


@command
def cmd_train(args: argparse.Namespace) -> int:
    from pathlib import Path

    from rgtp.train.trainer import TrainConfig, train

    tc = TrainConfig(
        model=args.model,
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        bf16=not args.fp32,
        workers=args.workers,
    )
    summary = train(tc, Path(args.out), progress=not args.quiet)
    last = summary["log"][-1]
    print(
        f"trained {tc.steps} steps in {summary['minutes']:.1f} min; final losses "
        + ", ".join(f"{k} {last[k]:.3f}" for k in ("cls", "box", "ctr"))
        + f"; wrote {args.out}"
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    from rgtp.core.rollout import FUSIONS
    from rgtp.engines import BACKENDS
    from rgtp.export.onnx_graphs import DEFAULT_OPSET
    from rgtp.models.plan import PARTITIONS
    from rgtp.models.registry import model_names
    from rgtp.train.config import TrainConfig

    parser = argparse.ArgumentParser(
        prog="rgtp",
        description="Rollout-guided token pruning for video ViTs: export, engines, runtime.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("flops", help="analytic GFLOPs (MACs) per frame, dense and pruned")
    p.add_argument("--model", default="vitdet-b", choices=model_names())
    p.add_argument("--size", type=_int_at_least(1), default=None, help="input side in pixels")
    p.add_argument(
        "--keep", type=_int_at_least(1), default=None, help="tokens kept per pruned frame (K)"
    )
    p.add_argument(
        "--reset-every",
        type=_int_at_least(0),
        default=8,
        help="R: a dense frame every R frames (0: only the first)",
    )
    p.add_argument("--radius", type=_int_at_least(0), default=1, help="tracking window radius r")
    p.add_argument("--paper", action="store_true", help="the authors' pruning point (block0-mlp)")
    _add_prune_from_flag(p)
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")

    p = sub.add_parser("export", help="export embed, stage x K-bucket and head graphs to ONNX")
    p.add_argument("--model", default="vitdet-small", choices=model_names())
    _add_weights_flags(p)
    p.add_argument("--size", type=int, default=None, help="input side in pixels")
    p.add_argument("--buckets", type=_ints, default=[], help="K buckets, e.g. 64,128,256")
    p.add_argument("--stages", default="per-global", choices=PARTITIONS)
    p.add_argument("--fusion", default="rms", choices=FUSIONS, help="head fusion for rollout")
    p.add_argument("--opset", type=_opset, default=DEFAULT_OPSET, help="ONNX opset, 18 or later")
    p.add_argument("--no-symbolic", action="store_true", help="skip the symbolic-K graphs")
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
    keep = p.add_mutually_exclusive_group()
    keep.add_argument("--keep", type=_int_at_least(1), help="tokens kept per pruned frame (K)")
    keep.add_argument("--mass", type=_share, help="keep the smallest bucket with this share")
    p.add_argument("--reset-every", type=_int_at_least(0), default=8)
    p.add_argument("--radius", type=_int_at_least(0), default=1)
    p.add_argument("--out", required=True)
    p.add_argument("--quiet", action="store_true")
    _add_pruning_flags(p)

    p = sub.add_parser("eval", help="mAP50, GFLOPs and ms/frame on SynthVID's held-out split")
    p.add_argument("--model", default="vitdet-small", choices=model_names())
    _add_weights_flags(p)
    p.add_argument("--size", type=int, default=None)
    p.add_argument("--backend", default="ort", choices=BACKENDS)
    p.add_argument("--device", default="cpu")
    p.add_argument("--package", default=None, help="reuse (or export into) this package dir")
    p.add_argument("--keep", type=_ints_at_least(1), default=None, help="K values, e.g. 32,64,77")
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
    p.add_argument("--sequences", type=_int_at_least(1), default=30)
    p.add_argument("--frames", type=_int_at_least(1), default=64)
    p.add_argument("--json", default=None)
    p.add_argument("--markdown", default=None)
    p.add_argument("--quiet", action="store_true")
    _add_pruning_flags(p)

    p = sub.add_parser("demo", help="end-to-end demo on the shipped model and the CPU")
    p.add_argument("--out", default="out/demo")
    p.add_argument("--keep-fraction", type=float, default=0.3)
    p.add_argument("--sequences", type=int, default=8)
    p.add_argument("--frames", type=int, default=64)
    p.add_argument("--quiet", action="store_true")

    p = sub.add_parser("train", help="train a detector on SynthVID (seeded, reproducible)")
    p.add_argument("--model", default="vitdet-small", choices=model_names())
    p.add_argument("--steps", type=int, default=TrainConfig.steps)
    p.add_argument("--batch-size", type=int, default=TrainConfig.batch_size)
    p.add_argument("--lr", type=float, default=TrainConfig.lr)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=1, help="data-generation processes")
    p.add_argument("--fp32", action="store_true", help="no bf16 autocast")
    p.add_argument("--out", default="rgtp/weights/vitdet-small.safetensors")
    p.add_argument("--quiet", action="store_true")

    p = sub.add_parser("build", help="build TensorRT plans for an exported package")
    p.add_argument("package")
    p.add_argument("--backend", default="trt", choices=["trt"])
    p.add_argument("--fp16", action="store_true")
    p.add_argument("--per-k-plans", action="store_true", help="one plan per (stage, K)")
    p.add_argument("--timing-cache", default=None, help="timing cache file (read and updated)")
    p.add_argument("--workspace", type=int, default=None, help="workspace limit in MiB")
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
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command.replace("-", "_")](args)
    except (ValueError, FileNotFoundError, FileExistsError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
