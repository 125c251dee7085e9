"""What `python -m rounds` takes: one frozen dataclass (flags, `--config FILE` and checks
from cli/parser.py). Its settings but `out` and `launch` are the run's plan, saved as
plan.json so a rerun cannot silently change them."""

from __future__ import annotations

import argparse
import shlex
from dataclasses import asdict, dataclass
from pathlib import Path

from cli.errors import UsageError
from cli.parser import setting
from models.toy import TOY_NAME, TOY_NAMES

REFERENCES = ("base", "previous")
NOT_PLANNED = ("out", "launch")  # where and how it runs, not what it does


@dataclass(frozen=True)
class RoundsConfig:
    """N rounds of collect, train and evaluate, each on the newest model."""

    rounds: int = setting("rounds", 3)
    pairs: int = setting("pairs collected per round", 800)
    out: Path = setting("the run folder", Path("runs/rounds"))
    model: str = setting("the base model", TOY_NAME)
    preset: str = setting("train preset", "toy")
    reference: str = setting("each round's frozen reference: the base or the previous "
                             "round's model", "base", choices=list(REFERENCES))
    mix: float = setting("share of each round's training mix from earlier rounds' pairs (0: "
                         "this round's only)", 0.0)
    scorer: str = setting("labels the pairs and judges the rounds", "toy_judge")
    people: str | None = setting(
        "take each round's pairs from this store of people's votes instead of labelling "
        "them by --scorer: round k takes the first --pairs pairs that round k-1's model "
        "made (serve it with python -m annotate --model OUT --db STORE)", None,
        metavar="STORE")
    tie_margin: float = setting("score gap at or below which a pair is a tie", 0.1)
    per_prompt: int = setting("feedback's pairs per prompt in a row", 16)
    prompts: str | None = setting("prompt file (required for a model other than toy)", None)
    seed: int = setting("round k collects with feedback --seed SEED+k", 0)
    eval_seeds: int = setting("eval auto's seeds per prompt", 23)
    steps: int = setting("sampler steps of every image collected and evaluated", 20)
    adherence_pairs: int = setting("toy model: held-out prompt/seed pairs of the judge's "
                                   "adherence", 400)
    keep_best: bool = setting("each round's model is its training's step with the best "
                              "sample score (seeds apart from the evaluations'), the start "
                              "included, instead of the last step", False)
    launch: str | None = setting("how to start training, for example \"accelerate launch "
                                 "--multi_gpu --num_processes 8\" (default: this python)",
                                 None)
    feedback_args: str = setting("more flags for every collection, one quoted string "
                                 "(checked before round 1)", "")
    train_args: list[str] = setting("more `--key value` for every round's training (last; "
                                    "checked before round 1)", factory=list,
                                    nargs=argparse.REMAINDER)

    def __post_init__(self) -> None:
        if self.rounds < 1 or self.pairs < 1:
            raise UsageError("--rounds and --pairs must be at least 1")
        if self.reference not in REFERENCES:
            raise UsageError(f"--reference must be one of {', '.join(REFERENCES)}")
        if not 0 <= self.mix < 1:
            raise UsageError("--mix is the earlier rounds' share of the mix: from 0 up to, "
                             "not including, 1")
        if self.model not in TOY_NAMES and not self.prompts:
            raise UsageError(f"--model {self.model}: give --prompts FILE (the toy model's "
                             "captions are its only built-in prompts)")

    def plan(self) -> dict:
        """What the rounds do, as plan.json holds it."""
        values = {k: v for k, v in asdict(self).items() if k not in NOT_PLANNED}
        values["feedback_args"] = shlex.split(self.feedback_args)
        return values

    def launcher(self) -> list[str] | None:
        return shlex.split(self.launch) if self.launch else None
