"""What the command line writes besides files: exit codes, the `rgtp` loggers' handler on
stderr (`-v` / `-q`), and the `--json [FILE]` documents, each checked against its schema in
`rgtp/cli/schemas/<command>.json` before it is written."""

from __future__ import annotations

import argparse
import functools
import json
import logging
import sys
from importlib import resources

# what `rgtp` returns (docs/usage.md has the table): argparse itself exits USAGE on a
# command line it cannot parse
OK, FAILURE, USAGE = 0, 1, 2

STDOUT = "-"  # `--json` with no FILE, or `--json -`

log = logging.getLogger("rgtp.cli")


class UsageError(ValueError):
    """Options that parse one by one but not together (exit 2, as argparse's own errors)."""


class _Stderr(logging.StreamHandler):
    """Writes to `sys.stderr` as it is at each record (a test, or an embedding application,
    may have replaced it since the handler was made)."""

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr
        super().emit(record)


class _Prefix(logging.Formatter):
    """INFO as the bare message (a command's progress and notes); anything else prefixed
    with its level, `warning: ...`, `error: ...`, as rgtp always wrote them."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        return text if record.levelno == logging.INFO else f"{record.levelname.lower()}: {text}"


_handler: logging.Handler | None = None


def add_verbosity(p: argparse.ArgumentParser) -> None:
    """-q/--quiet and -v/--verbose, on every command (`configure_logging` reads them)."""
    p.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        help="no progress bars, and only warnings and errors on stderr",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="debug messages too, on stderr")


def configure_logging(quiet: bool = False, verbose: bool = False) -> None:
    """The `rgtp` logger's level and one handler on stderr: INFO by default (the notes
    library code logs, e.g. "reusing the package in ..."), WARNING with -q, DEBUG with -v.
    Called again (tests run many commands in one process) it replaces its own handler."""
    global _handler
    root = logging.getLogger("rgtp")
    if _handler is not None:
        root.removeHandler(_handler)
    _handler = _Stderr()
    _handler.setFormatter(_Prefix("%(message)s"))
    root.addHandler(_handler)
    root.setLevel(logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO)


def add_json(p: argparse.ArgumentParser, what: str) -> None:
    """--json [FILE]: the command's document (`schema(command)`) to FILE, or to stdout."""
    p.add_argument(
        "--json",
        nargs="?",
        const=STDOUT,
        default=None,
        metavar="FILE",
        help=f"{what} as JSON (schema: rgtp/cli/schemas/{p.prog.split()[-1]}.json) to FILE, "
        "written whole or not at all; with no FILE or -, to stdout, the text report then "
        "going to stderr",
    )


@functools.cache
def schema(command: str) -> dict:
    """The JSON Schema of `rgtp <command> --json`, as shipped in rgtp/cli/schemas/."""
    text = resources.files("rgtp.cli").joinpath("schemas", f"{command}.json").read_text()
    return json.loads(text)


def validate(command: str, document: object) -> None:
    """Raise jsonschema.ValidationError where `document` is not what `command`'s schema
    promises (a bug in rgtp, never the user's input)."""
    import jsonschema

    jsonschema.validate(document, schema(command))


def report(args: argparse.Namespace, command: str, document: object, text: str) -> None:
    """A command's result: `text` on stdout, and with --json `document` (checked against
    the command's schema) to its file, or to stdout with `text` moved to stderr, so that
    stdout is one JSON document."""
    from rgtp.eval.reports import write_json

    dest = getattr(args, "json", None)
    if dest is None:
        print(text)
        return
    validate(command, document)
    if dest == STDOUT:
        print(text, file=sys.stderr)
        print(json.dumps(document, indent=1, allow_nan=False))
    else:
        print(text)
        write_json(dest, document)
