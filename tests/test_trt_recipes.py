"""trtexec.sh parses as the tools parse it: a checker written from trtexec's option rules
(TensorRT's `samples/common/sampleOptions.cpp`, 10.16 and 11.1, and the migration guides),
run on every line rgtp generates for TensorRT 10.x, 11.x and TensorRT-RTX, and on the
script rgtp generated before (kept below), which it refuses."""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from rgtp.engines.trt_build import BuildOptions, PlanJob, Profile, Tool, tool_for, trtexec_lines

Shapes = dict[str, tuple[int, ...]]

# Options each tool knows (those rgtp may emit), by phase; any other is "Unknown option".
BUILD = {"--onnx", "--saveEngine", "--skipInference", "--noTF32", "--memPoolSize"}
BUILD |= {"--timingCacheFile", "--profile", "--minShapes", "--optShapes", "--maxShapes"}
BUILD |= {"--fp16", "--bf16", "--int8", "--best", "--stronglyTyped"}
INFERENCE = {"--loadEngine", "--shapes", "--useProfile"}
RTX_ONLY = {"--specializeStrategyDS"}
SHAPE_FLAGS = ("--minShapes", "--optShapes", "--maxShapes")
# Gone by tool and TensorRT major: 10.x removed the implicit-batch and workspace flags,
# 11.x (strongly typed only) the weak-typing precision flags; TensorRT-RTX has no weak
# typing and no timing cache.
REMOVED_10 = {"--workspace", "--minTiming", "--batch", "--maxBatch", "--explicitBatch"}
WEAK_TYPING = {"--fp16", "--bf16", "--int8", "--best", "--precisionConstraints"}
REMOVED = {
    ("trtexec", 10): REMOVED_10,
    ("trtexec", 11): REMOVED_10 | WEAK_TYPING | {"--layerPrecisions"},
    ("tensorrt_rtx", 1): REMOVED_10 | WEAK_TYPING | {"--timingCacheFile"},
}


class RecipeError(ValueError):
    """A line the tool would refuse, and why (the tool's own words where it has them)."""


@dataclass
class Plan:
    """What a script says of one plan file: its source graph, profiles, timed profiles."""

    onnx: str
    profiles: list[tuple[Shapes, Shapes, Shapes]] = field(default_factory=list)
    timed: list[tuple[int | None, Shapes]] = field(default_factory=list)


def parse_shapes(text: str) -> Shapes:
    out = {}
    for item in text.split(","):
        name, _, dims = item.rpartition(":")
        if not name or not dims:
            raise RecipeError(f"bad shape spec {item!r}: name:AxBxC")
        if name in out:
            raise RecipeError(f"input {name!r} given twice in one shape spec")
        out[name] = tuple(int(d) for d in dims.split("x"))
    return out


def check_profile(index: int, shapes: dict[str, Shapes]) -> tuple[Shapes, Shapes, Shapes]:
    """One profile: min, opt and max of the same inputs, min <= opt <= max everywhere."""
    if set(shapes) != set(SHAPE_FLAGS):
        raise RecipeError(f"Found invalid or missing shape spec at profile index {index}. ")
    lo, opt, hi = (shapes[f] for f in SHAPE_FLAGS)
    if not set(lo) == set(opt) == set(hi):
        raise RecipeError(f"profile {index}: min/opt/max name different inputs")
    for name in lo:
        dims = (lo[name], opt[name], hi[name])
        if len({len(d) for d in dims}) != 1 or not all(
            a <= b <= c for a, b, c in zip(*dims, strict=True)
        ):
            raise RecipeError(f"profile {index}: {name} needs min <= opt <= max, got {dims}")
    return lo, opt, hi


def build_profiles(args: list[tuple[str, str]]) -> list[tuple[Shapes, Shapes, Shapes]]:
    """Profiles as trtexec reads them: `--profile=i` takes the (up to three) shape options
    right behind it; shape options behind no --profile form one profile only if none has one."""
    profiles: dict[int, dict[str, Shapes]] = {}
    loose: list[str] = []
    i = 0
    while i < len(args):
        name, value = args[i]
        i += 1
        if name in SHAPE_FLAGS:
            loose.append(name)
        if name != "--profile":
            continue
        index = int(value)
        if index in profiles:
            raise RecipeError("Optimization profile index cannot be the same.")
        profiles[index] = {}
        while i < len(args) and args[i][0] in SHAPE_FLAGS and args[i][0] not in profiles[index]:
            profiles[index][args[i][0]] = parse_shapes(args[i][1])
            i += 1
    if (profiles and loose) or any(loose.count(f) > 1 for f in SHAPE_FLAGS):
        raise RecipeError(
            "Multiple --minShapes/--optShapes/--maxShapes without --profile are not allowed. "
        )
    if loose:
        shapes = {n: parse_shapes(v) for n, v in args if n in SHAPE_FLAGS}
        return [check_profile(0, shapes)]
    for index in range(max(profiles, default=-1) + 1):
        if index not in profiles:
            raise RecipeError(f"Found invalid or missing shape spec at profile index {index}. ")
    return [check_profile(i, profiles[i]) for i in range(len(profiles))]


