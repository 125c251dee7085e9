"""What a run will do, before it loads a model: its pairs and its batch arithmetic.

`python -m train PRESET --dry_run` prints this so a config can be checked on a laptop
before it spends GPU hours: the data sources resolve and hold enough pairs, the
effective batch divides over the processes that `accelerate launch` will start, and the
memory a process will hold is estimated (train/memory.py) where the model is local.
"""

from __future__ import annotations

import os
from dataclasses import asdict

import yaml

from data.pairs import MixedPairs, load_pairs
from train.config import HOLDOUT_SHARE, TrainConfig, objective_text
from train.errors import TrainError
from train.memory import estimate_lines


def training_pairs(config: TrainConfig) -> MixedPairs:
    """The pair mix a run trains and holds out from (images are read later, lazily)."""
    pairs = load_pairs(config.data, ratios=config.data_ratios, seed=config.seed,
                       num_samples=config.num_samples, split=config.split,
                       include_ties=config.include_ties,
                       include_both_bad=config.objective == "kto",
                       question=config.question, drop_flagged=config.drop_flagged)
    if not len(pairs):
        raise TrainError(f"no decisive pairs in {', '.join(config.data)}: collect some votes "
                         "or import shards first")
    return pairs


def holdout_line(config: TrainConfig, pairs: int) -> str:
    """How the run splits its pairs, and by which rule, in words."""
    held = config.heldout(pairs)
    if not config.holdout_pairs:
        rule = "holdout_pairs 0"
    elif pairs < HOLDOUT_SHARE:
        rule = f"none under {HOLDOUT_SHARE} pairs"
    else:
        rule = f"one in {HOLDOUT_SHARE}, at most holdout_pairs {config.holdout_pairs:,}"
    return f"{held:,} held out ({rule}), {pairs - held:,} to train on"


def launched_processes() -> int:
    """How many processes `accelerate launch` (or torchrun) started: 1 outside it."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def plan(config: TrainConfig, processes: int) -> str:
    """The resolved config as YAML, then a few lines a person checks before a long run."""
    accumulation = config.accumulation(processes)
    pairs = training_pairs(config)
    trained = len(pairs) - config.heldout(len(pairs))
    seen = config.effective_batch * config.max_steps
    what = (f"LoRA rank {config.lora_rank}" if config.lora_rank else "full fine-tune")
    sources = ", ".join(f"{source} ({count:,} pairs)"
                        for source, count in zip(config.data, pairs.source_counts(),
                                                 strict=True))
    lines = [
        yaml.safe_dump(asdict(config), sort_keys=False).rstrip(),
        "",
        f"model:  {config.model}, {what}, objective {objective_text(asdict(config))}",
        f"data:   {sources}; {holdout_line(config, len(pairs))}",
        f"batch:  {processes} process{'es' if processes > 1 else ''} x {config.batch_size} "
        f"pairs x {accumulation} accumulation = {config.effective_batch:,} pairs per step",
        f"length: {config.max_steps:,} steps = {seen:,} pairs seen, "
        f"{seen / max(trained, 1):.1f} epochs",
        f"output: {config.output_dir}",
        *estimate_lines(config),
    ]
    return "\n".join(lines)
