"""The whole toy loop as README.md writes it, from a clean folder: AI feedback,
Diffusion-DPO, automatic evaluation.

    python benchmarks/toy_loop.py                             # into runs/toy-loop (must not exist)
    python benchmarks/toy_loop.py --runs runs/toy-loop-sft --data runs/toy-loop/runs/prefs.duckdb \\
        --objective sft                                       # the SFT baseline on the same pairs
    python benchmarks/toy_loop.py --loop toy-flow --runs runs/toy-flow-loop  # the flow toy's
    python benchmarks/toy_loop.py --collections 5 --runs runs/toy-loops   # the spread
    python benchmarks/toy_loop.py --collections 5 --runs runs/toy-loops-b \
        --stores runs/toy-loops --train-args --beta 2500     # another recipe, the same pairs
    python benchmarks/toy_loop.py --collections 5 --runs runs/toy-loops-c --tie-margin 0.1
    python benchmarks/toy_loop.py --figures runs/toy-loop --out docs   # the docs' PNGs

The stages are README.md's own commands, read from it and run as written by bash in the
folder --runs (so their `runs/...` paths land in RUNS/runs/...), each timed, with this
script's options appended where they ask for a change (argparse keeps the last value):

1. collect: `python -m annotate feedback ...` (toy model, toy judge) into
   runs/prefs.duckdb (skipped with --data: train on an existing store instead);
2. train: `accelerate launch ... -m train toy` into runs/train/toy;
3. adherence: `python -m models.toy.evaluate --model toy|runs/train/toy/best ...`
   (prompt/seed pairs with seeds from 1,000,000 up);
4. judge: `python -m eval auto ...` (18 captions x seeds 0..22 = 414 same-seed pairs,
   tie margin 0.1), images in runs/eval/images, report in runs/eval/auto-toy.

`--loop toy-flow` runs the flow-matching toy's loop instead (README.md's commands that
name `toy-flow`: its store is runs/toy-flow.duckdb, its run runs/train/toy-flow).

Then the decisive win rate's prompt-clustered bootstrap (eval auto's bootstrap is of the
win rate with ties; resampling prompts over the decisive votes alone gives W/(W+L)'s),
checks that no collected image used an evaluation or selection seed, and prints one JSON
object (also written to RUNS/result.json) with the commands run and the loop's targets
(docs/RESULTS.md): at least 400 judged pairs, the lower end of the decisive win rate's Wilson 95%
interval above 70%, adherence up by at least 15 points, the whole loop in under 10 minutes on
a 2-core CPU (the flow toy's: 30; MINUTES).

`--collections N` runs the loop on the first N of COLLECTIONS (README.md's, then the
same pairs plus 8, the same pairs trained with another seed, fresh collections with
feedback seeds 1 and 2), each in RUNS/NAME, and reports the median and the worst of the
adherence gain and of the decisive win rate's Wilson lower bound: the claim holds when
the worst collection meets it (RUNS/result.json).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.readme import README, commands, within_threads  # noqa: E402
from train.config import OBJECTIVES  # noqa: E402

# Which README command is which stage of each loop (the command whose first words are
# these), and where the README's commands put their results, relative to the folder they
# run in. `toy` is the UNet toy's loop, `toy-flow` the flow-matching toy's.
_LAUNCH = "accelerate launch -q --config_file docs/accelerate/one_process.yaml -m train"
_LAUNCH_2_THREADS = _LAUNCH.replace(" -q ", " -q --num_cpu_threads_per_process 2 ")
LOOPS = {
    "toy": {
        "collect": "python -m annotate feedback --pairs",
        "train": f"{_LAUNCH_2_THREADS} toy",
        "adherence_base": "python -m models.toy.evaluate --model toy",
        "adherence_aligned": "python -m models.toy.evaluate --model runs/train/toy/best",
        "eval_auto": "python -m eval auto --aligned runs/train/toy/best",
    },
    "toy-flow": {
        "collect": "python -m annotate feedback --model toy-flow",
        "train": f"{_LAUNCH_2_THREADS} toy-flow",
        "adherence_base": "python -m models.toy.evaluate --model toy-flow",
        "adherence_aligned": "python -m models.toy.evaluate --model runs/train/toy-flow/final",
        "eval_auto": "python -m eval auto --base toy-flow --aligned runs/train/toy-flow/final",
    },
}
STAGES = tuple(LOOPS["toy"])
MINUTES = {"toy": 10, "toy-flow": 30}  # each loop's time target on the 2-core dev CPU
STORES = {"toy": Path("runs/prefs.duckdb"), "toy-flow": Path("runs/toy-flow.duckdb")}
IMAGES = Path("runs/eval/images")


def train_folder(loop: str) -> Path:
    """Where the loop's train command writes its run (the preset's name)."""
    return Path("runs/train") / loop


EVAL_SEEDS = 23  # eval auto: seeds 0..22
# --tiny: sizes only (pairs, training and sampling steps, seeds), so the whole loop runs
# in about a minute; the docs test appends the same flags to the same README commands.
TINY = {
    "collect": ["--pairs", "48", "--per-prompt", "4", "--steps", "6"],
    "train": ["--max_steps", "2", "--eval_every", "2", "--sample_seeds", "1",
              "--sample_steps", "4", "--holdout_pairs", "2"],
    "adherence_base": ["--pairs", "8", "--steps", "6"],
    "adherence_aligned": ["--pairs", "8", "--steps", "6"],
    "eval_auto": ["--seeds", "1", "--steps", "6"],
}
ADHERENCE_PAIRS = 400  # models.toy.evaluate: seeds 1,000,000..1,000,399


@dataclass(frozen=True)
class Collection:
    """One of the collections --collections runs the loop on: README.md's, changed the
    way users' collections differ from it."""

    name: str
    feedback_seed: int | None = None  # collect with this --seed
    train_seed: int | None = None  # train with this --seed (on the first collection's store)
    more_pairs: int = 0  # the first collection's store plus this many pairs (--seed 100)


