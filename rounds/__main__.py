"""`python -m rounds`: N rounds of collect, train and evaluate, each on the newest model.

    python -m rounds --rounds 3 --pairs 800                     # the toy world, into runs/rounds
    python -m rounds --rounds 3 --pairs 800 --reference previous --mix 0.3
    python -m rounds --rounds 3 --pairs 800 --people runs/people.duckdb  # people label
    python -m rounds --rounds 2 --pairs 4000 --model M --preset lora --prompts parti.txt \\
        --scorer pickscore --launch "accelerate launch --multi_gpu --num_processes 8"

Round k (1..N), in OUT/round-k/:
1. collect: `python -m annotate feedback` with round k-1's model (round 1: --model) into
   round-k/prefs.duckdb, labelled by --scorer, its seeds drawn from --seed + k; or, with
   --people STORE, the first --pairs labelled pairs of round k-1's model in that store of
   people's votes (`python -m annotate --model OUT --db STORE` serves the newest round);
2. train: `-m train PRESET` from round k-1's weights on round k's pairs (with --mix, that
   share of the mix from the earlier rounds' stores), against the base as the frozen
   reference (--reference base) or against round k-1's model (--reference previous);
3. evaluate: on the toy model, the judge's adherence on 400 held-out prompt/seed pairs;
   `python -m eval auto` against the base and against round k-1.
Then `python -m eval leaderboard` ranks the base and every round (OUT/leaderboard/), by
the scorer and by people's blind votes if OUT/votes.duckdb holds any
(`python -m eval --board OUT/leaderboard/leaderboard.json --db OUT/votes.duckdb`); it is
fitted again on every run of the command, so a rerun adds the votes cast since.
Each trained round's model names its round (round.json), and OUT names its newest round
(newest-round.json): `--model OUT` means that model to every command.

The commands are the ones a user runs by hand; each stage's output is kept under the round
(logs/STAGE.log, and STAGE.json once it succeeded). Run the same command again after a
crash at any point: finished stages are read back, a collection continues where it
stopped, and training continues from its last checkpoint. rounds.json holds every round's
figures.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from cli.errors import UserError, report_user_error
from data.errors import DataError
from data.store import Store
from models.loading import NEWEST_ROUND_FILE, ROUND_FILE, same_model
from models.toy import TOY_NAME, TOY_NAMES

REFERENCES = ("base", "previous")


@dataclass(frozen=True)
class RoundsPlan:
    """What a run of rounds does; saved as plan.json so a rerun cannot silently change it."""

    rounds: int
    pairs: int
    model: str = TOY_NAME
    preset: str = "toy"
    reference: str = "base"
    mix: float = 0.0  # share of each round's training mix drawn from earlier rounds' pairs
    scorer: str = "toy_judge"
    tie_margin: float = 0.1
    per_prompt: int = 16
    prompts: str | None = None
    seed: int = 0
    eval_seeds: int = 23
    adherence_pairs: int = 400
    steps: int = 20  # sampler steps of every image the rounds make (not training's samples)
    feedback_args: list[str] = field(default_factory=list)
    train_args: list[str] = field(default_factory=list)
    people: str | None = None  # a store of people's votes to take each round's pairs from
    keep_best: bool = False  # a round's model: its best sample score's step, not its last

    def check(self) -> None:
        if self.rounds < 1 or self.pairs < 1:
            raise DataError("--rounds and --pairs must be at least 1")
        if self.reference not in REFERENCES:
            raise DataError(f"--reference must be one of {', '.join(REFERENCES)}")
        if not 0 <= self.mix < 1:
            raise DataError("--mix is the earlier rounds' share of the mix: from 0 up to, not "
                            "including, 1")
        if self.model not in TOY_NAMES and not self.prompts:
            raise DataError(f"--model {self.model}: give --prompts FILE (the toy model's "
                            "captions are its only built-in prompts)")


def round_dir(out: Path, k: int) -> Path:
    return out / f"round-{k}"


def model_of(plan: RoundsPlan, out: Path, k: int) -> str:
    """Round k's model (round 0: the base): its training's final model, or with
    --keep-best the step whose samples scored best (the start included, so a round never
    ends below where it began by that score)."""
    if k == 0:
        return plan.model
    return str(round_dir(out, k) / "train" / ("best" if plan.keep_best else "final"))


def collect_command(plan: RoundsPlan, out: Path, k: int) -> list[str]:
    return ["-m", "annotate", "feedback", "--model", model_of(plan, out, k - 1),
            "--pairs", str(plan.pairs), "--db", str(round_dir(out, k) / "prefs.duckdb"),
            "--seed", str(plan.seed + k), "--per-prompt", str(plan.per_prompt),
            "--tie-margin", str(plan.tie_margin), "--scorer", plan.scorer,
            "--steps", str(plan.steps), "--no-progress",
            *(["--prompts", plan.prompts] if plan.prompts else []), *plan.feedback_args]


def training_data(plan: RoundsPlan, out: Path, k: int) -> list[str]:
    """`--data` (and `--data_ratios`) of round k: its own pairs, and the earlier rounds'
    in the --mix share, split evenly among them."""
    stores = [str(round_dir(out, j) / "prefs.duckdb") for j in range(k, 0, -1)]
    if k == 1 or plan.mix == 0:
        return ["--data", stores[0]]
    earlier = plan.mix / (k - 1)
    return ["--data", *stores, "--data_ratios", str(1 - plan.mix),
            *[f"{earlier:.6g}"] * (k - 1)]


def train_command(plan: RoundsPlan, out: Path, k: int) -> list[str]:
    reference = plan.model if plan.reference == "base" else model_of(plan, out, k - 1)
    return ["-m", "train", plan.preset, "--model", model_of(plan, out, k - 1),
            *training_data(plan, out, k),
            *(["--reference_model", reference] if reference != model_of(plan, out, k - 1)
              else []),
            "--seed", str(plan.seed + k), "--output_dir", str(round_dir(out, k) / "train"),
            "--cache_dir", str(out / "cache"), "--resume", "latest",
            *(["--keep_best", "true"] if plan.keep_best else []), *plan.train_args]


def eval_command(plan: RoundsPlan, out: Path, k: int, against: int) -> list[str]:
    name = "base" if against == 0 else f"round-{against}"
    return ["-m", "eval", "auto", "--base", model_of(plan, out, against),
            "--aligned", model_of(plan, out, k), "--scorer", plan.scorer,
            "--seeds", str(plan.eval_seeds), "--steps", str(plan.steps),
            "--tie-margin", str(plan.tie_margin), "--images", str(out / "eval-images"),
            "--out", str(round_dir(out, k) / f"versus-{name}"),
            *(["--prompts", plan.prompts] if plan.prompts else [])]


def printed_json(text: str) -> dict:
    """The JSON object a command printed: all of stdout, or its last line that is one."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        lines = [line for line in text.splitlines() if line.startswith("{")]
        return json.loads(lines[-1]) if lines else {}


def write_json(path: Path, value: dict) -> None:
    """`value` as path's whole content, or path as it was (written aside, then renamed)."""
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(value, indent=1))
    temporary.replace(path)


