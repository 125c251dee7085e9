"""What a judge's data costs as the store grows: the split of its votes before the first
step, the list of pairs it trained on, and `eval agreement`'s choice of votes.

    python benchmarks/judge_data.py --votes 10000 40000
    python benchmarks/judge_data.py --votes 200 400          # tiny, as the suite runs it

For each N, a store of N votes by 20 people, 16 votes a prompt as Pick-a-Pic v2 has about
(959K pairs, 58K prompts), of 32 px JPEGs (the images' size
does not enter these costs, which read no pixels), then in a fresh process each: the
trainer's `JudgePairs` (every vote described, people's kept, 500 (or N/4) held out by
prompt, weights),
its `trained_keys` (written as the judge folder's trained_pairs.npy), and `eval
agreement`'s `people_pairs` leaving those keys out. Seconds, and the RSS each holds
(the process's resident memory after it, over before it). Prints one JSON object.
"""

from __future__ import annotations

import argparse
import io
import json
import random
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MEASURE = """
import json, os, sys, time
import numpy as np
from eval.agreement import people_pairs
from train.judge import JudgePairs, from_command_line

def rss_mb():
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

db, keys_file, holdout = sys.argv[1:4]
before = rss_mb()
start = time.perf_counter()
pairs = JudgePairs(from_command_line(["toy", "--data", db, "--holdout_pairs", holdout]))
split_s = time.perf_counter() - start
start = time.perf_counter()
keys = pairs.trained_keys()
np.save(keys_file, keys)
keys_s = time.perf_counter() - start
held_mb = rss_mb() - before
start = time.perf_counter()
chosen = people_pairs(db, set(np.load(keys_file).tolist()), 5000, 0)
agreement_s = time.perf_counter() - start
agreement_mb = rss_mb() - before - held_mb
print(json.dumps({"split_s": split_s, "keys_s": keys_s, "split_held_mb": held_mb,
                  "agreement_choice_s": agreement_s, "agreement_votes": len(chosen),
                  "agreement_held_mb": agreement_mb}))
"""


def jpeg(rng: random.Random) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), tuple(rng.randrange(256) for _ in range(3))).save(
        buffer, "JPEG", quality=90)
    return buffer.getvalue()


def make_store(path: Path, votes: int, seed: int = 0) -> None:
    from data.store import ImageRecord, Store, Vote, new_uid

    rng = random.Random(seed)
    with Store(path) as store:
        users = [store.user_id(f"person-{k}") for k in range(20)]
        for start in range(0, votes, 5000):
            batch = []
            for k in range(start, min(start + 5000, votes)):
                caption = f"prompt {k // 16}"
                images = [ImageRecord(image_uid=new_uid(), jpg=jpeg(rng), prompt=caption,
                                      model="toy") for _ in (0, 1)]
                batch.append((Vote(vote_id=new_uid(), caption=caption,
                                   image_0_uid=images[0].image_uid,
                                   image_1_uid=images[1].image_uid,
                                   outcome=rng.choice(["left", "right", "tie"]),
                                   shown_left=0, user_id=users[k % 20]), images))
            store.record_votes(batch)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--votes", type=int, nargs="+", default=[10000, 40000])
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for n in args.votes:
            db = Path(folder) / f"{n}.duckdb"
            make_store(db, n)
            done = subprocess.run([sys.executable, "-c", MEASURE, str(db),
                                   str(Path(folder) / f"{n}.npy"), str(min(500, n // 4))],
                                  cwd=ROOT, capture_output=True, text=True)
            if done.returncode:
                raise SystemExit(done.stderr[-3000:])
            measured = json.loads(done.stdout.strip().splitlines()[-1])
            keys_bytes = (Path(folder) / f"{n}.npy").stat().st_size
            rows.append({"votes": n, **{k: round(v, 3) if isinstance(v, float) else v
                                        for k, v in measured.items()},
                         "trained_pairs_bytes": keys_bytes})
    print(json.dumps({"benchmark": "judge_data", "rows": rows}))


if __name__ == "__main__":
    main()
