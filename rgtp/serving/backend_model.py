"""The Python-backend model of a repository `rgtp triton` writes: copied there as
`<model>/1/model.py`, it runs only inside Triton's backend stub, never imported by rgtp.

The stub's interpreter is Triton's, not the caller's: the config parameter `rgtp_sys_path`
(set by `rgtp triton` from the interpreter that wrote the repository) names the rgtp
source tree and site-packages to import from. The package beside this file is verified
against its manifest's hashes when the pipeline loads (`Pipeline.load`).
"""

from __future__ import annotations

import json
import sys
import threading
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        config = json.loads(args["model_config"])
        parameters = {k: v["string_value"] for k, v in config["parameters"].items()}
        for directory in reversed(json.loads(parameters["rgtp_sys_path"])):
            if directory not in sys.path:
                sys.path.insert(0, directory)
        from rgtp.runtime import Pipeline
        from rgtp.serving.repository import PACKAGE_DIR
        from rgtp.serving.sequences import SequenceRequest, StreamTable
        from rgtp.serving.settings import ServingSettings
        from rgtp.serving.tensors import FRAME_INPUTS

        self.request_type, self.frame_inputs = SequenceRequest, tuple(FRAME_INPUTS)
        settings = ServingSettings.from_json(parameters["rgtp_settings"])
        package = Path(args["model_repository"]) / args["model_version"] / PACKAGE_DIR
        self.table = StreamTable(Pipeline.load(package, backend=settings.backend), settings)
        # The family must outlive its metric: both are kept.
        self.stream_metrics = pb_utils.MetricFamily(
            name="rgtp_streams",
            description="rgtp streams open (sequences started and not yet ended or idle)",
            kind=pb_utils.MetricFamily.GAUGE,
        )
        self.streams = self.stream_metrics.Metric(labels={"model": args["model_name"]})
        self.streams.set(0)
        # Idle sequences are freed without waiting for another request to arrive.
        self.stop = threading.Event()
        period = min(settings.idle_timeout_s / 4, 1.0)
        self.reaper = threading.Thread(target=self._reap, args=(period,), daemon=True)
        self.reaper.start()

    def _reap(self, period: float) -> None:
        while not self.stop.wait(period):
            if self.table.reap():
                self.streams.set(len(self.table))

    def execute(self, requests: list) -> list:
        batch = [
            self.request_type(
                request.correlation_id(),
                _flag(request, "START"),
                _flag(request, "END"),
                {
                    name: tensor.as_numpy()
                    for name in self.frame_inputs
                    if (tensor := pb_utils.get_input_tensor_by_name(request, name)) is not None
                },
            )
            for request in requests
        ]
        results = self.table.execute(batch)
        self.streams.set(len(self.table))
        return [
            pb_utils.InferenceResponse(error=pb_utils.TritonError(f"{type(r).__name__}: {r}"))
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
