"""Speed and peak memory of `python -m annotate relabel` as the manifest grows.

Writes a JSONL manifest of N pairs of 512x512 photo-like JPEG files (each pair's two
files its own; their content cycles through 64 drawn images), then runs the command as a
user does, in a child process, with the toy judge, and reads the child's peak resident
memory. Memory should stay flat as N grows: rows are checked in a streaming pass and
scored `PAIRS_PER_WRITE` at a time. Beside it, in its own child, the floor: the same
files read and decoded by the same number of threads, nothing scored or written; the
command's pairs/s (its own figure: from its first row checked to its last written, start-up
left out) over the floor's says what scoring and writing add; the same child then times the
scorer alone on 128 of the decoded images, and the command's pairs/s over the scorer's
alone says whether reading the images is hidden behind scoring (the target is 1).

    python benchmarks/relabel.py                    # 1,000 and 4,000 pairs
    python benchmarks/relabel.py --pairs 20 40      # what the suite runs
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from benchmarks.import_shard import photo_like_jpeg  # noqa: E402

RELABEL = """
import resource, runpy, sys, time
sys.argv = ["annotate", "relabel", *sys.argv[1:]]
start = time.perf_counter()
try:
    runpy.run_module("annotate", run_name="__main__")
finally:
    print(f"{time.perf_counter() - start} {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}",
          file=sys.stderr)
"""

FLOOR = """
import json, resource, sys, time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from PIL import Image
manifest, threads = Path(sys.argv[1]), int(sys.argv[2])
start = time.perf_counter()
paths = [manifest.parent / json.loads(line)[key] for line in manifest.open()
         for key in ("chosen", "rejected")]
def decode(path):
    with Image.open(path) as image:
        return image.convert("RGB").size
with ThreadPoolExecutor(threads) as pool:
    list(pool.map(decode, paths))
seconds = time.perf_counter() - start
peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
from models.scorers import toy_judge
images = [Image.open(path).convert("RGB") for path in paths[:128]]
score = toy_judge()
start = time.perf_counter()
score(["a red circle"] * len(images), images)
scorer_s = (time.perf_counter() - start) / len(images)  # a second an image
print(json.dumps({"seconds": seconds, "peak_rss_mb": peak_mb, "scorer_s": scorer_s}))
"""


def write_manifest(folder: Path, pairs: int) -> Path:
    """N pairs of their own files under `folder/images`, as a manifest names them."""
    rng = np.random.default_rng(0)
    drawn = [photo_like_jpeg(rng) for _ in range(64)]
    (folder / "images").mkdir(parents=True)
    lines = []
    for k in range(pairs):
        for side in (0, 1):
            (folder / "images" / f"{k}-{side}.jpg").write_bytes(drawn[(2 * k + side) % 64])
        lines.append(json.dumps({"prompt": f"a red circle {k}", "chosen": f"images/{k}-0.jpg",
                                 "rejected": f"images/{k}-1.jpg"}))
    path = folder / "pairs.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, nargs="+", default=[1000, 4000])
    parser.add_argument("--threads", type=int, default=2, help="relabel's --threads")
    args = parser.parse_args()
    env = dict(os.environ, PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1")
    results = []
    with tempfile.TemporaryDirectory() as work:
        for pairs in args.pairs:
            manifest = write_manifest(Path(work) / str(pairs), pairs)
            floor = json.loads(subprocess.run(
                [sys.executable, "-c", FLOOR, str(manifest), str(args.threads)], env=env,
                capture_output=True, text=True, check=True).stdout)
            out = Path(work) / f"{pairs}-soft" / "train.jsonl"
            done = subprocess.run(
                [sys.executable, "-c", RELABEL, str(manifest), str(out), "--scorer",
                 "toy_judge", "--temperature", "0.1", "--threads", str(args.threads),
                 "--no-progress"], env=env, capture_output=True, text=True)
            if done.returncode:
                sys.exit(f"relabel failed: {done.stderr[-2000:]}")
            seconds, rss_kb = map(float, done.stderr.strip().splitlines()[-1].split())
            summary = json.loads(done.stdout.strip().splitlines()[-1])
            assert summary["scored_now"] == pairs == len(out.read_text().splitlines())
            results.append({
                "pairs": pairs, "seconds_with_start": round(seconds, 2),
                "pairs_per_s": summary["pairs_per_s"], "peak_rss_mb": round(rss_kb / 1024),
                "floor_pairs_per_s": round(pairs / floor["seconds"], 1),
                "floor_peak_rss_mb": round(floor["peak_rss_mb"]),
                "over_floor": round(summary["pairs_per_s"] * floor["seconds"] / pairs, 3),
                "scorer_pairs_per_s": round(1 / (2 * floor["scorer_s"]), 1),
                "over_scorer": round(summary["pairs_per_s"] * 2 * floor["scorer_s"], 3)})
            print(json.dumps(results[-1]), file=sys.stderr)
    print(json.dumps({
        "benchmark": "relabel", "scorer": "toy_judge", "threads": args.threads,
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores", "results": results}))


if __name__ == "__main__":
    main()
