"""ViViT checkpoints under the authors' parameter names (format "eventful").

The RGTP authors run ViViT as Eventful Transformers' `FactorizedViViT` does (their
repositories `RGTPdyn/RGTP` and `WISION-Lab/eventful-transformer`, `models/vivit.py`), and
their converted Kinetics-400 and EPIC-Kitchens checkpoints carry its names:

    embedding.conv.{weight,bias}                      Conv3d tubelet embedding
    {spatial,temporal}_model.class_token              (1, 1, C)
    {spatial,temporal}_model.backbone.position_encoding.encoding
                                                      (1, 1 + G², C) / (1, 1 + s, C), CLS first
    {spatial,temporal}_model.backbone.blocks.i.{input_layer_norm, qkv, projection,
        mlp_layer_norm, mlp_1, mlp_2}.{weight,bias}   pre-norm blocks, qkv laid out (3, h, d)
    {spatial,temporal}_model.layer_norm.{weight,bias} the final norm, read at the CLS token
    classifier.{weight,bias}                          (L, C)

Their blocks compute what rgtp's do (LayerNorm eps 1e-6, softmax(q kᵀ / sqrt(d)) v, exact
GELU), so every tensor maps one to one and only the names change. Their spatial position
table is resampled bicubically (align_corners=False) when the input grid is not the table's,
at run time; rgtp does the same once, when loading. Their temporal table is never resampled,
nor is it here. The files before their conversion script (TAdaConv's `backbone.layers.*`)
are not read: convert them with the authors' script first.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import torch

# rgtp name -> the authors' name; the first rule that matches the whole rgtp name decides.
_BLOCK, _THEIR_BLOCK = r"(spatial|temporal)\.blocks\.(\d+)\.", r"\1_model.backbone.blocks.\2."
_RULES: tuple[tuple[str, str], ...] = (
    (r"spatial\.patch_embed\.proj\.(\w+)", r"embedding.conv.\1"),
    (r"temporal\.head\.(\w+)", r"classifier.\1"),
    (r"(spatial|temporal)\.cls_token", r"\1_model.class_token"),
    (r"(spatial|temporal)\.pos_embed", r"\1_model.backbone.position_encoding.encoding"),
    (r"(spatial|temporal)\.norm\.(\w+)", r"\1_model.layer_norm.\2"),
    (_BLOCK + r"norm1\.(\w+)", _THEIR_BLOCK + r"input_layer_norm.\3"),
    (_BLOCK + r"attn\.qkv\.(\w+)", _THEIR_BLOCK + r"qkv.\3"),
    (_BLOCK + r"attn\.proj\.(\w+)", _THEIR_BLOCK + r"projection.\3"),
    (_BLOCK + r"norm2\.(\w+)", _THEIR_BLOCK + r"mlp_layer_norm.\3"),
    (_BLOCK + r"mlp\.fc([12])\.(\w+)", _THEIR_BLOCK + r"mlp_\3.\4"),
)

# Keys whose presence says a file is in the authors' naming (`looks_eventful`).
MARKERS = ("embedding.conv.", "spatial_model.", "temporal_model.")


def their_name(name: str) -> str:
    """The authors' name of the rgtp ViViT tensor `name` (e.g. "spatial.blocks.0.norm1.weight"
    -> "spatial_model.backbone.blocks.0.input_layer_norm.weight")."""
    for pattern, template in _RULES:
        m = re.fullmatch(pattern, name)
        if m:
            return m.expand(template)
    raise KeyError(f"{name}: a ViViT tensor with no name in the authors' model")


def their_names(names: Iterable[str]) -> dict[str, str]:
    """{the authors' name: rgtp name} for every rgtp tensor name in `names`."""
    return {their_name(n): n for n in names}


def looks_eventful(sd: dict[str, torch.Tensor]) -> bool:
    """Whether a state dict is in the authors' naming (some key under `MARKERS`)."""
    return any(k.startswith(MARKERS) for k in sd)