def run_stage(folder: Path, name: str, args: list[str], launch: list[str] | None = None) -> dict:
    """One command, once: its JSON output, read back from folder/NAME.json if it finished
    before. Its stderr goes to folder/logs/NAME.log; a failure stops the rounds."""
    done = folder / f"{name}.json"
    if done.exists():
        return json.loads(done.read_text())
    (folder / "logs").mkdir(parents=True, exist_ok=True)
    command = [*(launch or [sys.executable]), *args]
    print(f"[rounds] {folder.name} {name}: {shlex.join(command)}", file=sys.stderr, flush=True)
    start = time.monotonic()
    with open(folder / "logs" / f"{name}.log", "a") as log:
        finished = subprocess.run(command, stdout=subprocess.PIPE, stderr=log, text=True,
                                  env={**os.environ, "TQDM_DISABLE": "1"})
    if finished.returncode:
        raise DataError(f"{folder.name} {name} failed (exit {finished.returncode}): see "
                        f"{folder / 'logs' / (name + '.log')}; run the same command again "
                        "to continue once it is fixed")
    result = {**printed_json(finished.stdout),
              "minutes": round((time.monotonic() - start) / 60, 2)}
    write_json(done, result)  # a stage is done only once its whole record is written
    return result


def mark_round(plan: RoundsPlan, out: Path, k: int) -> None:
    """Name round k in its model (so every image it makes records the round) and, as the
    newest round, in the run folder (so `--model OUT` anywhere means this model)."""
    model = Path(model_of(plan, out, k))
    marker, newest = model / ROUND_FILE, out / NEWEST_ROUND_FILE
    if not marker.exists():  # written once: its time is part of the model's fingerprint
        write_json(marker, {"round": k, "run": str(out.resolve())})
    if not newest.exists() or json.loads(newest.read_text())["round"] < k:
        write_json(newest, {"model": str(model.resolve()), "round": k})


