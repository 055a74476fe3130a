"""Published checkpoints load as they are, and a checkpoint loads fully or fails.

- detectron2's model-zoo Mask R-CNN ViTDet-B `model_final` (every key at its true shape,
  random values, pickled as the model zoo does) loads into `vitdet-b` through the CLI's
  loader; the backbone map equals segment-anything's encoder run with detectron2's
  position-embedding and relative-position rules, and the neck equals detectron2's
  SimpleFeaturePyramid written out from its layer names.
- Hugging Face `VitDetModel` / `VitDetBackbone` state dicts load; rgtp's dense backbone
  equals HF's output.
- A checkpoint that does not fit (almost nothing matches, missing head, windowed rel-pos
  tables of another window size, keys of another format) and a file that cannot be read
  (empty, text, truncated, another format under the suffix, unsafe pickles) fail with a
  message naming the file and the keys as they are in the file.
"""

from __future__ import annotations

import functools
import logging
import pickle
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from rgtp.cli import build_parser, main
from rgtp.cli.options import load_model
from rgtp.families import get_config
from rgtp.families.detection.checkpoints import (
    CheckpointError,
    load_state_dict_into,
    read_state_dict,
)
from rgtp.families.detection.detector import Detector
from tests.conftest import randomize, tiny_config
from tests.reference_impls import import_hf_vitdet, import_sam_image_encoder

# ----------------------------------------------------------------- detectron2 model zoo

VITDET_B_GLOBAL = (2, 5, 8, 11)


