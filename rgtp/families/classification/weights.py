"""Loading ViViT weights: rgtp's own files, the authors' (`eventful`: Eventful Transformers'
names, see `rgtp.families.classification.eventful`), and timm `vit_*_patch16_*` image ViTs
into the spatial encoder.

A timm ViT has the spatial encoder's names already (`cls_token`, `pos_embed`,
`patch_embed.proj`, `blocks.i.*`, `norm`); two tensors need adapting:
- the 2-D patch kernel (C, 3, p, p) becomes a tubelet kernel (C, 3, t, p, p) by inflation,
  "central" (all weight on the central frame, ViViT's choice) or "average" (the kernel
  repeated over the t frames and divided by t). Both make a static clip embed exactly as
  the image model embeds its frame.
- the position table (1, 1 + G², C) is resampled bicubically when G is not the model's grid
  (the CLS position is kept as is).
The classifier (`head`) of the image model has no counterpart and is reported as ignored;
the temporal transformer and classifier are left as they are and reported missing.
Files are read by `rgtp.models.checkpoint_files.read_state_dict` (safetensors or
weights-only).
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from rgtp.families.classification.eventful import looks_eventful, their_name, their_names
from rgtp.families.classification.vivit import SpatialEncoder, ViViT
from rgtp.models.checkpoint_files import CheckpointError, LoadReport, read_state_dict
from rgtp.models.vit_ops import resize_abs_pos

INFLATIONS = ("central", "average")
FORMATS = ("auto", "rgtp", "timm", "eventful")  # checkpoint namings; auto: told from the keys

# Entries of a timm ViT that belong to its image classifier, not to the spatial encoder.
_TIMM_IGNORED = ("head.", "fc_norm.", "head_drop.")


def inflate_patch_kernel(weight: torch.Tensor, frames: int, inflation: str) -> torch.Tensor:
    """2-D patch kernel (C, 3, p, p) -> tubelet kernel (C, 3, frames, p, p).

    "central": the kernel on frame frames // 2, zeros elsewhere; "average": the kernel on
    every frame, divided by `frames`. On a static clip both give the 2-D embedding.
    """
    if inflation not in INFLATIONS:
        raise ValueError(f"inflation must be one of {INFLATIONS}, got {inflation!r}")
    if inflation == "average":
        return weight.unsqueeze(2).repeat(1, 1, frames, 1, 1) / frames
    out = weight.new_zeros(*weight.shape[:2], frames, *weight.shape[2:])
    out[:, :, frames // 2] = weight
    return out


def resize_pos_embed(pos: torch.Tensor, grid: int, name: str = "pos_embed") -> torch.Tensor:
    """Position table with a CLS row (1, 1 + G², C) -> (1, 1 + grid², C).

    The CLS row is kept; the G x G patch rows are resampled bicubically as the detector's
    backbone resamples its table (`vit_ops.resize_abs_pos`). timm's own loader also
    antialiases when it shrinks a table, so a checkpoint loaded at a smaller grid differs
    slightly from timm's `create_model(..., img_size=...)` of it.
    """
    n = pos.shape[1] - 1 if pos.ndim == 3 else 0
    side = math.isqrt(n)
    if n == 0 or pos.shape[0] != 1 or side * side != n:
        raise CheckpointError(
            f"{name}: expected (1, 1 + G², C), one CLS position and a square grid, "
            f"got {tuple(pos.shape)}"
        )
    if side == grid:
        return pos
    patches = pos[:, 1:].reshape(1, side, side, -1)
    patches = resize_abs_pos(patches.float(), grid).reshape(1, grid * grid, -1)
    return torch.cat([pos[:, :1].float(), patches], dim=1).to(pos.dtype)


def convert_timm_vit(
    sd: dict[str, torch.Tensor], encoder: SpatialEncoder, inflation: str
) -> tuple[dict[str, torch.Tensor], dict[str, str], list[str]]:
    """A timm ViT state dict -> (spatial-encoder tensors, ignored key -> why, notes).

    Raises CheckpointError when the checkpoint is not a class-token ViT or its patch size
    differs from the model's.
    """
    cfg = encoder.cfg
    for key in ("cls_token", "pos_embed", "patch_embed.proj.weight"):
        if key not in sd:
            raise CheckpointError(
                f"checkpoint has no {key}: ViViT's spatial encoder loads timm ViTs with a "
                f"class token (vit_*_patch16_*), keys cls_token, pos_embed, patch_embed.proj, "
                f"blocks.i.*, norm"
            )
    out: dict[str, torch.Tensor] = {}
    ignored: dict[str, str] = {}
    notes: list[str] = []
    for key, t in sd.items():
        if key.startswith(_TIMM_IGNORED):
            ignored[key] = "the image classifier (ViViT classifies with its temporal head)"
            continue
        if key == "patch_embed.proj.weight":
            if t.ndim != 4 or t.shape[-2:] != (cfg.patch_size, cfg.patch_size):
                raise CheckpointError(
                    f"{key}: checkpoint patch kernel {tuple(t.shape)} is not "
                    f"(C, {cfg.in_chans}, {cfg.patch_size}, {cfg.patch_size}); build the "
                    f"model with that checkpoint's patch_size"
                )
            if cfg.tubelet > 1:
                notes.append(f"{key}: inflated to {cfg.tubelet} frames ({inflation})")
            t = inflate_patch_kernel(t, cfg.tubelet, inflation)
        elif key == "pos_embed":
            resized = resize_pos_embed(t, cfg.grid, key)
            if resized.shape != t.shape:
                notes.append(f"{key}: resampled grid {math.isqrt(t.shape[1] - 1)} -> {cfg.grid}")
            t = resized
        out[key] = t
    return out, ignored, notes


def _check_width(sd: dict[str, torch.Tensor], encoder: SpatialEncoder) -> None:
    width = sd["cls_token"].shape[-1]
    if width != encoder.cfg.embed_dim:
        raise CheckpointError(
            f"checkpoint width {width} != model embed_dim {encoder.cfg.embed_dim}; build the "
            f"spatial encoder with embed_dim={width} (and that checkpoint's depth and heads)"
        )


def _listed(names: list[str], limit: int = 6) -> str:
    more = f", ... (+{len(names) - limit} more)" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def _fit(
    model: torch.nn.Module,
    tensors: dict[str, torch.Tensor],
    required: set[str],
    fmt: str,
    shown: dict[str, str] | None = None,
) -> LoadReport:
    """Check `tensors` (model names) against `model` and load them: no unknown names, equal
    shapes, every name in `required` present; nothing is loaded unless all checks pass.
    Messages name tensors as `shown` maps them (model name -> name in the file), if given."""
    target = model.state_dict()
    shown = shown or {}
    unexpected = sorted(set(tensors) - set(target))
    if unexpected:
        raise CheckpointError(
            f"{len(unexpected)} checkpoint tensors (format {fmt}) have no place in the model: "
            + _listed(unexpected)
        )
    mismatched = [
        f"{shown.get(k, k)} {tuple(t.shape)} vs model {tuple(target[k].shape)}"
        for k, t in tensors.items()
        if t.shape != target[k].shape
    ]
    if mismatched:
        raise CheckpointError(
            f"{len(mismatched)} checkpoint tensors (format {fmt}) differ in shape from the "
            f"model: {_listed(mismatched, 3)}"
        )
    lacking = sorted(required - set(tensors))
    if lacking:
        raise CheckpointError(
            f"checkpoint (format {fmt}) lacks {len(lacking)} model tensors: "
            + _listed(sorted(shown.get(k, k) for k in lacking))
        )
    model.load_state_dict({k: t.to(target[k].dtype) for k, t in tensors.items()}, strict=False)
    report = LoadReport(format=fmt, loaded=sorted(tensors))
    report.missing = sorted(set(target) - set(tensors))
    if isinstance(model, ViViT):
        for part in ("spatial", "temporal"):
            names = [k for k in target if k.startswith(part + ".")]
            report.groups[part] = (sum(k in tensors for k in names), len(names))
    return report


def load_timm_vit_into(
    model: ViViT | SpatialEncoder, sd: dict[str, torch.Tensor], inflation: str = "central"
) -> LoadReport:
    """Load a timm ViT state dict into the spatial encoder of `model`.

    Every spatial-encoder tensor must come from the checkpoint; a whole ViViT's temporal
    transformer and classifier keep their values and are listed in `report.missing`.
    """
    encoder = model.spatial if isinstance(model, ViViT) else model
    tensors, ignored, notes = convert_timm_vit(sd, encoder, inflation)
    _check_width(tensors, encoder)
    prefix = "spatial." if isinstance(model, ViViT) else ""
    report = _fit(
        model,
        {prefix + k: t for k, t in tensors.items()},
        {prefix + k for k in encoder.state_dict()},
        "timm",
    )
    report.ignored.update(ignored)
    report.notes += notes
    return report


def load_eventful_into(
    model: ViViT, sd: dict[str, torch.Tensor], strict: bool = True
) -> LoadReport:
    """Load a state dict in the authors' names (format "eventful") into a ViViT.

    Every spatial tensor must come from it, the temporal transformer and classifier too
    when `strict`; a name the model has no place for, or a shape unlike the model's, refuses
    the whole file, named as in the file. The spatial position table is resampled to the
    model's grid, which the authors' model does at run time.
    """
    theirs = their_names(model.state_dict())
    unknown = sorted(set(sd) - set(theirs))
    if unknown:
        raise CheckpointError(
            f"{len(unknown)} checkpoint tensors (format eventful) have no place in the model: "
            + _listed(unknown)
        )
    tensors = {theirs[k]: t for k, t in sd.items()}
    notes = []
    pos = "spatial.pos_embed"
    if pos in tensors:
        resized = resize_pos_embed(tensors[pos], model.cfg.spatial.grid, their_name(pos))
        if resized.shape != tensors[pos].shape:
            side = math.isqrt(tensors[pos].shape[1] - 1)
            notes.append(f"{their_name(pos)}: resampled grid {side} -> {model.cfg.spatial.grid}")
        tensors[pos] = resized
    names = model.state_dict()
    required = set(names) if strict else {k for k in names if k.startswith("spatial.")}
    report = _fit(model, tensors, required, "eventful", {v: k for k, v in theirs.items()})
    report.notes += notes
    return report


def detect_format(sd: dict[str, torch.Tensor]) -> str:
    """The naming of a ViViT checkpoint, told from its keys: rgtp, eventful or timm."""
    if any(k.startswith(("spatial.", "temporal.")) for k in sd):
        return "rgtp"
    if looks_eventful(sd):
        return "eventful"
    if any(k.startswith("blocks.") for k in sd) and "pos_embed" in sd:
        return "timm"
    raise CheckpointError(
        f"neither rgtp ViViT weights (spatial.*, temporal.*), the authors' (embedding.conv.*, "
        f"spatial_model.*, temporal_model.*, classifier.*) nor a timm ViT (cls_token, "
        f"pos_embed, blocks.*): keys {_listed(sorted(sd), 3)}"
    )


def load_vivit_weights(
    model: ViViT,
    path: str | Path,
    fmt: str = "auto",
    strict: bool = False,
    inflation: str = "central",
) -> LoadReport:
    """Load a checkpoint file into a ViViT, in the naming `fmt` (`FORMATS`; "auto": told
    from the keys): rgtp's own (keys `spatial.*`, `temporal.*`; every tensor required), the
    authors' ("eventful", `load_eventful_into`) or a timm image ViT (spatial encoder only,
    see `load_timm_vit_into`). With `strict` every model tensor must come from the file, so
    a timm ViT is refused. Nothing is loaded unless the whole load succeeds; CheckpointError
    messages start with the file's path."""
    if fmt not in FORMATS:
        raise CheckpointError(f"a ViViT reads checkpoints in {', '.join(FORMATS)}, not {fmt!r}")
    sd = read_state_dict(path)
    try:
        fmt = detect_format(sd) if fmt == "auto" else fmt
        if fmt == "rgtp":
            return _fit(model, sd, set(model.state_dict()), "rgtp")
        if fmt == "eventful":
            return load_eventful_into(model, sd, strict)
        if strict:
            convert_timm_vit(sd, model.spatial, inflation)  # a file that is no timm ViT says so
            temporal = sorted(k for k in model.state_dict() if k.startswith("temporal."))
            raise CheckpointError(
                f"a timm image ViT fills the spatial encoder only; the {len(temporal)} tensors "
                f"of the temporal transformer and classifier ({_listed(temporal, 3)}) would "
                "keep random values: allow that (--allow-missing-head) or pass whole ViViT "
                "weights"
            )
        return load_timm_vit_into(model, sd, inflation)
    except CheckpointError as e:
        raise CheckpointError(f"{path}: {e}") from e
