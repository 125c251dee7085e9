"""`python -m train judge [pickscore|toy] --data STORE ...`: fit a reward model (a judge) on
people's votes, PickScore's way, and write a folder that every command takes as a scorer.

PickScore (Kirstain et al. 2023; yuvalkirstain/PickScore's trainer/) fine-tunes CLIP-H on
Pick-a-Pic: an image's score for a prompt is logit_scale.exp() times the cosine of their
embeddings; a pair's loss is the cross-entropy of the softmax over its two scores against
the vote (a tie one half each), each pair weighted by 1 / the pairs of its prompt; AdamW
at 3e-6, 500 warmup steps then constant, 4,000 steps of 128 pairs, gradients clipped at 1,
and the checkpoint with the best held-out accuracy is the one kept. That is the
`pickscore` recipe here; `toy` is the same loop on the toy world's CLIP.

Held out are whole prompts (or whole annotators), so the accuracy says how well the judge
predicts votes on prompts (or of people) it never saw. The folder (OUTPUT/final) is a
CLIP checkpoint that `from_pretrained` loads, plus judge.json (what it learnt from:
sources, votes, annotators, date, held-out accuracy with its interval) and the pairs it
trained on (models.scorers.JUDGE_PAIRS), so `python -m eval agreement` measures it on
others. A stopped run continues from OUTPUT/checkpoint.pt when given the same command.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
import time
from collections import Counter
from contextlib import nullcontext
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from cli.errors import DataError, TrainError, UsageError
from cli.parser import CONFIG_FILE, config_values, parse, save_config, setting
from data import heldout
from data.intervals import wilson
from data.pairs import load_pairs, pair_key
from data.store import DEFAULT_DB
from models.scorers import JUDGE_PAIRS, JUDGE_RECORD, PICKSCORE_PROCESSOR, load_clip
from models.toy.backbone import TOY_BACKBONE, toy_clip
from train.loss import bradley_terry_loss

PROG = "python -m train judge"

# PickScore's recipe, and the toy world's: what each sets over JudgeConfig's defaults.
RECIPES: dict[str, dict] = {
    "pickscore": {},
    "toy": {"backbone": TOY_BACKBONE, "learning_rate": 1e-3, "warmup_steps": 20,
            "max_steps": 300, "batch_size": 64, "micro_batch_size": 64, "eval_every": 25,
            "holdout_pairs": 500, "output_dir": "runs/judge/toy", "workers": 0},
}


@dataclass(frozen=True)
class JudgeConfig:
    """python -m train judge [pickscore|toy] [--key value ...]: fit a judge on the votes of
    --data by a recipe (pickscore, the default: PickScore's on CLIP-H; toy: the toy world's
    CLIP) and write OUTPUT/final, a scorer for every command: --scorer OUTPUT/final."""

    data: list[str] = setting("stores (.duckdb), Pick-a-Pic parquet shards or folders and "
                              "JSONL manifests whose votes it learns", factory=lambda: [DEFAULT_DB])
    votes: str = setting("whose votes: people's (every source but ai:*) or all", "human",
                         choices=["human", "all"])
    output_dir: str = setting("where the judge goes (OUTPUT/final) and its checkpoint",
                              "runs/judge/pickscore")
    backbone: str = setting("the CLIP checkpoint to fine-tune (hub name or folder), or 'toy'",
                            PICKSCORE_PROCESSOR)
    train_layers: int = setting("fine-tune only the last N layers of each tower (and the "
                                "projections); 0: all", 0, metavar="N")
    learning_rate: float = setting("AdamW learning rate", 3e-6)
    weight_decay: float = setting("AdamW weight decay", 0.01)
    warmup_steps: int = setting("linear warmup, then constant", 500)
    max_steps: int = setting("optimizer steps", 4000)
    batch_size: int = setting("pairs per optimizer step, over all processes", 128)
    micro_batch_size: int = setting("pairs per forward pass on one process (gradients add "
                                    "up to --batch_size)", 16)
    max_grad_norm: float = setting("clip the gradient norm to this", 1.0)
    holdout_by: str = setting("hold out whole prompts, or whole annotators", "prompt",
                              choices=["prompt", "annotator"])
    holdout_pairs: int = setting("pairs held out to measure accuracy and pick the kept step",
                                 500)
    eval_every: int = setting("measure held-out accuracy (and checkpoint) every N steps",
                              100, metavar="N")
    seed: int = setting("seed of the held-out draw, the pair order and a toy backbone", 0)
    workers: int = setting("processes decoding images for each training process", 4)

    def __post_init__(self):
        for name in ("max_steps", "batch_size", "micro_batch_size", "eval_every",
                     "holdout_pairs"):
            if getattr(self, name) < 1:
                raise UsageError(f"--{name} must be at least 1")
        if self.train_layers < 0 or self.warmup_steps < 0 or self.workers < 0:
            raise UsageError("--train_layers, --warmup_steps and --workers must be 0 or more")


def from_command_line(argv: list[str]) -> JudgeConfig:
    """`[RECIPE] --key value ...`: the recipe's settings (default pickscore), then flags."""
    recipe = "pickscore"
    if argv and not argv[0].startswith("-"):
        recipe, argv = argv[0], argv[1:]
        if recipe not in RECIPES:
            raise UsageError(f"{PROG}: unknown recipe {recipe!r}: one of {', '.join(RECIPES)}")
    defaults = {"output_dir": f"runs/judge/{recipe}", **RECIPES[recipe]}
    return parse(JudgeConfig, argv, PROG, defaults)


