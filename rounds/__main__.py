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

The commands are the ones a user runs by hand, each given its config by value
(rounds/stages.py: checked for every round before round 1 starts), written to
round-k/STAGE.yaml; each stage's output is kept under the round (logs/STAGE.log, and
STAGE.json, its figures, once it succeeded). Run the same command again after a
crash at any point: finished stages are read back, a collection continues where it
stopped, and training continues from its last checkpoint. rounds.json holds every round's
figures.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

from cli.entry import run_main
from cli.errors import DataError
from cli.parser import CONFIG_FILE, parse, save_config
from data.store import Store
from models.loading import NEWEST_ROUND_FILE, ROUND_FILE, same_model
from models.toy import TOY_NAMES, built_in_prompts
from rounds import stages
from rounds.config import RoundsConfig
from rounds.stages import Stage, model_of, round_dir


def write_json(path: Path, value: dict) -> None:
    """`value` as path's whole content, or path as it was (written aside, then renamed)."""
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(value, indent=1))
    temporary.replace(path)


def run_stage(folder: Path, stage: Stage) -> dict:
    """One command, once: its figures, read back from folder/NAME.json if it finished
    before. Its output goes to folder/logs/NAME.log; a failure stops the rounds."""
    done = folder / f"{stage.name}.json"
    if done.exists():
        return json.loads(done.read_text())
    (folder / "logs").mkdir(parents=True, exist_ok=True)
    stage.result.unlink(missing_ok=True)  # a file from an earlier, failed try is not this one's
    command = stage.argv(folder)
    print(f"[rounds] {folder.name} {stage.name}: {shlex.join(command)}", file=sys.stderr,
          flush=True)
    start = time.monotonic()
    log = folder / "logs" / f"{stage.name}.log"
    with open(log, "a") as output:
        finished = subprocess.run(command, stdout=output, stderr=subprocess.STDOUT,
                                  env={**os.environ, "TQDM_DISABLE": "1"})
    if finished.returncode or not stage.result.exists():
        raise DataError(f"{folder.name} {stage.name} failed (exit {finished.returncode}): see "
                        f"{log}; run the same command again to continue once it is fixed")
    figures = {**json.loads(stage.result.read_text()),
               "minutes": round((time.monotonic() - start) / 60, 2)}
    write_json(done, figures)  # a stage is done only once its whole record is written
    return figures


def mark_round(config: RoundsConfig, k: int) -> None:
    """Name round k in its model (so every image it makes records the round) and, as the
    newest round, in the run folder (so `--model OUT` anywhere means this model)."""
    model = Path(model_of(config, k))
    marker, newest = model / ROUND_FILE, Path(config.out) / NEWEST_ROUND_FILE
    if not marker.exists():  # written once: its time is part of the model's fingerprint
        write_json(marker, {"round": k, "run": str(Path(config.out).resolve())})
    if not newest.exists() or json.loads(newest.read_text())["round"] < k:
        write_json(newest, {"model": str(model.resolve()), "round": k})


def people_pairs(config: RoundsConfig, k: int) -> dict:
    """Round k's pairs from the people's store: the first --pairs labelled pairs whose two
    images round k-1's model made, copied into round k's store in one transaction."""
    model = model_of(config, k - 1)
    with Store(config.people, read_only=True) as people:
        available = people.labelled_pairs(m for m in people.models() if same_model(m, model))
        if len(available) < config.pairs:
            serve = config.model if k == 1 else str(config.out)
            raise DataError(
                f"round {k} needs {config.pairs} labelled pairs from {model}; {config.people} "
                f"holds {len(available)}: label more (python -m annotate --model {serve} "
                f"--db {config.people}), stop the page, and run the same command again")
        with Store(round_dir(config, k) / "prefs.duckdb") as store:
            store.copy_pairs(people, available[:config.pairs])
    return {"source": "people", "people": config.people, "pairs": config.pairs}


