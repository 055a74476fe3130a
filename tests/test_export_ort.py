"""Exported packages: manifest, shared weights, `rgtp check`, and the ONNX Runtime pipeline
against the PyTorch reference.

`rgtp check` runs on the shared tiny package (two stages, K = 20 and 40, symbolic-K graphs,
a keep schedule): its comparison covers every kind of graph at a fraction of vitdet-small's
cost, whose numbers the ONNX Runtime pipeline tests below compare with PyTorch frame by
frame. The CLI runs in this process (`rgtp.cli.main`): its exit status and output are the
subject, not a fresh interpreter's start."""

from __future__ import annotations

import json
import shutil

import onnx
import pytest
import torch

from rgtp.cli import main
from rgtp.core.selection import FixedKeep
from rgtp.export.check import check_package
from rgtp.package.manifest import Manifest, ManifestError
from rgtp.runtime import Pipeline
from tests.conftest import assert_same_detections, synthvid_frames


def test_manifest_describes_every_graph_and_file(small_packages) -> None:
    path, _, plan = small_packages["a"]
    m = Manifest.load(path)
    assert m.plan == plan
    names = {g.name for g in m.graphs}
    for i in range(len(plan.stages)):
        for k in (*plan.buckets, "K"):
            assert f"stage{i}_k{k}" in names
    assert {"embed", "head"} <= names
    for g in m.graphs:
        assert g.file in m.files and (g.weights is None or g.weights in m.files)
        assert len(m.files[g.file]["sha256"]) == 64
        # the opset recorded is the one every graph declares
        model = onnx.load(str(path / g.file), load_external_data=False)
        assert [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")] == [m.opset]
    assert m.versions["torch"] == torch.__version__


def test_bucket_variants_share_one_weights_file_per_stage(small_packages) -> None:
    path, det, plan = small_packages["a"]
    m = Manifest.load(path)
    for i, blocks in enumerate(plan.stages):
        files = {g.weights for g in m.graphs if g.kind == "stage" and g.stage == i}
        assert files == {f"stage{i}.weights"}
        params = sum(p.numel() * 4 for b in blocks for p in det.backbone.blocks[b].parameters())
        size = m.files[f"stage{i}.weights"]["bytes"]
        # once, not once per bucket (4 variants here); small tensors stay inline
        assert 0.9 * params < size < 1.1 * params, (size, params)


def test_check_passes_on_a_fresh_export(tiny_package) -> None:
    report = check_package(tiny_package, progress=False)
    assert report.passed, report.problems
    graphs = {g.name for g in Manifest.load(tiny_package).graphs}
    assert {g.name for g in report.graphs} == graphs and "stage1_kK" in graphs
    assert max(g.max_abs for g in report.graphs) < 1e-4


@pytest.mark.parametrize("victim", ["stage0_k20.onnx", "stage0.weights"])
def test_check_fails_naming_a_changed_file(tiny_package, tmp_path, capsys, victim: str) -> None:
    pkg = tmp_path / "pkg"
    shutil.copytree(tiny_package, pkg)
    data = bytearray((pkg / victim).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (pkg / victim).write_bytes(bytes(data))
    assert main(["check", str(pkg), "--quiet"]) == 1
    out = capsys.readouterr().out
    assert victim in out and "sha256" in out


# Each layout on one of the packages: the symbolic-K sessions on the four stages of "a", one
# fixed-K session per bucket on "b"'s one stage (every layout on both packages took three
# times the CPU time; docs/testing.md). Both layouts on a package of several stages and
# buckets against the same reference: test_kept_windows, on the tiny detector.
@pytest.mark.parametrize(("name", "layout"), [("a", "per-stage"), ("b", "per-k")])
def test_ort_pipeline_follows_the_torch_reference(small_packages, name: str, layout: str):
    path, det, plan = small_packages[name]
    k = plan.buckets[0]
    ort_stream = Pipeline.load(path, "ort", layout=layout).new_stream(policy=FixedKeep(k))
    ref_stream = Pipeline.from_model(det, plan.buckets, "per-global").new_stream(
        policy=FixedKeep(k)
    )
    pruned = 0
    for frame in synthvid_frames(20):
        a, b = ort_stream.step(frame), ref_stream.step(frame)
        assert torch.equal(a.keep, b.keep), f"frame {a.index}: kept tokens differ"
        assert (ort_stream.out_map - ref_stream.out_map).abs().max() <= 1e-4
        assert_same_detections(a.detections, b.detections)
        pruned += not a.reset
    assert pruned == 17  # resets at frames 0, 8, 16


def test_ort_keeping_all_tokens_equals_the_dense_model(small_packages) -> None:
    path, det, plan = small_packages["b"]
    stream = Pipeline.load(path, "ort").new_stream(policy=FixedKeep(plan.num_tokens))
    for frame in synthvid_frames(4):
        stream.step(frame)
        x = torch.as_tensor(frame).permute(2, 0, 1)[None].float()
        with torch.no_grad():
            dense = det.features(x)[0].flatten(0, 1)
        assert (stream.out_map - dense).abs().max() <= 1e-4


def test_run_cli_writes_detections_and_timings(small_packages, tmp_path) -> None:
    path = small_packages["b"][0]
    out = tmp_path / "run"
    argv = ["run", str(path), "--synthetic", "6", "--keep", "96", "--out", str(out)]
    assert main([*argv, "--quiet"]) == 0
    frames = json.loads((out / "frames.json").read_text())
    assert [f["k"] for f in frames] == [256, 96, 96, 96, 96, 96]
    for f in frames:  # the parts add up: total = every part, engine = embed + stages + head
        ms = f["timings_ms"]
        parts = {k: v for k, v in ms.items() if k not in ("total", "engine", "outside_engine")}
        assert ms["total"] == pytest.approx(sum(parts.values())) and min(parts.values()) >= 0
        assert ms["engine"] == pytest.approx(ms["embed"] + ms["stages"] + ms["head"])
        assert 0 < ms["engine"] < ms["total"]
    dets = json.loads((out / "detections.json").read_text())
    assert len(dets) == 6 and all("detections" in d for d in dets)


def test_loading_a_broken_package_fails_clearly(tmp_path, tiny_package) -> None:
    with pytest.raises(ValueError, match=r"no manifest\.json"):
        Pipeline.load(tmp_path, "ort")
    pkg = tmp_path / "pkg"
    shutil.copytree(tiny_package, pkg)
    (pkg / "stage0.weights").unlink()
    with pytest.raises(ManifestError, match=r"stage0\.weights: missing"):
        Pipeline.load(pkg, "ort")
