"""Loading weights: our own files, timm `samvit_*`, detectron2 ViTDet and SAM checkpoints.

Files are read with safetensors or `torch.load(weights_only=True)`. detectron2's model-zoo
`.pkl` files are plain pickles of numpy arrays (in pickle protocols torch's weights-only
unpickler does not speak), so they go through an unpickler that admits numpy's array
constructors and nothing else: any other global in the file is refused, never executed.

Every foreign format is first renamed into this project's parameter names; then one strict
loader checks names and shapes and says exactly what did not fit.
"""

from __future__ import annotations

import math
import pickle
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from rgtp.models.vit_ops import resize_rel_pos

FORMATS = ("auto", "rgtp", "timm", "detectron2", "sam")


class CheckpointError(ValueError):
    """A checkpoint does not fit the model: names, shapes or format."""


@dataclass
class LoadReport:
    """What a load did. `missing`: model parameters the checkpoint did not provide;
    `ignored`: checkpoint entries with no counterpart here (e.g. a two-stage detector head)."""

    format: str
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        lines = [
            f"format {self.format}: loaded {len(self.loaded)} tensors, "
            f"{len(self.missing)} model tensors not in checkpoint, {len(self.ignored)} ignored"
        ]
        if self.missing:
            lines.append("  not in checkpoint: " + _abbrev(self.missing))
        if self.ignored:
            lines.append("  ignored: " + _abbrev(self.ignored))
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


def _abbrev(names: list[str], limit: int = 8) -> str:
    head = ", ".join(names[:limit])
    return head + (f", ... (+{len(names) - limit})" if len(names) > limit else "")


