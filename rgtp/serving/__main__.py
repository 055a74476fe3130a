"""`python -m rgtp.serving REPO`: the bundled Triton server on a repository `rgtp triton`
wrote, until Ctrl-C."""

from __future__ import annotations

import argparse
import sys
import threading

from rgtp.serving.server import TritonServer


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m rgtp.serving", description=__doc__)
    p.add_argument("repository", help="a model repository written by rgtp triton")
    p.add_argument("--http-port", type=int, default=8000)
    p.add_argument("--grpc-port", type=int, default=8001)
    p.add_argument("--metrics-port", type=int, default=8002)
    args = p.parse_args(argv)
    server = TritonServer(args.repository, args.http_port, args.grpc_port, args.metrics_port)
    with server:
        print(
            f"tritonserver ready: HTTP {server.http_url}, gRPC {server.grpc_url}, metrics "
            f"{server.metrics_url}/metrics; log {server.log_path}; Ctrl-C stops it",
            flush=True,
        )
        try:
            threading.Event().wait()
        except KeyboardInterrupt:
            print("stopping", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
