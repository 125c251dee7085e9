"""A training process's RAM for the index of its pairs, as the pairs grow.

Every process of a launch holds the run's pairs in Python (the loader's index of its
sources, each pair's cache key and caption, the held-out split) and the cache's index
(which chunk and row holds each pair); the cache's arrays themselves are memory-mapped.
This builds Pick-a-Pic-shaped shards of N rows (about 14 pairs a prompt, as Pick-a-Pic
v2; tiny images, which the index never reads) and a cache for them (sparse files in the
build's chunks), then, in a fresh process per size, measures the resident memory that
`train.plan.run_pairs`, the keys and captions and `train.cache.PairCache` add. The
growth per pair is what `train.plan.INDEX_BYTES_PER_PAIR` (the dry run's `ram:` line)
uses; a million pairs then take about 1.4 GB in each process.

    python benchmarks/run_index.py                  # 20,000 and 100,000 pairs
    python benchmarks/run_index.py --pairs 2000 4000
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
from datetime import date
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks.import_shard import build_shard  # noqa: E402

CHILD = """
import json, sys
from pathlib import Path
import numpy as np, psutil
from train import cache as pair_cache
from train.config import TrainConfig
from train.plan import run_pairs
from train.trainer import PairOrder
before = psutil.Process().memory_info().rss
run = run_pairs(TrainConfig(data=[sys.argv[1]], holdout_pairs=500))
keys = [pair_cache.pair_key(run.pairs, i) for i in range(len(run.pairs))]
captions = [run.pairs.describe(i)[0] for i in range(len(run.pairs))]
cache = pair_cache.PairCache(Path(sys.argv[2]), keys, captions)
order = PairOrder(run.train, 0)
order.at(range(1))
print(json.dumps({"pairs": len(run.pairs), "grew": psutil.Process().memory_info().rss - before}))
"""


def fake_cache(folder: Path, keys: list[str], captions: list[str],
               text: dict[str, tuple] | None = None, latents: tuple = (2, 4, 64, 64)) -> None:
    """A cache folder of these pairs in the build's chunks, its arrays sparse files
    written by shape alone (default: SD1.5's at 512 px): what PairCache opens, without
    encoding anything."""
    from train.cache import CHUNK

    def chunk(part: str, name: str, names: list[str], shapes: dict) -> None:
        (folder / part / name).mkdir(parents=True)
        for array, shape in shapes.items():
            np.lib.format.open_memmap(folder / part / name / f"{array}.npy", mode="w+",
                                      dtype=np.float16, shape=(len(names), *shape)).flush()
        (folder / part / name / "keys.json").write_text(json.dumps(names))

    text = text or {"text": (77, 768)}
    chunk(".", "empty", [""], text)
    unique = sorted(set(captions))
    for start in range(0, len(unique), CHUNK):
        chunk("text", f"t{start}", unique[start:start + CHUNK], text)
    for start in range(0, len(keys), CHUNK):
        chunk("pairs", f"p{start}", keys[start:start + CHUNK], {"latents": latents})


def measure(pairs: int, tmp: Path) -> dict:
    # one in five rows is a tie (no pair): rows for `pairs` decisive pairs
    rows = pairs * 5 // 4
    shard = tmp / f"{pairs}" / "train-00000-of-00001.parquet"
    shard.parent.mkdir()
    build_shard(shard, rows, size=8, prompts=max(1, pairs // 14))
    from train import cache as pair_cache
    from train.config import TrainConfig
    from train.plan import run_pairs

    run = run_pairs(TrainConfig(data=[str(shard)], holdout_pairs=500))  # as the child will
    indices = range(len(run.pairs))
    fake_cache(tmp / f"cache-{pairs}", [pair_cache.pair_key(run.pairs, i) for i in indices],
               [run.pairs.describe(i)[0] for i in indices])
    out = subprocess.run([sys.executable, "-c", CHILD, str(shard), str(tmp / f"cache-{pairs}")],
                         cwd=ROOT, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, nargs="+", default=[20_000, 100_000])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        sizes = [measure(n, Path(tmp)) for n in args.pairs]
    (small, large) = sizes[0], sizes[-1]
    per_pair = ((large["grew"] - small["grew"]) / (large["pairs"] - small["pairs"])
                if len(sizes) > 1 else large["grew"] / large["pairs"])
    print(json.dumps({
        "benchmark": "run_index", "date": str(date.today()), "machine": platform.machine(),
        "sizes": [{"pairs": s["pairs"], "grew_mb": round(s["grew"] / 2**20, 1),
                   "bytes_per_pair": round(s["grew"] / s["pairs"])} for s in sizes],
        "bytes_per_pair_growth": round(per_pair),
        "at_1M_pairs_gb": round(per_pair * 1e6 / 1e9, 2),
    }))


if __name__ == "__main__":
    main()
