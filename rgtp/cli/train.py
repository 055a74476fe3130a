"""`rgtp train` (a model from scratch, either family) and `rgtp finetune-temporal` (a
ViViT's temporal transformer on its pruned encoder's outputs)."""

from __future__ import annotations

import argparse
from pathlib import Path

from rgtp.cli import options

# what a family's training may take (`train_model`'s settings); only those given are passed
SETTINGS = (
    "steps",
    "batch_size",
    "lr",
    "warmup",
    "seed",
    "workers",
    "clips",
    "aux_weight",
    "cover_weight",
    "temporal_steps",
    "eval_every",
    "heldout",
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
        "--heldout",
        type=int,
        default=None,
        help="classifiers: held-out clips scored at the end (default 600)",
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
    p.set_defaults(handler=train_model)


def train_model(args: argparse.Namespace) -> int:
    """Hands the settings given on the command line to the model's family (the rest keep
    its config's defaults)."""
    from rgtp.families import get_config, tool

    settings = {n: getattr(args, n) for n in SETTINGS if getattr(args, n) is not None}
    settings |= {"bf16": False} if args.fp32 else {}
    out = Path(args.out or f"rgtp/weights/{args.model}.safetensors")
    train = tool(get_config(args.model), "train_model")
    print(train(args.model, settings, out, progress=not args.quiet))
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
    p.set_defaults(handler=finetune)


def finetune(args: argparse.Namespace) -> int:
    from rgtp.families import shipped_weights, tool

    model = options.load_model(args)
    finetune = tool(model.cfg, "finetune")
    weights = Path(args.weights) if args.weights else shipped_weights(args.model)
    settings = {
        "k": args.k,
        "reset_every": args.reset_every,
        "reset": args.reset,
        "clips": args.clips,
        "epochs": args.epochs,
        "lr": args.lr,
        "seed": args.seed,
    }
    out = Path(args.out) if args.out else None
    print(finetune(model, weights, settings, out, progress=not args.quiet))
    return 0
