"""Your own judge, on the toy: people whose taste is not the toy judge's, their votes, a
judge trained on them, AI feedback by that judge, and DPO on it.

    python benchmarks/own_judge.py --out runs/own-judge          # docs/RESULTS.md
    python benchmarks/own_judge.py --out /tmp/oj --votes 60 --holdout 16 --feedback 8 \\
        --judge-steps 4 --no-train                                # tiny, as the suite runs it

The people here like a large shape, whatever the prompt asks: their scoring function is
`size`, the share of the image the shape covers. Six of them vote, each noisy in their own
measure (a Bradley-Terry vote on the size difference, temperature 0.01-0.04 of the image),
and call a tie where two shapes differ by under 1% of the image. Their function lives here,
not in the judge's code: the judge learns their taste from their votes alone.

1. `python -m annotate pool` makes --votes pairs of the toy model; the people vote on them,
   stored as the page stores votes (source human, each person an annotator).
2. `python -m train judge toy` on their votes, --holdout pairs held out by prompt.
3. `python -m eval agreement`: each scorer's agreement with their held-out votes.
4. The toy preset trains on the people's votes alone (model A); `python -m annotate
   feedback --scorer JUDGE` labels --feedback new pairs into a store of its own, and the
   toy preset trains on those (model B).
5. `python -m eval auto --base A --aligned B --scorer benchmarks.own_judge:size`: which the
   people's own function prefers, on eval's seeds (never a training seed); and each
   model's adherence (the toy judge's measure), which this taste does not ask for.
   (`--no-train` stops after step 3's feedback: the DPO runs are the toy preset's own
   command, tested on their own.)
Prints one JSON object (also OUT/result.json).
"""

from __future__ import annotations

import argparse
import json
import math
import random
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PEOPLE = [(f"person-{k}", temperature) for k, temperature in
          enumerate((0.01, 0.015, 0.02, 0.025, 0.03, 0.04), start=1)]
TIE = 0.01  # a person calls a tie below this difference in size (share of the image)


def size(prompts, images):
    """The people's scoring function: the share of the image the shape covers (pixels far
    from the white background); the prompt does not matter to them."""
    import torch

    shares = [((255 - np.asarray(image.convert("RGB"), dtype=np.int16)).max(axis=-1) > 60)
              .mean() for image in images]
    return torch.tensor(shares, dtype=torch.float64)


def vote(rng: random.Random, temperature: float, size_0: float, size_1: float) -> str:
    """One person's outcome on images 0 and 1: 'tie', or which they prefer ('0'/'1')."""
    gap = size_0 - size_1
    if abs(gap) < TIE:
        return "tie"
    return "0" if rng.random() < 1 / (1 + math.exp(-gap / temperature)) else "1"


def people_vote(db: Path, seed: int = 0) -> dict:
    """Every unvoted pool pair of `db` voted by one of the people, in turn, as the page
    records a vote (the left side drawn at random)."""
    from data.pairs import decode_image
    from data.store import Store, Vote, new_uid

    rng = random.Random(seed)
    counts = {"tie": 0, "0": 0, "1": 0}
    with Store(db) as store:
        users = [(store.user_id(name), temperature) for name, temperature in PEOPLE]
        pairs, _ = store.pool_to_show()
        votes = []
        for k, pair in enumerate(pairs):
            jpgs = store.image_jpgs([pair.image_0_uid, pair.image_1_uid])
            sizes = size([pair.caption] * 2, [decode_image(jpgs[pair.image_0_uid]),
                                              decode_image(jpgs[pair.image_1_uid])]).tolist()
            user_id, temperature = users[k % len(users)]
            chosen = vote(rng, temperature, *sizes)
            counts[chosen] += 1
            left = rng.randrange(2)
            outcome = "tie" if chosen == "tie" else ("left" if int(chosen) == left else "right")
            votes.append((Vote(vote_id=new_uid(), caption=pair.caption,
                               image_0_uid=pair.image_0_uid, image_1_uid=pair.image_1_uid,
                               outcome=outcome, shown_left=left, user_id=user_id), []))
        store.record_votes(votes)
    return {"votes": len(votes), "ties": counts["tie"]}


