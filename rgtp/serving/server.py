"""tritonserver on a model repository `rgtp triton` wrote, run from the serve environment
(`rgtp.serving.environment`), and `serve`, which keeps it up until a signal stops it
(`rgtp serve`).

`TritonServer` is a context manager. Entering it
- checks that its ports are free on its address (an error names the taken one),
- starts tritonserver in a process group of its own (the backend stubs it forks join it)
  with a server id of its own (`--id`), which also prefixes its shared-memory regions,
- waits until *this* process is ready: the server that answers on the HTTP and gRPC ports
  reports this id, serves every model of the repository with the parameters of its
  `config.pbtxt` (the settings and the package digest `rgtp triton` wrote), and listens on
  the metrics port itself; another server answering there, or tritonserver's own exit
  ("already in use"), is an error.
Two failures of a start are transient, and the start is tried again, up to `START_ATTEMPTS`
starts in all, each retry logged:
- a port it picked itself (ports left None are picked free when it is made) taken by
  another process before tritonserver binds it (a race: e.g. two test workers starting
  servers at once): tried on ports picked afresh. A port the caller named is never
  replaced: its error is raised.
- tritonserver killed by a signal before it was ready (an abort: Triton's Python backend
  now and then throws `boost::interprocess::lock_exception` while it sets up a model
  instance, triton-inference-server/server #5949 and #8882). An exit with a status (a
  model that does not load, a bad flag) is never tried again.
Leaving it sends SIGTERM (SIGKILL after `stop_timeout_s`), kills what is left of the group,
and removes its temporary directory and any shared-memory region it left behind.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from types import FrameType, TracebackType

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from rgtp.serving.environment import serve_environment

logger = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"
SHARED_MEMORY = Path("/dev/shm")
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
# Requests to our own loopback server must not go through an http_proxy of the caller's.
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class ServerError(RuntimeError):
    """The server could not start, did not start as this repository's, or did not stop."""


class StartCrashed(ServerError):
    """tritonserver was killed by a signal before it was ready."""


class PortTaken(ServerError):
    """One of the server's ports is held by another process: `kind` ("http", "grpc" or
    "metrics")."""

    def __init__(self, message: str, kind: str) -> None:
        super().__init__(message)
        self.kind = kind


# Starts tried in all when a start fails in a transient way (the module docstring).
START_ATTEMPTS = 3


class Stopped(BaseException):
    """A stop signal arrived; a BaseException like KeyboardInterrupt, so that no `except
    Exception` on the way swallows it."""


def free_port(address: str = LOOPBACK) -> int:
    """A TCP port on `address` that nothing listens on now."""
    return free_ports(address, 1)[0]


def free_ports(address: str, count: int) -> list[int]:
    """`count` different TCP ports on `address` that nothing listens on now (held open
    together while picked, so the kernel cannot hand out one twice)."""
    with contextlib.ExitStack() as held:
        sockets = [held.enter_context(socket.socket(_family(address))) for _ in range(count)]
        for s in sockets:
            s.bind((address, 0))
        return [s.getsockname()[1] for s in sockets]


def check_ports(address: str, ports: dict[str, int]) -> None:
    """Raise ServerError naming the first of `ports` ({"http": 8000, ...}) that cannot be
    listened on at `address` (another server holds it, or it is not ours to bind)."""
    if len(set(ports.values())) < len(ports):
        raise ServerError(f"the ports must differ: {_named(ports)}")
    for kind, port in ports.items():
        with socket.socket(_family(address)) as s:
            # as tritonserver binds: a port whose old connections wait in TIME_WAIT is free
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((address, port))
                s.listen()
            except OSError as e:
                taken = e.errno == errno.EADDRINUSE
                message = (
                    f"cannot listen on the {kind} port {port} at {address}: {e.strerror}"
                    f"{' (another server?)' if taken else ''}; choose another with --{kind}-port"
                )
                raise (PortTaken(message, kind) if taken else ServerError(message)) from None


def repository_models(repository: Path) -> dict[str, dict[str, str]]:
    """{model name: its config.pbtxt's parameters} for every model of `repository`."""
    models = {}
    for config in sorted(repository.glob("*/config.pbtxt")):
        cfg = text_format.Parse(config.read_text(), mc.ModelConfig())
        models[cfg.name or config.parent.name] = {
            k: v.string_value for k, v in cfg.parameters.items()
        }
    if not models:
        raise ServerError(f"{repository} holds no model (no */config.pbtxt); see rgtp triton")
    return models


