"""How many CPU threads torch should use: the cores free now, not all of them.

Torch processes that together run more threads than there are free cores do not share
the cores evenly: OpenMP threads spin while they wait for each other, and every step
runs 5-10x slower (docs/BENCHMARKS.md, "Threads"). So a command that runs torch on the
CPU starts with as many threads as cores are free now, measured over a moment from
/proc/stat (the load average lags a minute behind: right after another command ends it
still counts that command). A thread count the user gives (`--threads`,
OMP_NUM_THREADS, accelerate's `--num_cpu_threads_per_process`) is kept.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

STAT = Path("/proc/stat")


def _busy_and_total() -> tuple[int, int]:
    """Jiffies all cores spent busy and in total since boot (the first line of /proc/stat)."""
    user, nice, system, idle, iowait, irq, softirq, steal = (
        int(v) for v in STAT.read_text().split("\n", 1)[0].split()[1:9])
    busy = user + nice + system + irq + softirq + steal
    return busy, busy + idle + iowait


def busy_cores(window_s: float = 0.25) -> float:
    """How many cores other work keeps busy now (the 1-minute load average off Linux)."""
    cores = os.cpu_count() or 1
    if not STAT.exists():
        return min(float(cores), os.getloadavg()[0])
    busy_0, total_0 = _busy_and_total()
    time.sleep(window_s)
    busy_1, total_1 = _busy_and_total()
    return cores * (busy_1 - busy_0) / max(total_1 - total_0, 1)


def free_cores(busy: float | None = None) -> int:
    """Cores not busy now, at least 1; a core counts as busy from half its time."""
    cores = os.cpu_count() or 1
    busy = busy_cores() if busy is None else busy
    return max(1, min(cores, cores - int(busy + 0.5)))


def use_free_cores(requested: int | None = None,
                   how: str = "set OMP_NUM_THREADS") -> str | None:
    """Give torch `requested` threads, else OMP_NUM_THREADS's, else one per free core.

    Returns a line for the user when fewer threads than cores were chosen, saying why
    and `how` to choose; None otherwise.
    """
    import torch

    cores = os.cpu_count() or 1
    if requested is not None:
        torch.set_num_threads(requested)
        return None
    if os.environ.get("OMP_NUM_THREADS"):
        return None
    busy = busy_cores()
    threads = free_cores(busy)
    torch.set_num_threads(threads)
    if threads == cores:
        return None
    return (f"using {threads} CPU thread{'s' if threads > 1 else ''} of {cores}: other work "
            f"keeps {busy:.1f} cores busy (more threads than free cores run far slower; "
            f"{how} to choose)")