def check_line(line: str, tool: Tool, plans: dict[str, Plan]) -> None:
    """Check one command of `tool`, adding what it builds or times to `plans`."""
    words = shlex.split(line)
    if words[0] != tool.name:
        raise RecipeError(f"a {words[0]} command in a {tool.name} script")
    args = []
    for word in words[1:]:
        name, eq, value = word.partition("=")
        if not name.startswith("--"):
            raise RecipeError(f"Unknown option: {word}")
        args.append((name, value if eq else ""))
    names = [n for n, _ in args]
    removed = REMOVED[(tool.name, tool.major)]
    known = BUILD | INFERENCE | (RTX_ONLY if tool.rtx else set())
    for name in names:
        if name in removed or name not in known:
            raise RecipeError(f"Unknown option: {name} ({tool.name} {tool.major}.x)")
    if tool.name != "trtexec" or tool.major != 10:
        if "--stronglyTyped" in names:
            raise RecipeError(
                f"--stronglyTyped is deprecated (a no-op) in {tool.name} {tool.major}"
            )
    elif "--stronglyTyped" in names and set(names) & WEAK_TYPING:
        raise RecipeError("--stronglyTyped enforces the graph's types: no --fp16/--int8/--best")
    values = dict(args)
    if ("--onnx" in values) == ("--loadEngine" in values):
        raise RecipeError("a line builds (--onnx) or loads (--loadEngine) one plan")
    if "--onnx" in values:
        if "--saveEngine" not in values:
            raise RecipeError("a build line saves its plan (--saveEngine)")
        if set(names) & INFERENCE:
            raise RecipeError(f"inference options on a build line: {set(names) & INFERENCE}")
        plans[values["--saveEngine"]] = Plan(values["--onnx"], build_profiles(args))
        return
    if set(names) & {"--profile", *SHAPE_FLAGS}:
        # trtexec parses build options on every line: a bare --profile has no shapes
        raise RecipeError("Found invalid or missing shape spec at profile index 0. ")
    plan = plans.get(values["--loadEngine"])
    if plan is None:
        raise RecipeError(f"{values['--loadEngine']} is timed before a line builds it")
    index = int(values["--useProfile"]) if "--useProfile" in values else None
    shapes = parse_shapes(values["--shapes"]) if "--shapes" in values else {}
    if plan.profiles:
        if index is None or not 0 <= index < len(plan.profiles):
            raise RecipeError(f"--useProfile={index}: the plan has {len(plan.profiles)} profiles")
        lo, _, hi = plan.profiles[index]
        if set(shapes) != set(lo):
            raise RecipeError(f"--shapes names {sorted(shapes)}, profile {index} {sorted(lo)}")
        for name, dims in shapes.items():
            if not all(a <= d <= b for a, d, b in zip(lo[name], dims, hi[name], strict=True)):
                raise RecipeError(f"{name} {dims} is outside profile {index}")
    elif index is not None or shapes:
        raise RecipeError("a plan of static shapes takes no --shapes or --useProfile")
    plan.timed.append((index, shapes))


def check_script(text: str, tool: Tool) -> dict[str, Plan]:
    """Every command of a generated script, checked; RecipeError naming the first bad line."""
    plans: dict[str, Plan] = {}
    for number, line in enumerate(text.splitlines(), 1):
        if line.startswith(("#", "set ")) or not line.strip():
            continue
        try:
            check_line(line, tool, plans)
        except RecipeError as e:
            raise RecipeError(f"line {number}: {e}") from None
    return plans


# What rgtp wrote before this checker existed (HEAD a30474e's `trtexec_lines`, fp16, for a
# two-profile stage plan and a timing cache).
OLD_SCRIPT = """\
# stage0: build
trtexec --onnx=stage0_kK.onnx --saveEngine=trt/stage0.plan --fp16 --timingCacheFile=timing.cache \
--minShapes=tokens:1x49x96,keep:1x49 --optShapes=tokens:1x49x96,keep:1x49 \
--maxShapes=tokens:4x49x96,keep:4x49 --minShapes=tokens:1x98x96,keep:1x98 \
--optShapes=tokens:1x98x96,keep:1x98 --maxShapes=tokens:4x98x96,keep:4x98
# stage0: time profile 0 (K=49)
trtexec --loadEngine=trt/stage0.plan --shapes=tokens:1x49x96,keep:1x49 --profile=0
# stage0: time profile 1 (K=98)
trtexec --loadEngine=trt/stage0.plan --shapes=tokens:1x98x96,keep:1x98 --profile=1
"""
TOOLS = [Tool("trtexec", 10), Tool("trtexec", 11), Tool("tensorrt_rtx", 1)]


