"""`rgtp export`, `check` and `build`: a package of ONNX graphs, its verification, its
TensorRT plans."""

from __future__ import annotations

import argparse
import functools
from pathlib import Path

from rgtp.cli import options, output


def _opset(text: str) -> int:
    from rgtp.export.onnx_graphs import ExportError, check_opset

    try:
        return check_opset(int(text))
    except ExportError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None


def _tolerance(name: str):
    def parse(text: str) -> float:
        from rgtp.export.check import CheckError, tolerance

        try:
            return tolerance(name, float(text))
        except CheckError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None

    return parse


def add_export(sub) -> None:
    from rgtp.core.rollout import FUSIONS
    from rgtp.export.onnx_graphs import DEFAULT_OPSET
    from rgtp.families import model_names

    p = sub.add_parser("export", help="export embed, stage x K-bucket and head graphs to ONNX")
    p.add_argument("--model", default="vitdet-small", choices=model_names())
    options.add_weights(p)
    p.add_argument("--size", type=int, default=None, help="input side in pixels")
    p.add_argument("--buckets", type=options.ints, default=[], help="K buckets, e.g. 64,128,256")
    p.add_argument(
        "--keep",
        dest="ks",
        type=options.keeps,
        default=[],
        help="keep schedules to serve (one K per stage, e.g. 96/77/64/48): each stage gets "
        "its own K as a bucket",
    )
    options.add_partition(p)
    p.add_argument("--fusion", default="rms", choices=FUSIONS, help="head fusion for rollout")
    p.add_argument("--opset", type=_opset, default=DEFAULT_OPSET, help="ONNX opset, 18 or later")
    p.add_argument("--no-symbolic", action="store_true", help="skip the symbolic-K graphs")
    p.add_argument(
        "--precision",
        default="fp32",
        choices=("fp32", "int8"),
        help="int8: rgtp's graphs quantized by ONNX Runtime (dynamic: the weight matmuls; "
        "static: also the embed and head convs; inputs, outputs and the method's own "
        "arithmetic stay float32, a user's head graph is never quantized); bf16 and fp16 are "
        "chosen when loading (OpenVINO, torch) or building (TensorRT)",
    )
    p.add_argument(
        "--per-channel",
        action="store_true",
        help="int8: one weight scale per output channel instead of one per matrix",
    )
    p.add_argument(
        "--int8-method",
        default="dynamic",
        choices=("dynamic", "static"),
        help="int8: dynamic measures activation ranges per call (no data needed); static "
        "fixes them from --calibration video as Q/DQ pairs (what OpenVINO and TensorRT run "
        "in int8)",
    )
    p.add_argument(
        "--calibration",
        default=None,
        metavar="VIDEO",
        help="static int8: video the model's own use looks like (not your test video)",
    )
    p.add_argument(
        "--calibration-frames",
        type=options.int_at_least(2),
        default=16,
        help="static int8: frames of --calibration to run (default 16)",
    )
    p.add_argument(
        "--workers",
        type=options.int_at_least(1),
        default=None,
        help="processes tracing graphs at once (default: one per core)",
    )
    p.add_argument(
        "--max-batch",
        type=options.int_at_least(1),
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
    options.add_prune_from(p)
    options.add_pruning(p)
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
    p.add_argument(
        "--yes",
        action="store_true",
        help="export even a plan of more graphs than a package usually holds (asked at a "
        "terminal, refused elsewhere; the warning says how many and how long)",
    )
    p.add_argument(
        "--reference",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also write the model's weights (model.safetensors), which the torch backend and "
        "`rgtp check` need (default); --no-reference: each weight once, for deployment",
    )
    p.add_argument("--out", required=True)
    p.set_defaults(handler=export)


def export(args: argparse.Namespace) -> int:
    from rgtp.export.package import export_package
    from rgtp.export.quantize import int8_settings
    from rgtp.package.plan import StagePlan

    int8 = int8_settings(args.precision, args.per_channel, args.int8_method)
    if (int8 is not None and int8.method == "static") != (args.calibration is not None):
        raise output.UsageError(
            "--calibration VIDEO goes with --precision int8 --int8-method static"
        )
    head, user_graph, user_spec = args.head, None, None
    if args.head_onnx:
        from rgtp.export.user_head import read_user_head

        user_graph, user_spec = read_user_head(args.head_onnx)
        head = "onnx"
    model = options.load_model(args)
    model.cfg = options.with_pruning(args, model.cfg)
    buckets = [*args.buckets, *(k for k in args.ks if isinstance(k, int))]
    if model.cfg.pruning.cache_free:  # the authors' ViViT resets keep the 1-in-2 checkerboard
        from rgtp.core.selection import checkerboard_size

        buckets.append(checkerboard_size(model.cfg.encoder.grid))
    plan = StagePlan.create(
        model.cfg,
        buckets,
        args.partition,
        args.fusion,
        options.prune_from(args),
        head,
        user_spec,
        schedules=[k for k in args.ks if not isinstance(k, int)],
        max_batch=args.max_batch,
    )
    from rgtp.export.budget import confirm_export, export_cost, graph_count

    confirm_export(
        graph_count(plan, symbolic=not args.no_symbolic),
        lambda: export_cost(model, plan, args.opset, args.workers),
        args.yes,
    )
    export = functools.partial(
        export_package,
        model,
        plan,
        opset=args.opset,
        symbolic=not args.no_symbolic,
        workers=args.workers,
        progress=not args.quiet,
        private=args.private,
        user_head=user_graph,
        reference=args.reference,
    )
    if int8 is None or int8.method == "dynamic":
        manifest = export(args.out, force=args.force, int8=int8)
    else:
        manifest = _export_static_int8(args, export, int8)
    size = sum(f["bytes"] for f in manifest.files.values())
    if plan.stage_buckets is None:
        cut = f"{len(plan.stages)} stages x {len(plan.buckets)} buckets {list(plan.buckets)}"
    else:
        cut = (
            f"{len(plan.stages)} stages, K buckets per stage {list(map(list, plan.stage_buckets))}"
        )
    print(
        f"exported {len(manifest.graphs)} {manifest.precision} graphs ({cut}) to {args.out}: "
        f"{size / 2**20:.1f} MiB"
    )
    print(f"digest {manifest.digest}")
    return 0


def _export_static_int8(args: argparse.Namespace, export, int8):
    """Export float32 beside --out, calibrate on --calibration through it, write the static
    int8 package to --out; the float32 one is removed whatever happens."""
    import shutil
    import tempfile

    from rgtp.export.quantized_package import quantize_package
    from rgtp.runtime import Pipeline
    from rgtp.runtime.calibration import record_feeds
    from rgtp.runtime.video import read_frames

    frames = list(read_frames(args.calibration, max_frames=args.calibration_frames))
    if len(frames) < 2:
        raise ValueError(f"{args.calibration}: {len(frames)} frames; calibration needs 2 or more")
    parent = Path(args.out).resolve().parent
    parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=".rgtp-fp32-", dir=parent))
    try:
        export(scratch / "fp32", force=False)
        feeds = record_feeds(Pipeline.load(scratch / "fp32", "ort"), [frames])
        where = f"{Path(args.calibration).name}: {len(frames)} frames"
        return quantize_package(
            scratch / "fp32",
            args.out,
            int8,
            force=args.force,
            progress=not args.quiet,
            calibration=feeds,
            calibration_source=where,
        )
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def add_check(sub) -> None:
    p = sub.add_parser("check", help="verify a package's files and compare ORT with PyTorch")
    p.add_argument("package")
    p.add_argument("--atol", type=_tolerance("atol"), default=1e-4)
    p.add_argument("--rtol", type=_tolerance("rtol"), default=1e-3)
    output.add_json(p, "the check")
    p.set_defaults(handler=check)


