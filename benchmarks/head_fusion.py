"""The rollout rows' RMS head fusion as OpenVINO runs it, written three ways, interleaved.

    python benchmarks/head_fusion.py --k 512 --n 1764 --heads 12 --threads 1

`rgtp.core.rollout.fuse_heads` ("rms": sqrt of the mean over heads of the squared
probabilities) is the largest piece of a pruned global block's time that attention itself
does not need (docs/precision.md). Same probabilities (1, h, K, N) to each graph; prints the
largest difference from the first form and the median process CPU time a call (one thread:
the work done, little inflated by a loaded machine).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import openvino as ov
import torch
from torch import nn


class SquareMean(nn.Module):
    """fuse_heads as written: the squares, then a mean over the head axis."""

    def forward(self, p: torch.Tensor) -> torch.Tensor:
        return p.square().mean(dim=-3).sqrt()


class HeadByHead(nn.Module):
    """The squares summed head by head: one chain of element-wise ops over (K, N) slices."""

    def forward(self, p: torch.Tensor) -> torch.Tensor:
        acc = p[:, 0] * p[:, 0]
        for i in range(1, p.shape[1]):
            acc = acc + p[:, i] * p[:, i]
        return (acc * (1 / p.shape[1])).sqrt()


class ProductSum(nn.Module):
    """p * p, a sum over the head axis, then the 1/h scale."""

    def forward(self, p: torch.Tensor) -> torch.Tensor:
        return ((p * p).sum(dim=-3) * (1 / p.shape[1])).sqrt()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--k", type=int, default=512)
    ap.add_argument("--n", type=int, default=1764)
    ap.add_argument("--heads", type=int, default=12)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--reps", type=int, default=9)
    args = ap.parse_args()

    probs = torch.rand(1, args.heads, args.k, args.n).softmax(-1)
    feeds = {"p": probs.numpy()}
    core, requests = ov.Core(), {}
    config = {"INFERENCE_NUM_THREADS": str(args.threads), "PERFORMANCE_HINT": "LATENCY"}
    with tempfile.TemporaryDirectory() as tmp:
        for module in (SquareMean(), HeadByHead(), ProductSum()):
            path = Path(tmp) / f"{type(module).__name__}.onnx"
            torch.onnx.export(module, (probs,), str(path), dynamo=False, input_names=["p"])
            compiled = core.compile_model(str(path), "CPU", config)
            requests[type(module).__name__] = compiled.create_infer_request()
    reference = SquareMean()(probs).numpy()
    for name, request in requests.items():
        request.infer(feeds)
        diff = np.abs(request.get_output_tensor(0).data - reference).max()
        print(f"{name:12s} largest difference from SquareMean {diff:.2e}")
    cpu: dict[str, list[float]] = {name: [] for name in requests}
    for _ in range(args.reps):
        for name, request in requests.items():
            start = time.process_time()
            request.infer(feeds)
            cpu[name].append((time.process_time() - start) * 1e3)
    print(f"(1, {args.heads}, {args.k}, {args.n}), {args.threads} thread(s), {args.reps} rounds")
    for name, ts in cpu.items():
        print(f"{name:12s} CPU median {statistics.median(ts):6.1f} ms")


if __name__ == "__main__":
    main()
