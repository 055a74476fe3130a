"""`rgtp serve` as an operator runs it, against the real tritonserver of the serve
environment (`make serve-env`): a signal stops the server's whole process group and frees
its ports and files, a taken port is an error naming it, and readiness means this server
process serving this repository's model. Also: a written repository names no path of the
machine that wrote it (the stub's environment provides rgtp)."""

from __future__ import annotations

import os
import re
import select
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import tritonclient.http as httpclient

import rgtp
from rgtp.serving import ServingSettings, write_repository
from rgtp.serving import server as server_module
from rgtp.serving.environment import ServeEnvironment, ServeEnvironmentError, serve_environment
from rgtp.serving.server import SHARED_MEMORY, ServerError, TritonServer, free_port
from tests.conftest import synthvid_frames

ROOT = Path(rgtp.__file__).resolve().parents[1]
READY = re.compile(r"tritonserver ready \(pid (\d+)\).*; log (\S+)/tritonserver\.log;")
KEEPS = (64, 128)  # the two repositories differ in K alone


@pytest.fixture(scope="module")
def package(small_packages) -> Path:
    return small_packages["a"][0]


@pytest.fixture(scope="module")
def repositories(package, tmp_path_factory) -> dict[int, Path]:
    root = tmp_path_factory.mktemp("serve")
    return {
        keep: write_repository(
            package, root / f"repo{keep}", ServingSettings(keep=keep, max_streams=2)
        ).parent
        for keep in KEEPS
    }


