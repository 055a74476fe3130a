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
    rows = {
        "dense": frame_macs(bb, None, args.radius, cfg),
        "pruned": frame_macs(bb, keep, args.radius, cfg),
        "average": schedule_macs(bb, keep, args.reset_every, args.radius, cfg),
    }
    report = {
        "model": args.model,
        "size": bb.img_size,
        "num_tokens": bb.num_tokens,
        "keep": keep,
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
        f"keep K = {keep}, reset every {args.reset_every} frames"
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


def build_parser() -> argparse.ArgumentParser:
    from rgtp.models.registry import model_names

    parser = argparse.ArgumentParser(
        prog="rgtp",
        description="Rollout-guided token pruning for video ViTs: export, engines, runtime.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("flops", help="analytic GFLOPs (MACs) per frame, dense and pruned")
    p.add_argument("--model", default="vitdet-b", choices=model_names())
    p.add_argument("--size", type=int, default=None, help="input side in pixels")
    p.add_argument("--keep", type=int, default=None, help="tokens kept per pruned frame (K)")
    p.add_argument("--reset-every", type=int, default=8, help="R: a dense frame every R frames")
    p.add_argument("--radius", type=int, default=1, help="tracking window radius r")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command.replace("-", "_")](args)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
