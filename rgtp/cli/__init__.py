"""The `rgtp` command line: thin layers over the Python API, no logic of their own.

One module per command group adds its sub-commands (`add_<command>(subparsers)`, each
setting its handler); `options` holds the option groups several share. What a command
does lives in the library: models load with `rgtp.families.loading`, reports come from
`rgtp.eval.reports`, and training, evaluation, the FLOPs report and the demo are the model's
family's tools (`rgtp.families.tool`): no command names a family.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from rgtp import __version__
from rgtp.cli import demo, export, flops, output, run, serve, train

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
        epilog="exit status: 0 done, 1 failed (the error on stderr), 2 a usage error",
    )
    parser.add_argument("--version", action="version", version=f"rgtp {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in COMMANDS:
        add(sub)
    for command in sub.choices.values():
        output.add_verbosity(command)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command: its exit status, `output.OK`, `FAILURE` (what failed is logged as
    `error: ...` on stderr, no traceback) or `USAGE` (argparse exits with it itself)."""
    args = build_parser().parse_args(argv)
    output.configure_logging(args.quiet, args.verbose)
    try:
        return args.handler(args)
    except output.UsageError as e:
        output.log.error("%s", e)
        return output.USAGE
    # what the library raises for bad input or a failed step (ManifestError, EngineError,
    # ExportError, RunError, ... derive from these; ImportError names the extra to install);
    # anything else is a bug: its traceback
    except (ValueError, OSError, RuntimeError, ImportError) as e:
        output.log.error("%s", e)
        return output.FAILURE
