"""A real tritonserver on this machine, for tests, benchmarks and trying a repository out: the one the
nvidia-pytriton wheel bundles (tritonserver 2.51, python backend only), in its own venv, listening on
127.0.0.1 only.

    env = server_env()                                   # built once per pinned requirements, then reused
    with TritonServer(env, "model-repo", ["depthscale"]) as server:
        server.http_url, server.grpc_url                 # "127.0.0.1:<port>"

The venv is separate from the project's environment: PyTriton pins numpy < 2. It is built in a hidden
temporary sibling and renamed into place (complete or absent), keyed by the requirements file and the
Python version. The server's python backend imports this process's depthscale_runtime (a symlink put
on its PYTHONPATH); its stub needs the interpreter's libpython (LD_LIBRARY_PATH) and the venv's python
first on PATH.
"""

from __future__ import annotations

import hashlib
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
from dataclasses import dataclass
from pathlib import Path

from depthscale.atomic_dir import staging_dir

REQUIREMENTS = Path(__file__).with_name("tritonserver-requirements.txt")
DEFAULT_CACHE = Path("~/.cache/depthscale-test-venvs")


# The stub's embedded interpreter ignores PYTHONPATH; this .pth puts $DEPTHSCALE_SERVER_PATH on sys.path.
PATH_VARIABLE = "DEPTHSCALE_SERVER_PATH"
PTH = (f"import os, sys; sys.path[:0] = [p for p in os.environ.get({PATH_VARIABLE!r}, '').split(os.pathsep) "
       f"if p and p not in sys.path]\n")


class ServerEnvError(RuntimeError):
    """The server's venv could not be built (pip failed: no network, no wheel for this platform)."""


@dataclass(frozen=True)
class ServerEnv:
    venv: Path

    @property
    def server_dir(self) -> Path:
        return self.venv / "tritonserver"

    @property
    def python(self) -> Path:
        return self.venv / "bin" / "python"


def _key() -> str:
    return hashlib.sha256(REQUIREMENTS.read_bytes() + PTH.encode() + sys.version.encode()).hexdigest()[:12]


def _site_packages(venv: Path) -> Path:
    return venv / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"


def server_env(cache: Path | None = None, timeout_s: float = 900) -> ServerEnv:
    """The venv at CACHE/tritonserver-<key> (CACHE: $DEPTHSCALE_VENV_CACHE or ~/.cache/depthscale-test-venvs),
    built if missing: the pinned requirements, then tritonserver's directory prepared as PyTriton does
    (the python backend's stub for this Python version beside the backend). Raises ServerEnvError."""
    cache = Path(cache or os.environ.get("DEPTHSCALE_VENV_CACHE") or DEFAULT_CACHE).expanduser()
    venv = cache / f"tritonserver-{_key()}"
    if venv.is_dir():
        return ServerEnv(venv)
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    try:
        with staging_dir(venv, replace=False) as tmp:
            subprocess.run([sys.executable, "-m", "venv", str(tmp)], check=True, capture_output=True, timeout=120)
            pip = subprocess.run([str(tmp / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check",
                                  "-r", str(REQUIREMENTS)], capture_output=True, text=True, timeout=timeout_s)
            if pip.returncode != 0:
                lines = [line for line in pip.stderr.splitlines() if line.strip() and "WARNING" not in line]
                raise ServerEnvError(f"pip could not install {REQUIREMENTS.name}: {(lines or ['?'])[-1][:300]}")
            dist = _site_packages(tmp) / "pytriton" / "tritonserver"
            stub = dist / "python_backend_stubs" / version / "triton_python_backend_stub"
            if not stub.is_file():
                raise ServerEnvError(f"nvidia-pytriton has no python backend stub for Python {version}")
            shutil.copytree(dist, tmp / "tritonserver", ignore=shutil.ignore_patterns("python_backend_stubs"))
            shutil.copy2(stub, tmp / "tritonserver" / "backends" / "python" / "triton_python_backend_stub")
            (_site_packages(tmp) / "depthscale_server_path.pth").write_text(PTH)
    except FileExistsError:                  # another process built it meanwhile
        pass
    except (OSError, subprocess.SubprocessError) as e:
        raise ServerEnvError(f"could not build the tritonserver venv at {venv}: {e}") from None
    return ServerEnv(venv)


def free_ports(count: int) -> list[int]:
    """`count` distinct ports free on 127.0.0.1 now (held together while chosen, so never the same twice)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


class TritonServer:
    """tritonserver on 127.0.0.1 (HTTP and gRPC on free ports, metrics off) serving `models` of
    `repository` (explicit model control: only those are loaded). start() waits until the server is
    ready (bounded by ready_timeout_s); stop() ends it by its pid. Its log is kept in `log`."""

    def __init__(self, env: ServerEnv, repository, models: list[str], ready_timeout_s: float = 120):
        self.env, self.repository, self.models = env, Path(repository), list(models)
        self.ready_timeout_s = ready_timeout_s
        self.process: subprocess.Popen | None = None
        self.http_port = self.grpc_port = 0
        self._workdir: Path | None = None

    @property
    def http_url(self) -> str:
        return f"127.0.0.1:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def log(self) -> str:
        path = self._workdir / "server.log" if self._workdir else None
        return path.read_text(errors="replace") if path and path.exists() else ""

    def _environment(self) -> dict[str, str]:
        import depthscale_runtime
        (self._workdir / "path").mkdir()
        (self._workdir / "path" / "depthscale_runtime").symlink_to(Path(depthscale_runtime.__file__).parent)
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
        libs = [str(_site_packages(self.env.venv) / "nvidia_pytriton.libs"), sysconfig.get_config_var("LIBDIR")]
        env["LD_LIBRARY_PATH"] = ":".join(libs + [p for p in [os.environ.get("LD_LIBRARY_PATH")] if p])
        env["PATH"] = f"{self.env.venv / 'bin'}:{os.environ.get('PATH', '/usr/bin:/bin')}"
        env[PATH_VARIABLE] = str(self._workdir / "path")
        env.setdefault("OMP_NUM_THREADS", "1")
        return env

    def start(self) -> "TritonServer":
        self._workdir = Path(tempfile.mkdtemp(prefix="depthscale-tritonserver-"))
        self.http_port, self.grpc_port = free_ports(2)
        server = self.env.server_dir
        cmd = [str(server / "bin" / "tritonserver"), f"--model-repository={self.repository}",
               f"--backend-directory={server / 'backends'}", f"--cache-directory={server / 'caches'}",
               "--http-address=127.0.0.1", f"--http-port={self.http_port}",
               "--grpc-address=127.0.0.1", f"--grpc-port={self.grpc_port}",
               "--allow-metrics=false", "--model-control-mode=explicit",
               *[f"--load-model={m}" for m in self.models],
               f"--backend-config=python,shm-region-prefix-name=depthscale{os.getpid()}x{self.http_port}"]
        with open(self._workdir / "server.log", "wb") as log:
            self.process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=self._environment(),
                                            start_new_session=True)
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.ready_timeout_s
        url = f"http://{self.http_url}/v2/health/ready"
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"tritonserver exited with {self.process.returncode}:\n{self.log[-3000:]}")
            try:
                with urllib.request.urlopen(url, timeout=2) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.2)
        raise TimeoutError(f"tritonserver not ready after {self.ready_timeout_s} s:\n{self.log[-3000:]}")

    def stop(self, timeout_s: float = 20) -> None:
        """End the server by its pid (SIGTERM, then SIGKILL after timeout_s) and remove its work directory."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout_s)
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None

    def __enter__(self) -> "TritonServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
