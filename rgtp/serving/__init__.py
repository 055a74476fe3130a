"""Serving rgtp streams from NVIDIA Triton Inference Server: a model repository for an
exported package (`rgtp triton`), the Python-backend model that holds one stream per
sequence, and the bundled server to run it on."""

from rgtp.serving.client import SequenceClient
from rgtp.serving.repository import RepositoryError, write_repository
from rgtp.serving.sequences import CapacityError, SequenceError, SequenceRequest, StreamTable
from rgtp.serving.settings import ServingSettings
from rgtp.serving.tensors import RequestError

__all__ = [
    "CapacityError",
    "RepositoryError",
    "RequestError",
    "SequenceClient",
    "SequenceError",
    "SequenceRequest",
    "ServingSettings",
    "StreamTable",
    "write_repository",
]
