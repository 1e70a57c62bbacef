"""Start servers (ours, vLLM-Omni, SGLang) as real processes on 127.0.0.1 for tests; stop them by pid."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass
class LiveServer:
    url: str
    process: subprocess.Popen
    data_dir: Path | None
    log_path: Path

    @property
    def api(self) -> str:
        return f"{self.url}/v1"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, crash: bool = False) -> None:
        """SIGTERM for a clean stop; SIGKILL to simulate a crash. The whole process group goes."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL if crash else signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=30)


def start_process(
    command: list[str], url: str, ready_path: str, log_path: Path, *, timeout: float = 120.0,
    env: dict | None = None, cwd: Path | None = None, data_dir: Path | None = None,
) -> LiveServer:
    """Start a server in its own process group; returns once ``ready_path`` answers 200."""
    with open(log_path, "w") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                   env=env, cwd=cwd)
    server = LiveServer(url, process, data_dir, log_path)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited with {process.returncode}:\n{server.log()[-20000:]}")
        try:
            if httpx.get(f"{url}{ready_path}", timeout=2).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    server.stop()
    raise RuntimeError(f"the server was not ready within {timeout} s:\n{server.log()[-20000:]}")


def start_server(data_dir: Path, *args: str, timeout: float = 120.0) -> LiveServer:
    """`helios-serve serve` on a free port of 127.0.0.1."""
    port = free_port()
    data_dir.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "helios_serve.cli", "serve", "--port", str(port), "--data-dir", str(data_dir),
               "--log-level", "warning", *args]
    return start_process(command, f"http://127.0.0.1:{port}", "/ready", data_dir.parent / f"server-{port}.log",
                         timeout=timeout, data_dir=data_dir)


def ray_environment(home: Path) -> dict:
    """Environment for a local Ray: token authentication on (Ray 2.60's default) with a fresh
    token, and Ray's files under ``home`` instead of the user's ~/.ray."""
    import secrets

    home.mkdir(parents=True, exist_ok=True)
    return {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(16), "HOME": str(home)}


def start_ray_server(data_dir: Path, replicas: int, *args: str, timeout: float = 240.0) -> LiveServer:
    """`helios-serve serve --replicas N` (a local Ray and Ray Serve) on a free port of 127.0.0.1."""
    port = free_port()
    data_dir.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "helios_serve.cli", "serve", "--port", str(port), "--data-dir", str(data_dir),
               "--replicas", str(replicas), "--log-level", "warning", *args]
    return start_process(command, f"http://127.0.0.1:{port}", "/ready", data_dir.parent / f"ray-server-{port}.log",
                         timeout=timeout, env=ray_environment(data_dir.parent / "home"), data_dir=data_dir)