class TritonServer:
    """tritonserver on `repository` (see the module docstring), listening on `address`;
    ports None pick free ones; `env` names the serve environment (None: the default one).
    `http_url`, `grpc_url` and `metrics_url` are host:port for the clients."""

    def __init__(
        self,
        repository: str | Path,
        http_port: int | None = None,
        grpc_port: int | None = None,
        metrics_port: int | None = None,
        ready_timeout_s: float = 180.0,
        stop_timeout_s: float = 30.0,
        address: str = LOOPBACK,
        env: str | Path | None = None,
    ) -> None:
        self.repository = Path(repository).resolve()
        if not self.repository.is_dir():
            raise ServerError(f"{repository}: no such model repository (see rgtp triton)")
        self.models = repository_models(self.repository)
        self.environment = serve_environment(env)
        self.address = address
        named = {"http": http_port, "grpc": grpc_port, "metrics": metrics_port}
        self._picked = [kind for kind, port in named.items() if not port]  # ours to replace
        picked = dict(zip(self._picked, free_ports(address, len(self._picked)), strict=True))
        self.ports = {kind: port or picked[kind] for kind, port in named.items()}
        self.id = f"rgtp-{secrets.token_hex(6)}"
        self.ready_timeout_s, self.stop_timeout_s = ready_timeout_s, stop_timeout_s
        self.process: subprocess.Popen | None = None
        self.workdir: Path | None = None

    @property
    def http_url(self) -> str:
        return _host_port(self.address, self.ports["http"])

    @property
    def grpc_url(self) -> str:
        return _host_port(self.address, self.ports["grpc"])

    @property
    def metrics_url(self) -> str:
        return _host_port(self.address, self.ports["metrics"])

    @property
    def log_path(self) -> Path | None:
        return None if self.workdir is None else self.workdir / "tritonserver.log"

    def command(self, backends: Path) -> list[str]:
        return [
            str(self.environment.server),
            f"--model-repository={self.repository}",
            f"--backend-directory={backends}",
            f"--id={self.id}",
            f"--backend-config=python,shm-region-prefix-name={self.id}-",
            *(
                f"--{kind}-{option}={value}"
                for kind, port in self.ports.items()
                for option, value in (("address", self.address), ("port", port))
            ),
            "--allow-gpu-metrics=false",
            f"--exit-timeout-secs={max(1, round(self.stop_timeout_s / 2))}",
        ]

    def start(self) -> TritonServer:
        """Start the server and wait until it is ready (see the module docstring)."""
        for attempt in range(1, START_ATTEMPTS + 1):
            try:
                return self._start()
            except PortTaken as e:
                if e.kind not in self._picked or attempt == START_ATTEMPTS:
                    raise
                logger.warning("%s; starting again on other ports", e)
                fresh = free_ports(self.address, len(self._picked))
                self.ports |= dict(zip(self._picked, fresh, strict=True))
            except StartCrashed as e:
                if attempt == START_ATTEMPTS:
                    raise
                logger.warning("%s\nstarting it again", e)
        raise AssertionError("unreachable: the last attempt returns or raises")

    def _start(self) -> TritonServer:
        check_ports(self.address, self.ports)
        try:
            self.workdir = Path(tempfile.mkdtemp(prefix="rgtp-triton-"))
            backends = self._backend_directory()
            with open(self.log_path, "wb") as log:
                self.process = subprocess.Popen(
                    self.command(backends),
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=self.environment.server_environment(dict(os.environ)),
                    start_new_session=True,  # its own process group, stubs included
                )
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _backend_directory(self) -> Path:
        """The Python backend with the stub of the environment's Python version (the wheel
        keeps one stub per version apart from the backend)."""
        assert self.workdir is not None
        python = self.workdir / "backends" / "python"
        python.mkdir(parents=True)
        shipped = self.environment.triton / "backends" / "python"
        for name in ("libtriton_python.so", "triton_python_backend_utils.py"):
            (python / name).symlink_to(shipped / name)
        shutil.copy2(self.environment.stub, python / self.environment.stub.name)
        return python.parent

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.ready_timeout_s
        while True:
            assert self.process is not None
            if self.process.poll() is not None:
                raise self._exit_error(self.process.returncode)
            waiting = self.waiting_for()
            if waiting is None and not _listens_on(self.process.pid, self.ports["metrics"]):
                # (metrics answers carry no id; tritonserver binds it last, and exits when
                # it cannot, after HTTP and gRPC already answer)
                waiting = "metrics: tritonserver does not listen on its port yet"
            if waiting is None:
                return
            if time.monotonic() > deadline:
                raise ServerError(
                    f"tritonserver was not ready after {self.ready_timeout_s:g} s ({waiting}):"
                    f"\n{self.log_tail()}"
                )
            time.sleep(0.2)

    def waiting_for(self) -> str | None:
        """What the server is not ready with yet; None once it is. Raises ServerError when
        another server answers on its ports or its models differ from the repository's."""
        http = f"http://{self.http_url}/v2"
        try:
            self._check_id("http", json.loads(_get(http))["name"])
            _get(f"{http}/health/ready")  # 200 once every model has loaded
            for name, parameters in self.models.items():
                config = json.loads(_get(f"{http}/models/{name}/config"))
                served = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
                differ = sorted(
                    k for k in {*served, *parameters} if served.get(k) != parameters.get(k)
                )
                if differ:
                    raise ServerError(
                        f"the server serves a model {name} other than the repository's: its "
                        f"parameters {', '.join(differ)} differ from "
                        f"{self.repository / name / 'config.pbtxt'}"
                    )
        except (urllib.error.URLError, ConnectionError, TimeoutError) as e:
            return f"HTTP: {e}"
        return self._grpc_waiting_for()

    def _grpc_waiting_for(self) -> str | None:
        import tritonclient.grpc as grpcclient
        from tritonclient.utils import InferenceServerException

        client = grpcclient.InferenceServerClient(
            self.grpc_url, channel_args=[("grpc.enable_http_proxy", 0)]
        )
        try:
            self._check_id("grpc", client.get_server_metadata().name)
        except InferenceServerException as e:
            return f"gRPC: {e}"
        finally:
            client.close()
        return None

    def _check_id(self, kind: str, answered: str) -> None:
        if answered != self.id:
            raise PortTaken(
                f"the {kind} port {self.ports[kind]} at {self.address} is answered by another "
                f"server ({answered!r}, not this one's {self.id!r}); stop it or choose another "
                f"--{kind}-port",
                kind,
            )

    def _exit_error(self, status: int) -> ServerError:
        """Why tritonserver exited before it was ready, from its log."""
        log = self.log_tail()
        # (the port was taken after check_ports found it free)
        taken = re.search(r"Socket '(\S+):(\d+)' already in use", log)
        if taken is None and status < 0:
            return StartCrashed(
                f"tritonserver was killed by signal {-status} before it was ready:\n{log}"
            )
        if taken is None:
            return ServerError(
                f"tritonserver exited with status {status} before it was ready:\n{log}"
            )
        kind = {p: k for k, p in self.ports.items()}.get(int(taken[2]), "a")
        return PortTaken(
            f"tritonserver exited with status {status}: the {kind} port {taken[2]} at "
            f"{taken[1]} is already in use (another server?); choose another with "
            f"--{kind}-port",
            kind,
        )

    def log_tail(self, lines: int = 40) -> str:
        if self.log_path is None or not self.log_path.exists():
            return "(no log)"
        text = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])

    def stop(self) -> None:
        """Stop the server and every process of its group, remove its files; idempotent."""
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
        # (a stub killed, not stopped, leaves its regions behind)
        for region in SHARED_MEMORY.glob(f"{self.id}-*"):
            region.unlink(missing_ok=True)
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


