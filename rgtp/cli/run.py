"""`rgtp run` (a package over a video) and `rgtp eval` (a model's accuracy table)."""

from __future__ import annotations

import argparse
import logging
import warnings

from rgtp.cli import options, output

log = logging.getLogger(__name__)


def add_run(sub) -> None:
    from rgtp.engines import BACKENDS

    p = sub.add_parser("run", help="run a package over a video, writing detections and timings")
    p.add_argument("package")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--video", help="a video file (anything FFmpeg reads)")
    src.add_argument(
        "--synthetic",
        type=options.int_at_least(1),
        metavar="N",
        help="N frames of a SynthVID video",
    )
    p.add_argument("--max-frames", type=options.int_at_least(1), default=None)
    p.add_argument(
        "--skip-bad-frames",
        action="store_true",
        help="skip undecodable video frames (counted in the summary) instead of stopping",
    )
    p.add_argument(
        "--live",
        action="store_true",
        help="--video is a live source (a camera device, a pipe; implied for a URL such as "
        "rtsp://): frames the run falls behind on are dropped, newest kept (docs/usage.md)",
    )
    p.add_argument(
        "--live-queue",
        type=options.int_at_least(1),
        default=1,
        metavar="N",
        help="live: frames that may wait for the run; a frame arriving at a full queue drops "
        "the oldest (default 1: always the newest frame)",
    )
    p.add_argument(
        "--input-format",
        default=None,
        metavar="FMT",
        help="live: FFmpeg's input format (-f), e.g. v4l2",
    )
    p.add_argument(
        "--overlay",
        action="store_true",
        help="also write overlay.mp4 (kept tokens, importance, the prediction), every 10th "
        "picture in overlay_frames/ and timeline.png (K and latency) into --out",
    )
    p.add_argument("--backend", default="ort", choices=BACKENDS)
    p.add_argument("--device", default="cpu")
    options.add_digest(p)
    options.add_stream(p, latency_budget=True)
    p.add_argument(
        "--threads",
        type=options.int_at_least(1),
        default=None,
        help="CPU threads a step's engine calls use: ONNX Runtime's intra-op threads, "
        "OpenVINO's inference threads, torch's threads (default: each runtime's own choice; "
        "not for trt)",
    )
    p.add_argument("--out", required=True)
    output.add_json(p, "the run's summary")
    options.add_pruning(p)
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from rgtp.eval.heldout import synthetic_frames
    from rgtp.eval.reports import run_text
    from rgtp.runtime import Pipeline
    from rgtp.runtime.run import run_and_write, summarize

    if args.live and args.video is None:
        raise output.UsageError("--live reads --video (a device, a pipe, a URL)")
    pipe = Pipeline.load(
        args.package,
        backend=args.backend,
        digest=args.digest,
        device=args.device,
        **options.thread_options(args.backend, args.threads),
    )
    config = pipe.plan.config
    stream = pipe.new_stream(
        policy=options.policy(args),
        reset_every=args.reset_every,
        reset=args.reset,
        radius=args.radius,
        scene_cut=args.scene_cut,
        pruning=options.pruning(args, config.pruning, config.encoder),
    )
    skipped: list[int] = []
    live = args.video is not None and (args.live or "://" in args.video)
    if live:
        from rgtp.runtime.live import open_live

        frames = open_live(args.video, args.live_queue, args.max_frames, args.input_format)
        total = args.max_frames
    elif args.video:
        from rgtp.runtime.video import VideoReader

        reader = VideoReader(args.video, args.max_frames, args.skip_bad_frames)
        frames, total, skipped = reader, args.max_frames, reader.skipped
    else:
        frames, total = iter(synthetic_frames(config, args.synthetic)), args.synthetic
    if args.overlay:
        from rgtp.runtime.video import frame_rate
        from rgtp.viz.record import record_run

        rate = frame_rate(args.video) if args.video and not live else None
        stream = record_run(stream, args.out, config.class_names, rate)
    with warnings.catch_warnings(record=True) as caught:
        try:
            results, paths = run_and_write(
                stream, frames, args.out, config.class_names, total, not args.quiet, skipped
            )
        finally:
            for w in caught:
                log.warning("%s", w.message)
            if args.overlay:
                stream.writer.close()  # a failed run's pictures so far stay playable
    notes = []  # after the report
    if live:
        c = frames.counts
        notes.append(
            f"live source: {c.read} frames read, {c.dropped} dropped (the run fell behind), "
            f"at most {c.high_water} of {c.max_queue} waiting"
        )
    if args.overlay and any(r is not None for r in results):
        files = stream.finish(results)
        paths = {**paths, "overlay": files.video, "overlay_frames": files.frames}
        paths["timeline"] = files.timeline
        notes.append(f"overlay: {files.pictures} pictures, {len(files.pngs)} of them as PNG")
    s = summarize(results, skipped=skipped)
    if not s["steps"]:
        log.error("no step could be run (%d frames skipped)", len(skipped))
        return output.FAILURE
    skips = len(skipped) if args.skip_bad_frames else None
    text = run_text(s, pipe.backend, pipe.device, pipe.plan.num_tokens, paths, skips)
    text = "\n".join([text, *notes])
    document = {
        "package": str(args.package),
        "backend": pipe.backend,
        "device": str(pipe.device),
        "num_tokens": pipe.plan.num_tokens,
        "files": {name: str(path) for name, path in paths.items()},
        "summary": s,
    }
    output.report(args, "run", document, text)
    return output.OK


