"""Loading weights: our own files, timm `samvit_*`, detectron2 ViTDet, SAM and Hugging Face
`VitDetModel` / `VitDetBackbone` checkpoints.

Files are read by `rgtp.models.checkpoint_files` (safetensors, `torch.load(weights_only=True)`
or an arrays-only unpickler). Every foreign format is then renamed into this project's
parameter names (one table of rules per format; the original key of every renamed tensor is
kept for messages), and one loader checks names and shapes. A model loads fully or not at
all: every backbone tensor must come from the checkpoint, and the neck and head too unless
`strict=False`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from rgtp.models.checkpoint_files import CheckpointError, LoadReport, abbreviate, read_state_dict
from rgtp.models.vit_ops import resize_rel_pos
from rgtp.models.vitdet import ViTDetBackbone

FORMATS = ("auto", "rgtp", "timm", "detectron2", "sam", "hf")


# --------------------------------------------------------------------------- names

# Per format: (pattern over the whole key, rgtp name template or None, why unused if None).
# The first rule that matches decides; a key no rule matches has no place in the model
# (an error). Trunk names are timm's in timm, detectron2 and SAM up to a
# prefix, except SAM's MLP (`lin1/lin2`, here `fc1/fc2`).
_HF = r"(?:vitdet\.|backbone\.)?"  # a VitDet inside a larger HF model (e.g. VitMatte)
_RULES: dict[str, list[tuple[str, str | None, str]]] = {
    "rgtp": [(r"(.*)", r"\1", "")],
    "timm": [
        (r"(neck|head|fc_norm)\..*", None, "timm neck and classifier head"),
        (r"(.*)", r"backbone.\1", ""),
    ],
    "detectron2": [
        (r"backbone\.net\.(.*)", r"backbone.\1", ""),
        (r"backbone\.simfp_(\d)\.(.*)", r"neck.levels.p\1.\2", ""),
        (r"(proposal_generator|roi_heads)\..*", None, "detectron2 heads"),
        (r"pixel_(mean|std)", None, "detectron2 input normalisation (rgtp's is in the config)"),
    ],
    "sam": [
        (r"image_encoder\.neck\..*", None, "SAM image-encoder neck"),
        (r"image_encoder\.(blocks\.\d+\.mlp)\.lin(\d)\.(.*)", r"backbone.\1.fc\2.\3", ""),
        (r"image_encoder\.(.*)", r"backbone.\1", ""),
        (r"(prompt_encoder|mask_decoder)\..*", None, "SAM prompt encoder and mask decoder"),
    ],
    "hf": [
        (_HF + r"embeddings\.projection\.(.*)", r"backbone.patch_embed.proj.\1", ""),
        (_HF + r"embeddings\.position_embeddings", r"backbone.pos_embed", ""),
        (_HF + r"encoder\.layer\.(\d+)\.attention\.(.*)", r"backbone.blocks.\1.attn.\2", ""),
        (_HF + r"encoder\.layer\.(\d+)\.(.*)", r"backbone.blocks.\1.\2", ""),
        (r".*", None, "modules around the Hugging Face VitDet backbone"),
    ],
}


def detect_format(sd: dict[str, torch.Tensor]) -> str:
    """The checkpoint format, told from the key names."""
    keys = list(sd)
    if any(k.startswith("backbone.net.") for k in keys):
        return "detectron2"
    if any(k.startswith("image_encoder.") for k in keys):
        return "sam"
    rgtp = ("backbone.blocks.", "backbone.patch_embed.", "backbone.pos_embed", "neck.levels.")
    if any(k.startswith(rgtp) for k in keys):
        return "rgtp"
    if any(re.match(_HF + r"(encoder\.layer\.\d+\.|embeddings\.projection\.)", k) for k in keys):
        return "hf"
    if any(k.startswith("blocks.") for k in keys) and "pos_embed" in sd:
        return "timm"
    raise CheckpointError(
        f"cannot tell the checkpoint format from its keys ({abbreviate(keys, 3)}); pass one of "
        f"{', '.join(FORMATS[1:])} (CLI: --weights-format)"
    )


def _pos_embed_grid(pos: torch.Tensor, key: str) -> torch.Tensor:
    """(1, G, G, C), or (1, G² [+1 cls], C) as detectron2 and HF store it -> (1, G, G, C)."""
    if pos.ndim == 4:
        return pos
    if pos.ndim != 3:
        raise CheckpointError(f"{key}: position embedding of shape {tuple(pos.shape)}")
    n = pos.shape[1]
    for cls in (0, 1):  # without, then with the pretraining CLS position
        side = round((n - cls) ** 0.5)
        if side * side == n - cls:
            return pos[:, cls:].reshape(1, side, side, pos.shape[2])
    raise CheckpointError(f"{key}: {n} positions is neither a square nor square + 1")


@dataclass
class Renamed:
    """A foreign state dict in rgtp names: tensors and origin keyed by rgtp name (origin:
    the key in the file); ignored: key in the file -> why rgtp does not use it; unknown:
    keys in the file that the format's rules do not name."""

    tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    origin: dict[str, str] = field(default_factory=dict)
    ignored: dict[str, str] = field(default_factory=dict)
    unknown: list[str] = field(default_factory=list)


