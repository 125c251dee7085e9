"""Does an online-RL recipe raise the reward? The mean reward of rollouts it never trains
on, before and after N steps of `--objective nft` on the flow toy.

Runs the `toy-flow-nft` preset (or PRESET) with the given flags in this process for
--steps steps, and scores --held-out batches of rollouts drawn as a step draws them but at
step numbers training never reaches (1000 on): the same captions, seeds and noise before
and after, so the difference is the training's. Prints JSON: the rewards, their change in
points, the minutes, the final KL and the run folder (its final/ for models.toy.evaluate).

    python benchmarks/online_rl.py --steps 10 --flags --lora_rank 8 --learning_rate 3e-4
    python benchmarks/online_rl.py --tiny      # what the suite runs
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

HELD_OUT_STEP = 1000  # rollouts drawn as step 1000, 1001, ... draws them: never trained on
TINY = ["--groups_per_step", "2", "--group_size", "2", "--rollout_steps", "2",
        "--sample_seeds", "1", "--sample_steps", "2"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="toy-flow-nft")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--held-out", type=int, default=3, help="batches of rollouts scored")
    parser.add_argument("--out", default="runs/online-rl")
    parser.add_argument("--tiny", action="store_true", help="1 step of 2 groups of 2")
    parser.add_argument("--flags", nargs=argparse.REMAINDER, default=[],
                        help="the trainer's flags over the preset (last)")
    args = parser.parse_args()

    import torch

    from train.config import TrainParser, named
    from train.online import OnlineRun

    flags = [*(TINY if args.tiny else []), *args.flags]
    steps, held_out = (1, 1) if args.tiny else (args.steps, args.held_out)
    config = TrainParser().parse(
        ["--max_steps", str(steps), "--eval_every", "0", "--keep_best", "false",
         "--checkpoint_every", "0", "--rollout_db", "none", "--output_dir", args.out, *flags],
        named(args.preset))
    torch.manual_seed(0)
    run = OnlineRun(config)

    def rewards() -> list[float]:
        return [round(run.rollout(HELD_OUT_STEP + k).rewards.mean().item(), 4)
                for k in range(held_out)]

    before = rewards()
    start = time.perf_counter()
    summary = run.train()
    minutes = (time.perf_counter() - start) / 60
    after = rewards()
    metrics = [json.loads(line) for line in (Path(args.out) / "metrics.jsonl").open()]
    mean = lambda values: sum(values) / len(values)  # noqa: E731
    print(json.dumps({
        "benchmark": "online_rl", "preset": args.preset, "flags": flags, "steps": steps,
        "rollouts_per_step": config.groups_per_step * config.group_size,
        "held_out_rollouts": held_out * config.groups_per_step * config.group_size,
        "reward_before": before, "reward_after": after,
        "change_points": round(100 * (mean(after) - mean(before)), 2),
        "train_minutes": round(minutes, 2), "seconds_per_step": summary["seconds_per_step"],
        "kl_last": metrics[-1]["kl"], "model": str(Path(args.out) / "final")}, indent=1))


if __name__ == "__main__":
    main()
