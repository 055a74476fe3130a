"""Reading checkpoint files: .safetensors, torch files read weights-only, and .pkl pickles of
numpy arrays (detectron2's model zoo).

detectron2's model-zoo `.pkl` files are plain pickles of numpy arrays (in pickle protocols
torch's weights-only unpickler does not speak), so they go through an unpickler that admits
numpy's array constructors and nothing else: any other global in the file is refused, never
executed. A file that cannot be read is a `CheckpointError` naming the file and saying what
it holds instead (empty, text, truncated, a pickle under another suffix...).
"""

from __future__ import annotations

import json
import pickle
import re
import struct
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn


class CheckpointError(ValueError):
    """A checkpoint cannot be read, or does not fit the model: names, shapes or format."""


class _RefusedGlobal(pickle.UnpicklingError):
    """A pickle names a global outside `_ArraysOnlyUnpickler.ALLOWED`."""


class _ArraysOnlyUnpickler(pickle.Unpickler):
    """Admits only what a pickled dict of numpy arrays needs (Python docs, "Restricting
    Globals"); anything else raises instead of running. `_codecs.encode` is how protocol 2
    stores bytes and `_frombuffer` how protocol 5 stores array data; neither runs code."""

    ALLOWED: ClassVar[set[tuple[str, str]]] = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("collections", "OrderedDict"),
        ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self.ALLOWED:
            raise _RefusedGlobal(
                f"refusing global {module}.{name} (.pkl files may hold numpy arrays only)"
            )
        return super().find_class(module, name)


def _describe_content(path: Path) -> str:
    """What a file that failed to load holds, in a user's terms, with a hint when its
    content belongs to another reader than its suffix chose."""
    size = path.stat().st_size
    if size == 0:
        return "the file is empty (0 bytes)"
    with path.open("rb") as f:
        head = f.read(64)
    reader = {".safetensors": "safetensors", ".pkl": "pickle"}.get(path.suffix, "torch")
    if head.startswith(b"PK\x03\x04"):
        if reader == "torch":
            return "it is a damaged zip archive (truncated or corrupted?)"
        return "it is a zip archive as torch.save writes (rename it to .pth)"
    if head[0] == 0x80 and len(head) > 1 and 2 <= head[1] <= 5:
        if reader == "pickle":
            return "it is a damaged pickle (truncated or corrupted?)"
        return "it is a Python pickle (rename it to .pkl for numpy arrays, .pth for torch)"
    if len(head) >= 9 and head[8:9] == b"{":
        if reader == "safetensors":
            return _describe_safetensors(path, size)
        return "it is a safetensors file (rename it to .safetensors)"
    if head.startswith(b"version https://git-lfs"):
        return "it is a Git LFS pointer, not the weights (fetch them with `git lfs pull`)"
    if all(32 <= b < 127 or b in b"\t\r\n" for b in head):
        return f"it is text: {head[:40].decode()!r}"
    return f"its content is not recognised ({size} bytes, starting {head[:8].hex()})"