def _rename(key: str, fmt: str) -> tuple[str | None, str | None]:
    """(rgtp name, None) for a key the format maps, (None, why unused) for one it drops,
    (None, None) for one it does not know."""
    for pattern, template, reason in _RULES[fmt]:
        m = re.fullmatch(pattern, key)
        if m:
            return (m.expand(template), None) if template is not None else (None, reason)
    return None, None


def convert(sd: dict[str, torch.Tensor], fmt: str) -> Renamed:
    """Rename a foreign state dict into Detector parameter names (see `_RULES`)."""
    if fmt not in _RULES:
        raise CheckpointError(f"unknown checkpoint format {fmt!r}; choose from {FORMATS}")
    out = Renamed()
    for key, t in sd.items():
        new, reason = _rename(key, fmt)
        if new is None:
            if reason is None:
                out.unknown.append(key)
            else:
                out.ignored[key] = reason
            continue
        if new in out.tensors:
            raise CheckpointError(f"{out.origin[new]} and {key} both give {new}")
        out.tensors[new] = _pos_embed_grid(t, key) if new == "backbone.pos_embed" else t
        out.origin[new] = key
    return out


# --------------------------------------------------------------------------- loading


def _fit_rel_pos(
    t: torch.Tensor, want: torch.Size, key: str, block: int, window: int
) -> torch.Tensor | None:
    """A relative-position table (L, d) for a model table of `want` rows, or None if the
    shapes do not differ in length only. Windowed blocks refuse another length: the table
    covers every offset inside one window, so another length means another window size.
    Global blocks' tables are resampled linearly, what detectron2's `get_rel_pos` does at
    run time when the token grid differs from the one the table was trained at."""
    if t.ndim != 2 or t.shape[1] != want[1]:
        return None
    if window:
        trained = (t.shape[0] + 1) // 2
        raise CheckpointError(
            f"{key}: block {block} is windowed and its relative-position table has "
            f"{t.shape[0]} rows, i.e. windows of {trained} tokens; the model's windows are "
            f"{window} tokens ({want[0]} rows). Windowed tables are not resampled: use a model "
            f"with window_size={trained}"
        )
    return resize_rel_pos(t.float(), want[0])


def _backbone_of(model: nn.Module) -> tuple[ViTDetBackbone, str]:
    """The model's ViTDetBackbone and the prefix of its names in the model's state dict."""
    if isinstance(model, ViTDetBackbone):
        return model, ""
    backbone = getattr(model, "backbone", None)
    if not isinstance(backbone, ViTDetBackbone):
        raise TypeError(f"expected a Detector or a ViTDetBackbone, got {type(model).__name__}")
    return backbone, "backbone."


