"""The served model's `config.pbtxt`, built as Triton's own `ModelConfig` protobuf (from
`tritonclient`), so that a field or value Triton does not know fails here, before anything
is written, and read back from its text to check that the file says what was built.

The model is a stateful Python-backend model under Triton's sequence batcher with the
`oldest` strategy, set so that Triton's sequence slots and the model's streams agree
(`rgtp.serving.sequences` gives the reasons):
    max_batch_size                   max_streams: one request per open sequence an execute
    oldest.max_candidate_sequences   SLOTS_PER_STREAM x max_streams: every START reaches
                                     the model (none waits in Triton's backlog); the model
                                     refuses those beyond max_streams at once
    oldest.max_queue_delay_microseconds  0: batch what is waiting, never wait for more
    max_sequence_idle_microseconds   TRITON_IDLE_FACTOR x the idle timeout: the model frees
                                     an idle stream first, Triton its slot after
Frames of any size (ragged) may share an execute. Nothing in it names a path of the
machine that wrote it: the Python environment that runs the backend stub provides rgtp.
"""

from __future__ import annotations

import numpy as np
from google.protobuf import text_format
from google.protobuf.message import Error as ProtobufError
from tritonclient.grpc import model_config_pb2 as mc

from rgtp.serving.sequences import SLOTS_PER_STREAM, TRITON_IDLE_FACTOR
from rgtp.serving.settings import ServingSettings
from rgtp.serving.tensors import FRAME_INDEX, FRAME_INPUTS, outputs

SETTINGS_PARAMETER = "rgtp_settings"  # ServingSettings as JSON
# The served package's digest ("sha256:<hex>" of its manifest.json): the only package the
# model loads (`backend_model.py`), and for a client or a readiness check to compare with
# its own copy (Triton's model metadata).
PACKAGE_PARAMETER = "rgtp_package_digest"

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
    name: str, settings: ServingSettings, family: str, package_digest: str
) -> mc.ModelConfig:
    """The configuration of model `name`, of model family `family`, serving with `settings`
    the package of digest `package_digest`."""
    cfg = mc.ModelConfig(name=name, backend="python", max_batch_size=settings.max_streams)
    for frame, dtype in FRAME_INPUTS.items():
        cfg.input.add(
            name=frame,
            data_type=_DATA_TYPES[np.dtype(dtype)],
            dims=[-1, -1, 3],
            optional=True,  # one of the two per request; the model says which is missing
            allow_ragged_batch=True,
        )
    cfg.input.add(name=FRAME_INDEX, data_type=mc.TYPE_INT64, dims=[1], optional=True)
    for output, (dtype, dims) in outputs(family).items():
        cfg.output.add(name=output, data_type=_DATA_TYPES[np.dtype(dtype)], dims=dims)
    seq = cfg.sequence_batching
    seq.max_sequence_idle_microseconds = round(TRITON_IDLE_FACTOR * settings.idle_timeout_s * 1e6)
    seq.oldest.max_candidate_sequences = SLOTS_PER_STREAM * settings.max_streams
    seq.oldest.max_queue_delay_microseconds = 0
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
    cfg.parameters[PACKAGE_PARAMETER].string_value = package_digest
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