def stage_job(batch: int = 1) -> PlanJob:
    def at(k: int, b: int) -> Shapes:
        return {"tokens": (b, k, 96), "keep": (b, k)}

    profiles = [Profile(at(k, 1), at(k, batch), at(k, batch)) for k in (49, 98)]
    return PlanJob("stage0", "stage0_kK.onnx", profiles, [49, 98], symbolic=True)


def test_the_old_script_is_refused() -> None:
    with pytest.raises(RecipeError, match=r"line 2: Multiple --minShapes/.* without --profile"):
        check_script(OLD_SCRIPT, Tool("trtexec", 10))
    one_profile = OLD_SCRIPT.replace(" --minShapes=tokens:1x98x96", " --x").split(" --x")[0]
    timing = one_profile + "\n" + OLD_SCRIPT.splitlines()[3]
    with pytest.raises(RecipeError, match=r"line 3: Found invalid or missing shape spec"):
        check_script(timing, Tool("trtexec", 10))  # --profile on a timing line
    with pytest.raises(RecipeError, match=r"line 2: Unknown option: --fp16 \(trtexec 11"):
        check_script(OLD_SCRIPT, Tool("trtexec", 11))


@pytest.mark.parametrize("tool", TOOLS, ids=lambda t: f"{t.name}-{t.major}")
@pytest.mark.parametrize("precision", ["fp32", "tf32", "fp16"])
def test_every_generated_line_parses(tool: Tool, precision: str) -> None:
    options = BuildOptions(precision=precision, timing_cache=Path("timing.cache"), mem_pool_size=64)
    frame = {"frame": (1, 3, 32, 32)}
    embed = PlanJob("embed", "embed.onnx", [Profile(frame, frame, frame)], None)
    script = []
    for job, batch in ((embed, 1), (stage_job(), 1), (stage_job(4), 4)):
        built_from = f"trt/{job.name}.fp16.onnx" if precision == "fp16" else job.onnx_file
        script += trtexec_lines(job, f"trt/{job.name}_b{batch}.plan", options, tool, built_from)
    plans = check_script("\n".join(script), tool)
    stage = plans["trt/stage0_b1.plan"]
    assert stage.onnx == ("trt/stage0.fp16.onnx" if precision == "fp16" else "stage0_kK.onnx")
    assert [p[1]["keep"] for p in stage.profiles] == [(1, 49), (1, 98)]
    assert [i for i, _ in stage.timed] == [0, 1]
    assert plans["trt/embed_b1.plan"].profiles == [] and plans["trt/embed_b1.plan"].timed == [
        (None, {})
    ]
    assert plans["trt/stage0_b4.plan"].timed[1] == (1, {"tokens": (4, 98, 96), "keep": (4, 98)})
    tf32 = "--noTF32" not in script[1]
    assert tf32 == (precision == "tf32")


def test_each_flavour_and_version_gets_its_tool() -> None:
    assert tool_for("tensorrt", "10.13.3.9") == Tool("trtexec", 10)
    assert tool_for("tensorrt", "11.1.0") == Tool("trtexec", 11)
    assert tool_for("tensorrt_rtx", "1.7.1.116") == Tool("tensorrt_rtx", 1)
    lines = trtexec_lines(stage_job(), "s.plan", BuildOptions(), Tool("trtexec", 10))
    assert "--stronglyTyped" in lines[1].split()
    for tool in TOOLS[1:]:
        assert "--stronglyTyped" not in " ".join(
            trtexec_lines(stage_job(), "s.plan", BuildOptions(), tool)
        )


@pytest.mark.parametrize(
    "line, message",
    [
        (
            "trtexec --onnx=a.onnx --saveEngine=a.plan --profile=0 --minShapes=x:1 --optShapes=x:1 "
            "--maxShapes=x:1 --profile=0 --minShapes=x:2 --optShapes=x:2 --maxShapes=x:2",
            "index cannot be the same",
        ),
        (
            "trtexec --onnx=a.onnx --saveEngine=a.plan --profile=1 --minShapes=x:1 --optShapes=x:1 "
            "--maxShapes=x:1",
            "missing shape spec at profile index 0",
        ),
        (
            "trtexec --onnx=a.onnx --saveEngine=a.plan --profile=0 --minShapes=x:2 --optShapes=x:1 "
            "--maxShapes=x:3",
            "min <= opt <= max",
        ),
        ("trtexec --onnx=a.onnx --saveEngine=a.plan --stronglyTyped --fp16", "--stronglyTyped"),
        ("trtexec --onnx=a.onnx --saveEngine=a.plan --workspace=64", "Unknown option: --workspace"),
        ("trtexec --loadEngine=b.plan", "timed before a line builds it"),
    ],
)
def test_the_checker_refuses_what_trtexec_refuses(line: str, message: str) -> None:
    with pytest.raises(RecipeError, match=message):
        check_script(line, Tool("trtexec", 10))
