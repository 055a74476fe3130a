"""The ViViT factorised encoder: timm parity of the spatial encoder, tubelet inflation, the
loader's errors, shapes of the named models, and the dense FLOPs against the paper."""

from __future__ import annotations

import importlib

import pytest
import torch
from safetensors.torch import save_file

from rgtp.families import get_config
from rgtp.families.classification.config import (
    SpatialConfig,
    TemporalConfig,
    ViViTConfig,
)
from rgtp.families.classification.flops import KINETICS_VIEWS, step_macs, view_macs
from rgtp.families.classification.vivit import SpatialEncoder, ViViT
from rgtp.families.classification.weights import (
    inflate_patch_kernel,
    load_timm_vit_into,
    load_vivit_weights,
    resize_pos_embed,
)
from rgtp.models.checkpoint_files import CheckpointError, save_weights
from tests.conftest import randomize
from tests.reference_impls import import_timm_sam_module

SMALL = dict(img_size=64, embed_dim=96, depth=3, num_heads=3)


def timm_vit(seed: int = 0, **kwargs) -> torch.nn.Module:
    """timm's own VisionTransformer, every parameter random (so biases and norms count)."""
    import_timm_sam_module()  # installs the torchvision placeholder timm's import needs
    vt = importlib.import_module("timm.models.vision_transformer")
    torch.manual_seed(seed)
    return randomize(vt.VisionTransformer(patch_size=16, num_classes=10, **kwargs), seed)


def spatial_tokens(encoder: SpatialEncoder, step: torch.Tensor) -> torch.Tensor:
    """Our tokens after the final norm, as timm's forward_features returns: (B, 1 + N, C)."""
    _, x = encoder.embed(step)
    for block in encoder.blocks:
        x, _ = block(x)
    return encoder.norm(x)


def timm_parity(kwargs: dict) -> float:
    ref = timm_vit(**kwargs)
    encoder = SpatialEncoder(SpatialConfig(tubelet=1, norm_eps=ref.norm.eps, **kwargs)).eval()
    report = load_timm_vit_into(encoder, ref.state_dict())
    assert report.format == "timm" and not report.missing
    assert set(report.ignored) == {"head.weight", "head.bias"}
    x = torch.randn(2, 3, kwargs["img_size"], kwargs["img_size"])
    with torch.no_grad():
        want = ref.forward_features(x)
        got = spatial_tokens(encoder, x.unsqueeze(2))
        cls_err = (encoder(x.unsqueeze(2)) - ref.forward_head(want, pre_logits=True)).abs().max()
    return max((got - want).abs().max().item(), cls_err.item())


def test_spatial_encoder_matches_timm_vit() -> None:
    err = timm_parity(SMALL)
    print(f"timm VisionTransformer dim 96 depth 3 @64 vs ours: max abs {err:.3g}")
    assert err <= 1e-4, err


def test_spatial_encoder_matches_timm_vit_b16() -> None:
    """True ViT-B/16 shapes (vit_base_patch16_224), random weights."""
    err = timm_parity(dict(img_size=224, embed_dim=768, depth=12, num_heads=12))
    print(f"timm vit_base_patch16_224 vs ours: max abs {err:.3g}")
    assert err <= 1e-4, err


@pytest.mark.parametrize("inflation", ["central", "average"])
def test_inflated_tubelets_embed_a_static_clip_as_the_image_model(inflation: str) -> None:
    ref = timm_vit(**SMALL)
    encoder = SpatialEncoder(SpatialConfig(tubelet=2, norm_eps=ref.norm.eps, **SMALL)).eval()
    report = load_timm_vit_into(encoder, ref.state_dict(), inflation)
    assert any("inflated to 2 frames" in n for n in report.notes)
    a, b = torch.randn(2, 1, 3, 64, 64)
    static = torch.stack([a, a], dim=2)  # (1, 3, 2, 64, 64)
    with torch.no_grad():
        err = (spatial_tokens(encoder, static) - ref.forward_features(a)).abs().max().item()
        assert err <= 1e-4, err
        # On a moving clip the two differ as they should: the central frame, or the mean.
        seen = b if inflation == "central" else (a + b) / 2
        z0, _ = encoder.embed(torch.stack([a, b], dim=2))
        want = ref.patch_embed(seen)
    assert (z0 - want).abs().max().item() <= 1e-4


