"""AI feedback on the toy model: pairs per minute, and the outcome mix per tie margin.

    python benchmarks/ai_feedback.py                  # 288 pairs, 20 steps, batch 16
    python benchmarks/ai_feedback.py --pairs 576 --threads 1
    python benchmarks/ai_feedback.py --steps 10 --guidance-range 3 12   # as the toy loop

Runs `annotate.feedback.collect` (generate, judge, store: what `python -m annotate
feedback` does) into a fresh store, then re-scores the stored pairs with the toy judge
(the same JPEGs the run scored, so the same scores) to show how the labels split into
left / right / tie at several tie margins, and how many decisive labels come from pairs
where both images fail the prompt (judge score below 0.5 for both: noisy labels) or both
pass it (a preference between two right images: a small difference in the judge's
confidence, not in adherence).

The floor beside it: one plain pipeline call of the same model, steps and guidance at
each of `--floor-batches` pairs per call (twice the images), timed after a warm-up; its
best pairs/s is what generation alone can reach, and `collect_over_floor` is the share
of it that collection (with its per-image seeds and guidance, judging and storing) keeps.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from annotate.feedback import FeedbackRun, collect  # noqa: E402
from data.pairs import decode_image  # noqa: E402
from data.store import Store  # noqa: E402
from models.loading import load  # noqa: E402
from models.toy import TOY_NAME  # noqa: E402
from models.toy.judge import score as judge  # noqa: E402
from models.toy.shapes import all_captions  # noqa: E402
from models.variety import PairVariety  # noqa: E402

PASS = 0.5  # a judge score above this: colour and shape more likely right than not


def stored_scores(store: Store) -> list[tuple[float, float]]:
    """The judge's scores of both stored images of every pair."""
    rankings = store.rankings()
    jpgs = store.image_jpgs([uid for r in rankings for uid in (r.image_0_uid, r.image_1_uid)])
    return [
        tuple(judge([r.caption] * 2, [decode_image(jpgs[r.image_0_uid]),
                                      decode_image(jpgs[r.image_1_uid])]).tolist())
        for r in rankings
    ]


def mix(scores: list[tuple[float, float]], margin: float) -> dict:
    """Shares of left / right / tie at `margin`, and of decisive labels that are noise."""
    n = len(scores)
    decisive = [(a, b) for a, b in scores if abs(a - b) > margin]
    both_fail = sum(max(s) < PASS for s in decisive)
    both_pass = sum(min(s) >= PASS for s in decisive)
    return {
        "tie_margin": margin,
        "left": round(sum(a > b for a, b in decisive) / n, 3),
        "right": round(sum(a < b for a, b in decisive) / n, 3),
        "tie": round(1 - len(decisive) / n, 3),
        "decisive_both_fail": round(both_fail / max(len(decisive), 1), 3),
        "decisive_both_pass": round(both_pass / max(len(decisive), 1), 3),
    }


def floor(model, steps: int, batches: list[int], repeats: int = 2) -> dict[int, float]:
    """Pairs per second of one bare pipeline call of 2n images, for each n in `batches`."""
    caption = all_captions()[0]

    def call(n: int) -> float:
        start = time.perf_counter()
        with torch.inference_mode():
            model.pipeline([caption] * 2 * n, num_inference_steps=steps, guidance_scale=7.5,
                           generator=torch.Generator("cpu").manual_seed(0))
        return time.perf_counter() - start

    call(min(batches))  # warm-up
    return {n: round(n / min(call(n) for _ in range(repeats)), 2) for n in batches}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=288, help="16 batches of the 18 captions")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--guidance-range", type=float, nargs=2, metavar=("LOW", "HIGH"),
                        help="each image's guidance drawn from LOW..HIGH, as the README's "
                             "toy loop collects (default: 7.5 for both)")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    parser.add_argument("--margins", type=float, nargs="+", default=[0.0, 0.05, 0.1, 0.2])
    parser.add_argument("--floor-batches", type=int, nargs="+", default=[4, 8, 16, 32, 64],
                        help="pairs per bare pipeline call for the floor")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    load_avg = os.getloadavg()[0]
    run = FeedbackRun(
        prompts=tuple(all_captions()), pairs=args.pairs, batch=args.batch,
        variety=PairVariety(steps=args.steps, guidance_range=args.guidance_range and
                            tuple(args.guidance_range)),
    )
    start = time.perf_counter()
    model = load(TOY_NAME)
    load_s = time.perf_counter() - start
    with tempfile.TemporaryDirectory() as tmp, Store(Path(tmp) / "prefs.duckdb") as store:
        counts = collect(run, store, judge, lambda: model, progress=False)
        scores = stored_scores(store)
    summary = counts.summary()
    floor_pairs_per_s = floor(model, args.steps, args.floor_batches)
    best = max(floor_pairs_per_s, key=floor_pairs_per_s.get)
    both = [min(s) >= PASS for s in scores]
    none = [max(s) < PASS for s in scores]
    print(json.dumps({
        "benchmark": "ai_feedback",
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {model.device}",
        "date": time.strftime("%Y-%m-%d"),
        "load_average_at_start": round(load_avg, 2),
        "torch_threads": torch.get_num_threads(),
        "model": TOY_NAME, "scorer": "toy_judge", "steps": args.steps, "batch": args.batch,
        "guidance_range": args.guidance_range,
        "pairs": counts.added, "load_s": round(load_s, 2),
        "seconds": summary["seconds"], "pairs_per_min": summary["pairs_per_min"],
        "generate_s": summary["generate_s"], "score_s": summary["score_s"],
        "store_s": summary["store_s"],
        "floor_pairs_per_s": floor_pairs_per_s, "floor_best_batch": best,
        "collect_over_floor": round(summary["pairs_per_min"] / 60 / floor_pairs_per_s[best], 3),
        "pairs_both_pass": round(sum(both) / len(scores), 3),
        "pairs_both_fail": round(sum(none) / len(scores), 3),
        "outcome_mix": [mix(scores, m) for m in args.margins],
    }, indent=2))


if __name__ == "__main__":
    main()
