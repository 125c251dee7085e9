"""Seconds per image pair: one batched call versus two separate calls.

    python benchmarks/pair_generation.py                 # the toy model, 20 steps
    python benchmarks/pair_generation.py --model PATH --steps 30

Both ways run interleaved in one process, so the ratio is fair on a noisy machine. Also
reports, for a fresh process, how long importing the model layer with diffusers'
pipeline classes takes, and then `load(MODEL)`.
"""

from __future__ import annotations

import time

_STARTED = time.perf_counter()

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline  # noqa: E402, F401

from models.generate import generate  # noqa: E402
from models.loading import load  # noqa: E402
from models.toy import TOY_NAME  # noqa: E402

IMPORT_S = time.perf_counter() - _STARTED


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=TOY_NAME)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    start = time.perf_counter()
    model = load(args.model)
    load_s = time.perf_counter() - start
    prompt = "a red circle"
    generate(model, prompt, [0, 1], [7.5, 7.5], args.steps)  # warm up
    batched, separate = [], []
    for r in range(args.repeats):
        start = time.perf_counter()
        generate(model, prompt, [2 * r, 2 * r + 1], [7.5, 7.5], args.steps)
        batched.append(time.perf_counter() - start)
        start = time.perf_counter()
        generate(model, prompt, [2 * r], [7.5], args.steps)
        generate(model, prompt, [2 * r + 1], [7.5], args.steps)
        separate.append(time.perf_counter() - start)
    print(json.dumps({
        "benchmark": "pair_generation",
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {model.device}",
        "date": time.strftime("%Y-%m-%d"),
        "model": args.model, "steps": args.steps, "repeats": args.repeats,
        "import_s": round(IMPORT_S, 2), "load_s": round(load_s, 2),
        "batched_s_per_pair": round(statistics.median(batched), 4),
        "separate_s_per_pair": round(statistics.median(separate), 4),
        "speedup": round(statistics.median(separate) / statistics.median(batched), 2),
    }, indent=2))


if __name__ == "__main__":
    main()
