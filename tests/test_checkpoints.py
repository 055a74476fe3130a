"""Our dense backbone equals the public implementations it loads weights from, and
the loaders explain every mismatch."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from rgtp.families.detection.checkpoints import load_state_dict_into, load_weights
from rgtp.families.detection.detector import Detector
from rgtp.models.checkpoint_files import CheckpointError, read_state_dict, save_weights
from rgtp.models.config import BackboneConfig
from rgtp.models.vitdet import ViTDetBackbone
from tests.conftest import randomize, tiny_config
from tests.reference_impls import import_sam_image_encoder, import_timm_sam_module


def small_cfg(img_size: int = 224, **kw) -> BackboneConfig:
    """Our backbone matching `sam_encoder`: dim 96, 4 blocks, global blocks 1 and 3."""
    return BackboneConfig(
        img_size=img_size,
        embed_dim=96,
        depth=4,
        num_heads=3,
        window_size=6,
        global_blocks=(1, 3),
        pretrain_grid=14,
        **kw,
    )


def timm_trunk_features(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Output of timm's blocks during timm's own forward_features (before its SAM neck)."""
    captured = {}
    hook = model.blocks.register_forward_hook(lambda m, i, o: captured.setdefault("x", o))
    with torch.no_grad():
        model.forward_features(x)
    hook.remove()
    return captured["x"]


def compare_with_timm(timm_kwargs: dict, cfg: BackboneConfig) -> float:
    sam_mod = import_timm_sam_module()
    torch.manual_seed(0)
    ref = randomize(sam_mod.VisionTransformerSAM(**timm_kwargs))
    ours = ViTDetBackbone(cfg).eval()
    report = load_state_dict_into(ours, ref.state_dict(), "timm")
    assert report.format == "timm" and not report.missing
    x = torch.randn(1, 3, cfg.img_size, cfg.img_size)
    with torch.no_grad():
        mine = ours(x)
    return (mine - timm_trunk_features(ref, x)).abs().max().item()


def test_timm_samvit_small_config_matches() -> None:
    kwargs = dict(
        img_size=224,
        patch_size=16,
        embed_dim=96,
        depth=4,
        num_heads=3,
        window_size=6,
        global_attn_indexes=(1, 3),
        use_rel_pos=True,
    )
    sam_mod = import_timm_sam_module()
    eps = sam_mod.VisionTransformerSAM(**kwargs).blocks[0].norm1.eps
    err = compare_with_timm(kwargs, small_cfg(norm_eps=eps))
    assert err <= 1e-4, err


def test_timm_samvit_base_patch16_at_672_matches() -> None:
    """The acceptance check: samvit_base_patch16 (ViT-B, SAM/ViTDet layout) at 672 px."""
    sam_mod = import_timm_sam_module()
    kwargs = dict(
        img_size=672,
        patch_size=16,
        embed_dim=768,
        depth=12,
        num_heads=12,
        window_size=14,
        global_attn_indexes=(2, 5, 8, 11),
        use_rel_pos=True,
    )
    eps = sam_mod.VisionTransformerSAM(**kwargs).blocks[0].norm1.eps
    cfg = BackboneConfig(img_size=672, pretrain_grid=42, norm_eps=eps)
    err = compare_with_timm(kwargs, cfg)
    print(f"samvit_base_patch16 @672 vs ours: max abs error {err:.3g}")
    assert err <= 1e-4, err


def sam_encoder(img_size: int, window: int):
    encoder_cls = import_sam_image_encoder()
    torch.manual_seed(1)
    enc = encoder_cls(
        img_size=img_size,
        patch_size=16,
        embed_dim=96,
        depth=4,
        num_heads=3,
        mlp_ratio=4.0,
        out_chans=32,
        qkv_bias=True,
        use_rel_pos=True,
        window_size=window,
        global_attn_indexes=(1, 3),
    )
    return randomize(enc)


def sam_trunk_features(enc, x: torch.Tensor) -> torch.Tensor:
    captured = {}
    hook = enc.blocks[-1].register_forward_hook(lambda m, i, o: captured.setdefault("x", o))
    with torch.no_grad():
        enc(x)
    hook.remove()
    return captured["x"]


def test_sam_image_encoder_matches() -> None:
    enc = sam_encoder(224, 6)  # grid 14, windows padded to 18
    ours = ViTDetBackbone(small_cfg()).eval()
    sd = {f"image_encoder.{k}": v for k, v in enc.state_dict().items()}
    report = load_state_dict_into(ours, sd)
    assert report.format == "sam" and not report.missing
    assert any(k.startswith("image_encoder.neck.") for k in report.ignored)
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        err = (ours(x) - sam_trunk_features(enc, x)).abs().max().item()
    assert err <= 1e-4, err


