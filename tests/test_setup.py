"""scripts/setup.sh's torch step: PyTorch's CPU build where there is no GPU, and a quick
fallback to the default index where PyTorch's CPU index cannot be reached."""

from __future__ import annotations

import http.server
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import REPO

SETUP = REPO / "scripts" / "setup.sh"
BASH = "/bin/bash"


def torch_args(cpu_index: str, path: Path) -> subprocess.CompletedProcess:
    """setup.sh's torch_pip_args with this CPU index and only `path` on PATH."""
    env = {"PATH": str(path), "PYTHON": sys.executable, "TORCH_CPU_INDEX": cpu_index,
           "HOME": os.environ.get("HOME", "/tmp")}
    return subprocess.run([BASH, "-c", f'source "{SETUP}" && torch_pip_args'],
                          capture_output=True, text=True, env=env, timeout=60)


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def no_gpu(tmp_path) -> Path:
    """A PATH with no nvidia-smi on it."""
    (tmp_path / "bin").mkdir()
    return tmp_path / "bin"


def test_no_gpu_and_an_unreachable_cpu_index_falls_back_at_once(no_gpu):
    start = time.monotonic()
    done = torch_args(f"http://127.0.0.1:{closed_port()}/whl/cpu", no_gpu)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["torch==2.13.0"]
    assert "cannot be reached" in done.stderr and done.stderr.count("\n") == 1
    assert time.monotonic() - start < 30


def test_no_gpu_and_a_reachable_cpu_index_installs_from_it(no_gpu, tmp_path):
    (tmp_path / "index" / "torch").mkdir(parents=True)
    (tmp_path / "index" / "torch" / "index.html").write_text("<html></html>")
    handler = lambda *a: http.server.SimpleHTTPRequestHandler(  # noqa: E731
        *a, directory=str(tmp_path / "index"))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        index = f"http://127.0.0.1:{server.server_address[1]}"
        done = torch_args(index, no_gpu)
    finally:
        server.shutdown()
    assert done.returncode == 0 and done.stderr == "", done.stderr
    args = done.stdout.split()
    assert args[:2] == ["--index-url", index] and args[2] == "--extra-index-url"
    assert args[3] and args[3] != index and args[-1] == "torch==2.13.0"


def test_with_a_gpu_torch_comes_from_the_default_index(tmp_path):
    (tmp_path / "bin").mkdir()
    gpu = tmp_path / "bin" / "nvidia-smi"
    gpu.write_text("#!/bin/sh\nexit 0\n")
    gpu.chmod(0o755)
    done = torch_args(f"http://127.0.0.1:{closed_port()}/whl/cpu", tmp_path / "bin")
    assert done.returncode == 0 and done.stderr == ""
    assert done.stdout.split() == ["torch==2.13.0"]
