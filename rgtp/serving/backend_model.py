"""The Python-backend model of a repository `rgtp triton` writes: copied there as
`<model>/1/model.py`, it runs only inside Triton's backend stub, never imported by rgtp.

The stub's Python environment provides rgtp (and numpy < 2, which the stub needs): the
repository names no path of the machine that wrote it. The package beside this file is
verified against its manifest's hashes when the pipeline loads (`Pipeline.load`), and
its manifest against the digest the model's configuration pins (`rgtp_package_digest`):
another package in its place is refused, and the model does not load.

Custom metrics, on the server's metrics port, labelled by model:
    rgtp_streams        gauge      streams open (sequences started, not ended or idle)
    rgtp_k              histogram  tokens kept per step, one bucket per K of the package
    rgtp_step_ms        histogram  milliseconds per step (the stream's own "total")
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

from rgtp.runtime import Pipeline
from rgtp.serving.model_config import PACKAGE_PARAMETER, SETTINGS_PARAMETER
from rgtp.serving.repository import PACKAGE_DIR
from rgtp.serving.sequences import SequenceRequest, StreamTable, error_status
from rgtp.serving.settings import ServingSettings
from rgtp.serving.tensors import INPUTS

STEP_MS_BUCKETS = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000]


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        config = json.loads(args["model_config"])
        parameters = {k: v["string_value"] for k, v in config["parameters"].items()}
        settings = ServingSettings.from_json(parameters[SETTINGS_PARAMETER])
        package = Path(args["model_repository"]) / args["model_version"] / PACKAGE_DIR
        pipeline = Pipeline.load(
            package, backend=settings.backend, digest=parameters[PACKAGE_PARAMETER]
        )
        labels = {"model": args["model_name"]}
        # A family must outlive its metrics: both are kept.
        self.families = [
            pb_utils.MetricFamily(
                name="rgtp_streams",
                description="rgtp streams open (sequences started and not yet ended or idle)",
                kind=pb_utils.MetricFamily.GAUGE,
            ),
            pb_utils.MetricFamily(
                name="rgtp_k",
                description="tokens kept per rgtp step (K)",
                kind=pb_utils.MetricFamily.HISTOGRAM,
            ),
            pb_utils.MetricFamily(
                name="rgtp_step_ms",
                description="milliseconds per rgtp step",
                kind=pb_utils.MetricFamily.HISTOGRAM,
            ),
        ]
        self.streams = self.families[0].Metric(labels=labels)
        buckets = sorted({*pipeline.plan.buckets, pipeline.plan.num_tokens})
        self.k = self.families[1].Metric(labels=labels, buckets=[float(b) for b in buckets])
        self.step_ms = self.families[2].Metric(
            labels=labels, buckets=[float(b) for b in STEP_MS_BUCKETS]
        )
        self.streams.set(0)
        self.table = StreamTable(pipeline, settings, observe=self._observe)
        # Idle sequences are freed without waiting for another request to arrive.
        self.stop = threading.Event()
        period = min(settings.idle_timeout_s / 4, 1.0)
        self.reaper = threading.Thread(target=self._reap, args=(period,), daemon=True)
        self.reaper.start()

    def _observe(self, k: int, ms: float) -> None:
        self.k.observe(float(k))
        self.step_ms.observe(ms)

    def _reap(self, period: float) -> None:
        while not self.stop.wait(period):
            if self.table.reap():
                self.streams.set(len(self.table))

    def execute(self, requests: list) -> list:
        batch = [
            SequenceRequest(
                request.correlation_id(),
                _flag(request, "START"),
                _flag(request, "END"),
                {
                    name: tensor.as_numpy()  # a view of the request's memory: no copy yet
                    for name in INPUTS
                    if (tensor := pb_utils.get_input_tensor_by_name(request, name)) is not None
                },
            )
            for request in requests
        ]
        results = self.table.execute(batch)
        self.streams.set(len(self.table))
        return [
            pb_utils.InferenceResponse(error=_error(r))
            if isinstance(r, Exception)
            else pb_utils.InferenceResponse([pb_utils.Tensor(n, t) for n, t in r.items()])
            for r in results
        ]

    def finalize(self) -> None:
        self.stop.set()
        self.reaper.join()
        self.table.close()


def _flag(request: object, control: str) -> bool:
    tensor = pb_utils.get_input_tensor_by_name(request, control)
    return tensor is not None and bool(np.asarray(tensor.as_numpy()).any())


def _error(error: Exception) -> object:
    code = getattr(pb_utils.TritonError, error_status(error))
    return pb_utils.TritonError(f"{type(error).__name__}: {error}", code)