def _describe_safetensors(path: Path, size: int) -> str:
    """A file that starts like safetensors (8-byte header length, then JSON) but failed."""
    with path.open("rb") as f:
        (header_len,) = struct.unpack("<Q", f.read(8))
        if 8 + header_len > size:
            return f"it is truncated: its header alone needs {8 + header_len} bytes of {size}"
        try:
            header = json.loads(f.read(header_len))
            data = max(
                (v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"),
                default=0,
            )
        except (ValueError, KeyError, TypeError, IndexError):
            return "its header is not valid safetensors JSON"
    described = 8 + header_len + data
    if described > size:
        return f"it is truncated: its header describes {described} bytes, it has {size}"
    if described < size:
        return f"it has {size - described} bytes more than its header describes"
    return "its header does not describe its tensors"


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except Exception as e:  # safetensors raises its own SafetensorError (or OSError)
        raise CheckpointError(
            f"{path}: not a valid safetensors file: {_describe_content(path)} (safetensors: {e})"
        ) from e


def _read_pickle(path: Path) -> object:
    try:
        with path.open("rb") as f:
            return _ArraysOnlyUnpickler(f, encoding="latin1").load()
    except _RefusedGlobal as e:
        raise CheckpointError(f"{path}: not loadable as weights only: {e}") from e
    except Exception as e:  # UnpicklingError, EOFError... from a damaged or foreign file
        raise CheckpointError(f"{path}: not a pickle of arrays: {_describe_content(path)}") from e


def _read_torch(path: Path) -> object:
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        # torch words a refused global two ways: "Unsupported global: GLOBAL eval" (a
        # callable not allow-listed) and "unsupported GLOBAL posix.system whose module posix
        # is blocked" (os, subprocess...); either way the archive is whole and its pickle
        # asks to run code, which is not a damaged file.
        found = re.search(r"GLOBAL ([\w.]+)", str(e))
        if found:
            raise CheckpointError(
                f"{path}: not loadable as weights only: it needs {found.group(1)}, which "
                "weights-only loading refuses to run (a file of weights never calls it: do "
                "not load this one unless you trust its source); save the state dict with "
                "safetensors"
            ) from e
        raise CheckpointError(f"{path}: not a torch checkpoint: {_describe_content(path)}") from e
    except Exception as e:  # EOFError, RuntimeError (damaged zip), KeyError (text)...
        raise CheckpointError(f"{path}: not a torch checkpoint: {_describe_content(path)}") from e


def _as_tensor(path: Path, key: str, value: np.ndarray) -> torch.Tensor:
    if value.dtype.kind not in "biuf":
        raise CheckpointError(f"{path}: {key} is a numpy array of {value.dtype}, not numbers")
    return torch.from_numpy(np.require(value, requirements="W"))  # protocol 5 arrays are read-only


@dataclass
class LoadReport:
    """What a load did.

    loaded / missing: model parameter names loaded from the checkpoint / left at their
    initial values (only neck and head ones, and only with `strict=False`);
    ignored: checkpoint key (as in the file) -> why rgtp does not use it;
    groups: model part (backbone, neck, head) -> (tensors loaded, tensors in the model).
    """

    format: str
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    ignored: dict[str, str] = field(default_factory=dict)
    groups: dict[str, tuple[int, int]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        parts = ", ".join(f"{g} {n} of {total}" for g, (n, total) in self.groups.items())
        lines = [
            f"format {self.format}: loaded {len(self.loaded)} of "
            f"{len(self.loaded) + len(self.missing)} model tensors ({parts})"
        ]
        if self.missing:
            lines.append("  not in checkpoint (initial values kept): " + abbreviate(self.missing))
        reasons = Counter(self.ignored.values())
        lines += [f"  not used by rgtp: {r} ({n} tensors)" for r, n in reasons.items()]
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


def abbreviate(names: list[str], limit: int = 6) -> str:
    head = ", ".join(names[:limit])
    return head + (f", ... (+{len(names) - limit} more)" if len(names) > limit else "")


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a checkpoint file: .safetensors, .pkl (numpy arrays, detectron2's model
    zoo), or anything torch.save wrote (.pth, .pt, .bin, .ckpt). A {"model": ...},
    {"state_dict": ...} or {"module": ...} wrapper is unwrapped; non-tensor entries are
    dropped. CheckpointError naming the file when it cannot be read."""
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"{path}: a directory, not a checkpoint file")
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        path.open("rb").close()
    except OSError as e:
        raise CheckpointError(f"{path}: cannot be read ({e.strerror})") from e
    if path.suffix == ".safetensors":
        sd: dict[str, torch.Tensor] = _read_safetensors(path)
    else:
        obj = _read_pickle(path) if path.suffix == ".pkl" else _read_torch(path)
        for key in ("model", "state_dict", "module"):
            if isinstance(obj, dict) and isinstance(obj.get(key), dict):
                obj = obj[key]
        if not isinstance(obj, dict):
            raise CheckpointError(f"{path}: expected a dict of tensors, got {type(obj).__name__}")
        sd = {
            k: v if isinstance(v, torch.Tensor) else _as_tensor(path, k, v)
            for k, v in obj.items()
            if isinstance(v, torch.Tensor | np.ndarray)
        }
    if not sd:
        raise CheckpointError(f"{path}: holds no tensors")
    check_finite(path, sd)
    return sd


def check_finite(path: Path, sd: dict[str, torch.Tensor]) -> None:
    """CheckpointError naming the tensors that hold NaN or Inf. Such weights load without a
    word and then turn every frame's output into NaN, far from the cause (a diverged
    training run, a bad conversion or a damaged file)."""
    bad = {}
    for k, v in sd.items():
        if v.is_floating_point():
            n = v.numel() - int(torch.isfinite(v).sum())
            if n:
                bad[k] = f"{k} ({n} of {v.numel()} values)"
    if bad:
        raise CheckpointError(
            f"{path}: {len(bad)} tensor(s) hold NaN or Inf values: "
            f"{abbreviate(list(bad.values()))}; a checkpoint's weights must be finite "
            "(a diverged training run or a damaged conversion?)"
        )


def save_weights(
    model: nn.Module,
    path: str | Path,
    metadata: dict[str, str] | None = None,
    dtype: torch.dtype | None = None,
) -> None:
    """Save a model's state dict as safetensors (contiguous copies, no shared storage).

    `dtype` (e.g. torch.float16) converts floating-point tensors, halving a file that is
    loaded back into float32 parameters.
    """
    tensors = {}
    for k, v in model.state_dict().items():
        v = v.detach()
        if dtype is not None and v.is_floating_point():
            v = v.to(dtype)
        tensors[k] = v.contiguous().clone()
    save_file(tensors, str(path), metadata=metadata)
