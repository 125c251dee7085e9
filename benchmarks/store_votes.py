"""Votes committed per second and commit latency, one thread and eight.

Each vote is one `Store.record_vote` call (one transaction, committed before it
returns). Two cases: the pair's images already stored (annotate stores them when it
generates), and the vote carrying its two 512x512 JPEGs in the same transaction. A
third, as AI feedback writes: `Store.record_votes`, 16 votes with their images per
transaction, one thread (its latency is a batch's, its votes/s comparable).

    python benchmarks/store_votes.py
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from data.store import ImageRecord, Store, Vote, new_uid  # noqa: E402


def jpeg(seed: int, size: int) -> bytes:
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    image = Image.fromarray(coarse).resize((size, size), Image.BICUBIC)
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def run(store: Store, threads: int, votes_each: int, with_images: bool, jpgs) -> dict:
    latencies: list[float] = []
    lock = threading.Lock()
    prestored = []
    if not with_images:
        for _ in range(threads):
            pair = [ImageRecord(new_uid(), jpgs[k]) for k in (0, 1)]
            store.add_images(pair)
            prestored.append(pair)
    barrier = threading.Barrier(threads + 1)

    def worker(t: int) -> None:
        user = store.user_id(f"bench-{t}")
        mine = []
        barrier.wait()
        for k in range(votes_each):
            pair = prestored[t] if not with_images else [
                ImageRecord(new_uid(), jpgs[j]) for j in (0, 1)
            ]
            vote = Vote(new_uid(), "a benchmark prompt", pair[0].image_uid,
                        pair[1].image_uid, ("left", "right", "tie")[k % 3], k % 2, user)
            start = time.perf_counter()
            store.record_vote(vote, images=pair if with_images else ())
            mine.append(time.perf_counter() - start)
        with lock:
            latencies.extend(mine)

    workers = [threading.Thread(target=worker, args=(t,)) for t in range(threads)]
    for w in workers:
        w.start()
    barrier.wait()
    start = time.perf_counter()
    for w in workers:
        w.join()
    elapsed = time.perf_counter() - start
    return {"threads": threads, "votes": len(latencies), "with_images": with_images,
            **rates(len(latencies), elapsed, latencies)}


def rates(votes: int, elapsed: float, latencies: list[float]) -> dict:
    """Votes per second over the run, and the median and 99th percentile latency."""
    ms = np.array(latencies) * 1000
    return {
        "votes_per_s": round(votes / elapsed, 1),
        "p50_ms": round(float(np.percentile(ms, 50)), 2),
        "p99_ms": round(float(np.percentile(ms, 99)), 2),
    }


def run_batched(store: Store, votes: int, batch: int, jpgs) -> dict:
    """`record_votes` of `batch` votes with their images a transaction, one thread."""
    user = store.user_id("bench")
    batches = []
    for b in range(0, votes, batch):
        batches.append([])
        for k in range(b, min(votes, b + batch)):
            pair = [ImageRecord(new_uid(), jpgs[j]) for j in (0, 1)]
            batches[-1].append((Vote(new_uid(), "a benchmark prompt", pair[0].image_uid,
                                     pair[1].image_uid, ("left", "right", "tie")[k % 3],
                                     k % 2, user), pair))
    latencies = []
    start = time.perf_counter()
    for votes_of_batch in batches:
        begin = time.perf_counter()
        store.record_votes(votes_of_batch)
        latencies.append(time.perf_counter() - begin)
    elapsed = time.perf_counter() - start
    return {"threads": 1, "votes": votes, "with_images": True, "batch": batch,
            **rates(votes, elapsed, latencies)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--votes", type=int, default=1600, help="votes per case")
    args = parser.parse_args()
    jpgs = [jpeg(0, 512), jpeg(1, 512)]
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for with_images in (False, True):
            for threads in (1, 8):
                with Store(Path(tmp) / f"{threads}-{with_images}.duckdb") as store:
                    results.append(
                        run(store, threads, args.votes // threads, with_images, jpgs)
                    )
        with Store(Path(tmp) / "batched.duckdb") as store:
            results.append(run_batched(store, args.votes, 16, jpgs))
    print(json.dumps({
        "benchmark": "store_votes",
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "date": time.strftime("%Y-%m-%d"),
        "jpeg_kb": round(sum(map(len, jpgs)) / 2 / 1024, 1),
        "results": results,
    }, indent=2))


if __name__ == "__main__":
    main()
