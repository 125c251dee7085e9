"""Every objective on one collection of toy pairs, side by side: for each, the toy loop's
train, adherence and eval auto stages on the same store (benchmarks/toy_loop.py --data).

    python benchmarks/objectives.py --data runs/toy-loop/runs/prefs.duckdb
    python benchmarks/objectives.py --collect                 # collect the README's pairs first
    python benchmarks/objectives.py --data STORE --only ipo kto --train-args --learning_rate 1e-5
    python benchmarks/objectives.py --data STORE --sweep --jobs 2 --threads 1

Each variant runs in its own folder under --runs (RUNS/<variant>), with the toy preset's
settings and the variant's best from the sweep (BEST, docs/RESULTS.md), then --train-args
for all. The variants: dpo, ipo, kto, mapo, sft, and
dpo with the winner-safe switch (dpo_safe). Prints one JSON object: a row per variant
(adherence before and after on the same 400 held-out prompt/seed pairs, the decisive win
rate over base with its Wilson interval, training minutes, the trainer's peak RSS, and the
selection score) and where each loop's full result is.

--sweep runs every setting of SWEEP instead (RUNS/<variant>/<setting>) and names each
variant's best by the selection score alone: the toy judge's mean score of the trainer's
own samples of the model judged, on seeds 2,000,000 up that neither held-out check uses, so the
settings are chosen without looking at the figures they are then reported by.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = {  # name: (objective, the flags that make the variant)
    "dpo": ("dpo", []),
    "ipo": ("ipo", []),
    "kto": ("kto", []),
    "mapo": ("mapo", []),
    "sft": ("sft", []),
    "dpo_safe": ("dpo", ["--winner_safe", "true"]),
}
# What --sweep tries for each variant, on top of VARIANTS' objective and the toy preset's
# settings (beta 5000, learning rate 2e-5, 400 steps of 16 pairs): the setting each
# objective's paper or reference code suggests and one step either side where it matters.
# A second pass lowered the learning rate where the first pass fell below the base.
SWEEP: dict[str, list[list[str]]] = {
    "dpo": [[], ["--beta", "2500"]],
    "ipo": [["--beta", "500"], ["--beta", "50"], ["--learning_rate", "5e-6"],
            ["--learning_rate", "1e-6"]],
    "kto": [[], ["--beta", "1000"], ["--learning_rate", "5e-6"]],
    "mapo": [[], ["--beta_mapo", "1.0"], ["--learning_rate", "5e-6"]],
    "sft": [[], ["--learning_rate", "1e-5"], ["--learning_rate", "2e-6"]],
    "dpo_safe": [[], ["--winner_safe_mu", "0.5"], ["--learning_rate", "5e-6"]],
}


# Each variant's best SWEEP setting on the first collection, by selection score alone
# (docs/RESULTS.md): what a run without --sweep uses.
BEST: dict[str, list[str]] = {
    "dpo": [],
    "ipo": ["--learning_rate", "1e-6"],
    "kto": ["--learning_rate", "5e-6"],
    "mapo": ["--learning_rate", "5e-6"],
    "sft": [],
    "dpo_safe": ["--winner_safe_mu", "0.5"],
}
assert all(BEST[name] in SWEEP[name] for name in VARIANTS)


def setting_name(flags: list[str]) -> str:
    """A folder name for a sweep setting: `beta_500`, or `preset` for no change."""
    return "_".join(flag.lstrip("-") for flag in flags) or "preset"


def run_loop(runs: Path, flags: list[str]) -> dict:
    """One toy loop (benchmarks/toy_loop.py) with `flags`; its result JSON. A folder that
    holds a finished loop's result is read, not run again, so a sweep resumes."""
    if (runs / "result.json").exists():
        return json.loads((runs / "result.json").read_text())
    command = [sys.executable, str(ROOT / "benchmarks" / "toy_loop.py"), "--runs", str(runs),
               *flags]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"error: {' '.join(command)} failed:\n{done.stderr[-3000:]}")
    return json.loads((runs / "result.json").read_text())


def selection_score(result: dict) -> float | None:
    """The trainer's sample score (its own seeds, apart from both held-out checks) of the
    model the loop judged: keep_best's best step, else the last."""
    if result["model"].endswith("best"):
        return result["train"]["best_score"]
    evals = Path(result["runs"]) / "runs" / "train" / "toy" / "eval.jsonl"
    if not evals.exists():
        return None
    scores = [json.loads(line).get("sample_score") for line in evals.read_text().splitlines()]
    scores = [score for score in scores if score is not None]
    return scores[-1] if scores else None


def row(name: str, result: dict, flags: list[str]) -> dict:
    judged, adherence = result["eval_auto"], result["adherence"]
    return {
        "variant": name, "objective": result["objective"], "flags": flags,
        "selection_score": selection_score(result),
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
    parser.add_argument("--sweep", action="store_true",
                        help="every SWEEP setting of each variant, and the best by selection")
    parser.add_argument("--jobs", type=int, default=1,
                        help="loops run at once (with --threads, so they share the cores)")
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
    runs_of = []  # (variant, its train flags, its folder)
    for name in args.only or VARIANTS:
        flags = VARIANTS[name][1]
        for setting in SWEEP[name] if args.sweep else [BEST[name]]:
            folder = runs / name / setting_name(setting) if args.sweep else runs / name
            runs_of.append((name, [*flags, *setting, *args.train_args], folder))

    def one(name: str, train_args: list[str], folder: Path) -> dict:
        flags = [*common, "--data", str(data), "--objective", VARIANTS[name][0]]
        result = run_loop(folder, [*flags, *(["--train-args", *train_args] if train_args else [])])
        return row(name, result, train_args)

    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        rows = list(pool.map(lambda job: one(*job), runs_of))
    report = {"data": str(data), "tiny": args.tiny, "jobs": args.jobs,
              "threads": args.threads, "rows": rows}
    if args.sweep:
        report["best"] = {name: max((r for r in rows if r["variant"] == name),
                                    key=lambda r: r["selection_score"] or 0.0)["flags"]
                          for name in dict.fromkeys(r["variant"] for r in rows)}
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
