"""The Triton server that `nvidia-pytriton` bundles, started directly on a model repository:
loopback ports (free ones unless given), the Python backend with the stub built for this
interpreter's Python version, and this interpreter's libpython for the stub to run.

`TritonServer` is a context manager: entering waits until the server is ready (or raises
with the end of its log), leaving stops it with SIGTERM (SIGKILL after `stop_timeout_s`),
sweeps up any process it left in its process group, and deletes its backend directory.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType

LOOPBACK = "127.0.0.1"


class ServerError(RuntimeError):
    """The bundled server is missing, or did not start or stop as it should."""


def bundled_server() -> Path:
    """The `tritonserver` directory inside the installed nvidia-pytriton wheel."""
    spec = importlib.util.find_spec("pytriton")
    if spec is None or spec.origin is None:
        raise ServerError(
            "the Triton server comes with nvidia-pytriton, which is not installed: "
            "pip install -e '.[serve]' (make setup does)"
        )
    return Path(spec.origin).parent / "tritonserver"


def free_port() -> int:
    """A TCP port on the loopback interface that nothing listens on now."""
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


class TritonServer:
    """tritonserver on `repository` (see the module docstring). Ports: None picks free ones.
    `http_url`, `grpc_url` and `metrics_url` are host:port for the clients."""

    def __init__(
        self,
        repository: str | Path,
        http_port: int | None = None,
        grpc_port: int | None = None,
        metrics_port: int | None = None,
        ready_timeout_s: float = 180.0,
        stop_timeout_s: float = 30.0,
    ) -> None:
        self.repository = Path(repository).resolve()
        if not self.repository.is_dir():
            raise ServerError(f"{repository}: no such model repository (see rgtp triton)")
        self.ports = {
            "http": http_port or free_port(),
            "grpc": grpc_port or free_port(),
            "metrics": metrics_port or free_port(),
        }
        self.ready_timeout_s, self.stop_timeout_s = ready_timeout_s, stop_timeout_s
        self.process: subprocess.Popen | None = None
        self.workdir: Path | None = None

    @property
    def http_url(self) -> str:
        return f"{LOOPBACK}:{self.ports['http']}"

    @property
    def grpc_url(self) -> str:
        return f"{LOOPBACK}:{self.ports['grpc']}"

    @property
    def metrics_url(self) -> str:
        return f"{LOOPBACK}:{self.ports['metrics']}"

    @property
    def log_path(self) -> Path | None:
        return None if self.workdir is None else self.workdir / "tritonserver.log"

    def command(self, backends: Path) -> list[str]:
        return [
            str(bundled_server() / "bin" / "tritonserver"),
            f"--model-repository={self.repository}",
            f"--backend-directory={backends}",
            f"--http-address={LOOPBACK}",
            f"--http-port={self.ports['http']}",
            f"--grpc-address={LOOPBACK}",
            f"--grpc-port={self.ports['grpc']}",
            f"--metrics-address={LOOPBACK}",
            f"--metrics-port={self.ports['metrics']}",
            "--allow-gpu-metrics=false",
            f"--exit-timeout-secs={max(1, round(self.stop_timeout_s / 2))}",
        ]

    def start(self) -> TritonServer:
        self.workdir = Path(tempfile.mkdtemp(prefix="rgtp-triton-"))
        try:
            backends = _backend_directory(self.workdir)
            with open(self.log_path, "wb") as log:
                # Its own process group: the backend stubs it forks are swept up with it.
                self.process = subprocess.Popen(
                    self.command(backends),
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=_environment(),
                    start_new_session=True,
                )
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.ready_timeout_s
        url = f"http://{self.http_url}/v2/health/ready"
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise ServerError(
                    f"tritonserver exited with status {self.process.returncode} before it was "
                    f"ready:\n{self.log_tail()}"
                )
            try:
                with urllib.request.urlopen(url, timeout=2) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.2)
        raise ServerError(
            f"tritonserver was not ready after {self.ready_timeout_s:g} s:\n{self.log_tail()}"
        )

    def log_tail(self, lines: int = 40) -> str:
        if self.log_path is None or not self.log_path.exists():
            return "(no log)"
        text = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])

    def stop(self) -> None:
        """Stop the server and every process of its group; idempotent."""
        process, self.process = self.process, None
        if process is not None:
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(self.stop_timeout_s)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
            _end_group(process.pid)
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None

    def __enter__(self) -> TritonServer:
        return self.start()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


def _end_group(group: int, timeout_s: float = 10.0) -> None:
    """Kill what is left of process group `group` (a stub the server left behind) and wait
    until it is gone (its processes reaped by whoever adopted them)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(group, signal.SIGKILL)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            os.killpg(group, 0)  # ProcessLookupError once none is left
            time.sleep(0.05)
        raise ServerError(f"processes of tritonserver's group {group} outlived SIGKILL")


def _backend_directory(workdir: Path) -> Path:
    """A backend directory with the Python backend and the stub of this Python version (the
    wheel keeps one stub per version apart from the backend)."""
    root = bundled_server()
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = root / "python_backend_stubs" / version / "triton_python_backend_stub"
    if not stub.is_file():
        raise ServerError(f"nvidia-pytriton has no Python backend stub for Python {version}")
    python = workdir / "backends" / "python"
    python.mkdir(parents=True)
    for name in ("libtriton_python.so", "triton_python_backend_utils.py"):
        (python / name).symlink_to(root / "backends" / "python" / name)
    shutil.copy2(stub, python / stub.name)
    return python.parent


def _environment() -> dict[str, str]:
    """The server's environment: the wheel's libraries, and this interpreter's libpython
    for the stub (which links libpython by name) to run the same Python as this one."""
    libs = bundled_server().parent.parent / "nvidia_pytriton.libs"
    paths = [str(libs), sysconfig.get_config_var("LIBDIR") or ""]
    env = dict(os.environ)
    env["LD_LIBRARY_PATH"] = ":".join(p for p in [*paths, env.get("LD_LIBRARY_PATH", "")] if p)
    return env