class JudgePairs:
    """The votes a judge learns from: one (caption, preferred, rejected) pair per vote,
    label_0 the share for the first image (1, or 1/2 for a tie), split by prompt or
    annotator into training and held-out pairs."""

    def __init__(self, config: JudgeConfig):
        self.pairs = load_pairs(config.data, include_ties=True, seed=config.seed)
        described = [self.pairs.describe(i) for i in range(len(self.pairs))]
        keep = [i for i, (_, prov) in enumerate(described)
                if config.votes == "all" or prov.by_people]
        if not keep:
            raise DataError(f"{' and '.join(config.data)} holds no people's votes, only AI "
                            "feedback (ai:*): collect votes (python -m annotate) or give "
                            "--votes all")
        captions = [described[i][0] for i in keep]
        held = (heldout.by_prompt(captions, config.holdout_pairs, config.seed)
                if config.holdout_by == "prompt" else
                heldout.by_annotator([described[i][1].user_id for i in keep],
                                     config.holdout_pairs, config.seed))
        held_set = set(held.tolist())
        self.train = np.array([keep[j] for j in range(len(keep)) if j not in held_set],
                              dtype=np.int64)
        self.held = np.array([keep[j] for j in held], dtype=np.int64)
        if len(self.train) == 0 or len(self.held) == 0:
            raise DataError(f"{len(keep)} votes cannot be split into training and held-out "
                            f"pairs by {config.holdout_by} with --holdout_pairs "
                            f"{config.holdout_pairs}: collect more votes or change it")
        self.label_0 = np.array([described[i][1].share if not described[i][1].tie else 0.5
                                 for i in range(len(described))], dtype=np.float32)
        per_prompt = Counter(heldout.prompt_key(described[i][0]) for i in self.train)
        self.weight = np.array([1.0 / per_prompt.get(heldout.prompt_key(c), 1)
                                for c, _ in described], dtype=np.float32)
        self.described = described

    def record(self, config: JudgeConfig) -> dict:
        """What the judge learnt from, for its judge.json."""
        train = [self.described[i] for i in self.train]
        return {
            "sources": [str(s) for s in config.data], "votes": config.votes,
            "pairs": len(train), "ties": sum(prov.tie for _, prov in train),
            "annotators": len({prov.user_id for _, prov in train}),
            "prompts": len({heldout.prompt_key(c) for c, _ in train}),
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }

    def trained_keys(self) -> np.ndarray:
        return np.unique(np.array([pair_key(self.described[i][1].preferred_uid,
                                            self.described[i][1].rejected_uid)
                                   for i in self.train], dtype=np.int64))


class Batches(Dataset):
    """Item k: the processed micro-batches this process takes at step `start + k`. The
    order of pairs is a fresh permutation of the training pairs each epoch, from the seed,
    so step s reads the same pairs whether the run started at 0 or resumed at s."""

    def __init__(self, pairs: JudgePairs, processor, config: JudgeConfig, start: int,
                 rank: int, world: int):
        self.pairs, self.processor, self.config = pairs, processor, config
        self.start, self.rank, self.world = start, rank, world

    def __len__(self) -> int:
        return self.config.max_steps - self.start

    def indices(self, step: int) -> np.ndarray:
        size, n = self.config.batch_size, len(self.pairs.train)
        positions = np.arange(step * size, (step + 1) * size)
        epochs, within = positions // n, positions % n
        order = {e: np.random.default_rng([self.config.seed, int(e)]).permutation(n)
                 for e in np.unique(epochs)}
        return self.pairs.train[[order[e][i] for e, i in zip(epochs, within, strict=True)]]

    def __getitem__(self, k: int) -> tuple[list[dict], float]:
        chosen = self.indices(self.start + k)
        total_weight = float(self.pairs.weight[chosen].sum())
        mine = chosen[self.rank::self.world]
        size = self.config.micro_batch_size
        return [encode(self.pairs, mine[i:i + size], self.processor)
                for i in range(0, len(mine), size)], total_weight


