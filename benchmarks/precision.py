"""Pruned against the best dense model, every backend x precision in one run.

    python benchmarks/precision.py --model vitdet-b --size 672 --keep 768,512,196,64

A user who cares about CPU latency deploys the dense model in int8 or bf16, not float32:
this times the dense backbone and the pruned frames for every configuration available here
(ONNX Runtime fp32 and int8, OpenVINO f32 and bf16, torch fp32 and bf16), interleaved in
the same process (round after round, every configuration in turn, medians over all), and
states each pruned frame's speedup over the *best* dense configuration measured.

Timing follows the paper: backbone plus the method's work between engine calls (embed,
select, stages, scatter, rollout); the head is not pruned and is reported apart. The dense
backbone is the plain unpruned model as one graph. Weights are random: only timing is
measured (accuracy per precision: benchmarks/precision_accuracy.py).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from backbone_timing import BACKBONE_PARTS, OVERHEAD_PARTS, DenseBackbone, moving_frames

from rgtp.core.selection import FixedKeep
from rgtp.engines import BACKENDS
from rgtp.export.ensure import ensure_package
from rgtp.export.onnx_graphs import export_graph
from rgtp.export.quantize import Int8Settings, quantize_graph
from rgtp.export.quantized_package import ensure_int8
from rgtp.families import get_config
from rgtp.families.detection.detector import Detector
from rgtp.families.detection.flops import frame_macs
from rgtp.package.manifest import Manifest
from rgtp.package.plan import GraphSpec, StagePlan, TensorSpec
from rgtp.runtime import Pipeline
from rgtp.runtime.calibration import record_feeds


@dataclass
class Config:
    backend: str
    precision: str
    dense: Callable[[], None]  # one dense backbone inference
    pipe: Pipeline


def dense_graph(detector: Detector, directory: Path) -> Path:
    """The unpruned backbone as one ONNX graph: frame (1, 3, S, S) -> map (N, C)."""
    cfg = detector.cfg.backbone
    s = cfg.img_size
    spec = GraphSpec(
        "dense",
        (TensorSpec("frame", (1, 3, s, s), "float32"),),
        (TensorSpec("map", (cfg.num_tokens, cfg.embed_dim), "float32"),),
    )
    model = export_graph(DenseBackbone(detector), spec, (torch.rand(1, 3, s, s) * 255,))
    path = directory / "dense.onnx"
    onnx.save(model, str(path), save_as_external_data=True, location="dense.weights")
    return path


def int8_graph(path: Path, settings: Int8Settings, frames: list[np.ndarray]) -> Path:
    """The dense graph in int8 (static: calibrated on `frames`, model-input pixels)."""
    name = f"dense_int8_{settings.method}"
    calibration = [{"frame": pixels(f)} for f in frames]
    model = quantize_graph(onnx.load(str(path)), settings, calibration)
    out = path.with_name(f"{name}.onnx")
    onnx.save(model, str(out), save_as_external_data=True, location=f"{name}.weights")
    return out


def pixels(frame: np.ndarray) -> np.ndarray:
    """An RGB uint8 frame (S, S, 3) as the dense graph's input (1, 3, S, S) in [0, 255]."""
    return np.ascontiguousarray(frame.transpose(2, 0, 1)[None].astype(np.float32))


def ort_dense(path: Path, frame: np.ndarray) -> Callable[[], None]:
    opts = ort.SessionOptions()
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    return lambda: sess.run(None, {"frame": frame})


def openvino_dense(path: Path, frame: np.ndarray, precision: str) -> Callable[[], None]:
    import openvino as ov

    hint = {"fp32": "f32", "bf16": "bf16"}[precision]
    compiled = ov.Core().compile_model(
        str(path), "CPU", {"INFERENCE_PRECISION_HINT": hint, "PERFORMANCE_HINT": "LATENCY"}
    )
    request = compiled.create_infer_request()
    return lambda: request.infer({"frame": frame})


def torch_dense(detector: Detector, frame: np.ndarray, precision: str) -> Callable[[], None]:
    """The dense backbone in eager torch; bf16 through autocast, as a torch user runs it."""
    model = DenseBackbone(detector).eval()
    x = torch.from_numpy(frame)

    def run() -> None:
        with torch.inference_mode(), torch.autocast("cpu", torch.bfloat16, precision == "bf16"):
            model(x)

    return run


def time_ms(fn: Callable[[], None]) -> float:
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1e3


def pruned_parts(pipe: Pipeline, k: int, frames: list[np.ndarray]) -> dict[str, float]:
    """ms per part of each pruned frame (frame 0 is the dense reset, frame 1 warms this K)."""
    stream = pipe.new_stream(policy=FixedKeep(k), reset_every=0)
    results = [stream.step(f) for f in frames]
    return {p: statistics.median(r.timings[p] for r in results[2:]) for p in results[2].timings}