def people_pairs(plan: RoundsPlan, out: Path, k: int) -> dict:
    """Round k's pairs from the people's store: the first --pairs labelled pairs whose two
    images round k-1's model made, copied into round k's store in one transaction."""
    model = model_of(plan, out, k - 1)
    with Store(plan.people, read_only=True) as people:
        available = people.labelled_pairs(m for m in people.models() if same_model(m, model))
        if len(available) < plan.pairs:
            serve = plan.model if k == 1 else str(out)
            raise DataError(
                f"round {k} needs {plan.pairs} labelled pairs from {model}; {plan.people} "
                f"holds {len(available)}: label more (python -m annotate --model {serve} "
                f"--db {plan.people}), stop the page, and run the same command again")
        with Store(round_dir(out, k) / "prefs.duckdb") as store:
            store.copy_pairs(people, available[:plan.pairs])
    return {"source": "people", "people": plan.people, "pairs": plan.pairs}


def collect(plan: RoundsPlan, out: Path, k: int) -> dict:
    """Round k's pairs: labelled by the scorer, or taken from the people's store."""
    folder = round_dir(out, k)
    if plan.people is None:
        return run_stage(folder, "collect", collect_command(plan, out, k))
    done = folder / "collect.json"
    if not done.exists():
        write_json(done, people_pairs(plan, out, k))
    return json.loads(done.read_text())


def adherence(plan: RoundsPlan, model: str, folder: Path, name: str) -> dict:
    return run_stage(folder, name, ["-m", "models.toy.evaluate", "--model", model,
                                    "--pairs", str(plan.adherence_pairs),
                                    "--steps", str(plan.steps), "--judge-images", "0"])


def round_figures(plan: RoundsPlan, out: Path, k: int, launch: list[str] | None) -> dict:
    """Collect, train and evaluate round k (each stage skipped if it finished before)."""
    folder = round_dir(out, k)
    folder.mkdir(parents=True, exist_ok=True)
    collected = collect(plan, out, k)
    trained = run_stage(folder, "train", train_command(plan, out, k), launch)
    mark_round(plan, out, k)
    figures = {"round": k, "model": model_of(plan, out, k), "collect": collected,
               "train": trained}
    if plan.model in TOY_NAMES:
        figures["adherence"] = adherence(plan, model_of(plan, out, k), folder,
                                         "adherence")["adherence"]
    for against in sorted({0, k - 1}):
        key = "versus_base" if against == 0 else "versus_previous"
        judged = run_stage(folder, key, eval_command(plan, out, k, against))
        figures[key] = {name: judged.get(name) for name in (
            "pairs", "wins", "losses", "ties", "win_rate", "decisive_win_rate",
            "decisive_wilson", "bootstrap", "minutes")}
    return figures


def leaderboard(plan: RoundsPlan, out: Path) -> dict:
    """The board of the base and every round, fitted afresh on every run (its images and
    scores are cached), so a rerun adds the blind votes cast since."""
    (out / "leaderboard.json").unlink(missing_ok=True)
    models = [model_of(plan, out, k) for k in range(plan.rounds + 1)]
    names = ["base", *(f"round-{k}" for k in range(1, plan.rounds + 1))]
    return run_stage(out, "leaderboard", [
        "-m", "eval", "leaderboard", "--models", *models, "--names", *names,
        "--scorer", plan.scorer, "--seeds", str(plan.eval_seeds), "--steps", str(plan.steps),
        "--tie-margin", str(plan.tie_margin), "--images", str(out / "eval-images"),
        "--votes", str(out / "votes.duckdb"), "--out", str(out / "leaderboard"),
        *(["--prompts", plan.prompts] if plan.prompts else [])])


def fixed_plan(plan: RoundsPlan, out: Path) -> RoundsPlan:
    """The plan, saved with the first run; a rerun must ask for the same one (or more
    rounds of it)."""
    saved = out / "plan.json"
    if saved.exists():
        before = {**asdict(RoundsPlan(0, 0)), **json.loads(saved.read_text())}  # older: fewer keys
        now = asdict(plan)
        changed = [key for key in now if key != "rounds" and now[key] != before[key]]
        if changed:
            raise DataError(f"{out} holds rounds run with other settings ({', '.join(changed)})"
                            f": rerun with the same ones to continue, or give a new --out")
    out.mkdir(parents=True, exist_ok=True)
    saved.write_text(json.dumps(asdict(plan), indent=1))
    return plan