def encode(pairs: JudgePairs, indices: np.ndarray, processor) -> dict:
    """Model inputs for pairs: each caption once, its preferred then its rejected image."""
    items = [pairs.pairs[int(i)] for i in indices]
    images = [item.preferred for item in items] + [item.rejected for item in items]
    inputs = processor(text=[item.caption for item in items], images=images,
                       padding="max_length", truncation=True, return_tensors="pt",
                       max_length=processor.tokenizer.model_max_length)
    return {**inputs, "label_0": torch.from_numpy(pairs.label_0[indices]),
            "weight": torch.from_numpy(pairs.weight[indices])}


def pair_scores(model, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Each pair's two scores, logit_scale.exp() * cosine (the folder scores the same)."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                   pixel_values=batch["pixel_values"]).logits_per_text  # (B, 2B)
    b = logits.shape[0]
    index = torch.arange(b, device=logits.device)
    return logits[index, index], logits[index, index + b]


def load_backbone(config: JudgeConfig):
    if config.backbone == TOY_BACKBONE:
        return toy_clip(config.seed)
    processor, model = load_clip(config.backbone, None, "cpu")
    return model.train(), processor


def trainable(model, layers: int) -> list[torch.nn.Parameter]:
    """All parameters, or (layers > 0) those of each tower's last `layers` layers, its
    final norm, the projections and the logit scale; the rest frozen."""
    if layers == 0:
        return list(model.parameters())
    model.requires_grad_(False)
    parts = [model.text_projection, model.visual_projection,
             model.text_model.final_layer_norm, model.vision_model.post_layernorm,
             *model.text_model.encoder.layers[-layers:],
             *model.vision_model.encoder.layers[-layers:]]
    for part in parts:
        part.requires_grad_(True)
    model.logit_scale.requires_grad_(True)
    return [p for p in model.parameters() if p.requires_grad]


@torch.no_grad()
def held_out(model, pairs: JudgePairs, processor, config: JudgeConfig, acc) -> dict:
    """Accuracy on the held-out pairs (decisive votes; equal scores count one half) and
    their mean loss, every process its share."""
    model.eval()
    mine = pairs.held[acc.process_index::acc.num_processes]
    totals = torch.zeros(4, dtype=torch.float64, device=acc.device)  # right, decisive, loss, n
    for start in range(0, len(mine), config.micro_batch_size):
        batch = {k: v.to(acc.device)
                 for k, v in encode(pairs, mine[start:start + config.micro_batch_size],
                                    processor).items()}
        with acc.autocast():
            s0, s1 = pair_scores(model, batch)
        decisive = batch["label_0"] != 0.5
        right = ((s0 > s1).double() + 0.5 * (s0 == s1).double())[decisive]
        loss = bradley_terry_loss(s0, s1, batch["label_0"])
        totals += torch.stack([right.sum(), decisive.sum().double(), loss.double().sum(),
                               torch.tensor(len(loss), dtype=torch.float64,
                                            device=acc.device)])
    totals = acc.reduce(totals, "sum")
    model.train()
    right, decisive, loss, n = totals.tolist()
    return {"accuracy": right / decisive if decisive else None, "decisive": int(decisive),
            "loss": loss / n}


def _save_final(model, processor, output: Path, record: dict, keys: np.ndarray) -> None:
    """OUTPUT/final, replaced whole: a reader never sees half a judge."""
    fresh = output / "final.tmp"
    shutil.rmtree(fresh, ignore_errors=True)
    model.save_pretrained(fresh)
    processor.save_pretrained(fresh)
    np.save(fresh / JUDGE_PAIRS, keys)
    (fresh / JUDGE_RECORD).write_text(json.dumps(record, indent=1))
    shutil.rmtree(output / "final", ignore_errors=True)
    fresh.rename(output / "final")


def _checkpoint(model, optimizer, scheduler, progress: dict, output: Path) -> None:
    fresh = output / "checkpoint.pt.tmp"
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "progress": progress}, fresh)
    os.replace(fresh, output / "checkpoint.pt")


def _start(config: JudgeConfig, output: Path) -> dict | None:
    """The checkpoint to continue from, if this command was stopped; None to start."""
    saved = output / CONFIG_FILE
    if (output / "checkpoint.pt").exists():
        from cli.parser import read_config_file

        if read_config_file(saved) != config_values(config):
            raise TrainError(f"{output} holds a stopped run with other settings: give the "
                             "same command to continue it, or another --output_dir")
        return torch.load(output / "checkpoint.pt", map_location="cpu", weights_only=False)
    if (output / "final").exists():
        raise TrainError(f"{output}/final is a judge already: give another --output_dir "
                         "(or remove it)")
    return None


