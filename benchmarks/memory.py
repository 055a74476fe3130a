"""Peak RSS of ONNX Runtime pipelines with many K buckets against one bucket.

    python benchmarks/memory.py --package DIR --many 64,128,196,256,384,512,640,768 --one 512

Each case runs in a fresh process: load the pipeline, run one frame through every bucket
it holds, report the peak resident set. The claim under test: weights are in memory once
per stage however many buckets there are, so 8 buckets cost little more than 1.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
from pathlib import Path

from rgtp.engines import LAYOUTS
from rgtp.package.manifest import Manifest


def measure(package: str, buckets: list[int], layout: str) -> None:
    """Child process: print peak RSS (bytes) after every bucket ran once."""
    import numpy as np

    from rgtp.core.selection import FixedKeep
    from rgtp.runtime import Pipeline

    pipe = Pipeline.load(package, "ort", layout=layout, buckets=buckets)
    size = pipe.plan.config.backbone.img_size
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(2)]
    for k in buckets:
        stream = pipe.new_stream(policy=FixedKeep(k))
        for f in frames:  # frame 0 runs K = N, frame 1 runs K = k
            stream.step(f)
        del stream  # one stream's caches at a time, as in the one-bucket case
    print(json.dumps({"peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))


def run_case(package: str, buckets: list[int], layout: str) -> int:
    out = subprocess.run(
        [sys.executable, __file__, "--child", package, ",".join(map(str, buckets)), layout],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return json.loads(out.strip().splitlines()[-1])["peak_rss"]


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        measure(sys.argv[2], [int(k) for k in sys.argv[3].split(",")], sys.argv[4])
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--package", required=True)
    ap.add_argument("--many", required=True, help="buckets of the large pipeline")
    ap.add_argument("--one", type=int, required=True, help="bucket of the small pipeline")
    ap.add_argument("--json", default="out/bench/memory.json")
    args = ap.parse_args()
    many = [int(k) for k in args.many.split(",")]
    m = Manifest.load(args.package)
    weights = sum(rec["bytes"] for name, rec in m.files.items() if name.endswith(".weights"))
    report = {
        "package": args.package,
        "model": m.plan.config.name,
        "weights_bytes": weights,
        "many": many,
        "one": args.one,
        "cases": {},
    }
    for layout in LAYOUTS:
        if layout == "per-stage" and not any(g.symbolic for g in m.graphs):
            continue
        rss_many = run_case(args.package, many, layout)
        rss_one = run_case(args.package, [args.one], layout)
        extra = rss_many - rss_one
        report["cases"][layout] = {
            "rss_many": rss_many,
            "rss_one": rss_one,
            "extra": extra,
            "extra_over_weights": extra / weights,
        }
        print(
            f"{m.plan.config.name} {layout:>9}: peak RSS {len(many)} buckets "
            f"{rss_many / 2**20:.0f} MiB, 1 bucket {rss_one / 2**20:.0f} MiB: +{extra / 2**20:.1f}"
            f" MiB = {100 * extra / weights:.1f} % of the weights ({weights / 2**20:.0f} MiB)"
        )
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(report, indent=1))
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