# The first is README.md's as written; the next two reuse its store (no collection), so
# a short run of the script costs little more than one loop.
COLLECTIONS = (
    Collection("readme"),
    Collection("plus-8-pairs", more_pairs=8),  # as a handful of votes on the page README.md opens
    Collection("train-seed-1", train_seed=1),
    Collection("feedback-seed-1", feedback_seed=1),
    Collection("feedback-seed-2", feedback_seed=2),
)
MORE_PAIRS_SEED = 100


def readme_stages(loop: str = "toy", readme: Path = README) -> dict[str, str]:
    """Each stage's command of `loop`, exactly as README.md writes it."""
    texts = [c.text for c in commands(readme)]
    stages = {}
    for name, first_words in LOOPS[loop].items():
        words = shlex.split(first_words)
        found = [text for text in texts if shlex.split(text)[:len(words)] == words]
        if len(found) != 1:
            raise SystemExit(f"error: README.md should have one command starting "
                             f"{first_words!r} (the {loop} loop's {name} stage), not "
                             f"{len(found)}")
        stages[name] = found[0]
    return stages


def run_stage(name: str, command: str, cwd: Path, logs: Path,
              threads: int | None = None) -> tuple[str, float]:
    """Run one shell command in `cwd` with bash, its stderr to logs/NAME.log; (stdout,
    minutes). Exits on failure. `python` and `accelerate` are this interpreter's;
    `threads` caps torch's CPU threads (OMP_NUM_THREADS) for the command."""
    logs.mkdir(parents=True, exist_ok=True)
    print(f"[toy_loop] {name}: {command}", file=sys.stderr, flush=True)
    start = time.monotonic()
    with open(logs / f"{name}.log", "w") as log:
        env = dict(os.environ)
        env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
        if threads:
            env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
        command = within_threads(command, threads or os.environ.get("OMP_NUM_THREADS"))
        done = subprocess.run(["bash", "-c", command], cwd=cwd, stdout=subprocess.PIPE,
                              stderr=log, text=True, env=env)
    minutes = (time.monotonic() - start) / 60
    (logs / f"{name}.out").write_text(done.stdout)
    if done.returncode:
        raise SystemExit(f"error: stage {name} failed (exit {done.returncode}); "
                         f"see {logs / (name + '.log')}")
    print(f"[toy_loop] {name}: {minutes:.2f} min", file=sys.stderr, flush=True)
    return done.stdout, minutes


def last_json(text: str) -> dict:
    """The JSON object a command printed: its last line, or all of stdout (indented)."""
    lines = [line for line in text.strip().splitlines() if line.strip()]
    try:
        return json.loads(lines[-1])
    except (IndexError, json.JSONDecodeError):
        return json.loads(text)