def serve(server: TritonServer, on_ready: Callable[[TritonServer], None]) -> int:
    """Start `server`, call `on_ready`, and keep it up until SIGTERM, SIGINT (Ctrl-C) or
    SIGHUP; then stop it (its whole group, its files) and return 0. Raises ServerError if
    it does not start or exits by itself. Main thread only (it handles the signals)."""
    previous = {s: signal.signal(s, _stop) for s in STOP_SIGNALS}
    try:
        with server:
            on_ready(server)
            assert server.process is not None
            status = server.process.wait()
            raise ServerError(
                f"tritonserver exited by itself with status {status}:\n{server.log_tail()}"
            )
    except Stopped as e:
        logger.info("%s: tritonserver stopped", e)
        return 0
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def _stop(signum: int, frame: FrameType | None) -> None:
    # Further signals are ignored: the stop that this one starts must finish, or the group
    # and its files outlive us.
    for s in STOP_SIGNALS:
        signal.signal(s, signal.SIG_IGN)
    raise Stopped(signal.Signals(signum).name)


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


def _listens_on(pid: int, port: int) -> bool:
    """Whether process `pid` holds a listening TCP socket on `port` (Linux's /proc)."""
    listening = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()  # local address (hex ip:port), ..., state, ..., inode
                if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                    listening.add(f"socket:[{fields[9]}]")
    try:
        return any(os.readlink(fd) in listening for fd in Path(f"/proc/{pid}/fd").iterdir())
    except OSError:  # gone meanwhile
        return False


def _get(url: str) -> bytes:
    """The body of a 200 answer to GET `url`; raises URLError for any other."""
    with _DIRECT.open(url, timeout=5) as response:
        return response.read()


def _family(address: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in address else socket.AF_INET


def _host_port(address: str, port: int) -> str:
    """Where a client on this machine reaches `address`:`port` (a wildcard address is
    reached on loopback)."""
    host = {"0.0.0.0": LOOPBACK, "::": "::1"}.get(address, address)
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _named(ports: dict[str, int]) -> str:
    return ", ".join(f"{kind} {port}" for kind, port in ports.items())
