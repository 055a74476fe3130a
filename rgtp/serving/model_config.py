"""The served model's `config.pbtxt`, built as Triton's own `ModelConfig` protobuf (from
`tritonclient`), so that a field or value Triton does not know fails here, before anything
is written, and read back from its text to check that the file says what was built.

The model is a stateful Python-backend model under Triton's sequence batcher with the
`oldest` strategy: the requests of up to `max_streams` sequences may reach one `execute`
call together (one request per sequence), frames of any size (ragged) included.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import numpy as np
from google.protobuf import text_format
from google.protobuf.message import Error as ProtobufError
from tritonclient.grpc import model_config_pb2 as mc

from rgtp.serving.settings import ServingSettings
from rgtp.serving.tensors import FRAME_INPUTS, OUTPUTS

SETTINGS_PARAMETER = "rgtp_settings"  # ServingSettings as JSON
SYS_PATH_PARAMETER = "rgtp_sys_path"  # JSON list of directories the model puts on sys.path
# The Python backend runs its stub inside this environment (its bin/activate), so that the
# stub's interpreter imports numpy and the rest from it before model.py runs.
ENV_PARAMETER = "EXECUTION_ENV_PATH"

_DATA_TYPES = {
    np.dtype(np.uint8): mc.TYPE_UINT8,
    np.dtype(np.float32): mc.TYPE_FP32,
    np.dtype(np.int32): mc.TYPE_INT32,
    np.dtype(np.int64): mc.TYPE_INT64,
    np.dtype(np.object_): mc.TYPE_STRING,
}


class ModelConfigError(ValueError):
    """A generated model configuration that Triton would not read as built."""


def model_config(
    name: str,
    settings: ServingSettings,
    sys_path: Sequence[str],
    env_path: str | None,
) -> mc.ModelConfig:
    """The configuration of model `name` serving with `settings`; its stub puts `sys_path`
    on `sys.path` and runs in the Python environment `env_path` (None: the stub's own)."""
    cfg = mc.ModelConfig(name=name, backend="python", max_batch_size=settings.max_streams)
    for frame, dtype in FRAME_INPUTS.items():
        cfg.input.add(
            name=frame,
            data_type=_DATA_TYPES[np.dtype(dtype)],
            dims=[-1, -1, 3],
            optional=True,  # one of the two per request; the model says which is missing
            allow_ragged_batch=True,
        )
    for output, (dtype, dims) in OUTPUTS.items():
        cfg.output.add(name=output, data_type=_DATA_TYPES[np.dtype(dtype)], dims=dims)
    seq = cfg.sequence_batching
    seq.max_sequence_idle_microseconds = round(settings.idle_timeout_s * 1e6)
    seq.oldest.max_candidate_sequences = settings.max_streams
    seq.oldest.max_queue_delay_microseconds = 0  # batch what is waiting, never wait for more
    for control, kind in (
        ("START", mc.ModelSequenceBatching.Control.CONTROL_SEQUENCE_START),
        ("END", mc.ModelSequenceBatching.Control.CONTROL_SEQUENCE_END),
    ):
        seq.control_input.add(name=control).control.add(kind=kind, int32_false_true=[0, 1])
    # One instance: the streams share one pipeline (engines loaded once) in one process.
    gpu = settings.backend == "trt"
    cfg.instance_group.add(
        count=1, kind=mc.ModelInstanceGroup.KIND_GPU if gpu else mc.ModelInstanceGroup.KIND_CPU
    )
    cfg.parameters[SETTINGS_PARAMETER].string_value = settings.to_json()
    cfg.parameters[SYS_PATH_PARAMETER].string_value = json.dumps(list(sys_path))
    if env_path is not None:
        cfg.parameters[ENV_PARAMETER].string_value = env_path
    return cfg


def config_text(cfg: mc.ModelConfig) -> str:
    """`cfg` as `config.pbtxt` text, once parsing that text gives `cfg` back."""
    text = text_format.MessageToString(cfg)
    try:
        parsed = text_format.Parse(text, mc.ModelConfig())
    except ProtobufError as e:
        raise ModelConfigError(f"the model configuration of {cfg.name} does not parse: {e}") from e
    if parsed != cfg:
        raise ModelConfigError(f"the model configuration of {cfg.name} does not read back as built")
    return text