class _ArraysOnlyUnpickler(pickle.Unpickler):
    """Admits only what a pickled dict of numpy arrays needs (Python docs, "Restricting
    Globals"); anything else raises instead of running."""

    ALLOWED: ClassVar[set[tuple[str, str]]] = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("collections", "OrderedDict"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load global {module}.{name}")
        return super().find_class(module, name)


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a checkpoint file: .safetensors, torch files, or detectron2 .pkl."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        return load_file(str(path))
    try:
        if path.suffix == ".pkl":
            with path.open("rb") as f:
                obj = _ArraysOnlyUnpickler(f, encoding="latin1").load()
        else:
            obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # both unpicklers refuse anything not allow-listed
        raise CheckpointError(f"{path}: not loadable as weights only ({e})") from e
    for key in ("model", "state_dict", "module"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected a dict of tensors, got {type(obj).__name__}")
    return {
        k: torch.as_tensor(v) for k, v in obj.items() if isinstance(v, torch.Tensor | np.ndarray)
    }


def detect_format(sd: dict[str, torch.Tensor]) -> str:
    keys = list(sd)
    if any(k.startswith("backbone.net.") for k in keys):
        return "detectron2"
    if any(k.startswith("image_encoder.") for k in keys):
        return "sam"
    if any(k.startswith("backbone.blocks.") for k in keys):
        return "rgtp"
    if any(k.startswith("blocks.") for k in keys) and "pos_embed" in sd:
        return "timm"
    raise CheckpointError("cannot tell the checkpoint format from its keys; pass format=...")


def _pos_embed_grid(pos: torch.Tensor, name: str) -> torch.Tensor:
    """(1, G, G, C), or (1, G² [+1 cls], C) as detectron2 stores it -> (1, G, G, C)."""
    if pos.ndim == 4:
        return pos
    n = pos.shape[1]
    side = math.isqrt(n)
    if side * side != n:
        side = math.isqrt(n - 1)
        if side * side != n - 1:
            raise CheckpointError(f"{name}: {n} positions is neither a square nor square + 1")
        pos = pos[:, 1:]  # drop the pretraining CLS position
    return pos.reshape(1, side, side, pos.shape[2])


def convert(sd: dict[str, torch.Tensor], fmt: str) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Rename a foreign state dict into Detector parameter names.

    Returns (renamed tensors, ignored keys). Trunk names are the same in timm, detectron2
    and SAM up to a prefix, except SAM's MLP (`lin1/lin2` here `fc1/fc2`).
    """
    out: dict[str, torch.Tensor] = {}
    ignored: list[str] = []
    for key, t in sd.items():
        if fmt == "rgtp":
            new = key
        elif fmt == "timm":
            new = None if key.startswith(("neck.", "head.", "fc_norm.")) else "backbone." + key
        elif fmt == "detectron2":
            if key.startswith("backbone.net."):
                new = "backbone." + key[len("backbone.net.") :]
            elif m := re.match(r"backbone\.simfp_(\d)\.(.*)", key):
                new = f"neck.levels.p{m.group(1)}.{m.group(2)}"
            else:
                new = None
        elif fmt == "sam":
            if key.startswith("image_encoder.") and not key.startswith("image_encoder.neck."):
                new = "backbone." + key[len("image_encoder.") :]
                new = new.replace(".mlp.lin1.", ".mlp.fc1.").replace(".mlp.lin2.", ".mlp.fc2.")
            else:
                new = None
        else:
            raise CheckpointError(f"unknown format {fmt!r}; choose from {FORMATS}")
        if new is None:
            ignored.append(key)
            continue
        if new == "backbone.pos_embed":
            t = _pos_embed_grid(t, key)
        out[new] = t
    return out, ignored


def load_state_dict_into(
    model: nn.Module, sd: dict[str, torch.Tensor], fmt: str = "auto", strict: bool = True
) -> LoadReport:
    """Load a (possibly foreign) state dict into a Detector or a bare ViTDetBackbone.

    Relative-position tables trained at another size are resampled linearly, exactly as
    ViTDet does at run time. With `strict`, any model tensor the checkpoint lacks is an
    error; backbone-only checkpoints (timm, SAM) need `strict=False` for a whole detector.
    """
    fmt = detect_format(sd) if fmt == "auto" else fmt
    renamed, ignored = convert(sd, fmt)
    from rgtp.models.vitdet import ViTDetBackbone  # a bare backbone has no "backbone." prefix

    if isinstance(model, ViTDetBackbone):
        ignored += [k for k in renamed if not k.startswith("backbone.")]
        renamed = {
            k[len("backbone.") :]: v for k, v in renamed.items() if k.startswith("backbone.")
        }
    report = LoadReport(format=fmt, ignored=ignored)
    target = model.state_dict()
    unexpected = sorted(set(renamed) - set(target))
    if unexpected:
        raise CheckpointError(
            f"{len(unexpected)} checkpoint tensors have no place in the model: "
            + _abbrev(unexpected)
        )
    fitted: dict[str, torch.Tensor] = {}
    for name, t in renamed.items():
        want = target[name].shape
        if (
            name.endswith(("rel_pos_h", "rel_pos_w"))
            and t.shape != want
            and t.shape[1:] == want[1:]
        ):
            report.notes.append(f"{name}: resampled {t.shape[0]} -> {want[0]} offsets")
            t = resize_rel_pos(t.float(), want[0])
        if name.endswith("pos_embed") and t.shape != want:
            raise CheckpointError(
                f"{name}: checkpoint grid {tuple(t.shape[1:3])} != model grid "
                f"{tuple(want[1:3])}; build the model with pretrain_grid={t.shape[1]}"
            )
        if t.shape != want:
            raise CheckpointError(
                f"{name}: checkpoint shape {tuple(t.shape)} != model {tuple(want)}"
            )
        fitted[name] = t.to(target[name].dtype)
    report.missing = sorted(set(target) - set(fitted))
    if strict and report.missing:
        raise CheckpointError(
            f"checkpoint lacks {len(report.missing)} model tensors: " + _abbrev(report.missing)
        )
    model.load_state_dict(fitted, strict=False)
    report.loaded = sorted(fitted)
    return report


def load_weights(
    model: nn.Module, path: str | Path, fmt: str = "auto", strict: bool = True
) -> LoadReport:
    """Read a checkpoint file and load it into `model` (see `load_state_dict_into`)."""
    return load_state_dict_into(model, read_state_dict(path), fmt, strict)


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
