"""The serve environment: the Python environment that tritonserver and its Python backend
stub come from, and that the stub runs rgtp in.

A repository `rgtp triton` writes names no path of the machine that wrote it; its model
imports rgtp plainly. So the server is given an environment that has rgtp, numpy<2 (the
stub nvidia-pytriton bundles is built against numpy 1) and nvidia-pytriton (tritonserver,
the Python backend, one stub per Python version). `make serve-env` builds one in
`.venv-serve`; in NVIDIA's tritonserver image rgtp is installed into the image's Python and
the image's own server runs it (docs/serving.md).

How the stub gets there: it embeds libpython and reads no PYTHONPATH; its interpreter finds
its prefix from the first `python3` on PATH, as for any Python started by that name. So the
server runs with the environment's bin directory first on PATH (what the Python backend's
own EXECUTION_ENV_PATH does by sourcing bin/activate), and the stub's interpreter is that
environment's: its site-packages, an editable rgtp included, and nothing of the caller's.

Which environment: the one named (`rgtp serve --env DIR`), else `$RGTP_SERVE_ENV`, else the
running interpreter's if it can host the stub, else `.venv-serve` beside the rgtp checkout
this code runs from.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ENV_VARIABLE = "RGTP_SERVE_ENV"
CHECKOUT_ENV = ".venv-serve"  # make serve-env
BUILD_HINT = f"build one with `make serve-env` ({CHECKOUT_ENV}) or pip install 'rgtp[serve]'"

# Run by the environment's own interpreter, isolated (-I: its own sys.path, nothing of
# ours); it imports nothing heavy, so it answers in a fraction of a second.
_PROBE = """
import importlib.metadata, importlib.util, json, sys, sysconfig
def package(name):
    spec = importlib.util.find_spec(name)
    return None if spec is None else list(spec.submodule_search_locations)[0]
def version(name):
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None
print(json.dumps({
    "python": "%d.%d" % sys.version_info[:2],
    "libdir": sysconfig.get_config_var("LIBDIR"),
    "libpython": sysconfig.get_config_var("LDLIBRARY"),
    "rgtp": package("rgtp"),
    "pytriton": package("pytriton"),
    "numpy": version("numpy"),
}))
"""


class ServeEnvironmentError(RuntimeError):
    """No environment, or one that cannot run the server or host its stub."""


@dataclass(frozen=True)
class ServeEnvironment:
    """A Python environment that can host the stub (see the module docstring)."""

    python: Path  # its interpreter, beside the `python3` the stub's interpreter becomes
    version: str  # "3.11": the stub of this version runs, linked to this libpython
    libdir: Path  # where its libpython3.X.so lies
    triton: Path  # nvidia-pytriton's tritonserver directory

    @property
    def server(self) -> Path:
        return self.triton / "bin" / "tritonserver"

    @property
    def stub(self) -> Path:
        return self.triton / "python_backend_stubs" / self.version / "triton_python_backend_stub"

    @property
    def libraries(self) -> Path:
        """The shared libraries tritonserver links (the wheel keeps them beside pytriton)."""
        return self.triton.parent.parent / "nvidia_pytriton.libs"

    @classmethod
    def probe(cls, python: Path) -> ServeEnvironment:
        """The environment of interpreter `python`, checked to host the stub."""
        if not os.access(python, os.X_OK):
            raise ServeEnvironmentError(f"{python}: no Python interpreter there; {BUILD_HINT}")
        try:
            found = json.loads(
                subprocess.run(
                    [str(python), "-I", "-c", _PROBE],
                    capture_output=True,
                    text=True,
                    check=True,
                    timeout=60,
                ).stdout
            )
        except (subprocess.SubprocessError, ValueError) as e:
            raise ServeEnvironmentError(f"{python} could not be asked what it holds: {e}") from e
        return cls._checked(python, found)

    @classmethod
    def _checked(cls, python: Path, found: dict) -> ServeEnvironment:
        where = f"the environment of {python}"
        if found["pytriton"] is None:
            raise ServeEnvironmentError(
                f"{where} has no nvidia-pytriton (the Triton server); {BUILD_HINT}"
            )
        if found["rgtp"] is None:
            raise ServeEnvironmentError(f"{where} cannot import rgtp; {BUILD_HINT}")
        numpy = found["numpy"]
        if numpy is None or int(numpy.split(".")[0]) >= 2:
            raise ServeEnvironmentError(
                f"{where} has numpy {numpy}; nvidia-pytriton's Python backend stub needs "
                f"numpy<2; {BUILD_HINT}"
            )
        libdir, libpython = Path(found["libdir"] or ""), found["libpython"] or ""
        if not libpython.endswith(".so") or not (libdir / libpython).is_file():
            raise ServeEnvironmentError(
                f"{where}: the stub links libpython{found['python']}.so, and this Python has "
                f"none ({libdir / libpython}); use a Python built with --enable-shared"
            )
        if not (python.parent / "python3").is_file():
            raise ServeEnvironmentError(
                f"{where}: no python3 beside {python.name}, which the stub's interpreter "
                "looks for on PATH to find its environment"
            )
        env = cls(python, found["python"], libdir, Path(found["pytriton"]) / "tritonserver")
        if not env.stub.is_file():
            raise ServeEnvironmentError(
                f"{where}: nvidia-pytriton has no Python backend stub for Python {env.version}"
            )
        return env

    def server_environment(self, base: dict[str, str]) -> dict[str, str]:
        """`base` (os.environ) as tritonserver and the stub it forks should see it."""
        env = dict(base)
        # The stub's torch parts run between ONNX Runtime calls on the same cores as
        # tritonserver and its clients: OpenMP threads spinning after each part took those
        # cores (measured on 2 cores, 8 streams: 0.15-0.23 of in-process throughput spinning,
        # 0.77-1.16 waiting passively). A policy the caller set wins.
        env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        libraries = [str(self.libraries), str(self.libdir), env.get("LD_LIBRARY_PATH", "")]
        env["LD_LIBRARY_PATH"] = ":".join(p for p in libraries if p)
        env["PATH"] = ":".join(p for p in [str(self.python.parent), env.get("PATH", "")] if p)
        return env


def serve_environment(env: str | Path | None = None) -> ServeEnvironment:
    """The serve environment `env` (a directory with bin/python), else the default one (see
    the module docstring)."""
    named = env if env is not None else os.environ.get(ENV_VARIABLE)
    if named:
        return ServeEnvironment.probe(Path(named).absolute() / "bin" / "python")
    tried = []
    for python in (Path(sys.executable), _checkout_env() / "bin" / "python"):
        try:
            return ServeEnvironment.probe(python)
        except ServeEnvironmentError as e:
            tried.append(str(e))
    raise ServeEnvironmentError(
        f"no serve environment: pass --env DIR or set {ENV_VARIABLE}.\n" + "\n".join(tried)
    )


def _checkout_env() -> Path:
    """`.venv-serve` beside the source tree of this rgtp (a checkout's, where make built it)."""
    return Path(__file__).resolve().parents[2] / CHECKOUT_ENV