def packages(
    detector: Detector, plan: StagePlan, directory: Path | None, calibration: list[np.ndarray]
) -> dict[str, Path]:
    """The float32 package (exported, or reused) and its int8 siblings, dynamic and static
    (quantized, or reused if they are this package's); static int8 is calibrated on the
    feeds of a float32 pipeline running the `calibration` frames."""
    fp32 = ensure_package(detector, plan, directory, symbolic=True)

    def calibrate() -> tuple[dict, str]:
        feeds = record_feeds(Pipeline.load(fp32, "ort"), [calibration], per_graph=4)
        return feeds, f"{len(calibration)} moving random frames (benchmarks/precision.py)"

    return {
        "fp32": fp32,
        "int8": ensure_int8(fp32, fp32.with_name(fp32.name + "-int8"), INT8["int8"]),
        "int8-qdq": ensure_int8(
            fp32, fp32.with_name(fp32.name + "-int8-qdq"), INT8["int8-qdq"], calibrate=calibrate
        ),
    }


# the benchmark's int8 precisions: ONNX Runtime's dynamic quantization, and static Q/DQ
INT8 = {"int8": Int8Settings(), "int8-qdq": Int8Settings("static", per_channel=True)}
CONFIGS = [
    ("ort", "fp32"),
    ("ort", "int8"),
    ("ort", "int8-qdq"),
    ("openvino", "fp32"),
    ("openvino", "bf16"),
    ("openvino", "int8-qdq"),
    ("torch", "fp32"),
    ("torch", "bf16"),
]


def native_bf16() -> bool:
    """Whether this CPU computes bf16 itself (AVX-512 BF16 or AMX); without, OpenVINO and
    torch emulate it, several times slower than float32."""
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return True  # cannot tell: time it
    return "avx512_bf16" in flags or "amx_bf16" in flags


