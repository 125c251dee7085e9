"""Every objective on one collection of toy pairs, side by side: for each, the toy loop's
train, adherence and eval auto stages on the same store (benchmarks/toy_loop.py --data).

    python benchmarks/objectives.py --data runs/toy-loop/runs/prefs.duckdb
    python benchmarks/objectives.py --collect                 # collect the README's pairs first
    python benchmarks/objectives.py --data STORE --only ipo kto --train-args --learning_rate 1e-5

Each variant runs in its own folder under --runs (RUNS/<variant>), with the toy preset's
settings unless --train-args changes them for all. The variants: dpo, ipo, kto, mapo,
sft, and dpo with the winner-safe switch (dpo_safe). Prints one JSON object: a row per
variant (adherence before and after on the same 400 held-out prompt/seed pairs, the
decisive win rate over base with its Wilson interval, training minutes, the trainer's
peak RSS) and where each loop's full result is.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = {  # name: (objective, extra train flags)
    "dpo": ("dpo", []),
    "ipo": ("ipo", []),
    "kto": ("kto", []),
    "mapo": ("mapo", []),
    "sft": ("sft", []),
    "dpo_safe": ("dpo", ["--winner_safe", "true"]),
}


def run_loop(runs: Path, flags: list[str]) -> dict:
    """One toy loop (benchmarks/toy_loop.py) with `flags`; its result JSON."""
    command = [sys.executable, str(ROOT / "benchmarks" / "toy_loop.py"), "--runs", str(runs),
               *flags]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"error: {' '.join(command)} failed:\n{done.stderr[-3000:]}")
    return json.loads((runs / "result.json").read_text())


def row(name: str, result: dict) -> dict:
    judged, adherence = result["eval_auto"], result["adherence"]
    return {
        "variant": name, "objective": result["objective"],
        "adherence_base": adherence["base"]["both"],
        "adherence_aligned": adherence["aligned"]["both"],
        "gain_points": adherence["gain_points"],
        "decisive_win_rate": judged["decisive_win_rate"],
        "decisive_wilson": judged["decisive_wilson"],
        "judged": [judged["wins"], judged["losses"], judged["ties"]],
        "train_minutes": result["minutes"]["train"],
        "peak_rss_mb": result["train"]["peak_rss_mb"],
        "loop": result["runs"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--data", type=Path, help="the store every variant trains on")
    source.add_argument("--collect", action="store_true",
                        help="collect the README's AI-feedback pairs first (RUNS/collect)")
    parser.add_argument("--runs", type=Path, default=Path("runs/objectives"),
                        help="one folder per variant below it (default: runs/objectives)")
    parser.add_argument("--only", nargs="+", choices=VARIANTS, help="these variants only")
    parser.add_argument("--seed", type=int, help="feedback's --seed, with --collect")
    parser.add_argument("--threads", type=int, help="torch CPU threads for every stage")
    parser.add_argument("--tiny", action="store_true",
                        help="a smoke run: every stage at a tiny size (its figures mean nothing)")
    parser.add_argument("--train-args", nargs=argparse.REMAINDER, default=[],
                        help="more `--key value` for every variant's train command (last)")
    args = parser.parse_args()
    common = [*(["--tiny"] if args.tiny else []),
              *(["--threads", str(args.threads)] if args.threads else [])]
    runs = args.runs.resolve()
    data = args.data.resolve() if args.data else None
    if args.collect:
        # the default loop collects, trains DPO and evaluates it: its store is the data
        run_loop(runs / "collect", [*common, *(["--seed", str(args.seed)]
                                               if args.seed is not None else [])])
        data = runs / "collect" / "runs" / "prefs.duckdb"  # where the README's command puts it
    rows = []
    for name in args.only or VARIANTS:
        objective, flags = VARIANTS[name]
        train_args = [*flags, *args.train_args]
        result = run_loop(runs / name, [*common, "--data", str(data), "--objective", objective,
                                        *(["--train-args", *train_args] if train_args else [])])
        rows.append(row(name, result))
    print(json.dumps({"data": str(data), "tiny": args.tiny, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