def train_judge(config: JudgeConfig) -> dict:
    """Fit the judge; its summary (what judge.json holds, less the history)."""
    from accelerate import Accelerator
    from transformers.utils.logging import disable_progress_bar

    disable_progress_bar()  # saving a checkpoint is not news on the log
    acc = Accelerator()
    if config.batch_size % acc.num_processes:
        raise UsageError(f"--batch_size {config.batch_size} does not split over "
                         f"{acc.num_processes} processes: make it a multiple")
    output = Path(config.output_dir)
    resumed = _start(config, output)
    pairs = JudgePairs(config)
    model, processor = load_backbone(config)
    params = trainable(model, config.train_layers)
    optimizer = torch.optim.AdamW(params, lr=config.learning_rate,
                                  weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min(1.0, (step + 1) / (config.warmup_steps + 1)))
    progress = {"step": 0, "best": None, "history": []}
    if resumed:
        model.load_state_dict(resumed["model"])
        optimizer.load_state_dict(resumed["optimizer"])
        scheduler.load_state_dict(resumed["scheduler"])
        progress = resumed["progress"]
    model, optimizer = acc.prepare(model, optimizer)
    if acc.is_main_process:
        output.mkdir(parents=True, exist_ok=True)
        save_config(config, output / CONFIG_FILE)
        print(f"judge: {len(pairs.train)} training pairs, {len(pairs.held)} held out by "
              f"{config.holdout_by}" + (f"; continuing at step {progress['step']}"
                                        if resumed else ""), file=sys.stderr, flush=True)
    batches = DataLoader(Batches(pairs, processor, config, progress["step"],
                                 acc.process_index, acc.num_processes),
                         batch_size=None, num_workers=config.workers)
    record = {"backbone": config.backbone, "recipe": config_values(config),
              "trained_on": pairs.record(config),
              "heldout": {"by": config.holdout_by, "pairs": len(pairs.held)}}
    started = time.perf_counter()
    for step, (micro_batches, total_weight) in enumerate(batches, start=progress["step"]):
        train_loss = 0.0
        for k, micro in enumerate(micro_batches):
            micro = {key: value.to(acc.device) for key, value in micro.items()}
            with acc.no_sync(model) if k < len(micro_batches) - 1 else nullcontext(), \
                    acc.autocast():
                s0, s1 = pair_scores(model, micro)
                per_pair = bradley_terry_loss(s0, s1, micro["label_0"])
                # the step's weighted mean over all processes' pairs (DDP averages ranks)
                loss = (per_pair * micro["weight"]).sum() / total_weight * acc.num_processes
            acc.backward(loss)
            train_loss += loss.item() / acc.num_processes  # this process's share
        acc.clip_grad_norm_(params, config.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        progress["step"] = step + 1
        if progress["step"] % config.eval_every and progress["step"] < config.max_steps:
            continue
        train_loss = acc.reduce(torch.tensor(train_loss, device=acc.device), "sum").item()
        measured = held_out(model, pairs, processor, config, acc)
        progress["history"].append({"step": progress["step"], "train_loss": train_loss,
                                    "heldout_accuracy": measured["accuracy"],
                                    "heldout_loss": measured["loss"]})
        best = progress["best"]
        better = best is None or (measured["accuracy"] or 0) > (best["accuracy"] or 0)
        if better:
            progress["best"] = {"step": progress["step"], **measured}
        if acc.is_main_process:
            if better:
                _save_final(acc.unwrap_model(model), processor, output,
                            _finished(record, progress), pairs.trained_keys())
            _checkpoint(acc.unwrap_model(model), optimizer, scheduler, progress, output)
            print(f"step {progress['step']}/{config.max_steps}: loss {train_loss:.4f}, "
                  f"held-out accuracy {_percent(measured['accuracy'])} "
                  f"({measured['decisive']} pairs){' kept' if better else ''}",
                  file=sys.stderr, flush=True)
        acc.wait_for_everyone()
    summary = _finished(record, progress)
    if acc.is_main_process:
        (output / "final" / JUDGE_RECORD).write_text(json.dumps(summary, indent=1))
        (output / "checkpoint.pt").unlink(missing_ok=True)
    summary.pop("history")
    return {"judge": str(output / "final"), **summary,
            "seconds": round(time.perf_counter() - started, 1)}


def _finished(record: dict, progress: dict) -> dict:
    """judge.json: what it learnt from, the kept step and its held-out accuracy."""
    best = progress["best"]
    interval = wilson(best["accuracy"] * best["decisive"], best["decisive"]) \
        if best and best["accuracy"] is not None else None
    return {**record, "kept_step": best and best["step"],
            "heldout": {**record["heldout"], "decisive": best and best["decisive"],
                        "accuracy": best and best["accuracy"],
                        "interval": interval and [interval.low, interval.high],
                        "loss": best and best["loss"]},
            "history": progress["history"]}


def _percent(value: float | None) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{100 * value:.1f}%"
