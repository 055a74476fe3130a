"""Option types and the option groups several commands share, and what reads them back.

Each group is defined once here (`add_weights`, `add_pruning`, `add_stream`, ...) and its
reader beside it (`load_model`, `pruning`, `policy`, `prune_from`): a command adds the
groups it takes and passes the parsed values on to the library.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
from collections.abc import Callable
from typing import Any

from rgtp.cli.output import UsageError

log = logging.getLogger(__name__)

# ------------------------------------------------------------------------------ types


def ints(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}"
        ) from None


def int_at_least(low: int) -> Callable[[str], int]:
    """argparse type: an integer >= low, refused at parse time (e.g. --synthetic 0)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < low:
            raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {text!r}")
        return value

    return parse


def ints_at_least(low: int) -> Callable[[str], list[int]]:
    """argparse type: comma-separated integers, each >= low, at least one."""

    def parse(text: str) -> list[int]:
        values = ints(text)
        if not values or min(values) < low:
            raise argparse.ArgumentTypeError(
                f"expected comma-separated integers >= {low}, got {text!r}"
            )
        return values

    return parse


def keep(text: str) -> int | tuple[int, ...]:
    """argparse type: K (an integer >= 1), or a keep schedule of one K per stage, never
    increasing ("96/77/64/48"; its length is checked against the model's stages)."""
    try:
        values = tuple(int(v) for v in text.split("/"))
    except ValueError:
        values = ()
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(
            f"expected K (an integer >= 1) or a keep schedule of one K per stage such as "
            f"96/77/64/48, got {text!r}"
        )
    if len(values) == 1:
        return values[0]
    from rgtp.core.selection import check_schedule

    try:
        return check_schedule(values, len(values), max(values))
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def keeps(text: str) -> list[int | tuple[int, ...]]:
    """argparse type: comma-separated `keep` values ("64,77,96/85/69/58"), at least one."""
    return [keep(v) for v in text.split(",") if v.strip()] or [keep("")]


def share(text: str) -> float:
    """argparse type: a number in (0, 1] (--mass)."""
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1], got {text!r}")
    return value


def milliseconds(text: str) -> float:
    """argparse type: a finite number of milliseconds > 0 (--latency-budget)."""
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0.0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"expected milliseconds > 0, got {text!r}")
    return value


def port(text: str) -> int:
    """argparse type: a TCP port, 1..65535."""
    value = int_at_least(1)(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"expected a TCP port (1..65535), got {text!r}")
    return value


def add_digest(p: argparse.ArgumentParser) -> None:
    """--digest: the package digest to pin (`Manifest.load`)."""
    p.add_argument(
        "--digest",
        default=None,
        metavar="sha256:HEX",
        help="the package digest you verified (rgtp export and rgtp check print it); a "
        "package with any other manifest is refused",
    )


def thread_options(backend: str, threads: int | None) -> dict[str, Any]:
    """--threads as the backend takes it: the `threads` load option of ort (intra-op
    threads) and openvino (INFERENCE_NUM_THREADS); torch's are the process's own, set here;
    trt runs on the GPU and takes none (UsageError)."""
    if threads is None:
        return {}
    if backend in ("ort", "openvino"):
        return {"threads": threads}
    if backend == "torch":
        import torch

        torch.set_num_threads(threads)
        return {}
    raise UsageError(f"--threads is for the CPU backends (ort, openvino, torch), not {backend}")


def add_heldout_videos(p: argparse.ArgumentParser) -> None:
    """--sequences and --frames: how much of SynthVID's held-out split a detector is measured
    on (the tables': 30 videos of 64 frames). `rgtp eval` and the benchmarks take them."""
    p.add_argument("--sequences", type=int_at_least(1), default=30, help="detectors: videos")
    p.add_argument("--frames", type=int_at_least(1), default=64, help="detectors: per video")


# ----------------------------------------------------------------- weights: the model


def add_weights(p: argparse.ArgumentParser) -> None:
    """--weights, --weights-format, --allow-missing-head, --random-init (`load_model`)."""
    from rgtp.families import weight_formats

    p.add_argument("--weights", default=None, help="checkpoint (.safetensors, .pth/.bin, .pkl)")
    p.add_argument(
        "--weights-format",
        default="auto",
        choices=weight_formats(),
        help="naming of --weights (auto: told from its keys)",
    )
    p.add_argument(
        "--allow-missing-head",
        action="store_true",
        help="neck/head tensors missing from --weights keep random values (backbone: never)",
    )
    p.add_argument("--random-init", action="store_true", help="no weights (for timing work)")


def load_model(args: argparse.Namespace):
    """The model of --model at --size with --weights, the shipped weights or --random-init
    (`rgtp.families.loading.load_model`); stderr says what loaded and what stays random."""
    from rgtp.families.loading import load_model as load

    # with your own head (export --head none / --head-onnx) rgtp's neck and head are unused
    own_head = getattr(args, "head", "rgtp") != "rgtp" or bool(getattr(args, "head_onnx", None))
    loaded = load(
        args.model,
        args.size,
        args.weights,
        args.weights_format,
        random_init=args.random_init,
        allow_missing=args.allow_missing_head or own_head,
    )
    if loaded.report is not None:
        log.info("weights %s: %s", loaded.path, loaded.report.summary())
        if loaded.report.missing:
            why = "your own head replaces them" if own_head else "--allow-missing-head"
            log.warning(
                "%s: %d tensors outside the encoder are not in the checkpoint and keep random "
                "values",
                why,
                len(loaded.report.missing),
            )
    return loaded.model


