"""`rgtp demo`: the end-to-end demo of a shipped model on the CPU."""

from __future__ import annotations

import argparse


def add_demo(sub) -> None:
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
    p.set_defaults(handler=demo)


def demo(args: argparse.Namespace) -> int:
    from rgtp.families import get_config, tool

    sizes = {"sequences": args.sequences, "frames": args.frames, "clips": args.clips}
    run_demo = tool(get_config(args.model), "run_demo")
    summary = run_demo(args.out, args.k_fraction, sizes, progress=not args.quiet)
    print(summary["report"])
    return 0
