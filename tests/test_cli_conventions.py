"""The command line's conventions: exit status 0 / 1 (a failure) / 2 (a usage error);
`--json [FILE]` on check, build, run, eval and flops, each document valid against its
shipped schema; `rgtp run`'s per-part percentiles and `--threads`; the `rgtp` loggers on
stderr under -q / -v; and library code that logs instead of printing."""

from __future__ import annotations

import ast
import json
import logging
import shutil
from pathlib import Path
from types import SimpleNamespace

import jsonschema
import numpy as np
import pytest

import rgtp
from rgtp.cli import main, output
from rgtp.eval.reports import write_json

COMMANDS = ("check", "build", "run", "eval", "flops")


def valid(command: str, document: object) -> object:
    jsonschema.validate(document, output.schema(command))
    return document


@pytest.mark.parametrize("command", COMMANDS)
def test_each_schema_is_shipped_and_is_a_json_schema(command: str) -> None:
    schema = output.schema(command)
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["title"] == f"rgtp {command} --json"


# ---------------------------------------------------------------------------- exit status


def test_a_failure_exits_1_with_the_error_and_no_traceback(tmp_path, capsys) -> None:
    missing = str(tmp_path / "nowhere")
    assert main(["run", missing, "--synthetic", "2", "--out", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and missing in err and "Traceback" not in err
    assert main(["check", missing, "--json", "-"]) == 1  # the report says why, as JSON
    report = valid("check", json.loads(capsys.readouterr().out))
    assert not report["passed"] and report["digest"] is None and report["problems"]


@pytest.mark.parametrize(
    "argv",
    [
        ["run", "pkg", "--synthetic", "2"],  # no --out
        ["run", "pkg", "--synthetic", "2", "--out", "o", "--threads", "0"],
        ["check", "pkg", "--atol", "-1"],
        ["flops", "--keep", "x"],
        ["nosuchcommand"],
    ],
)
def test_a_command_line_argparse_refuses_exits_2(argv: list[str], capsys) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == output.USAGE == 2
    assert "error:" in capsys.readouterr().err


def test_options_that_do_not_go_together_exit_2_before_any_work(tmp_path, capsys) -> None:
    missing = str(tmp_path / "nowhere")  # never read: the options are refused first
    argv = ["run", missing, "--synthetic", "2", "--out", str(tmp_path / "o")]
    assert main([*argv, "--backend", "trt", "--threads", "2"]) == 2
    assert "--threads is for the CPU backends" in capsys.readouterr().err
    assert main(["export", "--random-init", "--calibration", "v.mp4", "--out", missing]) == 2
    assert "error: --calibration VIDEO goes with" in capsys.readouterr().err


# ----------------------------------------------------------------------------- --json


def test_flops_json_goes_to_stdout_or_a_file(tmp_path, capsys) -> None:
    argv = ["flops", "--model", "vitdet-small", "--keep", "96/77/64/48"]
    assert main([*argv, "--json"]) == 0
    out, err = capsys.readouterr()
    report = valid("flops", json.loads(out))  # stdout is the document alone
    assert report["k"] == [96, 77, 64, 48] and "backbone" in err  # the table went to stderr
    path = tmp_path / "deep" / "flops.json"
    assert main([*argv, "--json", str(path)]) == 0
    assert json.loads(path.read_text()) == report
    assert "backbone" in capsys.readouterr().out  # with a FILE the table stays on stdout
    assert main(["flops", "--model", "vivit-small", "--keep", "26", "--json", "-"]) == 0
    assert valid("flops", json.loads(capsys.readouterr().out))["views"] == 12


def test_check_json_of_a_package(tiny_package, tmp_path, capsys) -> None:
    path = tmp_path / "check.json"
    code = main(["check", str(tiny_package), "--quiet", "--json", str(path)])
    report = valid("check", json.loads(path.read_text()))
    assert code == (0 if report["passed"] else 1)
    assert report["digest"] in capsys.readouterr().out
    assert {g["name"] for g in report["graphs"]} >= {"embed", "head"}


def test_run_json_has_percentiles_it_prints(tiny_package, tmp_path, capsys) -> None:
    out = tmp_path / "run"
    argv = ["run", str(tiny_package), "--synthetic", "8", "--keep", "20", "--out", str(out)]
    assert main([*argv, "--quiet", "--threads", "1", "--json"]) == 0
    stdout, stderr = capsys.readouterr()
    document = valid("run", json.loads(stdout))
    summary = document["summary"]
    assert summary == json.loads((out / "summary.json").read_text())
    # the percentiles are those of frames.json's timings, the warm-up step left out
    steps = json.loads((out / "frames.json").read_text())[1:]
    for part, q in summary["ms_percentiles"].items():
        ms = [s["timings_ms"].get(part, 0.0) for s in steps]
        assert [q["p50"], q["p95"], q["p99"]] == pytest.approx(np.percentile(ms, [50, 95, 99]))
        assert q["p50"] <= q["p95"] <= q["p99"]
    # and the text report (on stderr, stdout holding the JSON) prints them per part
    header, total = stderr.splitlines()[1:3]
    assert header.split() == ["ms", "per", "step", "mean", "p50", "p95", "p99"]
    t = summary["ms_percentiles"]["total"]
    assert total.split() == ["total"] + [
        f"{v:.2f}" for v in (summary["ms_per_step"]["total"], t["p50"], t["p95"], t["p99"])
    ]


def test_eval_json_keeps_its_file_and_takes_stdout(tmp_path, capsys) -> None:
    argv = ["eval", "--model", "vitdet-small", "--size", "64", "--random-init", "--quiet"]
    argv += ["--backend", "torch", "--sequences", "1", "--frames", "3", "--keep", "8"]
    path = tmp_path / "table.json"
    assert main([*argv, "--json", str(path)]) == 0  # a path, as before
    rows = valid("eval", json.loads(path.read_text()))
    assert [r["k"] for r in rows] == ["N", 8] and "| dense |" in capsys.readouterr().out
    assert main([*argv, "--no-dense", "--json"]) == 0
    assert [r["k"] for r in valid("eval", json.loads(capsys.readouterr().out))] == [8]


def test_build_json_of_an_ahead_of_time_build(tiny_package, tmp_path, monkeypatch, capsys):
    """`rgtp build` end to end but for TensorRT itself, which is test_trt_builder's fake
    (TensorRT-RTX's calls, plans of b"plan"): what the command writes, not what it builds."""
    from rgtp.engines import trt_build
    from tests.test_trt_builder import FakeConfig, FakeTrt

    trt = FakeTrt()
    trt.ComputeCapability = SimpleNamespace(SM89="SM89")
    monkeypatch.setattr(FakeConfig, "set_compute_capability", lambda *a: None, raising=False)
    monkeypatch.setattr(trt_build, "import_tensorrt", lambda flavor=None: (trt, "tensorrt_rtx"))
    pkg = tmp_path / "pkg"
    shutil.copytree(tiny_package, pkg)
    assert main(["build", str(pkg), "--quiet", "--json"]) == 0
    out, err = capsys.readouterr()
    info = valid("build", json.loads(out))
    manifest = json.loads((pkg / "manifest.json").read_text())
    assert info["plans"] == manifest["extra"]["trt"]["plans"]
    assert info["compute_capability"] == "SM89" and f"digest {info['digest']}" in err
    assert all((pkg / plan["file"]).read_bytes() == b"plan" for plan in info["plans"])


def test_a_json_file_is_written_whole_or_not_at_all(tmp_path) -> None:
    path = tmp_path / "r.json"
    write_json(path, {"a": 1})
    before = path.read_text()
    with pytest.raises(ValueError):  # NaN is not JSON: refused, the old file kept
        write_json(path, {"a": float("nan")})
    with pytest.raises(TypeError):
        write_json(path, {"a": object()})
    assert path.read_text() == before and sorted(tmp_path.iterdir()) == [path]
    assert path.stat().st_mode & 0o777 == 0o666 & ~_umask()


def _umask() -> int:
    import os

    mask = os.umask(0)
    os.umask(mask)
    return mask


# ----------------------------------------------------------------------- --threads


def test_threads_reach_each_cpu_backend(monkeypatch) -> None:
    import torch

    from rgtp.cli.options import thread_options

    assert thread_options("ort", 3) == thread_options("openvino", 3) == {"threads": 3}
    assert thread_options("ort", None) == {}
    before = torch.get_num_threads()
    try:
        assert thread_options("torch", 1) == {} and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    with pytest.raises(output.UsageError):
        thread_options("trt", 2)


# -------------------------------------------------------------------------- logging


def test_rgtp_loggers_go_to_stderr_at_the_level_asked(tmp_path, capsys) -> None:
    library = logging.getLogger("rgtp.export.ensure")
    argv = ["run", str(tmp_path / "nowhere"), "--synthetic", "1", "--out", str(tmp_path)]
    for flag, shown in (([]), {"info", "warning"}), (["-q"], {"warning"}), (["-v"], None):
        assert main([*argv, *flag]) == 1  # configures logging, then fails (no package)
        capsys.readouterr()
        library.debug("a debug note")
        library.info("an info note")
        library.warning("a warning")
        err = capsys.readouterr().err
        expected = {"debug", "info", "warning"} if shown is None else shown
        assert ("a debug note" in err) == ("debug" in expected)
        assert ("an info note\n" in err) == ("info" in expected)  # bare, no level
        assert "warning: a warning\n" in err
    assert main([*argv, "-q"]) == 1
    assert capsys.readouterr().err.startswith("error: ")  # -q keeps errors


def test_library_modules_do_not_print() -> None:
    """Outside rgtp/cli/, messages go through `logging.getLogger(__name__)` (the `rgtp`
    hierarchy the command line shows on stderr); only the command line writes output."""
    root = Path(rgtp.__file__).parent
    printing = []
    for path in sorted(root.rglob("*.py")):
        if (root / "cli") in path.parents:
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            call = isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
            if call and node.func.id == "print":
                printing.append(f"{path.relative_to(root.parent)}:{node.lineno}")
    assert not printing, printing