# ---------------------------------------------------------------- the cut and pruning


def add_partition(p: argparse.ArgumentParser) -> None:
    from rgtp.package.plan import PARTITIONS

    p.add_argument(
        "--partition",
        default=None,
        choices=PARTITIONS,
        help="how the encoder's blocks are cut into stages: each ending at a global block, "
        "one block each, or one stage (default: per-global; whole for the authors' "
        "cache-free ViViT method, --paper on a ViViT)",
    )


def add_reset(p: argparse.ArgumentParser) -> None:
    from rgtp.core.selection import RESETS

    p.add_argument(
        "--reset",
        default="dense",
        choices=RESETS,
        help="what a reset step keeps: all tokens, or the authors' ViViT 1-in-2 checkerboard "
        "(needs the K = ceil(N/2) bucket)",
    )


def add_prune_from(p: argparse.ArgumentParser) -> None:
    from rgtp.package.plan import PRUNE_FROM

    p.add_argument(
        "--prune-from",
        choices=PRUNE_FROM,
        default=None,
        help="where the graphs start pruning: the input, or after block 0's attention (the "
        "authors'); default: block0-mlp with --paper, else input",
    )


def prune_from(args: argparse.Namespace) -> str:
    """Where the exported graphs start pruning: --prune-from, else the authors' place (after
    block 0's attention) with --paper, else at the input."""
    if args.prune_from is not None:
        return args.prune_from
    return "block0-mlp" if args.paper else "input"


def add_pruning(p: argparse.ArgumentParser) -> None:
    """The pruning settings over the model's own (`pruning` reads them)."""
    from rgtp.core.tracking import SIMILARITIES
    from rgtp.models.config import NOVELTIES

    g = p.add_argument_group("pruning (default: the model's settings, see the manifest)")
    g.add_argument(
        "--paper",
        action="store_true",
        help="the authors' settings (PruningConfig.paper): their rollout, 2x2-pooled below "
        "1024 px; exporting, also pruning after block 0's attention",
    )
    g.add_argument(
        "--rollout-pool",
        type=int_at_least(1),
        default=None,
        help="roll out over attention rows pooled N x N on the token grid (1: unpooled)",
    )
    g.add_argument("--rollout-blocks", type=ints, default=None, help="global blocks, e.g. 8,11")
    g.add_argument("--similarity", default=None, choices=SIMILARITIES)
    g.add_argument("--novelty-share", type=float, default=None)
    g.add_argument(
        "--novelty",
        default=None,
        choices=NOVELTIES,
        help="what the novelty share compares a token with: its tracked match in the last "
        "step, or what its cache was computed from",
    )
    g.add_argument(
        "--track-union",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="tracked importance = max(own, matched source's); --no-track-union: the paper's",
    )
    g.add_argument("--target-threshold", type=float, default=None)


def pruning(args: argparse.Namespace, model_default, encoder):
    """The model's pruning settings with any command-line overrides (--paper: the authors'
    for this encoder: their ViTDet settings at its input size, or their cache-free ViViT
    method for an encoder with a CLS token)."""
    from rgtp.models.config import PruningConfig

    if args.paper:
        base = PruningConfig.paper(encoder.img_size, cls_token=encoder.prefix_tokens > 0)
    else:
        base = model_default
    changes = {
        "rollout_pool": getattr(args, "rollout_pool", None),
        "rollout_blocks": tuple(args.rollout_blocks) if args.rollout_blocks else None,
        "similarity": args.similarity,
        "novelty_share": args.novelty_share,
        "novelty": args.novelty,
        "track_union": args.track_union,
        "target_threshold": args.target_threshold,
    }
    return dataclasses.replace(base, **{k: v for k, v in changes.items() if v is not None})


def with_pruning(args: argparse.Namespace, cfg):
    """The model config with the pruning flags applied (--paper: the authors' settings), so
    that the package's manifest carries them and its streams use them by default."""
    return dataclasses.replace(cfg, pruning=pruning(args, cfg.pruning, cfg.encoder))


# ---------------------------------------------------------------------- a stream's keep


def add_stream(p: argparse.ArgumentParser, latency_budget: bool) -> None:
    """A stream's keep policy (one of --keep, --mass and, where a process measures its own
    frames, --latency-budget), reset schedule and tracking radius (`policy` reads them)."""
    group = p.add_mutually_exclusive_group()
    group.add_argument(
        "--keep",
        dest="k",
        type=keep,
        help="tokens kept per pruned frame (K), or one K per stage (96/77/64/48)",
    )
    group.add_argument("--mass", type=share, help="keep the smallest bucket with this share")
    if latency_budget:
        group.add_argument(
            "--latency-budget",
            type=milliseconds,
            metavar="MS",
            help="keep the largest bucket expected to run a frame within MS on this machine, "
            "learnt from the running frames",
        )
    p.add_argument("--reset-every", type=int_at_least(0), default=8)
    add_reset(p)
    p.add_argument("--radius", type=int_at_least(0), default=1)
    p.add_argument(
        "--scene-cut",
        type=float,
        default=None,
        metavar="COSINE",
        help="reset at once where the mean cosine of the patch embeddings against the last "
        "step's falls below this (off by default; 0.75 for vitdet-small: docs/results.md)",
    )


def policy(args: argparse.Namespace):
    from rgtp.core.selection import keep_policy

    if args.k is not None or args.mass is not None:
        return keep_policy(args.k, args.mass)
    if getattr(args, "latency_budget", None) is not None:
        from rgtp.runtime.latency_budget import LatencyBudget

        return LatencyBudget(args.latency_budget)
    return None
