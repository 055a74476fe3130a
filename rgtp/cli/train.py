"""`rgtp train` (a model from scratch, either family) and `rgtp finetune-temporal` (a
ViViT's temporal transformer on its pruned encoder's outputs)."""

from __future__ import annotations

import argparse
from pathlib import Path

from rgtp.cli import options

# what only a classifier's training takes (`ViViTTrainConfig` and `train`'s arguments)
CLASSIFIER_ONLY = (
    "clips",
    "aux_weight",
    "cover_weight",
    "temporal_steps",
    "eval_every",
    "init",
    "cache_dir",
)


def add_train(sub) -> None:
    from rgtp.families import model_names

    p = sub.add_parser("train", help="train a model from scratch (seeded, reproducible)")
    p.add_argument("--model", default="vitdet-small", choices=model_names())
    at_least = options.int_at_least
    p.add_argument("--steps", type=at_least(1), default=None, help="default: the config's")
    p.add_argument("--batch-size", type=at_least(1), default=None)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--warmup", type=at_least(0), default=None, help="steps of linear warm-up")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--workers", type=at_least(1), default=None, help="data processes")
    p.add_argument("--fp32", "--no-bf16", action="store_true", help="no bf16 autocast")
    p.add_argument(
        "--heldout", type=int, default=600, help="classifiers: held-out clips scored at the end"
    )
    g = p.add_argument_group("classifiers (default: the config's)")
    g.add_argument("--clips", type=at_least(1), default=None, help="rendered training clips")
    g.add_argument("--aux-weight", type=float, default=None, help="the per-step loss's weight")
    g.add_argument("--cover-weight", type=float, default=None, help="the cover loss's weight")
    g.add_argument(
        "--temporal-steps",
        type=at_least(0),
        default=None,
        help="steps of the temporal phase (the temporal transformer alone)",
    )
    g.add_argument(
        "--init",
        default=None,
        help="skip the joint phase: start the temporal one from these weights",
    )
    g.add_argument("--eval-every", type=at_least(0), default=None, help="0: no held-out checks")
    g.add_argument(
        "--cache-dir", default=None, help="where rendered clips are kept (default out/cache)"
    )
    p.add_argument("--out", default=None, help="default rgtp/weights/MODEL.safetensors")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(handler=train_model)


def train_model(args: argparse.Namespace) -> int:
    from rgtp.families import get_config

    family = get_config(args.model).family
    return {"detection": _train_detector, "classification": _train_classifier}[family](args)


def _given(args: argparse.Namespace, *names: str) -> dict:
    """The training flags given on the command line (the rest keep the config's defaults)."""
    out = {n: getattr(args, n) for n in names if getattr(args, n) is not None}
    return out | ({"bf16": False} if args.fp32 else {})


_BOTH = ("steps", "batch_size", "lr", "warmup", "seed", "workers")


def _train_detector(args: argparse.Namespace) -> int:
    from rgtp.train.trainer import TrainConfig, train

    given = [n for n in CLASSIFIER_ONLY if getattr(args, n) is not None]
    if given:
        flags = ", ".join("--" + n.replace("_", "-") for n in given)
        raise ValueError(f"{flags}: for classifiers; {args.model} is a detector")
    tc = TrainConfig(model=args.model, **_given(args, *_BOTH))
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
    from rgtp.train.vivit_trainer import ViViTTrainConfig, train

    tc = ViViTTrainConfig(
        model=args.model,
        **_given(
            args, *_BOTH, "clips", "aux_weight", "cover_weight", "temporal_steps", "eval_every"
        ),
    )
    if args.init and not tc.temporal_steps:
        raise ValueError(
            "--init skips the joint phase: give the temporal phase steps (--temporal-steps N)"
        )
    out = args.out or f"rgtp/weights/{args.model}.safetensors"
    summary = train(
        tc,
        Path(out),
        cache_dir=Path(args.cache_dir or "out/cache"),
        heldout=args.heldout,
        progress=not args.quiet,
        init=Path(args.init) if args.init else None,
    )
    held = summary.get("heldout", {})
    steps = (
        f"{tc.temporal_steps} temporal steps from {args.init}" if args.init else f"{tc.steps} steps"
    )
    print(
        f"trained {steps} in {summary['minutes']:.1f} min; held-out top-1 "
        f"{held.get('dense', float('nan')):.3f} over {held.get('clips', 0)} clips; wrote {out}"
    )
    return 0


def add_finetune_temporal(sub) -> None:
    from rgtp.families import model_names

    p = sub.add_parser(
        "finetune-temporal",
        help="fine-tune a ViViT's temporal transformer on its pruned encoder's outputs",
    )
    p.add_argument("--model", default="vivit-small", choices=model_names())
    options.add_weights(p)
    p.add_argument("--size", type=int, default=None)
    p.add_argument(
        "--keep",
        dest="k",
        type=options.int_at_least(1),
        required=True,
        help="K, tokens kept per step",
    )
    p.add_argument("--reset-every", type=options.int_at_least(1), default=8)
    options.add_reset(p)
    p.add_argument("--clips", type=options.int_at_least(1), default=480, help="training clips")
    p.add_argument("--epochs", type=options.int_at_least(1), default=10)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="default: beside the weights, NAME.temporal-kK")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(handler=finetune)


def finetune(args: argparse.Namespace) -> int:
    from rgtp.families import shipped_weights
    from rgtp.train.finetune_temporal import FinetuneConfig, finetune_temporal, finetuned_path

    model = options.load_model(args)
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
