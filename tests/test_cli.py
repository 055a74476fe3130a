"""The command line parses every sub-command, and `rgtp train` hands its options to the
trainer's config (the trainers are replaced: no training runs here)."""

from __future__ import annotations

from pathlib import Path

import pytest

from rgtp.cli import build_parser, main

SUBCOMMANDS = (
    "flops",
    "export",
    "check",
    "run",
    "eval",
    "demo",
    "train",
    "finetune-temporal",
    "build",
    "triton",
    "serve",
)


def test_every_subcommand_is_listed() -> None:
    choices = next(a for a in build_parser()._actions if a.dest == "command").choices
    assert tuple(choices) == SUBCOMMANDS


@pytest.mark.parametrize("command", SUBCOMMANDS)
def test_every_subcommand_prints_its_help(command: str, capsys) -> None:
    with pytest.raises(SystemExit) as exit:
        main([command, "--help"])
    assert exit.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: rgtp {command}")


@pytest.mark.parametrize("model", ["vitdet-small", "vivit-small"])
def test_each_family_has_the_tools_the_commands_call(model: str) -> None:
    from rgtp.families import get_config, tool

    for name in ("train_model", "evaluate_model", "flops_report", "run_demo"):
        assert callable(tool(get_config(model), name))


@pytest.fixture
def trained(monkeypatch) -> dict:
    """Replaces both trainers: what they were called with lands in the returned dict."""
    from rgtp.families.classification.tools import train as vivit_trainer
    from rgtp.families.detection.tools import train as trainer

    calls: dict = {}

    def fake_train(tc, out, **kwargs):
        calls.update(tc=tc, out=out, **kwargs)
        log = [{"cls": 1.0, "box": 2.0, "ctr": 3.0}]
        return {"minutes": 0.0, "log": log, "heldout": {"dense": 0.5, "clips": 12}}

    monkeypatch.setattr(trainer, "train", fake_train)
    monkeypatch.setattr(vivit_trainer, "train", fake_train)
    return calls


def test_train_options_reach_the_classifier_config(trained, tmp_path, capsys) -> None:
    argv = [
        *("train", "--model", "vivit-small", "--steps", "7", "--batch-size", "3"),
        *("--lr", "0.002", "--warmup", "2", "--seed", "5", "--workers", "2", "--no-bf16"),
        *("--clips", "24", "--aux-weight", "0.5", "--cover-weight", "0.25"),
        *("--temporal-steps", "4", "--eval-every", "0", "--heldout", "12"),
        *("--init", str(tmp_path / "joint.safetensors"), "--cache-dir", str(tmp_path)),
        *("--out", str(tmp_path / "w.safetensors"), "--quiet"),
    ]
    assert main(argv) == 0
    tc = trained["tc"]
    assert (tc.model, tc.steps, tc.batch_size, tc.lr, tc.warmup) == ("vivit-small", 7, 3, 2e-3, 2)
    assert (tc.seed, tc.workers, tc.bf16, tc.clips) == (5, 2, False, 24)
    assert (tc.aux_weight, tc.cover_weight, tc.temporal_steps, tc.eval_every) == (0.5, 0.25, 4, 0)
    assert trained["out"] == tmp_path / "w.safetensors"
    assert trained["cache_dir"] == tmp_path and trained["heldout"] == 12
    assert trained["init"] == tmp_path / "joint.safetensors" and trained["progress"] is False
    assert "held-out top-1 0.500 over 12 clips" in capsys.readouterr().out


def test_train_keeps_the_config_defaults_not_given(trained, tmp_path) -> None:
    from rgtp.families.classification.tools.train import ViViTTrainConfig
    from rgtp.train.config import TrainConfig

    assert main(["train", "--model", "vivit-small", "--out", str(tmp_path / "w")]) == 0
    assert trained["tc"] == ViViTTrainConfig()
    assert trained["cache_dir"] == Path("out/cache") and trained["init"] is None
    assert main(["train", "--steps", "3", "--fp32", "--out", str(tmp_path / "d")]) == 0
    assert trained["tc"] == TrainConfig(steps=3, bf16=False)


def test_train_refuses_classifier_options_for_a_detector(trained, capsys) -> None:
    assert main(["train", "--model", "vitdet-small", "--clips", "4"]) == 1
    assert "clips: for classifiers; vitdet-small is a detector" in capsys.readouterr().err
    assert not trained


def test_train_init_needs_a_temporal_phase(trained, capsys) -> None:
    argv = ["train", "--model", "vivit-small", "--init", "w", "--temporal-steps", "0"]
    assert main(argv) == 1
    assert "--init skips the joint phase" in capsys.readouterr().err