def detectron2_checkpoint_from_sam(enc, with_cls: bool = True) -> dict[str, np.ndarray]:
    """The trunk of SAM's encoder written under detectron2 ViTDet names, as its model zoo
    stores them: `backbone.net.*`, timm MLP names, a (1, 1 + G², C) position table."""
    out = {}
    for k, v in enc.state_dict().items():
        if k.startswith("neck."):
            continue
        k = k.replace("mlp.lin1", "mlp.fc1").replace("mlp.lin2", "mlp.fc2")
        if k == "pos_embed":
            g, c = v.shape[1], v.shape[3]
            v = v.reshape(1, g * g, c)
            if with_cls:
                v = torch.cat([torch.zeros(1, 1, c), v], dim=1)
        out[f"backbone.net.{k}"] = v.numpy()
    out["roi_heads.box_predictor.cls_score.weight"] = np.zeros((31, 8), np.float32)
    return out


def test_detectron2_names_and_pickle_load(tmp_path) -> None:
    enc = sam_encoder(224, 6)
    path = tmp_path / "model_final.pkl"
    with path.open("wb") as f:
        pickle.dump({"model": detectron2_checkpoint_from_sam(enc), "__author__": "test"}, f)
    ours = ViTDetBackbone(small_cfg()).eval()
    report = load_weights(ours, path)
    assert report.format == "detectron2"
    assert "roi_heads.box_predictor.cls_score.weight" in report.ignored
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        err = (ours(x) - sam_trunk_features(enc, x)).abs().max().item()
    assert err <= 1e-4, err


def test_rel_pos_tables_trained_at_another_size_are_resampled() -> None:
    """A checkpoint for 224 px loaded into a 256 px model: global tables 27 -> 31 rows."""
    enc = sam_encoder(224, 6)
    sd = {f"image_encoder.{k}": v for k, v in enc.state_dict().items()}
    ours = ViTDetBackbone(small_cfg(img_size=256))
    report = load_state_dict_into(ours, sd)
    assert any("global blocks [1, 3] resized 27 -> 31" in n for n in report.notes), report.notes
    src = enc.blocks[1].attn.rel_pos_h
    got = ours.blocks[1].attn.rel_pos_h
    assert got.shape == (31, 32)
    assert torch.allclose(got[0], src[0]) and torch.allclose(got[-1], src[-1])


def test_loader_errors_name_the_problem(tmp_path) -> None:
    det = Detector(tiny_config())
    sd = det.state_dict()
    broken = dict(sd)
    broken["backbone.blocks.0.attn.qkv.weight"] = torch.zeros(3, 3)
    with pytest.raises(CheckpointError, match=r"blocks\.0\.attn\.qkv\.weight.*shape"):
        load_state_dict_into(Detector(tiny_config()), broken)
    extra = dict(sd, **{"backbone.blocks.99.norm1.weight": torch.zeros(96)})
    with pytest.raises(CheckpointError, match=r"no place in the model: backbone\.blocks\.99"):
        load_state_dict_into(Detector(tiny_config()), extra)
    partial = {k: v for k, v in sd.items() if not k.startswith("head.")}
    with pytest.raises(CheckpointError, match="neck and head tensors are not in the checkpoint"):
        load_state_dict_into(Detector(tiny_config()), partial)
    report = load_state_dict_into(Detector(tiny_config()), partial, strict=False)
    assert report.missing and all(k.startswith("head.") for k in report.missing)
    wrong_grid = dict(sd, **{"backbone.pos_embed": torch.zeros(1, 10, 10, 96)})
    with pytest.raises(CheckpointError, match="pretrain_grid=10"):
        load_state_dict_into(Detector(tiny_config()), wrong_grid)


def test_round_trip_and_unsafe_pickles_are_refused(tmp_path) -> None:
    det = randomize(Detector(tiny_config()))
    path = tmp_path / "w.safetensors"
    save_weights(det, path)
    again = Detector(tiny_config())
    load_weights(again, path)
    for (k, a), b in zip(det.state_dict().items(), again.state_dict().values(), strict=True):
        assert torch.equal(a, b), k
    half = tmp_path / "w16.safetensors"
    save_weights(det, half, dtype=torch.float16)
    assert half.stat().st_size < 0.55 * path.stat().st_size
    load_weights(again, half)
    w = again.backbone.blocks[0].attn.qkv.weight
    assert w.dtype == torch.float32
    assert torch.equal(w, det.backbone.blocks[0].attn.qkv.weight.half().float())

    class Payload:
        def __reduce__(self):
            return (print, ("executed",))

    evil = tmp_path / "evil.pkl"
    with evil.open("wb") as f:
        pickle.dump({"model": {"w": Payload()}}, f)
    with pytest.raises(CheckpointError, match="weights only"):
        read_state_dict(evil)
    evil_torch = tmp_path / "evil.pth"
    torch.save({"model": {"w": Payload()}}, evil_torch)
    with pytest.raises(CheckpointError, match="weights only"):
        read_state_dict(evil_torch)
    with pytest.raises(FileNotFoundError):
        read_state_dict(tmp_path / "missing.pth")