class Served:
    """An `rgtp serve` subprocess: its launcher, tritonserver's PID (its process group) and
    temporary directory, once ready."""

    def __init__(self, repository: Path, ports: dict[str, int]) -> None:
        self.ports = ports
        self.launcher = subprocess.Popen(
            [sys.executable, "-m", "rgtp", "serve", str(repository), *port_flags(ports)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.pid: int | None = None
        self.workdir: Path | None = None

    def wait_ready(self, within_s: float = 300.0) -> Served:
        line = read_line(self.launcher, within_s)
        ready = READY.search(line)
        if ready is None:
            status = self.launcher.poll()
            if status is None:
                status = self.stop()
            pytest.fail(f"not ready (status {status}): {line!r}\n{self.launcher.stderr.read()}")
        self.pid, self.workdir = int(ready[1]), Path(ready[2])
        return self

    def stop(self, signum: int = signal.SIGTERM, within_s: float = 60.0) -> int:
        self.launcher.send_signal(signum)
        return self.launcher.wait(within_s)

    @property
    def url(self) -> str:
        return f"127.0.0.1:{self.ports['http']}"


def port_flags(ports: dict[str, int]) -> list[str]:
    return [f"--{kind}-port={port}" for kind, port in ports.items()]


def fresh_ports() -> dict[str, int]:
    return {kind: free_port() for kind in ("http", "grpc", "metrics")}


def read_line(process: subprocess.Popen, within_s: float) -> str:
    """The next line of `process`'s stdout, '' if it exits or `within_s` pass first."""
    ready, _, _ = select.select([process.stdout], [], [], within_s)
    return process.stdout.readline() if ready else ""


def group_members(group: int) -> list[int]:
    """The PIDs of process group `group`, from /proc."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # gone meanwhile
        if int(fields[2]) == group:
            members.append(int(stat.parent.name))
    return members


def assert_gone(group: int, ports: dict[str, int], workdir: Path, server_id: str) -> None:
    """No process of `group` left, every port listened on again, no file left behind."""
    with pytest.raises(ProcessLookupError):
        os.killpg(group, 0)
    for port in ports.values():  # (a listener may take a port with connections in TIME_WAIT)
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("127.0.0.1", port))
            s.listen()
    assert not workdir.exists()
    assert not list(SHARED_MEMORY.glob(f"{server_id}-*"))


def server_id(url: str) -> str:
    return httpclient.InferenceServerClient(url).get_server_metadata()["name"]


def second_k(url: str, model: str) -> int:
    """K of a new sequence's second frame (its first is dense): the repository's keep."""
    client = httpclient.InferenceServerClient(url)
    ks = []
    for t, frame in enumerate(synthvid_frames(2)):
        x = httpclient.InferInput("FRAME", [1, *frame.shape], "UINT8")
        x.set_data_from_numpy(frame[None])
        r = client.infer(model, [x], sequence_id=77, sequence_start=t == 0, sequence_end=t == 1)
        ks.append(int(r.as_numpy("K")[0, 0]))
    return ks[1]


@pytest.fixture(scope="module")
def first(repositories):
    """`rgtp serve` on the K = 64 repository, for the module; the last test stops it."""
    served = Served(repositories[64], fresh_ports()).wait_ready()
    yield served
    if served.launcher.poll() is None:
        served.stop()


def test_a_taken_port_is_refused_naming_it_and_the_old_server_goes_on(first, repositories):
    model = next(iter(server_module.repository_models(repositories[128])))
    for kind in ("http", "grpc", "metrics"):
        ports = {**fresh_ports(), kind: first.ports[kind]}
        second = Served(repositories[128], ports)
        assert second.launcher.wait(120) != 0
        error = second.launcher.stderr.read()
        assert f"the {kind} port {first.ports[kind]} at 127.0.0.1" in error, error
        assert "Address already in use" in error and "ready" not in second.launcher.stdout.read()
    assert second_k(first.url, model) == 64  # the first server's model, unchanged


def test_readiness_refuses_another_server_and_another_model(first, repositories):
    """A server answering on the ports that is not this process, or this process serving
    another model than the repository's, is never taken as ready: what the issue saw (the
    old server answered as the new one)."""
    other = TritonServer(repositories[128], **{f"{k}_port": p for k, p in first.ports.items()})
    with pytest.raises(ServerError, match=rf"http port {first.ports['http']} .* another server"):
        other.waiting_for()
    other.id = server_id(first.url)  # as if it were this process: the model still differs
    with pytest.raises(ServerError, match=r"other than the repository's: its parameters "):
        other.waiting_for()
    same = TritonServer(repositories[64], **{f"{k}_port": p for k, p in first.ports.items()})
    same.id = other.id
    assert same.waiting_for() is None  # the repository's own model, by its config.pbtxt


def test_a_port_the_server_picked_and_lost_to_a_race_is_picked_again(repositories, monkeypatch):
    """Two processes starting servers at once (two test workers) may pick the same free
    port: here another process takes the HTTP port the server picked, after the check and
    before tritonserver binds it; tritonserver's own exit names it, and the start goes on
    on ports picked afresh. (A port the caller named is never replaced: the test below.)"""
    monkeypatch.setattr(server_module, "check_ports", lambda address, ports: None)
    pick = server_module.free_ports
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        lost = taken.getsockname()[1]
        first = iter([[lost, *pick("127.0.0.1", 2)]])
        monkeypatch.setattr(
            server_module,
            "free_ports",
            lambda address, count: next(first, None) or pick(address, count),
        )
        srv = TritonServer(repositories[128], stop_timeout_s=6)
        assert srv.ports["http"] == lost
        with srv:
            assert lost not in srv.ports.values() and len(set(srv.ports.values())) == 3
            assert srv.process is not None and srv.process.poll() is None
            assert srv.waiting_for() is None  # this server, this repository's model
    assert srv.process is None and srv.workdir is None


def test_a_start_killed_by_a_signal_is_tried_again(repositories, monkeypatch, tmp_path, caplog):
    """tritonserver aborted before it was ready (as Triton's Python backend now and then
    does while it sets up a model instance): the start is tried again and the retry logged;
    here the first start aborts itself, the second is the real server."""
    once = tmp_path / "aborted"
    command = TritonServer.command

    def aborting_once(self, backends):
        script = f'if [ ! -e {once} ]; then touch {once}; kill -ABRT $$; fi; exec "$@"'
        return ["sh", "-c", script, "sh", *command(self, backends)]

    monkeypatch.setattr(TritonServer, "command", aborting_once)
    server = TritonServer(repositories[128], stop_timeout_s=6)
    with caplog.at_level("WARNING", logger="rgtp.serving.server"), server as srv:
        assert once.exists() and srv.waiting_for() is None
    assert "tritonserver was killed by signal 6 before it was ready" in caplog.text
    assert "starting it again" in caplog.text


@pytest.mark.parametrize("kind", ["http", "grpc", "metrics"])
def test_tritonservers_own_port_error_names_the_port(repositories, monkeypatch, kind):
    """A port taken after the check (a race): tritonserver's own exit names it, also the
    metrics port, which tritonserver binds after HTTP and gRPC already answer."""
    monkeypatch.setattr(server_module, "check_ports", lambda address, ports: None)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        ports = {**fresh_ports(), kind: taken.getsockname()[1]}
        srv = TritonServer(repositories[128], **{f"{k}_port": p for k, p in ports.items()})
        with pytest.raises(ServerError, match=rf"the {kind} port {ports[kind]} .* already in use"):
            srv.start()
    assert srv.process is None and srv.workdir is None


def test_a_signal_while_starting_stops_everything(repositories):
    """Ctrl-C while tritonserver loads the model: the launcher stops it and exits 0."""
    served = Served(repositories[128], fresh_ports())
    deadline = time.monotonic() + 60
    while (server := _tritonserver(served.launcher.pid)) is None:
        assert time.monotonic() < deadline, "tritonserver never started"
        time.sleep(0.1)
    pid, flags = server
    backends = Path(flags["--backend-directory"])
    assert served.stop(signal.SIGINT) == 0
    assert "SIGINT: tritonserver stopped" in served.launcher.stderr.read()
    assert "ready" not in served.launcher.stdout.read()
    assert_gone(pid, served.ports, backends.parent, flags["--id"])


def test_sigterm_stops_the_whole_group_frees_its_ports_and_files(first):
    """Last in the module: it stops `first`."""
    sid = server_id(first.url)
    members = group_members(first.pid)
    assert len(members) >= 2  # tritonserver and the model's backend stub
    assert list(SHARED_MEMORY.glob(f"{sid}-*"))  # the stub's shared memory
    started = time.monotonic()
    assert first.stop(signal.SIGTERM) == 0
    print(f"stopped in {time.monotonic() - started:.1f} s")
    assert "SIGTERM: tritonserver stopped" in first.launcher.stderr.read()
    assert_gone(first.pid, first.ports, first.workdir, sid)
    for pid in members:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_a_serve_environment_that_is_not_one_is_refused(tmp_path, monkeypatch) -> None:
    with pytest.raises(ServeEnvironmentError, match=r"no Python interpreter there"):
        serve_environment(tmp_path)
    monkeypatch.setenv("RGTP_SERVE_ENV", str(tmp_path))
    with pytest.raises(ServeEnvironmentError, match=rf"{tmp_path}/bin/python: no Python"):
        serve_environment()


def test_the_stub_waits_passively_unless_the_caller_chose(tmp_path) -> None:
    # (OpenMP threads spinning in the stub took the cores from tritonserver and its clients)
    env = ServeEnvironment(tmp_path / "bin" / "python", "3.11", tmp_path, tmp_path)
    assert env.server_environment({})["OMP_WAIT_POLICY"] == "PASSIVE"
    assert env.server_environment({"OMP_WAIT_POLICY": "ACTIVE"})["OMP_WAIT_POLICY"] == "ACTIVE"


def test_taken_or_equal_ports_are_refused_before_anything_starts() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        ports = {**fresh_ports(), "grpc": port}
        with pytest.raises(ServerError, match=rf"the grpc port {port} at 127.0.0.1: Address "):
            server_module.check_ports("127.0.0.1", ports)
    with pytest.raises(ServerError, match=r"the ports must differ: http 8000, grpc 8000"):
        server_module.check_ports("127.0.0.1", {"http": 8000, "grpc": 8000, "metrics": 8002})


def test_a_written_repository_names_no_path_of_this_machine(package, tmp_path) -> None:
    """Nothing in the repository, the package's graphs and weights included, names the
    checkout, the Pythons, or where the package and the repository lie (the exporter drops
    torch.onnx's per-node stack traces)."""
    model = write_repository(package, tmp_path / "repo", ServingSettings(keep=64))
    written = [p for p in model.parent.rglob("*") if p.is_file()]
    assert {p.name for p in written} >= {"config.pbtxt", "model.py", "rgtp-triton.json"}
    assert any(p.suffix == ".onnx" for p in written)
    for path in written:
        text = path.read_bytes()
        for machine_path in _machine_paths(package, tmp_path):
            assert machine_path.encode() not in text, f"{path} names {machine_path}"


def _machine_paths(package: Path, tmp_path: Path) -> list[str]:
    """Paths of this machine a repository must not name: the checkout, the Pythons and
    environments, where the package and the repository lie."""
    env = serve_environment()
    return sorted(
        {str(ROOT), sys.prefix, sys.base_prefix, str(env.python.parent.parent)}
        | {str(Path(package).resolve()), str(tmp_path.resolve())}
    )


def _tritonserver(launcher: int) -> tuple[int, dict[str, str]] | None:
    """The PID and --flag=value arguments of `launcher`'s tritonserver, once it runs."""
    for child in Path(f"/proc/{launcher}/task/{launcher}/children").read_text().split():
        args = Path(f"/proc/{child}/cmdline").read_text().split("\0")
        if args[0].endswith("/tritonserver"):
            return int(child), dict(a.split("=", 1) for a in args[1:] if "=" in a)
    return None


def test_the_serve_commands_are_one(tmp_path) -> None:
    """`python -m rgtp.serving` is `rgtp serve`: the same parser, the same errors."""
    runs = [
        subprocess.run(
            [sys.executable, "-m", *module, str(tmp_path / "missing")],
            capture_output=True,
            text=True,
        )
        for module in (["rgtp", "serve"], ["rgtp.serving"])
    ]
    assert [r.returncode for r in runs] == [1, 1]  # a failure, not a usage error
    assert runs[0].stderr == runs[1].stderr and "no such model repository" in runs[0].stderr


def test_serve_names_a_serve_environment_it_cannot_use(repositories, tmp_path) -> None:
    cli = subprocess.run(
        [sys.executable, "-m", "rgtp", "serve", str(repositories[64]), "--env", str(tmp_path)],
        capture_output=True,
        text=True,
    )
    assert cli.returncode == 1
    assert f"{tmp_path}/bin/python: no Python interpreter there" in cli.stderr