def add_eval(sub) -> None:
    from rgtp.engines import BACKENDS
    from rgtp.families import model_names

    p = sub.add_parser("eval", help="mAP50, GFLOPs and ms/frame on SynthVID's held-out split")
    p.add_argument("--model", default="vitdet-small", choices=model_names())
    options.add_weights(p)
    p.add_argument("--size", type=int, default=None)
    p.add_argument("--backend", default="ort", choices=BACKENDS)
    p.add_argument("--device", default="cpu")
    p.add_argument(
        "--package",
        default=None,
        help="reuse the package in this directory if it is this export, else export into it",
    )
    options.add_partition(p)
    p.add_argument(
        "--keep",
        dest="ks",
        type=options.keeps,
        default=None,
        help="K values and keep schedules (one K per stage), e.g. 64,77,96/85/69/58",
    )
    p.add_argument("--radius", type=options.int_at_least(0), default=1)
    p.add_argument("--reset-every", type=options.int_at_least(0), default=8)
    p.add_argument(
        "--sampling",
        type=options.ints_at_least(1),
        default=[1],
        help="frame sampling, e.g. 1,4",
    )
    p.add_argument(
        "--ablate-r",
        type=options.ints_at_least(0),
        default=None,
        help="tracking radii, e.g. 0,1,2,3",
    )
    p.add_argument("--no-dense", action="store_true", help="skip the dense reference run")
    options.add_prune_from(p)
    options.add_reset(p)
    options.add_heldout_videos(p)
    p.add_argument(
        "--clips", type=options.int_at_least(1), default=600, help="classifiers: held-out clips"
    )
    p.add_argument(
        "--finetuned-dir",
        default=None,
        help="classifiers: where NAME.temporal-kK.safetensors files are (default: beside "
        "the weights)",
    )
    output.add_json(p, "the table's rows")
    p.add_argument("--markdown", default=None, metavar="FILE", help="the table as Markdown")
    options.add_pruning(p)
    p.set_defaults(handler=evaluate)


def evaluate(args: argparse.Namespace) -> int:
    """Hands the evaluation's settings to the model's family (its `evaluate_model` tool)."""
    from pathlib import Path

    from rgtp.eval.reports import write_table
    from rgtp.eval.request import EvalRequest
    from rgtp.families import tool

    model = options.load_model(args)
    evaluate_model = tool(model.cfg, "evaluate_model")
    request = EvalRequest(
        name=args.model,
        weights=Path(args.weights) if args.weights else None,
        ks=args.ks or [],
        dense=not args.no_dense,
        radius=args.radius,
        reset_every=args.reset_every,
        reset=args.reset,
        pruning=options.pruning(args, model.cfg.pruning, model.cfg.encoder),
        sampling=args.sampling,
        ablate_r=args.ablate_r or [],
        backend=args.backend,
        device=args.device,
        partition=args.partition,
        prune_from=options.prune_from(args),
        package=args.package,
        sequences=args.sequences,
        frames=args.frames,
        clips=args.clips,
        finetuned_dir=Path(args.finetuned_dir) if args.finetuned_dir else None,
        progress=not args.quiet,
    )
    title, table, records = evaluate_model(model, request)
    output.report(args, "eval", records, table)
    write_table(title, table, records, markdown_path=args.markdown)
    return output.OK
