"""`rgtp flops`: analytic GFLOPs of a named model (its family's `flops_report` tool)."""

from __future__ import annotations

import argparse

from rgtp.cli import options, output


def add_flops(sub) -> None:
    from rgtp.families import flops_conventions, model_names

    p = sub.add_parser("flops", help="analytic GFLOPs (MACs) per frame, dense and pruned")
    p.add_argument("--model", default="vitdet-b", choices=model_names())
    p.add_argument(
        "--size", type=options.int_at_least(1), default=None, help="input side in pixels"
    )
    p.add_argument(
        "--keep",
        dest="k",
        type=options.keep,
        default=None,
        help="tokens kept per pruned frame (K), or one K per stage (96/77/64/48)",
    )
    p.add_argument(
        "--reset-every",
        type=options.int_at_least(0),
        default=8,
        help="R: a dense frame every R frames (0: only the first)",
    )
    p.add_argument(
        "--radius", type=options.int_at_least(0), default=1, help="tracking window radius r"
    )
    options.add_reset(p)
    p.add_argument("--paper", action="store_true", help="the authors' pruning point (block0-mlp)")
    options.add_prune_from(p)
    p.add_argument(
        "--convention",
        default="paper",
        choices=flops_conventions(),
        help="paper: windowed blocks computed whole (the authors' GFLOPs); executed: what rgtp "
        "runs (each window's rows for the kept queries only)",
    )
    output.add_json(p, "the report")
    p.set_defaults(handler=flops)


def flops(args: argparse.Namespace) -> int:
    from rgtp.families import get_config, tool

    flops_report = tool(get_config(args.model), "flops_report")
    report, table = flops_report(
        args.model,
        args.size,
        args.k,
        args.reset_every,
        args.radius,
        args.reset,
        options.prune_from(args),
        args.convention,
    )
    output.report(args, "flops", report, table)
    return output.OK
