"""What serving a reward over HTTP costs next to scoring in process.

Starts `python -m models.reward_server` in a child process (the toy judge by default),
then scores the same N images of S px both ways, in batches of B (an online step's
rollouts: `groups_per_step x group_size`), and prints the milliseconds per image each
way, their ratio and the bytes a request carries (PNG as base64). The rewards are
checked equal first. The toy judge is cheap, so this is the protocol's own cost (PNG
encoding and decoding, JSON, the socket); a real reward model's forward pass adds the same
on both sides.

    python benchmarks/reward_http.py                         # 128 and 1,024 images, 32 and 512 px
    python benchmarks/reward_http.py --images 16 --sizes 32  # what the suite runs
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from models.reward_server import encode_png  # noqa: E402
from models.scorers import checked_scores, load_scorer  # noqa: E402
from models.toy.shapes import draw, random_spec  # noqa: E402


def images_of(n: int, size: int) -> tuple[list[str], list]:
    rng = random.Random(0)
    specs = [random_spec(rng) for _ in range(n)]
    return [s.caption for s in specs], [draw(s).resize((size, size)) for s in specs]


def timed(scorer, name: str, prompts, images, batch: int, repeats: int) -> float:
    """The best of `repeats` passes over the images, in milliseconds per image."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        checked_scores(scorer, name, prompts, images, batch)
        best = min(best, time.perf_counter() - start)
    return 1000 * best / len(images)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scorer", default="toy_judge")
    parser.add_argument("--images", type=int, nargs="+", default=[128, 1024])
    parser.add_argument("--sizes", type=int, nargs="+", default=[32, 512])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    server = subprocess.Popen([sys.executable, "-m", "models.reward_server", "--scorer",
                               args.scorer, "--port", "0"], stdout=subprocess.PIPE, text=True,
                              cwd=REPO)
    try:
        url = server.stdout.readline().split(" at ")[1].strip()
        local, remote = load_scorer(args.scorer), load_scorer(url)
        results = []
        for size in args.sizes:
            for n in args.images:
                prompts, images = images_of(n, size)
                same = (checked_scores(local, args.scorer, prompts, images, args.batch)
                        == checked_scores(remote, url, prompts, images, args.batch))
                here = timed(local, args.scorer, prompts, images, args.batch, args.repeats)
                served = timed(remote, url, prompts, images, args.batch, args.repeats)
                request = sum(len(encode_png(im)) for im in images[:args.batch])
                results.append({
                    "images": n, "size": size, "same_scores": same,
                    "in_process_ms_per_image": round(here, 3),
                    "http_ms_per_image": round(served, 3),
                    "http_over_in_process": round(served / here, 2),
                    "http_added_ms_per_image": round(served - here, 3),
                    "request_kb": round(request / 1024, 1)})
    finally:
        server.terminate()
        server.wait(timeout=30)
    print(json.dumps({"benchmark": "reward_http", "scorer": args.scorer, "batch": args.batch,
                      "machine": platform.processor() or platform.machine(),
                      "results": results}, indent=1))


if __name__ == "__main__":
    main()
