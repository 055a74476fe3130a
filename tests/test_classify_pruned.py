"""The classifier's table (dense / pruned / pruned + fine-tuned temporal transformer, with
GFLOPs per clip) and the temporal fine-tuning that feeds it, on a tiny random ViViT."""

from __future__ import annotations

import pytest
import torch

from rgtp.data.synthmotion import CLASSES, training_clips
from rgtp.families.classification.config import SpatialConfig, TemporalConfig, ViViTConfig
from rgtp.families.classification.data import data_config, heldout_clips
from rgtp.families.classification.tools.classify import classify
from rgtp.families.classification.tools.classify_pruned import (
    classifier_table,
    format_table,
    pruned_run,
)
from rgtp.families.classification.tools.finetune_temporal import (
    FinetuneConfig,
    finetune_temporal,
    finetuned_path,
    load_temporal,
)
from rgtp.families.classification.vivit import ViViT
from rgtp.models.checkpoint_files import CheckpointError
from rgtp.runtime import Pipeline
from tests.conftest import randomize

CFG = ViViTConfig(
    name="tiny-vivit",
    spatial=SpatialConfig(img_size=64, embed_dim=48, depth=3, num_heads=3),
    temporal=TemporalConfig(depth=1, num_heads=3),
    num_frames=8,
    num_classes=len(CLASSES),
)
N = CFG.spatial.num_tokens  # 16


@pytest.fixture(scope="module")
def model() -> ViViT:
    torch.manual_seed(0)
    return randomize(ViViT(CFG))


@pytest.fixture(scope="module")
def clips():
    return heldout_clips(12, data_config(CFG))


def test_the_runtime_at_k_n_classifies_as_the_dense_model(model, clips) -> None:
    run = pruned_run(Pipeline.from_model(model, (6,)), clips, None)
    dense = classify(model, clips)
    assert run.top1 == dense.dense and run.mean_k == N
    assert run.features.shape == (12, CFG.num_steps, 48)


def test_the_table_has_the_papers_rows(model, clips) -> None:
    rows = classifier_table(model, clips, [6], {6: model}, reset_every=4, progress=False)
    assert [r.setting for r in rows] == [
        "dense",
        "pruned K=6",
        "pruned K=6 + fine-tuned temporal",
    ]
    dense, pruned, tuned = rows
    assert dense.of_dense == 1 and 0 < pruned.of_dense < 0.8
    assert pruned.top1 == tuned.top1  # the same model twice
    assert "GFLOPs/clip" in format_table(rows, len(clips))


def test_finetuning_changes_only_the_temporal_transformer(model, tmp_path) -> None:
    tuned = ViViT(CFG)
    tuned.load_state_dict(model.state_dict())
    out = finetuned_path(tmp_path / "tiny.safetensors", 6)
    assert out.name == "tiny.temporal-k6.safetensors"
    fc = FinetuneConfig(k=6, reset_every=4, clips=8, epochs=2, batch_size=4, lr=1e-3)
    log = finetune_temporal(tuned, fc, out, progress=False)
    assert len(log["log"]) == 2 and out.exists() and out.with_suffix(".json").exists()
    for k, v in model.spatial.state_dict().items():
        assert torch.equal(tuned.spatial.state_dict()[k], v), k
    assert any(
        not torch.equal(tuned.temporal.state_dict()[k], v)
        for k, v in model.temporal.state_dict().items()
    )
    fresh = ViViT(CFG)
    fresh.load_state_dict(model.state_dict())
    load_temporal(fresh, out)
    clip = next(iter(training_clips(5, data_config(CFG)))).frames
    x = torch.from_numpy(clip).permute(3, 0, 1, 2)[None].float()
    with torch.no_grad():
        assert torch.equal(fresh.eval()(x), tuned.eval()(x))


def test_a_foreign_file_is_not_taken_for_a_temporal_transformer(tmp_path) -> None:
    from safetensors.torch import save_file

    bad = tmp_path / "x.safetensors"
    save_file({"temporal.head.weight": torch.zeros(3, 3)}, str(bad))
    with pytest.raises(CheckpointError, match="not this model's temporal transformer"):
        load_temporal(ViViT(CFG), bad)