def toy_prompts(out: Path) -> str:
    """The toy captions with their shapes as a prompt file: a trained toy model is a folder,
    and only the bundled one's name brings its prompts."""
    import csv

    from models.toy.shapes import all_captions, parse_caption

    path = out / "toy-prompts.csv"
    with open(path, "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["prompt", "category"])
        for caption in all_captions():
            writer.writerow([caption, parse_caption(caption)[1]])
    return str(path)


def run(plan: RoundsPlan, out: Path, launch: list[str] | None = None) -> dict:
    plan.check()
    fixed_plan(plan, out)
    if plan.prompts is None:
        plan = replace(plan, prompts=toy_prompts(out))
    rounds = []
    for k in range(1, plan.rounds + 1):
        rounds.append(round_figures(plan, out, k, launch))
    result = {"plan": asdict(plan), "rounds": rounds}
    if plan.model in TOY_NAMES:
        result["base_adherence"] = adherence(plan, plan.model, out,
                                             "adherence-base")["adherence"]
    result["leaderboard"] = leaderboard(plan, out)
    (out / "rounds.json").write_text(json.dumps(result, indent=1))
    return result


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m rounds", description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--rounds", type=int, default=3, help="rounds (default: 3)")
    p.add_argument("--pairs", type=int, default=800,
                   help="pairs collected per round (default: 800)")
    p.add_argument("--out", default="runs/rounds", help="the run folder (default: runs/rounds)")
    p.add_argument("--model", default=TOY_NAME, help="the base model (default: toy)")
    p.add_argument("--preset", default="toy", help="train preset (default: toy)")
    p.add_argument("--reference", choices=REFERENCES, default="base",
                   help="each round's frozen reference: the base (default) or the previous "
                        "round's model")
    p.add_argument("--mix", type=float, default=0.0,
                   help="share of each round's training mix from earlier rounds' pairs "
                        "(default: 0, this round's only)")
    p.add_argument("--scorer", default="toy_judge",
                   help="labels the pairs and judges the rounds (default: toy_judge)")
    p.add_argument("--people", metavar="STORE",
                   help="take each round's pairs from this store of people's votes instead "
                        "of labelling them by --scorer: round k takes the first --pairs "
                        "pairs that round k-1's model made (serve it with python -m annotate "
                        "--model OUT --db STORE)")
    p.add_argument("--tie-margin", type=float, default=0.1,
                   help="score gap at or below which a pair is a tie (default: 0.1)")
    p.add_argument("--per-prompt", type=int, default=16,
                   help="feedback's pairs per prompt in a row (default: 16)")
    p.add_argument("--prompts", help="prompt file (required for a model other than toy)")
    p.add_argument("--seed", type=int, default=0,
                   help="round k collects with feedback --seed SEED+k (default: 0)")
    p.add_argument("--eval-seeds", type=int, default=23,
                   help="eval auto's seeds per prompt (default: 23)")
    p.add_argument("--steps", type=int, default=20,
                   help="sampler steps of every image collected and evaluated (default: 20)")
    p.add_argument("--adherence-pairs", type=int, default=400,
                   help="toy model: held-out prompt/seed pairs of the judge's adherence "
                        "(default: 400)")
    p.add_argument("--keep-best", action="store_true",
                   help="each round's model is its training's step with the best sample "
                        "score (seeds apart from the evaluations'), the start included, "
                        "instead of the last step")
    p.add_argument("--launch", help="how to start training, for example \"accelerate launch "
                                    "--multi_gpu --num_processes 8\" (default: this python)")
    p.add_argument("--feedback-args", default="",
                   help="more flags for every collection, one quoted string")
    p.add_argument("--train-args", nargs=argparse.REMAINDER, default=[],
                   help="more `--key value` for every round's training (last)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    plan = RoundsPlan(
        rounds=args.rounds, pairs=args.pairs, model=args.model, preset=args.preset,
        reference=args.reference, mix=args.mix, scorer=args.scorer,
        tie_margin=args.tie_margin, per_prompt=args.per_prompt, prompts=args.prompts,
        seed=args.seed, eval_seeds=args.eval_seeds, adherence_pairs=args.adherence_pairs,
        steps=args.steps,
        feedback_args=shlex.split(args.feedback_args), train_args=args.train_args,
        people=args.people, keep_best=args.keep_best)
    try:
        result = run(plan, Path(args.out), shlex.split(args.launch) if args.launch else None)
    except UserError as error:
        return report_user_error(error)
    except KeyboardInterrupt:
        print("interrupted: run the same command again to continue", file=sys.stderr)
        return 130
    print(json.dumps({"rounds": [{k: r.get(k) for k in ("round", "adherence", "versus_base")}
                                 for r in result["rounds"]],
                      "base_adherence": result.get("base_adherence"),
                      "out": args.out}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
