"""`rgtp run` (a package over a video) and `rgtp eval` (a model's accuracy table)."""

from __future__ import annotations

import argparse
import sys
import warnings

from rgtp.cli import options


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
    p.add_argument("--backend", default="ort", choices=BACKENDS)
    p.add_argument("--device", default="cpu")
    options.add_stream(p, latency_budget=True)
    p.add_argument("--out", required=True)
    p.add_argument("--quiet", action="store_true")
    options.add_pruning(p)
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from rgtp.eval.heldout import synthetic_frames
    from rgtp.eval.reports import run_text
    from rgtp.runtime import Pipeline
    from rgtp.runtime.run import run_and_write, summarize

    pipe = Pipeline.load(args.package, backend=args.backend, device=args.device)
    config = pipe.plan.config
    stream = pipe.new_stream(
        policy=options.policy(args),
        reset_every=args.reset_every,
        reset=args.reset,
        radius=args.radius,
        pruning=options.pruning(args, config.pruning, config.encoder.img_size),
    )
    skipped: list[int] = []
    if args.video:
        from rgtp.runtime.video import VideoReader

        reader = VideoReader(args.video, args.max_frames, args.skip_bad_frames)
        frames, total, skipped = reader, args.max_frames, reader.skipped
    else:
        frames, total = iter(synthetic_frames(config, args.synthetic)), args.synthetic
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
    skips = len(skipped) if args.skip_bad_frames else None
    print(run_text(s, pipe.backend, pipe.device, pipe.plan.num_tokens, paths, skips))
    return 0


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
    p.add_argument("--json", default=None)
    p.add_argument("--markdown", default=None)
    p.add_argument("--quiet", action="store_true")
    options.add_pruning(p)
    p.set_defaults(handler=evaluate)


def evaluate(args: argparse.Namespace) -> int:
    model = options.load_model(args)
    run_eval = {"detection": _eval_detector, "classification": _eval_classifier}
    return run_eval[model.cfg.family](args, model)


def _write(args: argparse.Namespace, title: str, table: str, records: list) -> None:
    from rgtp.eval.reports import write_table

    print(table)
    write_table(title, table, records, args.json, args.markdown)


def _eval_detector(args: argparse.Namespace, model) -> int:
    from rgtp.eval.evaluate import EvalSetting, evaluate, radius_table, results_table
    from rgtp.eval.pipeline import model_pipeline

    ks = args.ks or []
    # the pruning flags as the model's own, so that its stages return the rows they roll out
    model.cfg = options.with_pruning(args, model.cfg)
    pipe = model_pipeline(
        model,
        [k for k in ks if isinstance(k, int)],
        [k for k in ks if not isinstance(k, int)],
        backend=args.backend,
        device=args.device,
        partition=args.partition,
        prune_from=options.prune_from(args),
        package=args.package,
        progress=not args.quiet,
    )
    pruning = options.pruning(args, pipe.plan.config.pruning, pipe.plan.encoder.img_size)
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
    _write(args, title, table, [r.to_dict() for r in records])
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
        pruning=options.pruning(args, model.cfg.pruning, model.cfg.spatial.img_size),
        dense=not args.no_dense,
    )
    title = f"{args.model} SynthMotion {model.cfg.spatial.img_size}"
    _write(args, title, format_table(rows, len(clips)), rows_as_dicts(rows))
    return 0
