"""The `rgtp` command line: thin layers over the Python API, no logic of their own.

One module per command group adds its sub-commands (`add_<command>(subparsers)`, each
setting its handler); `options` holds the option groups several share. What a command
does lives in the library: models load with `rgtp.families.loading`, reports come from
`rgtp.eval.reports`, and training, evaluation, the FLOPs report and the demo are the model's
family's tools (`rgtp.families.tool`): no command names a family.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from rgtp import __version__
from rgtp.cli import demo, export, flops, run, serve, train

# in the order `rgtp --help` lists them
COMMANDS = (
    flops.add_flops,
    export.add_export,
    export.add_check,
    run.add_run,
    run.add_eval,
    demo.add_demo,
    train.add_train,
    train.add_finetune_temporal,
    export.add_build,
    serve.add_triton,
    serve.add_serve,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rgtp",
        description="Rollout-guided token pruning for video ViTs: export, engines, runtime.",
    )
    parser.add_argument("--version", action="version", version=f"rgtp {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in COMMANDS:
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except (ValueError, FileNotFoundError, FileExistsError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
