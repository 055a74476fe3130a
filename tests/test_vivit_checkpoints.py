"""ViViT checkpoints under the authors' names (Eventful Transformers' `FactorizedViViT`, what
the RGTP authors run): a file at vivit-b's shapes loads through the loader `--weights` calls
and gives the logits of a reference written here from the authors' definition; refused
files name their keys; the authors' pixel normalisation and their EPIC-Kitchens config."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch
import torch.nn.functional as F

from rgtp.families import get_config
from rgtp.families.classification.config import SpatialConfig, TemporalConfig, ViViTConfig
from rgtp.families.classification.family import StepEmbed
from rgtp.families.classification.flops import PAPER_DENSE_TMACS_PER_VIDEO, view_macs
from rgtp.families.classification.vivit import ViViT
from rgtp.families.classification.weights import load_vivit_weights
from rgtp.families.loading import load_model
from rgtp.models.checkpoint_files import CheckpointError

# The authors' preprocessing: pixels in [0, 1], then torchvision Normalize(0.45, 0.225).
MEAN, STD = 0.45, 0.225
LN_EPS = 1e-6


# --------------------------------------------------------------------------- the reference


def authors_state_dict(
    dim: int,
    depths: tuple[int, int],
    grid: int,
    steps: int,
    classes: int,
    tubelet: tuple[int, int, int] = (2, 16, 16),
    mlp_ratio: int = 4,
    seed: int = 0,
) -> dict[str, torch.Tensor]:
    """Random tensors under the authors' names and shapes: the tubelet Conv3d `embedding`,
    the `spatial_model` and `temporal_model` (class token, position encoding with the class
    token first, pre-norm blocks, final norm) and the `classifier`."""
    g = torch.Generator().manual_seed(seed)

    def rand(*shape: int, scale: float = 0.05, mean: float = 0.0) -> torch.Tensor:
        return mean + scale * torch.randn(shape, generator=g)

    hidden = dim * mlp_ratio
    sd = {
        "embedding.conv.weight": rand(dim, 3, *tubelet, scale=0.02),
        "embedding.conv.bias": rand(dim),
    }
    parts = (("spatial", depths[0], grid * grid), ("temporal", depths[1], steps))
    for part, depth, tokens in parts:
        sd[f"{part}_model.class_token"] = rand(1, 1, dim, scale=0.5)
        table = rand(1, 1 + tokens, dim, scale=0.5)  # the class token's row first
        sd[f"{part}_model.backbone.position_encoding.encoding"] = table
        for i in range(depth):
            b = f"{part}_model.backbone.blocks.{i}."
            for norm in ("input_layer_norm", "mlp_layer_norm"):
                sd[b + norm + ".weight"] = rand(dim, scale=0.1, mean=1.0)
                sd[b + norm + ".bias"] = rand(dim)
            for name, (out, inp) in {
                "qkv": (3 * dim, dim),
                "projection": (dim, dim),
                "mlp_1": (hidden, dim),
                "mlp_2": (dim, hidden),
            }.items():
                sd[b + name + ".weight"] = rand(out, inp, scale=1 / math.sqrt(inp))
                sd[b + name + ".bias"] = rand(out)
        sd[f"{part}_model.layer_norm.weight"] = rand(dim, scale=0.1, mean=1.0)
        sd[f"{part}_model.layer_norm.bias"] = rand(dim)
    sd["classifier.weight"] = rand(classes, dim, scale=1 / math.sqrt(dim))
    sd["classifier.bias"] = rand(classes)
    return sd


def _block(x: torch.Tensor, sd: dict[str, torch.Tensor], prefix: str, heads: int) -> torch.Tensor:
    """The authors' `Block` (global, no extras): x + projection(attention(LN(x))), then
    x + mlp_2(GELU(mlp_1(LN(x)))); qkv splits as (3, heads, dim / heads)."""

    def p(name: str) -> torch.Tensor:
        return sd[prefix + name]

    dim = x.shape[-1]
    y = F.layer_norm(x, (dim,), p("input_layer_norm.weight"), p("input_layer_norm.bias"), LN_EPS)
    qkv = F.linear(y, p("qkv.weight"), p("qkv.bias"))
    q, k, v = qkv.view(*x.shape[:-1], 3, heads, dim // heads).permute(2, 0, 3, 1, 4)
    a = ((q / math.sqrt(dim // heads)) @ k.transpose(-2, -1)).softmax(dim=-1)
    y = (a @ v).permute(0, 2, 1, 3).reshape(x.shape)
    x = x + F.linear(y, p("projection.weight"), p("projection.bias"))
    y = F.layer_norm(x, (dim,), p("mlp_layer_norm.weight"), p("mlp_layer_norm.bias"), LN_EPS)
    y = F.linear(F.gelu(F.linear(y, p("mlp_1.weight"), p("mlp_1.bias"))), p("mlp_2.weight"))
    return x + y + p("mlp_2.bias")


def _sub_model(
    x: torch.Tensor, sd: dict[str, torch.Tensor], part: str, heads: int, grid: int | None
) -> torch.Tensor:
    """The authors' `ViViTSubModel`: class token first, position encoding (the spatial one
    resampled bicubically when the token grid is not the table's), blocks, final norm, the
    class token out. x: (B, M, C) -> (B, C)."""
    m = f"{part}_model."
    x = torch.cat([sd[m + "class_token"].expand(x.shape[0], -1, -1), x], dim=1)
    enc = sd[m + "backbone.position_encoding.encoding"]
    if grid is not None and enc.shape[1] - 1 != grid * grid:
        side = math.isqrt(enc.shape[1] - 1)
        table = enc[:, 1:].transpose(1, 2).reshape(1, -1, side, side)
        table = F.interpolate(table, (grid, grid), mode="bicubic", align_corners=False)
        enc = torch.cat([enc[:, :1], table.flatten(2).transpose(1, 2)], dim=1)
    x = x + enc
    i = 0
    while f"{m}backbone.blocks.{i}.qkv.weight" in sd:
        x = _block(x, sd, f"{m}backbone.blocks.{i}.", heads)
        i += 1
    norm = (sd[m + "layer_norm.weight"], sd[m + "layer_norm.bias"])
    return F.layer_norm(x, x.shape[-1:], *norm, LN_EPS)[:, 0]


def authors_logits(sd: dict[str, torch.Tensor], video: torch.Tensor, heads: int) -> torch.Tensor:
    """The authors' `FactorizedViViT` on one view, before its softmax and view average:
    video (B, T, 3, H, W) in [0, 1], already at the model's input size -> logits (B, L)."""
    x = (video - MEAN) / STD
    w = sd["embedding.conv.weight"]
    x = F.conv3d(x.permute(0, 2, 1, 3, 4), w, sd["embedding.conv.bias"], stride=w.shape[2:])
    grid = x.shape[-1]
    x = x.flatten(start_dim=-2).permute(0, 2, 3, 1)  # (B, steps, patches, C)
    # every time step on its own (the authors loop over them; folded into the batch here)
    cls = _sub_model(x.flatten(0, 1), sd, "spatial", heads, grid).unflatten(0, x.shape[:2])
    return F.linear(
        _sub_model(cls, sd, "temporal", heads, None), sd["classifier.weight"], sd["classifier.bias"]
    )