def collect(config: RoundsConfig, k: int) -> dict:
    """Round k's pairs: labelled by the scorer, or taken from the people's store."""
    folder = round_dir(config, k)
    if config.people is None:
        return run_stage(folder, stages.collect(config, k))
    done = folder / "collect.json"
    if not done.exists():
        write_json(done, people_pairs(config, k))
    return json.loads(done.read_text())


def round_figures(config: RoundsConfig, k: int) -> dict:
    """Collect, train and evaluate round k (each stage skipped if it finished before)."""
    folder = round_dir(config, k)
    folder.mkdir(parents=True, exist_ok=True)
    collected = collect(config, k)
    trained = run_stage(folder, stages.train(config, k))
    mark_round(config, k)
    figures = {"round": k, "model": model_of(config, k), "collect": collected,
               "train": trained}
    if config.model in TOY_NAMES:
        judged = run_stage(folder, stages.adherence(config, model_of(config, k), folder,
                                                    "adherence"))
        figures["adherence"] = judged["adherence"]
    for against in sorted({0, k - 1}):
        stage = stages.versus(config, k, against)
        judged = run_stage(folder, stage)
        figures[stage.name] = {name: judged.get(name) for name in (
            "pairs", "wins", "losses", "ties", "win_rate", "decisive_win_rate",
            "decisive_wilson", "bootstrap", "minutes")}
    return figures


def leaderboard(config: RoundsConfig) -> dict:
    """The board of the base and every round, fitted afresh on every run (its images and
    scores are cached), so a rerun adds the blind votes cast since."""
    (Path(config.out) / "leaderboard.json").unlink(missing_ok=True)
    return run_stage(Path(config.out), stages.leaderboard(config))


def fixed_plan(config: RoundsConfig) -> None:
    """Save the plan with the first run; a rerun must ask for the same one (or more
    rounds of it)."""
    saved, now = Path(config.out) / "plan.json", config.plan()
    if saved.exists():
        defaults = RoundsConfig(rounds=1, pairs=1, model=config.model,
                                prompts=config.prompts).plan()
        before = {**defaults, **json.loads(saved.read_text())}  # older: fewer keys
        changed = [key for key in now if key != "rounds" and now[key] != before[key]]
        if changed:
            raise DataError(f"{config.out} holds rounds run with other settings "
                            f"({', '.join(changed)}): rerun with the same ones to continue, "
                            "or give a new --out")
    Path(config.out).mkdir(parents=True, exist_ok=True)
    saved.write_text(json.dumps(now, indent=1))
    save_config(config, Path(config.out) / CONFIG_FILE)  # this run's, `--out` and all


def write_toy_prompts(path: Path) -> None:
    """The toy captions with their shapes as a prompt file."""
    import csv

    with open(path, "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["prompt", "category"])
        writer.writerows([prompt.text, prompt.category] for prompt in built_in_prompts("toy"))


def run(config: RoundsConfig) -> dict:
    stages.check_stages(config)
    fixed_plan(config)
    if config.prompts is None:
        write_toy_prompts(Path(stages.prompts(config)))
    rounds = [round_figures(config, k) for k in range(1, config.rounds + 1)]
    result = {"plan": config.plan(), "rounds": rounds}
    if config.model in TOY_NAMES:
        result["base_adherence"] = run_stage(Path(config.out), stages.adherence(
            config, config.model, Path(config.out), "adherence-base"))["adherence"]
    result["leaderboard"] = leaderboard(config)
    (Path(config.out) / "rounds.json").write_text(json.dumps(result, indent=1))
    return result


def rounds(config: RoundsConfig) -> int:
    try:
        result = run(config)
    except KeyboardInterrupt:
        print("interrupted: run the same command again to continue", file=sys.stderr)
        raise
    print(json.dumps({"rounds": [{k: r.get(k) for k in ("round", "adherence", "versus_base")}
                                 for r in result["rounds"]],
                      "base_adherence": result.get("base_adherence"),
                      "out": str(config.out)}))
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_main(lambda argv: rounds(parse(RoundsConfig, argv, "python -m rounds")), argv)


if __name__ == "__main__":
    sys.exit(main())