def check(args: argparse.Namespace) -> int:
    from rgtp.eval.reports import check_document, check_text
    from rgtp.export.check import check_package

    report = check_package(args.package, atol=args.atol, rtol=args.rtol, progress=not args.quiet)
    document = check_document(args.package, report, args.atol, args.rtol)
    output.report(args, "check", document, check_text(report, args.atol, args.rtol))
    return output.OK if report.passed else output.FAILURE


def add_build(sub) -> None:
    from rgtp.engines import LAYOUTS
    from rgtp.engines.trt_build import PRECISIONS

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
        type=options.int_at_least(1),
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
        type=options.int_at_least(1),
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
    options.add_digest(p)
    output.add_json(p, "the plans built")
    p.set_defaults(handler=build)


def build(args: argparse.Namespace) -> int:
    from rgtp.engines.trt_build import BuildOptions, build_trt
    from rgtp.package.manifest import package_digest

    build_options = BuildOptions(
        precision=args.precision,
        layout=args.layout,
        timing_cache=Path(args.timing_cache) if args.timing_cache else None,
        mem_pool_size=args.mem_pool_size,
        compute_capabilities=tuple(args.compute_capability) if args.compute_capability else None,
        opt_batch=args.opt_batch,
    )
    info = build_trt(
        args.package,
        build_options,
        progress=not args.quiet,
        verify=not args.no_verify,
        digest=args.digest,
    )
    digest = package_digest(args.package)
    text = (
        f"built {len(info['plans'])} plans with {info['flavor']} {info['version']} for "
        f"{info['device']} (compute capability {info['compute_capability']}, "
        f"{info['precision']}, {info['layout']}); trtexec commands in "
        f"{Path(args.package) / info['trtexec']}\n"
        f"digest {digest} (the plans are in the manifest: a new one)"
    )
    output.report(args, "build", {"package": str(args.package), "digest": digest, **info}, text)
    return output.OK
