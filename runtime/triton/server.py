"""Start and stop a real Triton (PyTriton, in the Python 3.13 serve environment) from this process.

`TritonServer` is what `ts2net serve`, the tests and the load test use: it starts
`runtime.triton.serve_main` in the serve environment, waits until Triton reports both models
ready (or the process dies: then its log tail is the error), and stops it with SIGTERM, then
SIGKILL on the whole process group if it does not exit in time. Every port is on 127.0.0.1.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from ..bundle import Bundle, BundleError, open_bundle
from . import MODEL_NAMES
from .environment import ServeEnvError, default_venv, serve_env_ready, venv_python
from .repository import DEFAULT_QUEUE_DELAY_US, batch_limits

LOOPBACK = "127.0.0.1"


class ServerStartError(RuntimeError):
    """Triton did not come up; the message carries the reason and the end of its log."""


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return sock.getsockname()[1]


def serve_batching(bundle: Bundle, max_batch: int | None = None, queue_delay_us: int = DEFAULT_QUEUE_DELAY_US
                   ) -> dict[str, dict[str, Any]]:
    """Per graph: max batch, preferred sizes (engine profile or defaults) and queue delay for the batcher."""
    result = {}
    for graph in MODEL_NAMES:
        limit, preferred, _, _ = batch_limits(bundle, graph, max_batch)
        result[graph] = {"max_batch": limit, "preferred": preferred, "queue_delay_us": queue_delay_us}
    return result


def refuse_failed_precision(bundle: Bundle, backend: str, precision: str | None) -> None:
    """A graph precision whose export parity check failed is not served (its answers are not the model's)."""
    if backend == "tensorrt":
        return
    precision = precision or "fp32"
    parity = (bundle.manifest.get("parity") or {}).get(precision)
    if isinstance(parity, dict) and parity.get("passed") is False:
        failures = "; ".join(str(f) for f in parity.get("failures", [])[:3])
        raise BundleError(f"{bundle.path}: the {precision} graphs failed the export parity check ({failures}); serve "
                          "--precision fp32, or re-export and check with `ts2net parity`")


def _runtime_path_dir() -> Path:
    """A fresh folder whose only entry is a link to this `runtime` package (the server's PYTHONPATH)."""
    folder = Path(tempfile.mkdtemp(prefix="ts2net-serve-path-"))
    (folder / "runtime").symlink_to(Path(__file__).resolve().parents[1], target_is_directory=True)
    return folder


class TritonServer:
    """A PyTriton Triton serving one bundle on 127.0.0.1. Use as a context manager."""

    def __init__(self, bundle: Bundle | str | os.PathLike, backend: str = "ort-cpu", precision: str | None = None,
                 http_port: int | None = None, grpc_port: int | None = None, metrics_port: int | None = None,
                 instances: int = 1, threads: int | None = None, max_batch: int | None = None,
                 queue_delay_us: int = DEFAULT_QUEUE_DELAY_US, venv: str | os.PathLike | None = None,
                 log_path: str | os.PathLike | None = None):
        self.bundle = bundle if isinstance(bundle, Bundle) else open_bundle(bundle, verify=False)
        refuse_failed_precision(self.bundle, backend, precision)
        self.backend = backend
        self.precision = precision
        self.http_port = http_port or free_port()
        self.grpc_port = grpc_port or (self.http_port + 1 if http_port else free_port())
        self.metrics_port = metrics_port or (self.http_port + 2 if http_port else free_port())
        self.instances = instances
        self.threads = threads
        self.batching = serve_batching(self.bundle, max_batch, queue_delay_us)
        self.venv = Path(venv) if venv else default_venv()
        self._workdir: Path | None = None     # created by start(): the ready file and, by default, the log
        self._log_path = Path(log_path) if log_path else None
        self._process: subprocess.Popen | None = None
        self._path_dir: Path | None = None
        self.facts: dict[str, Any] = {}

    @property
    def log_path(self) -> Path | None:
        """The server's log (Triton's and PyTriton's output); None before start()."""
        return self._log_path or (self._workdir / "server.log" if self._workdir else None)

    # -------------------------------------------------------------- addresses
    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"grpc://{LOOPBACK}:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{LOOPBACK}:{self.metrics_port}/metrics"

    # -------------------------------------------------------------- lifetime
    def command(self) -> list[str]:
        args = [str(venv_python(self.venv)), "-m", "runtime.triton.serve_main", "--bundle", str(self.bundle.path.resolve()),
                "--backend", self.backend, "--http-port", str(self.http_port), "--grpc-port", str(self.grpc_port),
                "--metrics-port", str(self.metrics_port), "--instances", str(self.instances),
                "--batching", json.dumps(self.batching), "--ready-file", str(self._workdir / "ready.json")]
        if self.precision:
            args += ["--precision", self.precision]
        if self.threads:
            args += ["--threads", str(self.threads)]
        return args

    def start(self, timeout: float = 300.0) -> "TritonServer":
        """Start Triton and wait (at most `timeout` s) until both models are ready."""
        if not serve_env_ready(self.venv):
            raise ServeEnvError(f"the serve environment {self.venv} is missing or outdated: run `make serve-setup` "
                                "(creates it with Python 3.13)")
        self._workdir = Path(tempfile.mkdtemp(prefix="ts2net-serve-"))
        self._path_dir = _runtime_path_dir()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
        env["PYTHONPATH"] = str(self._path_dir)
        env["PYTHONNOUSERSITE"] = "1"
        log = open(self.log_path, "ab")
        try:
            self._process = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT, env=env,
                                             cwd=self._workdir, start_new_session=True)
        finally:
            log.close()
        deadline = time.monotonic() + timeout
        ready_file = self._workdir / "ready.json"
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                tail = self.log_tail()
                self._cleanup()
                raise ServerStartError(f"the Triton server exited with code {self._process.returncode} before it was "
                                       f"ready; end of its log ({self.log_path}):\n{tail}")
            if ready_file.is_file() and self.models_ready():
                self.facts = json.loads(ready_file.read_text())
                return self
            time.sleep(0.5)
        tail = self.log_tail()
        self.stop()
        raise ServerStartError(f"the Triton server was not ready within {timeout:.0f} s; end of its log:\n{tail}")

    def models_ready(self) -> bool:
        """Server ready and both models ready (HTTP health endpoints)."""
        paths = ["/v2/health/ready"] + [f"/v2/models/{name}/ready" for name in MODEL_NAMES.values()]
        try:
            return all(urllib.request.urlopen(self.url + p, timeout=5).status == 200 for p in paths)
        except (urllib.error.URLError, OSError):
            return False

    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def wait(self) -> int | None:
        """Block until the server process exits (Ctrl-C raises KeyboardInterrupt here)."""
        return self._process.wait() if self._process is not None else None

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self, timeout: float = 60.0) -> int | None:
        """SIGTERM (Triton unloads the models and exits), SIGKILL to the group after `timeout` s."""
        process = self._process
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(10)
        if process is not None:
            try:  # tritonserver and the backend stubs live in the same group: none may outlive the server
                os.killpg(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self._cleanup()
        code = process.returncode if process is not None else None
        if code in (0, -signal.SIGTERM) and self._workdir is not None and self._log_path is None:
            shutil.rmtree(self._workdir, ignore_errors=True)   # a clean stop: nothing in the log to keep
            self._workdir = None
        return code

    def _cleanup(self) -> None:
        if self._path_dir is not None:
            (self._path_dir / "runtime").unlink(missing_ok=True)
            self._path_dir.rmdir()
            self._path_dir = None

    def __enter__(self) -> "TritonServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