def store_counts(db: Path) -> dict:
    """Pairs by outcome, and images whose seed an evaluation or the sample grid uses."""
    import duckdb

    with duckdb.connect(str(db), read_only=True) as con:
        outcomes = dict(con.execute(
            "SELECT outcome, count(*) FROM rankings GROUP BY outcome").fetchall())
        overlap = con.execute(
            "SELECT count(*) FROM images WHERE seed < ? OR seed BETWEEN ? AND ? "
            "OR seed BETWEEN ? AND ?",
            [EVAL_SEEDS, 1_000_000, 1_000_000 + ADHERENCE_PAIRS - 1, 2_000_000, 2_000_099],
        ).fetchone()[0]
    decisive = outcomes.get("left", 0) + outcomes.get("right", 0)
    return {"pairs": sum(outcomes.values()), "decisive": decisive,
            "ties": outcomes.get("tie", 0), "images_on_eval_seeds": int(overlap)}


def decisive_bootstrap(eval_command: str, aligned: str,
                       images: Path) -> tuple[dict, list[float] | None]:
    """Re-tally eval auto's cached images of `aligned` in process, with the settings
    `eval_command` ran with: W/L/T and the decisive rate's prompt-clustered bootstrap
    interval."""
    from cli.parser import parse
    from eval.__main__ import default_prompts
    from eval.auto import compare
    from eval.config import AutoConfig
    from eval.stats import clustered_bootstrap
    from models.scorers import load_scorer

    args = parse(AutoConfig, shlex.split(eval_command)[4:], "python -m eval auto")
    result = compare(args.base, aligned, default_prompts(args.base),
                     load_scorer(args.scorer), args.scorer, args.sampling(), args.tie_margin,
                     images)
    decisive = [v for v in result.votes if v.outcome in ("aligned", "base")]
    counts = {k: sum(v.outcome == k for v in result.votes) for k in ("aligned", "base", "tie")}
    interval = clustered_bootstrap(decisive)
    return counts, None if interval is None else [interval.low, interval.high]


def rel(path: Path | str) -> str:
    """A path as the commands print it: relative to the repository when inside it."""
    path = Path(path).resolve()
    return os.path.relpath(path, ROOT) if path.is_relative_to(ROOT) else str(path)


def appended(args: argparse.Namespace) -> dict[str, list[str]]:
    """What this script's options change in each README command, as flags to append."""
    extra: dict[str, list[str]] = {name: list(TINY[name]) if args.tiny else []
                                   for name in STAGES}
    if args.pairs is not None:
        extra["collect"] += ["--pairs", str(args.pairs)]
    if args.seed is not None:
        extra["collect"] += ["--seed", str(args.seed)]
    if args.tie_margin is not None:
        extra["collect"] += ["--tie-margin", str(args.tie_margin)]
    if args.threads:
        extra["collect"] += ["--threads", str(args.threads)]
    if args.data:
        extra["train"] += ["--data", str(Path(args.data).resolve())]
    if args.objective != "dpo":
        extra["train"] += ["--objective", args.objective]
    extra["train"] += args.train_args
    if args.model:
        model = str(train_folder(args.loop) / args.model)
        extra["adherence_aligned"] += ["--model", model]
        extra["eval_auto"] += ["--aligned", model]
    return extra


def judged_model(eval_command: str) -> str:
    """The aligned model an eval auto command judges: its last --aligned (argparse keeps
    the last, so --model's, appended, wins over the README's)."""
    words = shlex.split(eval_command)
    return words[max(i for i, word in enumerate(words) if word == "--aligned") + 1]


def clean_folder(args: argparse.Namespace) -> Path:
    """--runs, resolved; the loop starts from a clean folder (--force removes it)."""
    runs = Path(args.runs).resolve()
    if runs.exists():
        if not args.force:
            raise SystemExit(f"error: {runs} exists: the loop starts from a clean folder "
                             "(remove it, or pass --force to have it removed)")
        shutil.rmtree(runs)
    return runs


