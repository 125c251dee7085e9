"""Commands choose their CPU threads from the cores free now (models/threads.py)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from models.threads import busy_cores, free_cores, use_free_cores

CORES = os.cpu_count() or 1


@pytest.fixture
def torch_threads():
    """Whatever a test sets, the next test gets this worker's thread count back."""
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.fixture
def spinner():
    """Another process keeping one core busy."""
    spin = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        busy_cores(0.5)  # let it start
        yield
    finally:
        spin.kill()
        spin.wait()


def test_a_core_counts_as_busy_from_half_its_time():
    assert free_cores(busy=0.0) == CORES
    assert free_cores(busy=0.4) == CORES
    assert free_cores(busy=0.6) == max(1, CORES - 1)
    assert free_cores(busy=CORES + 3.0) == 1  # never none


@pytest.mark.skipif(CORES < 2, reason="needs two cores: one busy, one free")
def test_a_busy_core_is_seen_and_left_alone(spinner, torch_threads, monkeypatch):
    assert busy_cores() > 0.7
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    line = use_free_cores(how="--threads N")
    assert torch.get_num_threads() <= CORES - 1
    assert line.startswith(f"using {torch.get_num_threads()} CPU thread")
    assert "--threads N to choose" in line and "\n" not in line


def test_a_thread_count_the_user_gave_is_kept(torch_threads, monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert use_free_cores(1) is None and torch.get_num_threads() == 1
    torch.set_num_threads(CORES)
    monkeypatch.setenv("OMP_NUM_THREADS", str(CORES))
    assert use_free_cores() is None and torch.get_num_threads() == CORES