def test_inflation_and_position_resampling() -> None:
    w = torch.randn(8, 3, 16, 16)
    central = inflate_patch_kernel(w, 3, "central")
    assert central.shape == (8, 3, 3, 16, 16)
    assert torch.equal(central[:, :, 1], w) and not central[:, :, [0, 2]].any()
    assert torch.allclose(inflate_patch_kernel(w, 4, "average").sum(2), w, atol=1e-6)
    with pytest.raises(ValueError, match="inflation must be one of"):
        inflate_patch_kernel(w, 2, "edge")
    # Position tables: the CLS row stays, the grid is resampled as timm does (antialias off).
    import_timm_sam_module()
    from timm.layers import resample_abs_pos_embed

    pos = torch.randn(1, 1 + 14 * 14, 32)
    ours = resize_pos_embed(pos, 8)
    theirs = resample_abs_pos_embed(pos, [8, 8], num_prefix_tokens=1, antialias=False)
    assert ours.shape == (1, 65, 32) and torch.equal(ours[:, 0], pos[:, 0])
    assert (ours - theirs).abs().max().item() <= 1e-5
    assert resize_pos_embed(pos, 14) is pos


def test_loading_into_a_whole_vivit_and_at_another_grid(tmp_path) -> None:
    ref = timm_vit(img_size=224, embed_dim=96, depth=2, num_heads=3)
    cfg = ViViTConfig(
        "t",
        SpatialConfig(img_size=128, embed_dim=96, depth=2, num_heads=3),
        TemporalConfig(depth=1, num_heads=3),
        num_frames=4,
        num_classes=5,
    )
    model = ViViT(cfg)
    before = {k: v.clone() for k, v in model.temporal.state_dict().items()}
    spatial = {k: v.clone() for k, v in model.spatial.state_dict().items()}
    # strict (what the CLI does without --allow-missing-head): refused, nothing loaded
    save_file(ref.state_dict(), tmp_path / "timm.safetensors")
    with pytest.raises(CheckpointError, match=r"timm.safetensors: a timm image ViT fills the "
                       r"spatial encoder only; the 18 tensors of the temporal"):  # fmt: skip
        load_vivit_weights(model, tmp_path / "timm.safetensors", "timm", strict=True)
    for k, v in model.spatial.state_dict().items():
        assert torch.equal(v, spatial[k]), k
    report = load_timm_vit_into(model, ref.state_dict())
    assert report.groups == {"spatial": (len(report.loaded), len(report.loaded)),
                             "temporal": (0, len(before))}  # fmt: skip
    assert report.missing == sorted(f"temporal.{k}" for k in before)
    assert any("resampled grid 14 -> 8" in n for n in report.notes)
    for k, v in model.temporal.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert torch.equal(model.spatial.blocks[1].mlp.fc2.weight, ref.blocks[1].mlp.fc2.weight)


def test_loader_errors_name_the_problem(tmp_path) -> None:
    enc = SpatialEncoder(SpatialConfig(tubelet=2, **SMALL))
    sd = timm_vit(**SMALL).state_dict()
    with pytest.raises(CheckpointError, match=r"patch kernel .* build the model"):
        load_timm_vit_into(enc, dict(sd, **{"patch_embed.proj.weight": torch.zeros(96, 3, 8, 8)}))
    wide = timm_vit(img_size=64, embed_dim=48, depth=3, num_heads=3).state_dict()
    with pytest.raises(CheckpointError, match="width 48 != model embed_dim 96"):
        load_timm_vit_into(enc, wide)
    deeper = timm_vit(img_size=64, embed_dim=96, depth=4, num_heads=3).state_dict()
    with pytest.raises(CheckpointError, match=r"no place in the model: blocks\.3\."):
        load_timm_vit_into(enc, deeper)
    shallower = timm_vit(img_size=64, embed_dim=96, depth=2, num_heads=3).state_dict()
    with pytest.raises(CheckpointError, match=r"lacks 12 model tensors: blocks\.2\."):
        load_timm_vit_into(enc, shallower)
    no_cls = timm_vit(class_token=False, global_pool="avg", **SMALL).state_dict()
    with pytest.raises(CheckpointError, match="no cls_token"):
        load_timm_vit_into(enc, no_cls)
    with pytest.raises(CheckpointError, match="one CLS position and a square grid"):
        load_timm_vit_into(enc, dict(sd, pos_embed=torch.zeros(1, 20, 96)))
    with pytest.raises(ValueError, match="inflation must be one of"):
        load_timm_vit_into(enc, sd, inflation="first")
    # nothing was loaded by the failed attempts
    assert not torch.equal(enc.blocks[0].attn.qkv.weight, sd["blocks.0.attn.qkv.weight"])


def test_rgtp_weights_round_trip(tmp_path) -> None:
    cfg = get_config("vivit-small")
    model = randomize(ViViT(cfg))
    path = tmp_path / "v.safetensors"
    save_weights(model, path)
    again = ViViT(cfg)
    report = load_vivit_weights(again, path)
    assert report.format == "rgtp" and not report.missing
    for (k, a), b in zip(model.state_dict().items(), again.state_dict().values(), strict=True):
        assert torch.equal(a, b), k
    other = ViViT(ViViTConfig("o", cfg.spatial, cfg.temporal, num_frames=8, num_classes=12))
    with pytest.raises(CheckpointError, match=r"temporal\.pos_embed \(1, 9, 192\) vs model"):
        load_vivit_weights(other, path)
    torch.save({"backbone.net.x": torch.zeros(1)}, tmp_path / "d.pth")
    with pytest.raises(CheckpointError, match="neither rgtp ViViT weights"):
        load_vivit_weights(again, tmp_path / "d.pth")


