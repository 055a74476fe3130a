"""`rgtp triton` (a Triton model repository serving a package) and `rgtp serve` (Triton on
it, until stopped)."""

from __future__ import annotations

import argparse

from rgtp.cli import options, output


def add_triton(sub) -> None:
    from rgtp.engines import BACKENDS

    p = sub.add_parser("triton", help="write a Triton model repository serving a package")
    p.add_argument("package")
    p.add_argument("--out", required=True, help="the repository directory to write")
    p.add_argument("--backend", default="ort", choices=BACKENDS)
    p.add_argument(
        "--max-streams",
        type=options.int_at_least(1),
        default=8,
        help="sequences served at once (the most requests one execute gets)",
    )
    p.add_argument(
        "--idle-timeout",
        type=float,
        default=30.0,
        metavar="S",
        help="seconds without a request after which a sequence's stream is freed",
    )
    p.add_argument(
        "--max-pixels",
        type=options.int_at_least(1),
        default=None,
        help="the largest frame (height x width) a request may carry; larger ones are "
        "refused before they are read (default: 4K UHD, 3840 x 2160)",
    )
    p.add_argument(
        "--float-scale",
        type=float,
        default=None,
        help="read FRAME_FLOAT values as pixel = value * SCALE (255 for [0, 1], 1 for "
        "[0, 255]); default: float frames are refused",
    )
    options.add_stream(p, latency_budget=False)
    options.add_digest(p)
    p.add_argument("--force", action="store_true", help="replace a repository rgtp wrote there")
    p.set_defaults(handler=write_triton_repository)


def write_triton_repository(args: argparse.Namespace) -> int:
    from rgtp.package.manifest import package_digest
    from rgtp.serving import ServingSettings, write_repository
    from rgtp.serving.repository import PACKAGE_DIR, VERSION

    try:  # every setting is a command-line value: one it refuses is a usage error
        settings = _settings(args, ServingSettings)
    except ValueError as e:
        raise output.UsageError(str(e)) from None
    model = write_repository(args.package, args.out, settings, force=args.force, digest=args.digest)
    print(f"wrote model {model.name} to {args.out}; start the server with: rgtp serve {args.out}")
    print(f"it serves package digest {package_digest(model / VERSION / PACKAGE_DIR)} only")
    return output.OK


def _settings(args: argparse.Namespace, settings_type):
    return settings_type(
        backend=args.backend,
        max_streams=args.max_streams,
        idle_timeout_s=args.idle_timeout,
        float_scale=args.float_scale,
        keep=args.k,
        mass=args.mass,
        reset_every=args.reset_every,
        reset=args.reset,
        radius=args.radius,
        scene_cut=args.scene_cut,
        **({} if args.max_pixels is None else {"max_pixels": args.max_pixels}),
    )


def add_serve(sub) -> None:
    p = sub.add_parser(
        "serve", help="run Triton on a repository rgtp triton wrote, until SIGTERM or Ctrl-C"
    )
    p.add_argument("repository", help="the model repository (rgtp triton --out)")
    p.add_argument(
        "--address",
        default="127.0.0.1",
        help="the address HTTP, gRPC and metrics listen on (0.0.0.0: every interface)",
    )
    p.add_argument("--http-port", type=options.port, default=8000)
    p.add_argument("--grpc-port", type=options.port, default=8001)
    p.add_argument("--metrics-port", type=options.port, default=8002)
    p.add_argument(
        "--env",
        metavar="DIR",
        default=None,
        help="the Python environment tritonserver and its Python backend stub come from "
        "(rgtp, numpy<2, nvidia-pytriton: make serve-env builds .venv-serve); default "
        "$RGTP_SERVE_ENV, else this Python's if it can host the stub, else the checkout's "
        ".venv-serve",
    )
    p.set_defaults(handler=run_server)


def run_server(args: argparse.Namespace) -> int:
    from rgtp.serving.server import TritonServer, serve

    def ready(server: TritonServer) -> None:
        assert server.process is not None
        print(
            f"tritonserver ready (pid {server.process.pid}), serving "
            f"{', '.join(server.models)} from {server.repository}: HTTP {server.http_url}, "
            f"gRPC {server.grpc_url}, metrics http://{server.metrics_url}/metrics; log "
            f"{server.log_path}; SIGTERM or Ctrl-C stops it",
            flush=True,
        )

    server = TritonServer(
        args.repository,
        args.http_port,
        args.grpc_port,
        args.metrics_port,
        address=args.address,
        env=args.env,
    )
    return serve(server, ready)
