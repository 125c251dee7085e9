"""The cache build's pairs/s with 1 and 2 processes of one CPU thread each, side by side.

Every process of a launch encodes its share of the cache's chunks (train/cache.py), so two
processes should build it close to twice as fast as one, where the machine has the cores.
Each launch is the trainer's own (`accelerate launch -m train toy ... --max_steps 1`) on
a fresh cache folder; the rate is the pairs encoded over the slowest process's build time,
which each process prints. Images are photo-like 64 px JPEGs, decoded as in a real build.

    python benchmarks/cache_build.py                  # 4,000 rows (3,200 decisive pairs)
    python benchmarks/cache_build.py --rows 500 --processes 1 2
    python benchmarks/cache_build.py --processes 1 2 4    # and four processes on two cores

Every launch runs under a 15 s process-group timeout (no process may wait for another's
encoding that long) and trains one step; `same_cache` says its cache is byte for byte
the first launch's.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
from datetime import date
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from benchmarks.import_shard import build_shard  # noqa: E402

ENCODED = re.compile(r"process (\d+): encoded ([\d,]+) of ([\d,]+) pairs to cache in "
                     r"([\d.]+) s \(([\d.]+) s CPU\)")


def build(shard: Path, folder: Path, processes: int, port: int) -> dict:
    """One launch on a cold cache: pairs/s over the slowest process, and CPU over wall."""
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "GLOO_SOCKET_IFNAME": "lo",
           "HF_HUB_OFFLINE": "1"}
    launch = [sys.executable, "-m", "accelerate.commands.launch", "-q", "--num_processes",
              str(processes), "--num_machines", "1", "--mixed_precision", "no",
              "--dynamo_backend", "no", "--num_cpu_threads_per_process", "1"]
    if processes > 1:
        launch += ["--multi_gpu", "--main_process_port", str(port)]
    done = subprocess.run(
        [*launch, "-m", "train", "toy", "--data", str(shard), "--output_dir",
         str(folder / "run"), "--cache_dir", str(folder / "cache"), "--max_steps", "1",
         "--eval_every", "0", "--batch_size", "1", "--effective_batch", str(processes),
         "--process_group_timeout", "15"],
        capture_output=True, text=True, env=env, cwd=REPO)
    if done.returncode:
        raise SystemExit(done.stderr[-3000:])
    shares = [(int(m[2].replace(",", "")), float(m[4]), float(m[5]))
              for m in ENCODED.finditer(done.stdout)]
    pairs, slowest = sum(s[0] for s in shares), max(s[1] for s in shares)
    return {"processes": processes, "pairs": pairs, "seconds": slowest,
            "pairs_per_s": round(pairs / slowest, 1),
            "shares": [s[0] for s in shares],
            "cpu_over_wall": [round(cpu / max(seconds, 1e-3), 2) for _, seconds, cpu in shares]}


def cache_files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*")
            if p.is_file()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=4000)
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        shard = Path(tmp) / "shard" / "train-00000-of-00001.parquet"
        shard.parent.mkdir()
        build_shard(shard, args.rows, size=64)
        runs = [build(shard, Path(tmp) / f"p{n}", n, 29561 + n) for n in args.processes]
        first = cache_files(Path(tmp) / f"p{args.processes[0]}" / "cache")
        for run in runs:  # every launch's cache, byte for byte the first's
            run["same_cache"] = cache_files(Path(tmp) / f"p{run['processes']}" / "cache") == first
    rate = {run["processes"]: run["pairs_per_s"] for run in runs}
    print(json.dumps({
        "benchmark": "cache_build", "rows": args.rows, "runs": runs,
        "ratio_over_1": {str(n): round(r / rate[1], 2) for n, r in rate.items()}
        if 1 in rate else {},
        "machine": f"{platform.machine()}, {os.cpu_count()} cores", "date": str(date.today()),
    }))


if __name__ == "__main__":
    main()
