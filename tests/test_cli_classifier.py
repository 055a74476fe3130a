"""The command line carries the classifier family: flops, export, check, run, eval and
finetune-temporal on ViViT models (a 64-px vivit-small from random init keeps it quick)."""

from __future__ import annotations

import json

import pytest

from rgtp.cli import main

SMALL = ["--model", "vivit-small", "--size", "64", "--random-init"]  # N = 16 patch tokens


def test_flops_of_vivit_b_give_the_papers_dense_figure(capsys) -> None:
    assert main(["flops", "--model", "vivit-b", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    # ViViT's Kinetics-400 protocol: 4 clips x 3 crops; the paper: 3.36 TFLOPs (MACs)
    assert report["views"] == 12
    assert report["dense_tmacs_per_video"] == pytest.approx(3.36, rel=0.02)
    assert report["pruned_tmacs_per_video"] == pytest.approx(3.36, rel=0.02)  # K = N


def test_flops_of_a_pruned_classifier_count_the_resets(capsys) -> None:
    # a reset at step 4 of the 8: step 0 runs dense either way (a stream's first step)
    argv = ["flops", "--model", "vivit-small", "--keep", "26", "--reset-every", "4", "--json"]
    assert main(argv) == 0
    dense_reset = json.loads(capsys.readouterr().out)
    assert main([*argv, "--reset", "checkerboard"]) == 0
    board = json.loads(capsys.readouterr().out)
    ratio = (
        dense_reset["pruned"]["total_gmacs_per_view"] / dense_reset["dense"]["total_gmacs_per_view"]
    )
    assert 0.4 < ratio < 0.6
    assert board["pruned"]["total_gmacs_per_view"] < dense_reset["pruned"]["total_gmacs_per_view"]


@pytest.fixture(scope="module")
def package(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "pkg"
    argv = ["export", *SMALL, "--buckets", "6,8", "--partition", "whole", "--out", str(out)]
    assert main([*argv, "--quiet"]) == 0
    return out


def test_export_then_check_a_classifier_package(package, capsys) -> None:
    names = {g["name"] for g in json.loads((package / "manifest.json").read_text())["graphs"]}
    assert {"embed", "head", "temporal", "stage0_k6", "stage0_k8", "stage0_kK"} <= names
    assert main(["check", str(package), "--quiet"]) == 0
    assert "check passed" in capsys.readouterr().out


def test_run_writes_one_result_per_time_step(package, tmp_path, capsys) -> None:
    out = tmp_path / "run"
    argv = ["run", str(package), "--synthetic", "20", "--keep", "6", "--reset-every", "4"]
    assert main([*argv, "--reset", "checkerboard", "--out", str(out), "--quiet"]) == 0
    steps = json.loads((out / "frames.json").read_text())
    assert [s["frame"] for s in steps] == list(range(1, 20, 2))  # a step per two frames
    assert [s["k"] for s in steps] == [16, 6, 6, 6, 8, 6, 6, 6, 8, 6]
    classes = json.loads((out / "classes.json").read_text())
    assert [c["top"] is None for c in classes] == [True] * 7 + [False] * 3
    assert "20 frames, 10 steps" in capsys.readouterr().out


def test_eval_prints_the_papers_table(tmp_path, capsys) -> None:
    table = tmp_path / "t.json"
    argv = ["eval", *SMALL, "--keep", "6", "--clips", "6", "--json", str(table), "--quiet"]
    assert main(argv) == 0
    rows = json.loads(table.read_text())
    assert [r["setting"] for r in rows] == ["dense", "pruned K=6"]
    assert rows[1]["of_dense"] < 0.7
    assert "top-1 (%)" in capsys.readouterr().out


def test_finetune_temporal_writes_beside_the_weights(tmp_path, capsys) -> None:
    out = tmp_path / "t.temporal-k6.safetensors"
    argv = ["finetune-temporal", *SMALL, "--keep", "6", "--clips", "4", "--epochs", "1"]
    assert main([*argv, "--out", str(out), "--quiet"]) == 0
    assert out.exists() and "fine-tuned the temporal transformer at K=6" in capsys.readouterr().out