def loop(args: argparse.Namespace) -> dict:
    stages = readme_stages(args.loop)
    extra = appended(args)
    runs = clean_folder(args)
    runs.mkdir(parents=True)
    shutil.copytree(ROOT / "docs" / "accelerate", runs / "docs" / "accelerate")  # README names
    logs = runs / "logs"
    minutes: dict[str, float] = {}
    ran: dict[str, str] = {}
    outputs: dict[str, str] = {}
    started = time.monotonic()
    for name, command in stages.items():
        if name == "collect" and args.data:
            continue
        ran[name] = " ".join([command, shlex.join(extra[name])]).strip()
        outputs[name], minutes[name] = run_stage(name, ran[name], runs, logs, args.threads)

    db = Path(args.data).resolve() if args.data else runs / STORES[args.loop]
    collected = {"reused": rel(db)} if args.data else last_json(outputs["collect"])
    counts = store_counts(db)
    train_dir = runs / train_folder(args.loop)
    summary = json.loads((train_dir / "summary.json").read_text())
    aligned = str(runs / judged_model(ran["eval_auto"]))
    if not Path(aligned).exists():
        raise SystemExit(f"error: {aligned} was not written (keep_best off?)")
    adherence = {name: last_json(outputs[f"adherence_{name}"])["adherence"]
                 for name in ("base", "aligned")}
    judged = last_json(outputs["eval_auto"])
    start = time.monotonic()
    recount, boot = decisive_bootstrap(ran["eval_auto"], aligned, runs / IMAGES)
    minutes["bootstrap"] = (time.monotonic() - start) / 60
    if (recount["aligned"], recount["base"], recount["tie"]) != (
            judged["wins"], judged["losses"], judged["ties"]):
        raise SystemExit(f"error: re-tally {recount} differs from eval auto's {judged}")
    minutes["total"] = (time.monotonic() - started) / 60

    gain = adherence["aligned"]["both"] - adherence["base"]["both"]
    config = (train_dir / "config.yaml").read_text()
    result = {
        "runs": rel(runs),
        "loop": args.loop,
        "commands": ran,
        "objective": args.objective,
        "model": rel(aligned),
        "pairs": {**counts, "collect": collected},
        "train": {k: summary.get(k) for k in (
            "steps", "pairs", "heldout_pairs", "seconds", "best_step", "best_score",
            "peak_rss_mb")},
        "threads": args.threads,
        "minutes": {k: round(v, 2) for k, v in minutes.items()},
        "adherence": {
            "base": adherence["base"], "aligned": adherence["aligned"],
            "gain_points": round(100 * gain, 1),
        },
        "eval_auto": {
            "pairs": judged["pairs"], "wins": judged["wins"], "losses": judged["losses"],
            "ties": judged["ties"], "win_rate": judged["win_rate"],
            "wilson": judged["wilson"], "bootstrap": judged["bootstrap"],
            "decisive_win_rate": judged["decisive_win_rate"],
            "decisive_wilson": judged["decisive_wilson"], "decisive_bootstrap": boot,
            "sign_test_p": judged["sign_test_p"],
            "base_mean_score": judged["base_mean_score"],
            "aligned_mean_score": judged["aligned_mean_score"],
        },
        "selection_seeds": {key: int(value) for key, value in (
            line.split(":", 1) for line in config.splitlines()
            if line.startswith(("sample_seed_start:", "sample_seeds:")))},
        "criteria": {
            "judged_pairs_at_least_400": judged["pairs"] >= 400,
            # no decisive pair (all ties): no interval, and no claim met
            "decisive_wilson_low_above_70": (judged["decisive_wilson"] or [0])[0] > 0.70,
            "adherence_up_15_points": gain >= 0.15,
            f"under_{MINUTES[args.loop]}_minutes": minutes["total"] < MINUTES[args.loop],
            "no_collected_image_on_eval_seeds": counts["images_on_eval_seeds"] == 0,
        },
    }
    result["passed"] = all(result["criteria"].values())
    (runs / "result.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def store_of(collection: Collection, runs: Path, loop_name: str) -> Path:
    """Where an earlier --collections run in `runs` left `collection`'s store."""
    if collection.more_pairs:
        return runs / f"{collection.name}.duckdb"
    if collection.train_seed is not None:
        return runs / COLLECTIONS[0].name / STORES[loop_name]
    return runs / collection.name / STORES[loop_name]


def on_collections(args: argparse.Namespace) -> dict:
    """The loop on the first `args.collections` COLLECTIONS, each in RUNS/NAME, and its
    spread: median and worst of the adherence gain and the decisive win rate's Wilson
    lower bound, and whether the worst meets the loop's claim."""
    chosen = COLLECTIONS[:args.collections]
    runs = Path(args.runs).resolve()
    source = Path(args.stores).resolve() if args.stores else runs  # where the stores are
    if args.stores:
        missing = [str(store) for store in (store_of(c, source, args.loop) for c in chosen)
                   if not store.exists()]
        if missing:
            raise SystemExit(f"error: --stores {args.stores} has no {', '.join(missing)}: give "
                             "the --runs of an earlier --collections run at least as long")
    clean_folder(args)
    results = []
    for collection in chosen:
        one = argparse.Namespace(**vars(args))
        one.runs, one.force = str(runs / collection.name), False
        if collection.feedback_seed is not None:
            one.seed = collection.feedback_seed
        if collection.train_seed is not None:
            one.train_args = [*args.train_args, "--seed", str(collection.train_seed)]
        if args.stores or collection.train_seed is not None:
            one.data = str(store_of(collection, source, args.loop))
        elif collection.more_pairs:
            one.data = str(store_of(collection, runs, args.loop))
            shutil.copy(store_of(COLLECTIONS[0], runs, args.loop), one.data)
            collect = " ".join([readme_stages(args.loop)["collect"], *appended(args)["collect"],
                                "--db", one.data, "--pairs", str(collection.more_pairs),
                                "--seed", str(MORE_PAIRS_SEED)])
            run_stage("more_pairs", collect, runs, runs / "logs", args.threads)
        result = loop(one)
        results.append({"collection": collection.name, "runs": result["runs"],
                        "commands": result["commands"],
                        "decisive_pairs": result["pairs"]["decisive"],
                        "adherence_gain_points": result["adherence"]["gain_points"],
                        "decisive_win_rate": result["eval_auto"]["decisive_win_rate"],
                        "decisive_wilson": result["eval_auto"]["decisive_wilson"],
                        "minutes": result["minutes"]["total"],
                        "collected": "collect" in result["commands"],
                        "passed": result["passed"]})
        print(f"[toy_loop] {collection.name}: adherence "
              f"{result['adherence']['gain_points']:+.1f} points, decisive win rate "
              f"{result['eval_auto']['decisive_win_rate']}", file=sys.stderr, flush=True)
    gains = [r["adherence_gain_points"] for r in results]
    lows = [(r["decisive_wilson"] or [0])[0] for r in results]
    full_loops = [r["minutes"] for r in results if r["collected"]]
    slowest = max(full_loops) if full_loops else None  # None: --stores, nothing collected
    spread = {
        "collections": results,
        "adherence_gain_points": {"median": statistics.median(gains), "worst": min(gains),
                                  "best": max(gains)},
        "decisive_wilson_low": {"median": statistics.median(lows), "worst": min(lows),
                                "best": max(lows)},
        "loop_minutes_worst": slowest,
        "worst_case": {
            "adherence_up_15_points": min(gains) >= 15,
            "decisive_wilson_low_above_70": min(lows) > 0.70,
            f"under_{MINUTES[args.loop]}_minutes":
                None if slowest is None else slowest < MINUTES[args.loop],
        },
    }
    spread["passed"] = all(value is True for value in spread["worst_case"].values())
    (runs / "result.json").write_text(json.dumps(spread, indent=2) + "\n")
    return spread


# -- figures for docs/RESULTS.md ----------------------------------------------------------


def figures(runs: Path, out: Path, prefix: str) -> list[Path]:
    """Training curves (from metrics.jsonl and eval.jsonl, what TensorBoard shows) and the
    sample grids at step 0 and at the evaluated model's step, side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    result = json.loads((runs / "result.json").read_text())
    train = runs / train_folder(result.get("loop", "toy"))
    metrics = [json.loads(line) for line in (train / "metrics.jsonl").read_text().splitlines()]
    evals = [json.loads(line) for line in (train / "eval.jsonl").read_text().splitlines()]
    steps = [m["step"] for m in metrics]
    panels = [("loss", "loss (ln 2 = 0.69 at the start)"), ("accuracy", "implicit accuracy"),
              ("margin", "reward margin (winner - loser)")]
    if result["objective"] == "sft":
        panels = [("loss", "SFT loss (winners' denoising error)")]
    fig, axes = plt.subplots(1, len(panels) + 1, figsize=(4 * (len(panels) + 1), 3.2),
                             squeeze=False)
    for ax, (key, title) in zip(axes[0], panels, strict=False):
        values = [m.get(key) for m in metrics]
        ax.plot(steps, values, color="0.75", lw=0.8, label="every 10 steps")
        smooth = [sum(chunk) / len(chunk)
                  for chunk in (values[max(0, i - 4):i + 1] for i in range(len(values)))]
        ax.plot(steps, smooth, color="C0", lw=1.5, label="mean of 5")
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
    axes[0][0].legend(fontsize=7)
    ax = axes[0][-1]
    estep = [e["step"] for e in evals]
    ax.plot(estep, [e.get("sample_score") for e in evals], "o-", color="C1",
            label="sample score (toy judge, 72 images)")
    if any("heldout_accuracy" in e for e in evals):
        ax.plot(estep, [e.get("heldout_accuracy") for e in evals], "s--", color="C2",
                label="held-out implicit accuracy (64 pairs)")
    best = result["train"].get("best_step")
    if best is not None and result["model"].endswith("best"):
        ax.axvline(best, color="0.5", ls=":", lw=1)
    ax.set_title("every 100 steps", fontsize=9)
    ax.set_xlabel("step", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.legend(fontsize=6.5, loc="lower right")
    fig.tight_layout()
    curves = out / f"{prefix}_curves.png"
    fig.savefig(curves, dpi=90)
    plt.close(fig)

    last = best if result["model"].endswith("best") and best is not None else \
        result["train"]["steps"]
    before = Image.open(train / "samples" / "step-000000.png").convert("RGB")
    after = Image.open(train / "samples" / f"step-{last:06d}.png").convert("RGB")
    gap = 16
    sheet = Image.new("RGB", (before.width + after.width + gap, before.height), "white")
    sheet.paste(before, (0, 0))
    sheet.paste(after, (before.width + gap, 0))
    sheet = sheet.resize((sheet.width * 2 // 5, sheet.height * 2 // 5), Image.LANCZOS)
    grids = out / f"{prefix}_before_after.png"
    sheet.quantize(colors=128).save(grids, optimize=True)
    return [curves, grids]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--runs", default="runs/toy-loop",
                        help="the loop's folder; must not exist (default: runs/toy-loop)")
    parser.add_argument("--force", action="store_true", help="remove --runs first if it exists")
    parser.add_argument("--loop", choices=tuple(LOOPS), default="toy",
                        help="which README loop: the UNet toy's (toy) or the flow-matching "
                             "toy's (toy-flow)")
    parser.add_argument("--pairs", type=int,
                        help="AI-feedback pairs to collect (default: the README's)")
    parser.add_argument("--seed", type=int, help="feedback's --seed (default: the README's)")
    parser.add_argument("--tie-margin", type=float,
                        help="feedback's --tie-margin (default: the README's)")
    parser.add_argument("--threads", type=int,
                        help="torch CPU threads for every stage (default: torch's, one per "
                             "core; on a machine shared with other torch jobs 1 is much faster)")
    parser.add_argument("--collections", type=int, default=1, metavar="N",
                        choices=range(1, len(COLLECTIONS) + 1),
                        help="run the loop on the first N of: "
                             f"{', '.join(c.name for c in COLLECTIONS)}, each in RUNS/NAME, "
                             "and report the spread and whether the worst meets the claim "
                             "(default: 1, README.md's alone, in RUNS)")
    parser.add_argument("--tiny", action="store_true",
                        help="a smoke run: every stage at a tiny size (about a minute; "
                             "its figures mean nothing)")
    parser.add_argument("--data", help="train on this store instead of collecting")
    parser.add_argument("--stores", metavar="RUNS",
                        help="with --collections: train on the stores an earlier "
                             "--collections run left in RUNS instead of collecting again "
                             "(another recipe on the same pairs: --train-args)")
    parser.add_argument("--objective", choices=OBJECTIVES, default="dpo")
    parser.add_argument("--model", choices=("final", "best"),
                        help="which model of the run to evaluate (default: the one "
                             "README.md's evaluation commands name)")
    parser.add_argument("--train-args", nargs=argparse.REMAINDER, default=[],
                        help="more `--key value` for the train command (last on the line)")
    parser.add_argument("--figures", type=Path,
                        help="only draw the PNGs of a finished loop folder")
    parser.add_argument("--out", type=Path, default=Path("docs"), help="where --figures go")
    parser.add_argument("--prefix", default="toy_loop", help="file name prefix of --figures")
    args = parser.parse_args()
    if args.data and args.collections > 1:
        parser.error("--collections makes its own stores; leave out --data (or give --stores)")
    if args.stores and args.data:
        parser.error("give --stores (an earlier --collections run) or --data, not both")
    if args.figures:
        for path in figures(args.figures, args.out, args.prefix):
            print(path)
        return
    spread = args.collections > 1 or args.stores
    print(json.dumps(on_collections(args) if spread else loop(args), indent=2))


if __name__ == "__main__":
    main()
