"""How a named model is built and its weights found and loaded: the policy `rgtp export`,
`eval` and `finetune-temporal` follow, for the API as well.

A user's checkpoint is read in its own naming (`fmt`, "auto": told from its keys); without
one, the weights shipped for the name (rgtp's naming); with `random_init`, none.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from rgtp.package.family import family_of, get_config, shipped_weights


@dataclass
class LoadedModel:
    model: nn.Module  # in eval mode
    path: str | Path | None  # the weights loaded; None: random init
    report: Any  # the family's LoadReport (what loaded, what is missing); None: random init


def load_model(
    name: str,
    size: int | None = None,
    weights: str | Path | None = None,
    weights_format: str = "auto",
    *,
    random_init: bool = False,
    allow_missing: bool = False,
) -> LoadedModel:
    """The named model (any family) at input side `size` (None: its own) with `weights`,
    else the shipped weights, else (`random_init`) random values.

    Every encoder tensor must load; tensors outside it (a detector's neck and head, a
    ViViT's temporal transformer under a timm image checkpoint) the checkpoint lacks keep
    their random values only with `allow_missing`, and the report lists them.
    """
    cfg = get_config(name, size)
    family = family_of(cfg)
    model = family.build(cfg)
    path = weights or (None if random_init else shipped_weights(name))
    if path is None and not random_init:
        raise ValueError(
            f"no weights for {name}: pass --weights PATH, or --random-init for timing work"
        )
    report = None
    if path is not None:
        fmt = weights_format if weights else "rgtp"
        report = family.load_checkpoint(model, path, fmt, not allow_missing)
    return LoadedModel(model.eval(), path, report)
