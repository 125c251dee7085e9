"""Round k's stages, each as the config of the command that runs it, built by value.

The rounds compose the commands a user runs by hand: `annotate feedback` (collect),
`train` (train), `models.toy.evaluate` (adherence), `eval auto` (versus the base and the
previous round) and `eval leaderboard`. Each stage's config is that command's own
dataclass, so a setting the command does not have, or a value it refuses, is refused
when the plan is checked (`check_stages`, before round 1), not when the stage starts;
the stage then runs as a subprocess reading the config from a file, and its figures are
read back from a file it writes (`Stage.result`).
"""

from __future__ import annotations

import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

from annotate.config import FeedbackConfig
from cli.errors import UsageError, UserError
from cli.parser import parse, save_config
from eval.config import AutoConfig, LeaderboardConfig
from models.toy.evaluate import EvaluateConfig
from rounds.config import RoundsConfig
from train.config import from_command_line


@dataclass(frozen=True)
class Stage:
    """One command of a round: its config, how it starts, and the file its figures land in."""

    name: str
    config: object
    command: list[str]  # before the config file
    result: Path

    def argv(self, folder: Path) -> list[str]:
        """The command line, once the config is written to folder/NAME.yaml."""
        path = save_config(self.config, folder / f"{self.name}.yaml")
        return [*self.command, "--config", str(path)]


def round_dir(config: RoundsConfig, k: int) -> Path:
    return Path(config.out) / f"round-{k}"


def model_of(config: RoundsConfig, k: int) -> str:
    """Round k's model (round 0: the base): its training's final model, or with
    --keep-best the step whose samples scored best (the start included, so a round never
    ends below where it began by that score)."""
    if k == 0:
        return config.model
    return str(round_dir(config, k) / "train" / ("best" if config.keep_best else "final"))


def prompts(config: RoundsConfig) -> str:
    """The rounds' prompt file: --prompts, or the toy captions written into the run folder
    (a trained toy model is a folder, and only the bundled one's name brings its prompts)."""
    return config.prompts or str(Path(config.out) / "toy-prompts.csv")


def collect(config: RoundsConfig, k: int) -> Stage:
    folder = round_dir(config, k)
    values = {"model": model_of(config, k - 1), "pairs": config.pairs,
              "db": folder / "prefs.duckdb", "seed": config.seed + k,
              "per_prompt": config.per_prompt, "tie_margin": config.tie_margin,
              "scorer": config.scorer, "steps": config.steps, "no_progress": True,
              "prompts": prompts(config), "summary": folder / "collect-summary.json"}
    try:
        feedback = parse(FeedbackConfig, shlex.split(config.feedback_args),
                         "python -m annotate feedback", defaults=values)
    except UserError as error:
        raise UsageError(f"--feedback-args: {error}") from None
    return Stage("collect", feedback, [sys.executable, "-m", "annotate", "feedback"],
                 folder / "collect-summary.json")


def training_data(config: RoundsConfig, k: int) -> list[str]:
    """`--data` (and `--data_ratios`) of round k: its own pairs, and the earlier rounds'
    in the --mix share, split evenly among them."""
    stores = [str(round_dir(config, j) / "prefs.duckdb") for j in range(k, 0, -1)]
    if k == 1 or config.mix == 0:
        return ["--data", stores[0]]
    earlier = config.mix / (k - 1)
    return ["--data", *stores, "--data_ratios", str(1 - config.mix),
            *[f"{earlier:.6g}"] * (k - 1)]


def train(config: RoundsConfig, k: int) -> Stage:
    start = model_of(config, k - 1)
    reference = config.model if config.reference == "base" else start
    output = round_dir(config, k) / "train"
    argv = [config.preset, "--model", start, *training_data(config, k),
            *(["--reference_model", reference] if reference != start else []),
            "--seed", str(config.seed + k), "--output_dir", str(output),
            "--cache_dir", str(Path(config.out) / "cache"), "--resume", "latest",
            *(["--keep_best", "true"] if config.keep_best else []), *config.train_args]
    try:
        trained = from_command_line(argv)
    except UserError as error:
        raise UsageError(f"round {k}'s training (--preset, --train-args): {error}") from None
    return Stage("train", trained,
                 [*(config.launcher() or [sys.executable]), "-m", "train", config.preset],
                 output / "summary.json")


def adherence(config: RoundsConfig, model: str, folder: Path, name: str) -> Stage:
    """The toy judge's adherence of `model` (toy rounds only)."""
    result = folder / f"{name}-result.json"
    judged = EvaluateConfig(model=model, pairs=config.adherence_pairs, steps=config.steps,
                            out=result)
    return Stage(name, judged, [sys.executable, "-m", "models.toy.evaluate"], result)


def versus(config: RoundsConfig, k: int, against: int) -> Stage:
    name = "base" if against == 0 else f"round-{against}"
    out = round_dir(config, k) / f"versus-{name}"
    judged = AutoConfig(base=model_of(config, against), aligned=model_of(config, k),
                        prompts=prompts(config), seeds=config.eval_seeds, steps=config.steps,
                        images=str(Path(config.out) / "eval-images"), scorer=config.scorer,
                        tie_margin=config.tie_margin, out=str(out))
    key = "versus_base" if against == 0 else "versus_previous"
    return Stage(key, judged, [sys.executable, "-m", "eval", "auto"], out / "summary.json")


def leaderboard(config: RoundsConfig) -> Stage:
    out = Path(config.out)
    board = LeaderboardConfig(
        models=[model_of(config, k) for k in range(config.rounds + 1)],
        names=["base", *(f"round-{k}" for k in range(1, config.rounds + 1))],
        prompts=prompts(config), scorer=config.scorer, seeds=config.eval_seeds,
        steps=config.steps, tie_margin=config.tie_margin, images=str(out / "eval-images"),
        votes=str(out / "votes.duckdb"), out=str(out / "leaderboard"))
    return Stage("leaderboard", board, [sys.executable, "-m", "eval", "leaderboard"],
                 out / "leaderboard" / "leaderboard.json")


def check_stages(config: RoundsConfig) -> None:
    """Build every round's collect and train config: a misspelt or refused setting in
    --feedback-args or --train-args is one line now, before any stage runs."""
    for k in range(1, config.rounds + 1):
        if config.people is None:
            collect(config, k)
        train(config, k)
