"""AI feedback on the toy model: pairs per minute, and the outcome mix per tie margin.

    python benchmarks/ai_feedback.py                  # 288 pairs, 20 steps, batch 16
    python benchmarks/ai_feedback.py --pairs 576 --threads 1

Runs `annotate.feedback.collect` (generate, judge, store: what `python -m annotate
feedback` does) into a fresh store, then re-scores the stored pairs with the toy judge
(the same JPEGs the run scored, so the same scores) to show how the labels split into
left / right / tie at several tie margins, and how many decisive labels come from pairs
where both images fail the prompt (judge score below 0.5 for both: noisy labels) or both
pass it (a preference between two right images: a small difference in the judge's
confidence, not in adherence).
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
from models.generate import PairVariety  # noqa: E402
from models.loading import load  # noqa: E402
from models.toy import TOY_NAME  # noqa: E402
from models.toy.judge import score as judge  # noqa: E402
from models.toy.shapes import all_captions  # noqa: E402

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=288, help="16 batches of the 18 captions")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    parser.add_argument("--margins", type=float, nargs="+", default=[0.0, 0.05, 0.1, 0.2])
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    load_avg = os.getloadavg()[0]
    run = FeedbackRun(
        prompts=tuple(all_captions()), pairs=args.pairs, batch=args.batch,
        variety=PairVariety(steps=args.steps),
    )
    start = time.perf_counter()
    model = load(TOY_NAME)
    load_s = time.perf_counter() - start
    with tempfile.TemporaryDirectory() as tmp, Store(Path(tmp) / "prefs.duckdb") as store:
        counts = collect(run, store, judge, lambda: model, progress=False)
        scores = stored_scores(store)
    summary = counts.summary()
    both = [min(s) >= PASS for s in scores]
    none = [max(s) < PASS for s in scores]
    print(json.dumps({
        "benchmark": "ai_feedback",
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {model.device}",
        "date": time.strftime("%Y-%m-%d"),
        "load_average_at_start": round(load_avg, 2),
        "torch_threads": torch.get_num_threads(),
        "model": TOY_NAME, "scorer": "toy_judge", "steps": args.steps, "batch": args.batch,
        "pairs": counts.added, "load_s": round(load_s, 2),
        "seconds": summary["seconds"], "pairs_per_min": summary["pairs_per_min"],
        "generate_s": summary["generate_s"], "score_s": summary["score_s"],
        "store_s": summary["store_s"],
        "pairs_both_pass": round(sum(both) / len(scores), 3),
        "pairs_both_fail": round(sum(none) / len(scores), 3),
        "outcome_mix": [mix(scores, m) for m in args.margins],
    }, indent=2))


if __name__ == "__main__":
    main()
