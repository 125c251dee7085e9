"""Import speed and peak memory for Pick-a-Pic shards of 512x512 JPEGs.

Builds shards of N rows (two images a row, photo-like noise so JPEGs have realistic
sizes), then imports each into a fresh store in a child process and reads its peak
resident memory. Memory should stay flat as the shard grows: import streams batches.
Beside each import, in its own child process, the floor: a bare pyarrow scan of the
same shard that checks every JPEG as the import does (`check_jpeg`) and stores nothing.
The import's rows/s over the floor's says what storing costs (the target is at least 0.5).
And beside both, the same import into a store that already holds `--stored` rankings
(and two images each): its speed over the empty store's says whether the import slows as
the store grows (the target is 1: flat).

    python benchmarks/import_shard.py            # 1,000- and 2,000-row shards, 200K stored
    python benchmarks/import_shard.py --rows 500 2000 --stored 450000
"""

from __future__ import annotations

import argparse
import io
import json
import platform
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from data.pickapic import PICKAPIC_SCHEMA  # noqa: E402

CHILD = """
import json, resource, sys, time
from pathlib import Path
from data.store import Store
import data.pickapic
from data.pickapic import import_shards
write_pairs = data.pickapic._store_rankings
pairs_seconds = []
def timed_write_pairs(*args):  # the step that grew with the store: the pairs' one insert
    start = time.perf_counter()
    added = write_pairs(*args)
    pairs_seconds.append(time.perf_counter() - start)
    return added
data.pickapic._store_rankings = timed_write_pairs
db, shard, stored = sys.argv[1], sys.argv[2], int(sys.argv[3])
with Store(db) as store:
    if stored:  # rankings and images as an earlier import leaves them, then on disk
        cur = store.cursor()
        cur.execute(
            "INSERT INTO images (image_uid, jpg, prompt, model, width, height) "
            "SELECT 'stored-' || i, repeat('x', 64)::BLOB, 'stored prompt', 'm', 512, 512 "
            "FROM range($n) t(i)", {"n": 2 * stored})
        cur.execute(
            "INSERT INTO rankings (ranking_id, caption, image_0_uid, image_1_uid, label_0, "
            "label_1, best_image_uid, user_id, created_at, has_label, outcome, source, split) "
            "SELECT 1e9 + i, 'stored prompt ' || i % 40000, 'stored-' || 2 * i, "
            "'stored-' || 2 * i + 1, 1, 0, 'stored-' || 2 * i, i % 100, "
            "TIMESTAMP '2023-01-01' + INTERVAL (i) SECOND, true, 'left', 'public:stored', "
            "'train' FROM range($n) t(i)", {"n": stored})
        cur.execute("CHECKPOINT")
    start = time.perf_counter()
    done = import_shards(store, [shard], progress=False)
    seconds = time.perf_counter() - start
peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"rows": done[0].rows, "added": done[0].added, "seconds": seconds,
                  "pairs_seconds": sum(pairs_seconds), "peak_rss_mb": peak_mb}))
"""

FLOOR = """
import json, resource, sys, time
import pyarrow.parquet as pq
from data.images import check_jpeg
start = time.perf_counter()
rows = 0
for batch in pq.ParquetFile(sys.argv[2]).iter_batches(batch_size=64,
                                                      columns=["jpg_0", "jpg_1"]):
    for column in batch.columns:
        for data in column.to_pylist():
            check_jpeg(data)
    rows += batch.num_rows
seconds = time.perf_counter() - start
peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"rows": rows, "seconds": seconds, "peak_rss_mb": peak_mb}))
"""