def load_state_dict_into(
    model: nn.Module, sd: dict[str, torch.Tensor], fmt: str = "auto", strict: bool = True
) -> LoadReport:
    """Load a (possibly foreign) state dict into a Detector or a bare ViTDetBackbone.

    Every backbone tensor must be in the checkpoint. With `strict` the neck and head must
    be too; without, those the checkpoint lacks keep their initial values (backbone-only
    checkpoints such as timm's or SAM's, detectron2's whose heads rgtp does not run).
    Global blocks' relative-position tables trained at another input size are resampled
    as ViTDet does; windowed blocks' must match the window size. CheckpointError names
    checkpoint keys as they are in the file.
    """
    fmt = detect_format(sd) if fmt == "auto" else fmt
    renamed = convert(sd, fmt)
    backbone, prefix = _backbone_of(model)
    if not prefix:  # a bare backbone: checkpoint neck/head tensors have nowhere to go
        for name in [n for n in renamed.tensors if not n.startswith("backbone.")]:
            renamed.ignored[renamed.origin.pop(name)] = "neck and head (the model is a backbone)"
            del renamed.tensors[name]
        renamed.tensors = {n[len("backbone.") :]: t for n, t in renamed.tensors.items()}
        renamed.origin = {n[len("backbone.") :]: k for n, k in renamed.origin.items()}
    report = LoadReport(format=fmt, ignored=renamed.ignored)
    target = model.state_dict()
    unexpected = renamed.unknown + [renamed.origin[n] for n in renamed.tensors if n not in target]
    if unexpected:
        raise CheckpointError(
            f"{len(unexpected)} checkpoint tensors (format {fmt}) have no place in the model: "
            + abbreviate(unexpected)
        )
    fitted: dict[str, torch.Tensor] = {}
    mismatched: list[str] = []
    resized: dict[tuple[int, int], list[int]] = {}
    global_rows: dict[int, int] = {}  # model-global block -> its table's rows in the file
    for name, t in renamed.tensors.items():
        key, want = renamed.origin[name], target[name].shape
        rel_pos = re.search(r"blocks\.(\d+)\.attn\.rel_pos_[hw]$", name)
        if rel_pos:
            block = int(rel_pos.group(1))
            window = backbone.blocks[block].window_size
            if not window:
                global_rows[block] = t.shape[0]
            fit = _fit_rel_pos(t, want, key, block, window) if t.shape != want else None
            if fit is not None:
                resized.setdefault((t.shape[0], want[0]), []).append(block)
                t = fit
        if name.endswith("pos_embed") and t.shape != want:
            raise CheckpointError(
                f"{key}: checkpoint grid {tuple(t.shape[1:3])} != model grid "
                f"{tuple(want[1:3])}; build the model with pretrain_grid={t.shape[1]}"
            )
        if t.shape != want:
            mismatched.append(f"{key} shape {tuple(t.shape)}, model {tuple(want)}")
            continue
        fitted[name] = t.to(target[name].dtype)
    if mismatched:
        raise CheckpointError(
            f"{len(mismatched)} checkpoint tensors (format {fmt}) do not fit the model's "
            f"shapes: {abbreviate(mismatched, 3)}"
        )
    if len(set(global_rows.values())) > 1:  # all global blocks were trained on one grid
        rows = ", ".join(f"block {b}: {n}" for b, n in sorted(global_rows.items()))
        raise CheckpointError(
            f"the relative-position tables of the model's global blocks differ in length in "
            f"the checkpoint ({rows} rows): its global blocks are not the model's "
            f"{sorted(global_rows)}"
        )
    for (old, new), blocks in resized.items():
        report.notes.append(
            f"relative-position tables of global blocks {sorted(set(blocks))} resized "
            f"{old} -> {new} offsets for the {backbone.cfg.grid}x{backbone.cfg.grid} token "
            "grid (linear interpolation, as detectron2's get_rel_pos)"
        )
    _check_complete(report, target, fitted, prefix, fmt, strict)
    model.load_state_dict(fitted, strict=False)
    report.loaded = sorted(fitted)
    return report


def _check_complete(
    report: LoadReport,
    target: dict[str, torch.Tensor],
    fitted: dict[str, torch.Tensor],
    prefix: str,
    fmt: str,
    strict: bool,
) -> None:
    """Fill `report.groups` and `report.missing`; raise unless the model loads fully (the
    neck and head may be partial without `strict`)."""
    missing: dict[str, list[str]] = {}
    for name in target:
        group = name.split(".")[0] if prefix else "backbone"
        loaded, total = report.groups.get(group, (0, 0))
        report.groups[group] = (loaded + (name in fitted), total + 1)
        if name not in fitted:
            missing.setdefault(group, []).append(name)
    if missing.get("backbone"):
        names = missing["backbone"]
        raise CheckpointError(
            f"{len(names)} of {report.groups['backbone'][1]} backbone tensors are not in the "
            f"checkpoint (format {fmt}, {len(fitted)} tensors matched): {abbreviate(names)}. "
            "Every backbone tensor must load; is this a checkpoint of this model?"
        )
    report.missing = [n for names in missing.values() for n in names]
    if strict and report.missing:
        raise CheckpointError(
            f"{len(report.missing)} neck and head tensors are not in the checkpoint (format "
            f"{fmt}): {abbreviate(report.missing)}. To keep them randomly initialised (e.g. for "
            "your own head), load with strict=False (CLI: --allow-missing-head)"
        )


def load_weights(
    model: nn.Module, path: str | Path, fmt: str = "auto", strict: bool = True
) -> LoadReport:
    """Read a checkpoint file and load it into `model` (see `load_state_dict_into`);
    CheckpointError messages start with the file's path."""
    sd = read_state_dict(path)
    try:
        return load_state_dict_into(model, sd, fmt, strict)
    except CheckpointError as e:
        raise CheckpointError(f"{path}: {e}") from e