# --------------------------------------------------------------------------- small models

SMALL = ViViTConfig(
    "small-authors",
    SpatialConfig(img_size=64, embed_dim=96, depth=2, num_heads=3),
    TemporalConfig(depth=1, num_heads=3),
    num_frames=6,
    num_classes=5,
    pixel_mean=get_config("vivit-b").pixel_mean,
    pixel_std=get_config("vivit-b").pixel_std,
)


def small_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    return authors_state_dict(96, (2, 1), grid=4, steps=3, classes=5, seed=seed)


def rgtp_logits(model: ViViT, video: torch.Tensor) -> torch.Tensor:
    """rgtp's ViViT on the reference's input: (B, T, 3, S, S) in [0, 1] -> logits."""
    with torch.no_grad():
        return model.eval()(video.permute(0, 2, 1, 3, 4) * 255)


def test_authors_checkpoint_gives_the_authors_logits(tmp_path) -> None:
    sd = small_state_dict()
    path = tmp_path / "authors.pth"
    torch.save(sd, path)
    video = torch.rand(2, 6, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    want = authors_logits(sd, video, heads=3)
    for fmt in ("eventful", "auto"):
        model = ViViT(SMALL)
        report = load_vivit_weights(model, path, fmt, strict=True)
        assert report.format == "eventful" and not report.missing and not report.notes
        assert len(report.loaded) == len(sd) == len(model.state_dict())
        err = (rgtp_logits(model, video) - want).abs().max().item()
        assert err <= 1e-4, err
    # a model at another input size: the spatial table is resampled as the authors' model
    # resamples it at run time
    wider = SpatialConfig(img_size=96, embed_dim=96, depth=2, num_heads=3)
    model = ViViT(dataclasses.replace(SMALL, spatial=wider))
    report = load_vivit_weights(model, path, "eventful", strict=True)
    assert report.notes == [
        "spatial_model.backbone.position_encoding.encoding: resampled grid 4 -> 6"
    ]
    video = torch.rand(1, 6, 3, 96, 96, generator=torch.Generator().manual_seed(2))
    err = (rgtp_logits(model, video) - authors_logits(sd, video, heads=3)).abs().max().item()
    assert err <= 1e-4, err


def test_refused_authors_checkpoints_name_their_keys(tmp_path) -> None:
    sd = small_state_dict()
    model = ViViT(SMALL)
    before = {k: v.clone() for k, v in model.state_dict().items()}

    def refused(tensors: dict[str, torch.Tensor], match: str, strict: bool = True) -> None:
        path = tmp_path / "c.pth"
        torch.save(tensors, path)
        with pytest.raises(CheckpointError, match=match):
            load_vivit_weights(model, path, "eventful", strict=strict)

    gone = "spatial_model.backbone.blocks.1.mlp_2.bias"
    refused({k: v for k, v in sd.items() if k != gone}, rf"lacks 1 model tensors: {gone}$")
    deeper = dict(sd, **{"spatial_model.backbone.blocks.2.qkv.weight": torch.zeros(288, 96)})
    refused(deeper, r"1 checkpoint tensors \(format eventful\) have no place in the model: "
                    r"spatial_model\.backbone\.blocks\.2\.qkv\.weight")  # fmt: skip
    noun_head = dict(sd, **{"head.linear2.weight": torch.zeros(300, 96)})
    refused(noun_head, r"no place in the model: head\.linear2\.weight")
    refused(
        dict(sd, **{"classifier.weight": torch.zeros(97, 96), "classifier.bias": torch.zeros(97)}),
        r"2 checkpoint tensors \(format eventful\) differ in shape from the model: "
        r"classifier\.weight \(97, 96\) vs model \(5, 96\)",
    )
    spatial_only = {k: v for k, v in sd.items() if not k.startswith(("temporal", "classif"))}
    temporal = len(sd) - len(spatial_only)
    refused(
        spatial_only,
        rf"lacks {temporal} model tensors: classifier\.bias, classifier\.weight, "
        r"temporal_model\.backbone\.blocks\.0\.input_layer_norm\.bias",
    )
    # an rgtp file named as the authors' is refused by name, and the other way round
    refused({"spatial.cls_token": torch.zeros(1, 1, 96)}, r"no place in the model: spatial\.cls")
    path = tmp_path / "c.pth"
    torch.save(sd, path)
    with pytest.raises(CheckpointError, match=r"\(format rgtp\) have no place .*: classifier"):
        load_vivit_weights(model, path, "rgtp")
    with pytest.raises(CheckpointError, match="has no cls_token: ViViT's spatial encoder loads"):
        load_vivit_weights(model, path, "timm", strict=True)
    with pytest.raises(CheckpointError, match="reads checkpoints in auto, rgtp, timm, eventful"):
        load_vivit_weights(model, path, "detectron2")
    torch.save({"backbone.net.x": torch.zeros(1)}, path)
    with pytest.raises(CheckpointError, match=r"c\.pth: neither rgtp .* keys backbone\.net\.x"):
        load_vivit_weights(model, path)
    # nothing was loaded by the refused files
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    # without strict, a spatial-only file loads and leaves the temporal part as it was
    torch.save(spatial_only, path)
    report = load_vivit_weights(model, path, "eventful", strict=False)
    assert report.groups["spatial"] == (len(spatial_only), len(spatial_only))
    assert len(report.missing) == temporal
    assert all(k.startswith("temporal.") for k in report.missing)
    refused({k: v for k, v in spatial_only.items() if k != gone}, gone, strict=False)


@pytest.mark.parametrize("name", ["vivit-b", "vivit-b-epic"])
def test_authors_normalisation_is_in_the_config_and_the_embed_graph(name: str) -> None:
    cfg = get_config(name)
    data = json.loads(json.dumps(cfg.to_dict()))  # what the manifest records (plan.config)
    assert data["pixel_mean"] == [114.75] * 3 and data["pixel_std"] == [57.375] * 3
    assert ViViTConfig.from_dict(data) == cfg
    # the embed graph's module normalises [0, 255] pixels as the authors do [0, 1] ones
    model = ViViT(SMALL).eval()
    pixels = torch.rand(1, 3, 2, 64, 64, generator=torch.Generator().manual_seed(0)) * 255
    with torch.no_grad():
        patches, tokens = StepEmbed(model)(pixels)
        z0, want = model.spatial.embed((pixels / 255 - MEAN) / STD)
    assert (tokens - want[0]).abs().max().item() <= 1e-5
    assert (patches - z0[0]).abs().max().item() <= 1e-5
    # the shipped vivit-small keeps what it was trained with
    small = get_config("vivit-small")
    assert small.pixel_mean == small.pixel_std == (127.5, 127.5, 127.5)


def test_epic_kitchens_config_is_the_authors() -> None:
    cfg = get_config("vivit-b-epic")
    sp = cfg.spatial
    assert (sp.img_size, sp.grid, sp.tubelet, sp.patch_size) == (320, 20, 2, 16)
    assert (cfg.num_frames, cfg.num_steps, cfg.num_classes) == (32, 16, 97)
    assert (sp.embed_dim, sp.depth, cfg.temporal.depth) == (768, 12, 4)
    # the paper: 7.12 TFLOPs per video dense, 4 clips x 3 crops as on Kinetics
    tmacs = 12 * view_macs(cfg).total / 1e12
    assert PAPER_DENSE_TMACS_PER_VIDEO["vivit-b-epic"] == 7.12
    assert tmacs == pytest.approx(7.12, rel=0.02)


def test_vivit_b_authors_checkpoint_loads_through_the_cli_loader(tmp_path) -> None:
    """A file at vivit-b's true shapes (ViT-B/16, 2x16x16 tubelets, 14 x 14 grid, 16 time
    steps, 400 classes) through `load_model`, what `--weights --weights-format` calls, into
    vivit-b built at 32 px (`--size 32`: every tensor at its true shape but the spatial
    position table, resampled as the authors' model does at run time), which keeps the dense
    forward cheap; the logits equal the reference's."""
    sd = authors_state_dict(768, (12, 4), grid=14, steps=16, classes=400)
    path = tmp_path / "vivit_b_kinetics400.pth"
    torch.save(sd, path)
    loaded = load_model("vivit-b", 32, path, "eventful")
    model = loaded.model
    assert loaded.report.format == "eventful" and not loaded.report.missing
    assert len(loaded.report.loaded) == len(sd) == len(model.state_dict())
    assert loaded.report.notes == [
        "spatial_model.backbone.position_encoding.encoding: resampled grid 14 -> 2"
    ]
    assert torch.equal(model.spatial.blocks[11].mlp.fc2.weight, sd[
        "spatial_model.backbone.blocks.11.mlp_2.weight"])  # fmt: skip
    assert torch.equal(model.temporal.pos_embed, sd[
        "temporal_model.backbone.position_encoding.encoding"])  # fmt: skip
    video = torch.rand(1, 32, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    want = authors_logits(sd, video, heads=12)
    err = (rgtp_logits(model, video) - want).abs().max().item()
    assert want.shape == (1, 400) and err <= 1e-4, err