def photo_like_jpeg(rng: np.random.Generator, size: int = 512) -> bytes:
    """A JPEG with smooth structure plus grain, about the size of a real 512px photo."""
    coarse = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    base = np.asarray(Image.fromarray(coarse).resize((size, size), Image.BICUBIC), np.int16)
    grain = rng.integers(-12, 13, (size, size, 3), dtype=np.int16)
    pixels = np.clip(base + grain, 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def build_shard(path: Path, rows: int, seed: int = 0, size: int = 512,
                prompts: int = 400) -> None:
    """A Pick-a-Pic shard of `rows` rows (one in five a tie) over `prompts` captions, its
    images photo-like `size` px JPEGs."""
    rng = np.random.default_rng(seed)
    schema = PICKAPIC_SCHEMA
    with pq.ParquetWriter(path, schema) as writer:
        for start in range(0, rows, 100):
            n = min(100, rows - start)
            ids = range(start, start + n)
            uid = [[f"{i:08d}-0000-4000-8000-{k:012d}" for i in ids] for k in (0, 1)]
            label_0 = [float(i % 3 == 0) if i % 5 else 0.5 for i in ids]
            table = pa.table(
                {
                    "are_different": [True] * n,
                    "best_image_uid": [
                        "none" if label == 0.5 else uid[0 if label == 1.0 else 1][j]
                        for j, label in enumerate(label_0)
                    ],
                    "caption": [f"benchmark prompt {i % prompts}" for i in ids],
                    "created_at": [datetime(2023, 3, 1) + timedelta(seconds=i) for i in ids],
                    "has_label": [True] * n,
                    "image_0_uid": uid[0], "image_0_url": [None] * n,
                    "image_1_uid": uid[1], "image_1_url": [None] * n,
                    "jpg_0": [photo_like_jpeg(rng, size) for _ in ids],
                    "jpg_1": [photo_like_jpeg(rng, size) for _ in ids],
                    "label_0": label_0, "label_1": [1 - label for label in label_0],
                    "model_0": ["model-a"] * n, "model_1": ["model-b"] * n,
                    "ranking_id": list(ids), "user_id": [i % 50 for i in ids],
                    "num_example_per_prompt": [1] * n,
                },
                schema=schema,
            )
            writer.write_table(table, row_group_size=100)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[1000, 2000])
    parser.add_argument("--stored", type=int, default=200_000,
                        help="rankings already in the store for the third import")
    args = parser.parse_args()
    repo = Path(__file__).resolve().parents[1]
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for rows in args.rows:
            shard = Path(tmp) / f"train-{rows}.parquet"
            build_shard(shard, rows)
            measured, floor, grown = (json.loads(subprocess.run(
                [sys.executable, "-c", code, str(Path(tmp) / f"{rows}-{stored}.duckdb"),
                 str(shard), str(stored)],
                capture_output=True, text=True, cwd=repo, check=True,
            ).stdout) for code, stored in ((CHILD, 0), (FLOOR, 0), (CHILD, args.stored)))
            results.append({
                "rows": rows,
                "shard_mb": round(shard.stat().st_size / 2**20, 1),
                "rows_per_s": round(rows / measured["seconds"], 1),
                "seconds": round(measured["seconds"], 2),
                "peak_rss_mb": round(measured["peak_rss_mb"], 1),
                "floor_rows_per_s": round(rows / floor["seconds"], 1),
                "floor_peak_rss_mb": round(floor["peak_rss_mb"], 1),
                "import_over_floor": round(floor["seconds"] / measured["seconds"], 3),
                "stored": args.stored,
                "added_at_stored": grown["added"],
                "rows_per_s_at_stored": round(rows / grown["seconds"], 1),
                "at_stored_over_empty": round(measured["seconds"] / grown["seconds"], 3),
                "pairs_write_s": round(measured["pairs_seconds"], 3),
                "pairs_write_s_at_stored": round(grown["pairs_seconds"], 3),
            })
    print(json.dumps({
        "benchmark": "import_shard",
        "machine": f"{platform.machine()}, {__import__('os').cpu_count()} cores",
        "date": time.strftime("%Y-%m-%d"),
        "results": results,
    }, indent=2))


if __name__ == "__main__":
    main()