def vitdet_b_model_zoo_shapes() -> dict[str, tuple[int, ...]]:
    """Every tensor of detectron2's published Mask R-CNN ViTDet-B `model_final`, at its
    shape, as configs/common/models/mask_rcnn_vitdet.py builds the model: ViT-B at 1024 px
    (64 x 64 tokens) pretrained at 224 px with a CLS position, windows of 14 tokens except
    in blocks 2, 5, 8, 11; a simple feature pyramid at scales 4, 2, 1, 0.5 of 256 channels
    with LN convolutions; a two-conv RPN head with 3 anchors; a 4-conv 1-fc LN box head;
    an LN mask head; 80 classes."""
    dim, mlp, head_dim = 768, 3072, 64
    s: dict[str, tuple[int, ...]] = {
        "backbone.net.pos_embed": (1, 14 * 14 + 1, dim),
        "backbone.net.patch_embed.proj.weight": (dim, 3, 16, 16),
        "backbone.net.patch_embed.proj.bias": (dim,),
    }
    for i in range(12):
        b = f"backbone.net.blocks.{i}."
        table = 2 * 64 - 1 if i in VITDET_B_GLOBAL else 2 * 14 - 1
        s |= {
            b + "norm1.weight": (dim,),
            b + "norm1.bias": (dim,),
            b + "attn.rel_pos_h": (table, head_dim),
            b + "attn.rel_pos_w": (table, head_dim),
            b + "attn.qkv.weight": (3 * dim, dim),
            b + "attn.qkv.bias": (3 * dim,),
            b + "attn.proj.weight": (dim, dim),
            b + "attn.proj.bias": (dim,),
            b + "norm2.weight": (dim,),
            b + "norm2.bias": (dim,),
            b + "mlp.fc1.weight": (mlp, dim),
            b + "mlp.fc1.bias": (mlp,),
            b + "mlp.fc2.weight": (dim, mlp),
            b + "mlp.fc2.bias": (dim,),
        }

    def conv_ln(name: str, c_in: int, k: int) -> dict[str, tuple[int, ...]]:
        return {
            f"{name}.weight": (256, c_in, k, k),
            f"{name}.norm.weight": (256,),
            f"{name}.norm.bias": (256,),
        }

    # simfp_2 (scale 4): deconv, LN, GELU, deconv; simfp_3 (2): deconv; simfp_4 (1): -;
    # simfp_5 (0.5): max-pool; each then a 1x1 and a 3x3 conv with LN.
    s |= {
        "backbone.simfp_2.0.weight": (dim, dim // 2, 2, 2),
        "backbone.simfp_2.0.bias": (dim // 2,),
        "backbone.simfp_2.1.weight": (dim // 2,),
        "backbone.simfp_2.1.bias": (dim // 2,),
        "backbone.simfp_2.3.weight": (dim // 2, dim // 4, 2, 2),
        "backbone.simfp_2.3.bias": (dim // 4,),
        **conv_ln("backbone.simfp_2.4", dim // 4, 1),
        **conv_ln("backbone.simfp_2.5", 256, 3),
        "backbone.simfp_3.0.weight": (dim, dim // 2, 2, 2),
        "backbone.simfp_3.0.bias": (dim // 2,),
        **conv_ln("backbone.simfp_3.1", dim // 2, 1),
        **conv_ln("backbone.simfp_3.2", 256, 3),
        **conv_ln("backbone.simfp_4.0", dim, 1),
        **conv_ln("backbone.simfp_4.1", 256, 3),
        **conv_ln("backbone.simfp_5.1", dim, 1),
        **conv_ln("backbone.simfp_5.2", 256, 3),
    }
    rpn = "proposal_generator.rpn_head."
    s |= {
        rpn + "conv.conv0.weight": (256, 256, 3, 3),
        rpn + "conv.conv0.bias": (256,),
        rpn + "conv.conv1.weight": (256, 256, 3, 3),
        rpn + "conv.conv1.bias": (256,),
        rpn + "objectness_logits.weight": (3, 256, 1, 1),
        rpn + "objectness_logits.bias": (3,),
        rpn + "anchor_deltas.weight": (12, 256, 1, 1),
        rpn + "anchor_deltas.bias": (12,),
    }
    for k in range(1, 5):
        s |= conv_ln(f"roi_heads.box_head.conv{k}", 256, 3)
        s |= conv_ln(f"roi_heads.mask_head.mask_fcn{k}", 256, 3)
    s |= {
        "roi_heads.box_head.fc1.weight": (1024, 256 * 7 * 7),
        "roi_heads.box_head.fc1.bias": (1024,),
        "roi_heads.box_predictor.cls_score.weight": (81, 1024),
        "roi_heads.box_predictor.cls_score.bias": (81,),
        "roi_heads.box_predictor.bbox_pred.weight": (80 * 4, 1024),
        "roi_heads.box_predictor.bbox_pred.bias": (80 * 4,),
        "roi_heads.mask_head.deconv.weight": (256, 256, 2, 2),
        "roi_heads.mask_head.deconv.bias": (256,),
        "roi_heads.mask_head.predictor.weight": (80, 256, 1, 1),
        "roi_heads.mask_head.predictor.bias": (80,),
    }
    return s


def random_arrays(shapes: dict[str, tuple[int, ...]], seed: int = 0) -> dict[str, np.ndarray]:
    """float32 values of a trained model's scale: LayerNorm weights near 1, the rest small."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, shape in shapes.items():
        x = rng.standard_normal(shape, dtype=np.float32)
        is_norm = re.search(r"(norm\d?|simfp_2\.1)\.weight$", name)
        scale = 0.1 if "rel_pos" in name or "pos_embed" in name else 0.02
        out[name] = 1 + 0.1 * x if is_norm else scale * x
    return out


@pytest.fixture(scope="module")
def model_zoo_pkl(tmp_path_factory) -> tuple[Path, dict[str, np.ndarray]]:
    """A model-zoo-shaped ViTDet-B `model_final.pkl` and its arrays."""
    arrays = random_arrays(vitdet_b_model_zoo_shapes())
    path = tmp_path_factory.mktemp("zoo") / "model_final_61ccd1.pkl"
    with path.open("wb") as f:
        pickle.dump({"model": arrays, "__author__": "Detectron2 Model Zoo"}, f)
    return path, arrays


def export_args(*argv: str):
    return build_parser().parse_args(["export", *argv, "--out", "unused"])


def sam_vitdet_b(arrays: dict[str, np.ndarray], img_size: int) -> torch.nn.Module:
    """segment-anything's encoder as detectron2 would run the checkpoint at `img_size`:
    the position table (CLS dropped) bicubically resized to the grid (detectron2's
    get_abs_pos), the global blocks keeping their 127-row tables, which SAM's own
    get_rel_pos resamples at run time exactly as detectron2's does."""
    encoder_cls = import_sam_image_encoder()
    enc = encoder_cls(
        img_size=img_size,
        embed_dim=768,
        depth=12,
        num_heads=12,
        norm_layer=functools.partial(torch.nn.LayerNorm, eps=1e-6),
        use_rel_pos=True,
        window_size=14,
        global_attn_indexes=VITDET_B_GLOBAL,
    )
    sd = {}
    for key, value in arrays.items():
        if key.startswith("backbone.net."):
            name = key[len("backbone.net.") :].replace(".mlp.fc", ".mlp.lin")
            sd[name] = torch.from_numpy(value)
    pos = sd.pop("pos_embed")[:, 1:].reshape(1, 14, 14, 768).permute(0, 3, 1, 2)
    grid = img_size // 16
    pos = F.interpolate(pos, size=(grid, grid), mode="bicubic", align_corners=False)
    sd["pos_embed"] = pos.permute(0, 2, 3, 1)
    for i in VITDET_B_GLOBAL:
        attn = enc.blocks[i].attn
        attn.rel_pos_h = torch.nn.Parameter(sd.pop(f"blocks.{i}.attn.rel_pos_h"))
        attn.rel_pos_w = torch.nn.Parameter(sd.pop(f"blocks.{i}.attn.rel_pos_w"))
    missing, unexpected = enc.load_state_dict(sd, strict=False)
    tables = {f"blocks.{i}.attn.rel_pos_{a}" for i in VITDET_B_GLOBAL for a in "hw"}
    assert not unexpected and {k for k in missing if not k.startswith("neck.")} == tables
    return enc.eval()


def simfp_reference(arrays: dict[str, np.ndarray], x: torch.Tensor) -> list[torch.Tensor]:
    """detectron2's SimpleFeaturePyramid (scales 4, 2, 1, 0.5, norm "LN") applied to the
    (1, C, H, W) map x, layer by layer from the checkpoint's own names."""
    w = {k[len("backbone.") :]: torch.from_numpy(v) for k, v in arrays.items()}

    def ln(t: torch.Tensor, name: str) -> torch.Tensor:  # detectron2.layers.LayerNorm
        u = t.mean(1, keepdim=True)
        var = (t - u).pow(2).mean(1, keepdim=True)
        t = (t - u) / torch.sqrt(var + 1e-6)
        return w[f"{name}.weight"][:, None, None] * t + w[f"{name}.bias"][:, None, None]

    def deconv(t: torch.Tensor, name: str) -> torch.Tensor:
        return F.conv_transpose2d(t, w[f"{name}.weight"], w[f"{name}.bias"], stride=2)

    def conv(t: torch.Tensor, name: str) -> torch.Tensor:  # Conv2d(bias=False, norm=LN)
        weight = w[f"{name}.weight"]
        return ln(F.conv2d(t, weight, padding=weight.shape[-1] // 2), f"{name}.norm")

    p2 = deconv(F.gelu(ln(deconv(x, "simfp_2.0"), "simfp_2.1")), "simfp_2.3")
    p2 = conv(conv(p2, "simfp_2.4"), "simfp_2.5")
    p3 = conv(conv(deconv(x, "simfp_3.0"), "simfp_3.1"), "simfp_3.2")
    p4 = conv(conv(x, "simfp_4.0"), "simfp_4.1")
    p5 = conv(conv(F.max_pool2d(x, 2, 2), "simfp_5.1"), "simfp_5.2")
    return [p2, p3, p4, p5]


def test_model_zoo_vitdet_b_loads_unedited_and_matches_references(model_zoo_pkl, caplog) -> None:
    """At 256 px: the windows (14) pad the 16 x 16 grid to 28, the global tables are
    resampled 127 -> 31 rows and the position table 14 -> 16, all as detectron2 does."""
    path, arrays = model_zoo_pkl
    assert len(arrays) == 245
    caplog.set_level(logging.INFO, logger="rgtp")  # what the CLI's handler prints
    detector = load_model(
        export_args(
            "--model", "vitdet-b", "--size", "256", "--weights", str(path), "--allow-missing-head"
        )
    )
    log = caplog.text
    assert "format detectron2: loaded 203 of 226 model tensors" in log, log
    assert "(backbone 171 of 171, neck 32 of 32, head 0 of 23)" in log, log
    assert log.count("not used by rgtp: detectron2 heads (42 tensors)") == 1, log
    assert "global blocks [2, 5, 8, 11] resized 127 -> 31 offsets" in log, log
    assert "--allow-missing-head: 23 tensors outside the encoder" in log, log

    torch.manual_seed(0)
    x = torch.randn(1, 3, 256, 256)
    with torch.no_grad():
        ours = detector.backbone(x)
        captured = {}
        enc = sam_vitdet_b(arrays, 256)
        enc.blocks[-1].register_forward_hook(lambda m, i, o: captured.setdefault("x", o))
        enc(x)
        backbone_err = (ours - captured["x"]).abs().max().item()
        feature = ours.permute(0, 3, 1, 2)
        neck_errs = [
            (a - b).abs().max().item()
            for a, b in zip(detector.neck(feature), simfp_reference(arrays, feature), strict=True)
        ]
    print(f"model-zoo ViTDet-B @256: backbone max abs {backbone_err:.3g}, neck {neck_errs}")
    assert ours.abs().mean() > 0.1  # a live map, not one that vanished
    assert backbone_err <= 1e-4, backbone_err
    assert max(neck_errs) <= 1e-4, neck_errs


def test_model_zoo_export_needs_the_head_flag(model_zoo_pkl, tmp_path, capsys) -> None:
    """rgtp's own FCOS head is not in a Mask R-CNN checkpoint: the export says so and
    stops (exit 1) unless --allow-missing-head says random head weights are intended."""
    path, _ = model_zoo_pkl
    out = tmp_path / "pkg"
    argv = ["export", "--model", "vitdet-b", "--size", "256", "--weights", str(path)]
    assert main([*argv, "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert f"error: {path}: 23 neck and head tensors are not in the checkpoint" in err, err
    assert "--allow-missing-head" in err and not out.exists()


# ----------------------------------------------------------------- Hugging Face VitDet


def hf_vitdet_small_config(hf, img_size: int):
    """HF's VitDet at vitdet-small's shape: 12 blocks of 192 channels, windows of 8 except
    the global blocks 2, 5, 8, 11, position table of the 256-px pretraining grid + CLS."""
    cfg = get_config("vitdet-small", img_size).backbone
    return hf.VitDetConfig(
        hidden_size=cfg.embed_dim,
        num_hidden_layers=cfg.depth,
        num_attention_heads=cfg.num_heads,
        image_size=img_size,
        pretrain_image_size=cfg.pretrain_grid * cfg.patch_size,
        window_size=cfg.window_size,
        window_block_indices=[i for i in range(cfg.depth) if not cfg.is_global(i)],
        use_relative_position_embeddings=True,
        layer_norm_eps=cfg.norm_eps,
    )


@pytest.mark.parametrize(
    ("model_class", "suffix", "fmt"),
    [("VitDetModel", ".safetensors", "auto"), ("VitDetBackbone", ".bin", "hf")],
)
def test_hugging_face_vitdet_matches_its_output(tmp_path, capsys, model_class, suffix, fmt):
    """224 px: a 14 x 14 grid that windows of 8 pad to 16."""
    hf = import_hf_vitdet()
    torch.manual_seed(0)
    ref = randomize(getattr(hf, model_class)(hf_vitdet_small_config(hf, 224)))
    path = tmp_path / f"model{suffix}"
    sd = {k: v.contiguous() for k, v in ref.state_dict().items()}
    if suffix == ".safetensors":
        save_file(sd, str(path))
    else:  # what save_pretrained(safe_serialization=False) writes: pytorch_model.bin
        torch.save(sd, path)
    argv = ["--model", "vitdet-small", "--size", "224", "--weights", str(path)]
    detector = load_model(export_args(*argv, "--weights-format", fmt, "--allow-missing-head"))
    assert "format hf: loaded 171 of 214" in capsys.readouterr().err

    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        out = ref(x)
        theirs = out.last_hidden_state if model_class == "VitDetModel" else out.feature_maps[-1]
        err = (detector.backbone(x).permute(0, 3, 1, 2) - theirs).abs().max().item()
    print(f"HF {model_class} ({suffix}) vs rgtp dense backbone: max abs {err:.3g}")
    assert theirs.shape == (1, 192, 14, 14)
    assert err <= 1e-4, err


def test_hugging_face_errors_name_the_keys_in_the_file(tmp_path) -> None:
    hf = import_hf_vitdet()
    sd = hf.VitDetModel(hf_vitdet_small_config(hf, 256)).state_dict()
    bad = dict(sd, **{"encoder.layer.3.mlp.fc1.weight": torch.zeros(10, 192)})
    with pytest.raises(
        CheckpointError, match=r"encoder\.layer\.3\.mlp\.fc1\.weight shape \(10, 192\)"
    ):
        load_state_dict_into(Detector(get_config("vitdet-small")), bad, strict=False)
    extra = dict(sd, **{"encoder.layer.0.residual.conv1.weight": torch.zeros(96, 192, 1, 1)})
    with pytest.raises(
        CheckpointError, match=r"no place in the model: encoder\.layer\.0\.residual"
    ):
        load_state_dict_into(Detector(get_config("vitdet-small")), extra, strict=False)


# ----------------------------------------------------------------- loads fully or fails


def test_checkpoint_matching_almost_nothing_fails_the_export(tmp_path, capsys) -> None:
    """The issue's case: 211 of vitdet-small's 214 tensors missing used to export random
    weights with exit 0."""
    sd = Detector(get_config("vitdet-small")).state_dict()
    keep = ["backbone.pos_embed", "neck.levels.p3.0.weight", "head.scales"]
    path = tmp_path / "almost_nothing.safetensors"
    save_file({k: sd[k].contiguous() for k in keep}, str(path))
    out = tmp_path / "pkg"
    argv = ["export", "--model", "vitdet-small", "--weights", str(path), "--out", str(out)]
    assert main([*argv, "--allow-missing-head"]) == 1
    err = capsys.readouterr().err
    assert f"error: {path}: 170 of 171 backbone tensors are not in the checkpoint" in err, err
    assert "backbone.blocks.0.norm1.weight" in err and not out.exists()


def test_backbone_only_checkpoint_loads_only_behind_the_flag(tmp_path, capsys) -> None:
    det = randomize(Detector(tiny_config()))
    path = tmp_path / "backbone.safetensors"
    save_file({k: v for k, v in det.state_dict().items() if k.startswith("backbone.")}, str(path))
    with pytest.raises(CheckpointError, match=r"43 neck and head tensors .*--allow-missing-head"):
        load_state_dict_into(Detector(tiny_config()), read_state_dict(path))
    again = Detector(tiny_config())
    report = load_state_dict_into(again, read_state_dict(path), strict=False)
    assert report.groups == {"backbone": (87, 87), "neck": (0, 20), "head": (0, 23)}
    assert len(report.missing) == 43 and not any(k.startswith("backbone.") for k in report.missing)
    assert torch.equal(again.backbone.pos_embed, det.backbone.pos_embed)


def test_windowed_rel_pos_of_another_window_size_is_refused() -> None:
    """Windows of 6 tokens (11-row tables) into a model with windows of 7 (13 rows)."""
    sd = randomize(Detector(tiny_config(window=6))).state_dict()
    d2 = {"backbone.net." + k[len("backbone.") :]: v for k, v in sd.items() if "backbone." in k}
    with pytest.raises(
        CheckpointError,
        match=r"backbone\.net\.blocks\.0\.attn\.rel_pos_h: block 0 is windowed and its "
        r"relative-position table has 11 rows, i\.e\. windows of 6 tokens; the model's windows "
        r"are 7 tokens \(13 rows\)\. Windowed tables are not resampled: use a model with "
        r"window_size=6",
    ):
        load_state_dict_into(Detector(tiny_config(window=7)), d2, strict=False)


def test_global_blocks_of_another_layout_are_refused() -> None:
    """A checkpoint whose block 5 was windowed, into a model where it is global: its 11-row
    table would otherwise be resampled to 27 rows without a word."""
    sd = randomize(Detector(tiny_config(global_blocks=(2,)))).state_dict()
    with pytest.raises(
        CheckpointError,
        match=r"global blocks differ in length in the checkpoint \(block 2: 27, block 5: 11 "
        r"rows\): its global blocks are not the model's \[2, 5\]",
    ):
        load_state_dict_into(Detector(tiny_config()), sd)


def test_unknown_or_wrong_format_is_explained(tmp_path, capsys) -> None:
    with pytest.raises(
        CheckpointError, match=r"cannot tell the checkpoint format .*--weights-format"
    ):
        load_state_dict_into(Detector(tiny_config()), {"encoder.weight": torch.zeros(3)})
    sd = Detector(get_config("vitdet-small")).state_dict()
    path = tmp_path / "rgtp.safetensors"
    save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    argv = ["export", "--model", "vitdet-small", "--weights", str(path), "--out", str(tmp_path)]
    assert main([*argv, "--weights-format", "sam"]) == 1
    err = capsys.readouterr().err
    assert "214 checkpoint tensors (format sam) have no place in the model" in err, err


# ----------------------------------------------------------------- files that cannot be read


def _safetensors_bytes() -> bytes:
    from safetensors.torch import save

    return save({"w": torch.zeros(64, 64)})


def _torch_bytes(obj: object, tmp_path: Path) -> bytes:
    p = tmp_path / "scratch.pt"
    torch.save(obj, p)
    return p.read_bytes()


class _Payload:
    def __reduce__(self):
        return (print, ("executed",))


BROKEN = {
    "empty.safetensors": (
        lambda tmp: b"",
        "not a valid safetensors file: the file is empty (0 bytes)",
    ),
    "text.safetensors": (
        lambda tmp: b"<!DOCTYPE html>\n<html><head><title>404 Not Found</title></head>",
        "not a valid safetensors file: it is text: '<!DOCTYPE html>\\n<html><head><title>404 N'",
    ),
    "lfs_pointer.safetensors": (
        lambda tmp: b"version https://git-lfs.github.com/spec/v1\noid sha256:4d7a\nsize 3\n",
        "not a valid safetensors file: it is a Git LFS pointer, not the weights",
    ),
    "truncated.safetensors": (
        lambda tmp: _safetensors_bytes()[:-100],
        "not a valid safetensors file: it is truncated: its header describes",
    ),
    "appended.safetensors": (
        lambda tmp: _safetensors_bytes() + b"garbage",
        "not a valid safetensors file: it has 7 bytes more than its header describes",
    ),
    "cut_header.safetensors": (
        lambda tmp: _safetensors_bytes()[:20],
        "not a valid safetensors file: it is truncated: its header alone needs",
    ),
    "pickle.safetensors": (
        lambda tmp: pickle.dumps({"w": np.zeros(3)}),
        "not a valid safetensors file: it is a Python pickle (rename it to .pkl",
    ),
    "torch.safetensors": (
        lambda tmp: _torch_bytes({"w": torch.zeros(3)}, tmp),
        "not a valid safetensors file: it is a zip archive as torch.save writes",
    ),
    "empty.pth": (lambda tmp: b"", "not a torch checkpoint: the file is empty (0 bytes)"),
    "text.pth": (lambda tmp: b"hello\n", "not a torch checkpoint: it is text: 'hello\\n'"),
    "truncated.pth": (
        lambda tmp: _torch_bytes({"w": torch.zeros(64, 64)}, tmp)[:3000],
        "not a torch checkpoint: it is a damaged zip archive (truncated or corrupted?)",
    ),
    "safetensors.bin": (
        lambda tmp: _safetensors_bytes(),
        "not a torch checkpoint: it is a safetensors file (rename it to .safetensors)",
    ),
    "evil.pth": (
        lambda tmp: _torch_bytes({"w": _Payload()}, tmp),
        "not loadable as weights only: it needs print, which weights-only loading refuses",
    ),
    "evil.pkl": (
        lambda tmp: pickle.dumps({"model": {"w": _Payload()}}),
        "not loadable as weights only: refusing global builtins.print (.pkl files may hold "
        "numpy arrays only)",
    ),
    "empty.pkl": (lambda tmp: b"", "not a pickle of arrays: the file is empty (0 bytes)"),
    "truncated.pkl": (
        lambda tmp: pickle.dumps({"model": {"w": np.zeros(1000)}}, protocol=4)[:4000],
        "not a pickle of arrays: it is a damaged pickle (truncated or corrupted?)",
    ),
    "torch.pkl": (
        lambda tmp: _torch_bytes({"w": torch.zeros(3)}, tmp),
        "not a pickle of arrays: it is a zip archive as torch.save writes (rename it to .pth)",
    ),
    "strings.pkl": (
        lambda tmp: pickle.dumps({"model": {"w": np.array(["a", "b"])}}),
        "w is a numpy array of <U1, not numbers",
    ),
    "no_tensors.pth": (lambda tmp: _torch_bytes({"epoch": 3}, tmp), "holds no tensors"),
}


@pytest.mark.parametrize("name", list(BROKEN))
def test_unreadable_files_are_named(tmp_path, name) -> None:
    make, message = BROKEN[name]
    path = tmp_path / name
    path.write_bytes(make(tmp_path))
    with pytest.raises(CheckpointError, match=re.escape(f"{path}: {message}")):
        read_state_dict(path)


def test_directories_and_missing_files(tmp_path) -> None:
    with pytest.raises(CheckpointError, match=re.escape(f"{tmp_path}: a directory")):
        read_state_dict(tmp_path)
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        read_state_dict(tmp_path / "missing.pth")


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_numpy_pickles_of_every_protocol_load(tmp_path, protocol) -> None:
    """Python 2-era model-zoo files (protocol 2 stores bytes through _codecs.encode) and
    protocol 5 (arrays through numpy's _frombuffer) both hold nothing but arrays."""
    arrays = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.arange(4)[::2]}
    path = tmp_path / "model_final.pkl"
    path.write_bytes(pickle.dumps({"model": arrays}, protocol=protocol))
    sd = read_state_dict(path)
    assert torch.equal(sd["a"], torch.arange(6.0).reshape(2, 3))
    assert torch.equal(sd["b"], torch.tensor([0, 2]))