def test_vivit_small_shapes_and_split_forward() -> None:
    cfg = get_config("vivit-small")
    model = randomize(ViViT(cfg))
    clip = torch.rand(1, 3, cfg.num_frames, 128, 128) * 255
    with torch.no_grad():
        logits = model(clip)
        # The runtime's path, one time step at a time, gives the same logits.
        feats = []
        for s in range(cfg.num_steps):
            z0, x = model.embed(clip[:, :, 2 * s : 2 * s + 2])
            assert z0.shape == (1, 64, 192) and x.shape == (1, 65, 192)
            for block in model.blocks:
                x, attn = block(x)
            assert attn.shape == (1, 3, 65, 65)
            feats.append(model.cls_features(x))
        stepped = model.temporal_head(torch.stack(feats, dim=1))
    assert logits.shape == (1, 12)
    assert (logits - stepped).abs().max().item() <= 1e-5
    with pytest.raises(ValueError, match=r"a time step is \(3, 2, 128, 128\)"):
        model.embed(clip[:, :, :1])
    with pytest.raises(ValueError, match="a clip is 16 frames, got 12"):
        model(clip[:, :, :12])
    with pytest.raises(ValueError, match="reads 8 time steps, got 7"):
        model.temporal_head(torch.zeros(1, 7, 192))


def test_vivit_b_shapes() -> None:
    cfg = get_config("vivit-b")
    assert (cfg.spatial.grid, cfg.num_steps, cfg.spatial.depth, cfg.temporal.depth) == (
        14,
        16,
        12,
        4,
    )
    with torch.device("meta"):  # shapes only: no memory, no arithmetic
        model = ViViT(cfg)
        z0, x = model.embed(torch.empty(1, 3, 2, 224, 224))
        logits = model.temporal_head(torch.empty(1, 16, 768))
    assert model.spatial.patch_embed.proj.weight.shape == (768, 3, 2, 16, 16)
    assert model.spatial.pos_embed.shape == (1, 197, 768)
    assert model.temporal.pos_embed.shape == (1, 17, 768)
    spatial = sum(p.numel() for p in model.spatial.parameters())
    assert 86e6 < spatial < 87e6  # ViT-B/16 without its classifier, kernel doubled in time
    assert z0.shape == (1, 196, 768) and x.shape == (1, 197, 768) and logits.shape == (1, 400)


def test_config_round_trip_and_validation() -> None:
    for name in ("vivit-b", "vivit-b-epic", "vivit-small"):
        cfg = get_config(name)
        assert ViViTConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="not a multiple of the tubelet"):
        ViViTConfig("x", num_frames=31)
    with pytest.raises(ValueError, match="unknown model 'vivit-h'"):
        get_config("vivit-h")


def test_vivit_small_classes_are_synthmotion_classes() -> None:
    from rgtp.data.synthmotion import CLASSES

    assert get_config("vivit-small").class_names == CLASSES


def test_dense_vivit_b_kinetics_flops_match_the_paper() -> None:
    """3.36 TFLOPs (multiply-accumulates) per Kinetics-400 video: 4 clips x 3 crops of 32
    frames at 224 px. See rgtp.families.classification.flops for the counting."""
    views = KINETICS_VIEWS[0] * KINETICS_VIEWS[1]
    view = view_macs(get_config("vivit-b"))
    total = views * view.total / 1e12
    print(f"vivit-b dense: {view.total / 1e9:.1f} GMACs/view, {total:.3f} TMACs per 12 views")
    assert abs(total - 3.36) / 3.36 <= 0.02, total
    # The authors' counter leaves out the Conv3d tubelet embedding.
    without_embed = views * (view.total - view.patch_embed) / 1e12
    assert abs(without_embed - 3.36) / 3.36 <= 0.005, without_embed


def test_pruned_view_flops() -> None:
    cfg = get_config("vivit-b")
    n = cfg.spatial.num_tokens
    dense = view_macs(cfg).total
    assert view_macs(cfg, k=n).total == dense
    costs = [view_macs(cfg, k=k).total for k in (32, 98, 196)]
    assert costs == sorted(costs) and costs[0] < 0.4 * dense
    # reset steps 0 and 8 of 16: a checkerboard reset costs less than a dense one
    assert view_macs(cfg, k=78, reset_k=n // 2).total < view_macs(cfg, k=78).total
    _, s = step_macs(cfg.spatial)
    assert view_macs(cfg, k=1, reset_every=1).spatial == cfg.num_steps * s
    with pytest.raises(ValueError, match=r"K must be in 1\.\.196"):
        step_macs(cfg.spatial, 197)