def run(*command: str, out: Path | None = None) -> dict:
    """A project command in a subprocess; its JSON summary (the last line of stdout)."""
    done = subprocess.run([sys.executable, *command], cwd=ROOT, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout[done.stdout.index("{"):])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--votes", type=int, default=2000, help="pairs the people vote on")
    parser.add_argument("--holdout", type=int, default=500, help="of those, held out")
    parser.add_argument("--feedback", type=int, default=5000, help="pairs the judge labels")
    parser.add_argument("--judge-steps", type=int, default=None,
                        help="the judge's steps (default: the toy recipe's)")
    parser.add_argument("--dpo-steps", type=int, default=None,
                        help="each DPO run's steps (default: the toy preset's)")
    parser.add_argument("--seeds", type=int, default=23, help="eval auto's seeds per caption")
    parser.add_argument("--tie-margin", type=float, default=0.0,
                        help="the judge's AI feedback calls a tie within this")
    parser.add_argument("--no-train", action="store_true", help="stop after the feedback")
    args = parser.parse_args()
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    people_db, judged_db = out / "people.duckdb", out / "judged.duckdb"
    result: dict = {"votes": args.votes, "holdout": args.holdout, "feedback": args.feedback}
    clock = time.perf_counter()
    pairs = ["--per-prompt", "16", "--steps", "10", "--guidance-range", "3", "12",
             "--no-progress"]
    run("-m", "annotate", "pool", "--db", str(people_db), "--pairs", str(args.votes), *pairs)
    result["people"] = people_vote(people_db)
    result["collect_s"] = round(time.perf_counter() - clock, 1)

    judge_dir = out / "judge"
    steps = ["--max_steps", str(args.judge_steps)] if args.judge_steps else []
    judge = run("-m", "train", "judge", "toy", "--data", str(people_db), "--output_dir",
                str(judge_dir), "--holdout_pairs", str(args.holdout), *steps)
    result["judge"] = {key: judge[key] for key in ("trained_on", "heldout", "kept_step",
                                                   "seconds")}
    agreement = run("-m", "eval", "agreement", "--db", str(people_db), "--scorers",
                    "toy_judge", str(judge_dir / "final"), "benchmarks.own_judge:size")
    result["agreement"] = agreement

    clock = time.perf_counter()
    run("-m", "annotate", "feedback", "--db", str(judged_db), "--pairs", str(args.feedback),
        "--scorer", str(judge_dir / "final"), "--tie-margin", str(args.tie_margin), "--seed",
        "1", *pairs)
    result["feedback_s"] = round(time.perf_counter() - clock, 1)
    if args.no_train:
        print(json.dumps(result))
        return

    launch = ["-m", "accelerate.commands.launch", "-q", "--config_file",
              str(ROOT / "docs/accelerate/one_process.yaml"), "-m", "train", "toy"]
    dpo = ["--max_steps", str(args.dpo_steps)] if args.dpo_steps else []
    models = {}
    for name, db in (("votes_alone", people_db), ("judge_feedback", judged_db)):
        clock = time.perf_counter()
        folder = out / f"train-{name}"
        run(*launch, "--data", str(db), "--output_dir", str(folder), "--cache_dir",
            str(out / "cache"), *dpo)
        models[name] = str(folder / "final")
        result[f"train_{name}_s"] = round(time.perf_counter() - clock, 1)

    from models.toy.shapes import all_captions

    (out / "captions.txt").write_text("\n".join(all_captions()) + "\n")
    auto = ["--seeds", str(args.seeds), "--images", str(out / "images"), "--prompts",
            str(out / "captions.txt")]
    for base, aligned in (("votes_alone", "judge_feedback"), ("base", "votes_alone"),
                          ("base", "judge_feedback")):
        judged = run("-m", "eval", "auto", "--base", models.get(base, "toy"), "--aligned",
                     models[aligned], "--scorer", "benchmarks.own_judge:size", "--also",
                     "toy_judge", "--out", str(out / f"auto-{aligned}-over-{base}"), *auto)
        result[f"{aligned}_over_{base}"] = {key: judged[key] for key in (
            "wins", "losses", "ties", "decisive_win_rate", "decisive_wilson",
            "base_mean_score", "aligned_mean_score", "scorers")}
    for name, model in (("base", "toy"), *models.items()):
        measured = run("-m", "models.toy.evaluate", "--model", model, "--pairs", "400",
                       "--judge-images", "0")
        result[f"adherence_{name}"] = measured["adherence"]["both"]
    (out / "result.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