def configure(
    backend: str, precision: str, dense: dict[str, Path], pkgs: dict[str, Path], detector, frame
) -> Config:
    """One configuration: its dense backbone and its pipeline."""
    if backend == "ort":
        return Config(
            backend,
            precision,
            ort_dense(dense[precision], frame),
            Pipeline.load(pkgs[precision], "ort"),
        )
    if backend == "openvino":
        graphs = "int8-qdq" if precision == "int8-qdq" else "fp32"
        hint = "fp32" if precision == "int8-qdq" else precision  # int8 from the Q/DQ graphs
        return Config(
            backend,
            precision,
            openvino_dense(dense[graphs], frame, hint),
            Pipeline.load(pkgs[graphs], "openvino", precision=hint),
        )
    return Config(
        backend,
        precision,
        torch_dense(detector, frame, precision),
        Pipeline.load(pkgs["fp32"], "torch", precision=precision),
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="vitdet-b")
    ap.add_argument("--size", type=int, default=672)
    ap.add_argument("--keep", dest="ks", default="768,512,196,64")
    ap.add_argument("--frames", type=int, default=5, help="pruned frames timed per round")
    ap.add_argument("--rounds", type=int, default=2, help="rounds over every configuration")
    ap.add_argument("--package", default=None, help="reuse/export the float32 package here")
    ap.add_argument(
        "--configs",
        default=None,
        help="backend:precision pairs to time (default: every available one), e.g. "
        "ort:fp32,ort:int8,openvino:bf16",
    )
    ap.add_argument("--json", default="out/bench/precision.json")
    args = ap.parse_args()
    ks = [int(k) for k in args.ks.split(",")]

    torch.manual_seed(0)
    detector = Detector(get_config(args.model, args.size)).eval()
    cfg = detector.cfg.backbone
    plan = StagePlan.create(detector.cfg, ks, "per-global")
    calibration = moving_frames(6, cfg.img_size, seed=1)  # not the timed frames
    pkgs = packages(detector, plan, Path(args.package) if args.package else None, calibration)
    frames = moving_frames(args.frames + 2, cfg.img_size)
    frame = pixels(frames[0])
    wanted = [tuple(c.split(":")) for c in args.configs.split(",")] if args.configs else CONFIGS
    if not args.configs and not native_bf16():
        print("skipping bf16: this CPU has no native bf16 (emulated; name it in --configs)")
        wanted = [c for c in wanted if c[1] != "bf16"]
    configs: list[Config] = []
    with tempfile.TemporaryDirectory() as tmp:
        dense = {"fp32": dense_graph(detector, Path(tmp))}
        for name, settings in INT8.items():
            dense[name] = int8_graph(dense["fp32"], settings, calibration)
        for backend, precision in wanted:
            if backend not in BACKENDS:
                print(f"skipping {backend}:{precision}: backend not available")
                continue
            config = configure(backend, precision, dense, pkgs, detector, frame)
            config.dense()  # warm-up
            configs.append(config)

        dense_ms: dict[int, list[float]] = {i: [] for i in range(len(configs))}
        parts: dict[tuple[int, int], list[dict[str, float]]] = {}
        for r in range(args.rounds):
            for i, c in enumerate(configs):
                dense_ms[i] += [time_ms(c.dense) for _ in range(args.frames)]
                for k in ks:
                    parts.setdefault((i, k), []).append(pruned_parts(c.pipe, k, frames))
                print(f"round {r + 1}/{args.rounds}: {c.backend} {c.precision} done", flush=True)

    dense_rows = [
        {"backend": c.backend, "precision": c.precision, "ms": statistics.median(dense_ms[i])}
        for i, c in enumerate(configs)
    ]
    best = min(dense_rows, key=lambda d: d["ms"])
    dense_macs = frame_macs(cfg).backbone
    executed_dense = frame_macs(cfg, convention="executed").backbone
    rows = []
    for i, c in enumerate(configs):
        for k in ks:
            p = {
                name: statistics.median(run[name] for run in parts[i, k]) for name in parts[i, k][0]
            }
            backbone = sum(p.get(name, 0.0) for name in BACKBONE_PARTS)
            outside = sum(p.get(name, 0.0) for name in OVERHEAD_PARTS)
            executed_ratio = executed_dense / frame_macs(cfg, k, convention="executed").backbone
            own_dense = dense_rows[i]["ms"]
            rows.append(
                {
                    "k": k,
                    "backend": c.backend,
                    "precision": c.precision,
                    "backbone_ms": backbone,
                    "speedup_over_best_dense": best["ms"] / backbone,
                    "flops_ratio": dense_macs / frame_macs(cfg, k).backbone,
                    "executed_flops_ratio": executed_ratio,
                    "speedup_over_own_dense": own_dense / backbone,
                    "own_speedup_over_executed_ratio": own_dense / backbone / executed_ratio,
                    "outside_engine_ms": outside,
                    "head_ms": p.get("head", 0.0),
                    "parts_ms": p,
                }
            )
    fp32_ort = next(
        (d["ms"] for d in dense_rows if d["backend"] == "ort" and d["precision"] == "fp32"), None
    )
    report = {
        "model": args.model,
        "size": cfg.img_size,
        "num_tokens": cfg.num_tokens,
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads",
        "versions": _versions(),
        "frames": args.frames,
        "rounds": args.rounds,
        "best_dense": best,
        "dense": dense_rows,
        "pruned": rows,
        "package_bytes": {name: _bytes(path) for name, path in pkgs.items()},
    }
    print(f"{args.model} @ {cfg.img_size} (N = {cfg.num_tokens}); dense backbone, ms (median):")
    for d in dense_rows:
        mark = "  <- best dense" if d is best else ""
        print(f"  {d['backend']:<9}{d['precision']:<9}{d['ms']:>9.0f}{mark}")
    print(
        f"{'K':>5} {'backend':<9}{'prec':<9}{'ms':>8}{'x best dense':>14}{'x own dense':>13}"
        f"{'/exec x':>9}{'FLOPs x':>9}{'outside ms':>12}"
    )
    for r in rows:
        print(
            f"{r['k']:>5} {r['backend']:<9}{r['precision']:<9}{r['backbone_ms']:>8.0f}"
            f"{r['speedup_over_best_dense']:>14.2f}{r['speedup_over_own_dense']:>13.2f}"
            f"{r['own_speedup_over_executed_ratio']:>9.2f}{r['flops_ratio']:>9.2f}"
            f"{r['outside_engine_ms']:>12.1f}"
        )
    at_512 = [r for r in rows if r["k"] == 512]
    if fp32_ort and at_512:
        fastest = min(at_512, key=lambda r: r["backbone_ms"])
        print(
            f"fastest pruned K=512: {fastest['backend']} {fastest['precision']}, "
            f"{fastest['speedup_over_best_dense']:.2f}x the best dense, "
            f"{fp32_ort / fastest['backbone_ms']:.2f}x fp32 dense ORT"
        )
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(report, indent=1))
    print(f"wrote {args.json}")


def _bytes(directory: Path) -> int:
    return sum(f["bytes"] for f in Manifest.load(directory).files.values())


def _versions() -> dict[str, str]:
    out = {"onnxruntime": ort.__version__, "torch": torch.__version__}
    try:
        import openvino

        out["openvino"] = openvino.__version__
    except ImportError:
        pass
    return out


if __name__ == "__main__":
    main()
