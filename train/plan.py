"""What a run will do, before it loads a model: its pairs and its batch arithmetic.

`python -m train PRESET --dry_run` prints this so a config can be checked on a laptop
before it spends GPU hours: the data sources resolve and hold enough pairs, the
effective batch divides over the processes that `accelerate launch` will start, and the
memory a process will hold is estimated (train/memory.py) where the model is local.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import yaml
from torch.utils.data import Dataset

from cli.errors import DataError, DoesNotFit, TrainError
from data import heldout
from data.pairs import ChainedPairs, MixedPairs, load_pairs
from models.loading import FLOW_KINDS, fingerprint, kind_of
from train import cache as pair_cache
from train.config import HOLDOUT_SHARE, TrainConfig, objective_text
from train.memory import compute_line, estimate_lines, size_text

HELDOUT_SPLITS = ("validation", "validation_unique", "test", "test_unique")
INDEX_BYTES_PER_PAIR = 1900  # a run's pairs, keys, captions, cache index: benchmarks/run_index.py


@dataclass
class RunPairs:
    """The pairs a run reads, in one index space (the cache's): its training mix, then the
    data's own validation pairs where the data has them; which it trains on and which it
    holds out (whole prompts, none of them trained on)."""

    pairs: Dataset
    train: np.ndarray  # sorted indices into pairs
    heldout: np.ndarray  # sorted indices into pairs
    source_counts: list[int]  # the training mix's pairs from each of config.data
    rule: str  # how the held-out pairs were chosen, in words


def training_pairs(config: TrainConfig) -> MixedPairs:
    """The pair mix a run trains and holds out from (images are read later, lazily)."""
    pairs = load_pairs(config.data, ratios=config.data_ratios, seed=config.seed,
                       num_samples=config.num_samples, split=config.split,
                       include_ties=config.include_ties,
                       include_both_bad=config.objective == "kto",
                       question=config.question, drop_flagged=config.drop_flagged,
                       pair_votes=config.pair_votes)
    if not len(pairs):
        raise TrainError(f"no decisive pairs in {', '.join(config.data)}: collect some votes "
                         "or import shards first")
    return pairs


def validation_pairs(config: TrainConfig) -> tuple[str, MixedPairs] | None:
    """The data's own held-out split (the first of HELDOUT_SPLITS that any source holds),
    where the run trains on the train split."""
    if config.split != "train" or not config.holdout_pairs:
        return None
    for split in HELDOUT_SPLITS:
        found = []
        for source in config.data:
            try:
                found.append(load_pairs([source], seed=config.seed, split=split,
                                        include_ties=config.include_ties,
                                        include_both_bad=config.objective == "kto",
                                        question=config.question,
                                        drop_flagged=config.drop_flagged,
                                        pair_votes=config.pair_votes))
            except DataError:  # this source has no such split
                continue
        if found:
            return split, MixedPairs(found, seed=config.seed)
    return None


def run_pairs(config: TrainConfig) -> RunPairs:
    """The run's pairs and its held-out split. With the data's own validation split, its
    pairs whose prompt is not trained on are held out (at most holdout_pairs, whole
    prompts); otherwise whole prompts of the training mix, about one pair in
    HOLDOUT_SHARE, at most holdout_pairs."""
    mix = training_pairs(config)
    captions = [mix.describe(i)[0] for i in range(len(mix))]
    counts = mix.source_counts()
    validation = validation_pairs(config)
    if validation is not None:
        split, held_mix = validation
        held_captions = [held_mix.describe(i)[0] for i in range(len(held_mix))]
        unseen = heldout.without_prompts_of(held_captions, captions)
        chosen = unseen[heldout.by_prompt([held_captions[i] for i in unseen],
                                          config.holdout_pairs, [config.seed, 7])]
        dropped = len(held_mix) - len(unseen)
        rule = (f"the data's {split} split, whole prompts, at most holdout_pairs "
                f"{config.holdout_pairs:,}"
                + (f"; {dropped:,} of its pairs left out: their prompt is trained on"
                   if dropped else ""))
        return RunPairs(ChainedPairs([mix, held_mix]), np.arange(len(mix)),
                        len(mix) + chosen, counts, rule)
    target = config.heldout(len(mix))
    held = heldout.by_prompt(captions, target, [config.seed, 7])
    if not config.holdout_pairs:
        rule = "holdout_pairs 0"
    elif len(mix) < HOLDOUT_SHARE:
        rule = f"none under {HOLDOUT_SHARE} pairs"
    elif not len(held):
        rule = (f"every prompt has more than {target:,} pair{'s' if target != 1 else ''}, "
                "the most held out")
    else:
        prompts = len({heldout.prompt_key(captions[i]) for i in held})
        rule = (f"{prompts:,} whole prompt{'s' if prompts > 1 else ''}, none trained on; "
                f"about one pair in {HOLDOUT_SHARE}, at most holdout_pairs "
                f"{config.holdout_pairs:,}")
    return RunPairs(mix, np.setdiff1d(np.arange(len(mix)), held), held, counts, rule)


def holdout_line(run: RunPairs) -> str:
    """How the run splits its pairs, and by which rule, in words."""
    return (f"{len(run.heldout):,} held out ({run.rule}), {len(run.train):,} to train on")


def cache_folder(config: TrainConfig, kind: str) -> tuple[Path, pair_cache.Preprocessing]:
    """Where a run's cache lives (its key: the encoders' files and the preprocessing; runs
    on other pairs share it), and the preprocessing it is built with."""
    c = config
    prep = pair_cache.Preprocessing(c.resolution, c.random_crop, c.random_flip, c.seed,
                                    c.max_sequence_length if kind in FLOW_KINDS else None)
    key = pair_cache.cache_key(fingerprint(c.model, pair_cache.ENCODER_PARTS), prep)
    return Path(c.cache_dir) / key, prep


def _free_bytes(folder: Path) -> int:
    """Free bytes on the disk that holds `folder` (or would: its nearest existing parent)."""
    folder = folder.absolute()
    while not folder.exists():
        folder = folder.parent
    return shutil.disk_usage(folder).free


def cache_line(config: TrainConfig, pairs: Dataset, processes: int = 1) -> str:
    """The cache's size on disk beside the room its disk has; `DoesNotFit` when a cache
    still to be built cannot fit. Its text embeddings are memory-mapped, so a process's
    RAM does not grow with them."""
    from models.meta import local_file

    index = local_file(config.model, "model_index.json")
    kind = kind_of(json.loads(index.read_text())) if index else None
    size = directory = None
    if kind is not None:
        directory, prep = cache_folder(config, kind)
        keys = [pair_cache.pair_key(pairs, i) for i in range(len(pairs))]
        captions = [pairs.describe(i)[0] for i in range(len(pairs))]
        todo = pair_cache.missing(directory, keys, captions)
        captions_todo = sum(len(chunk) for chunk in todo.text)
        size = pair_cache.cache_bytes(config.model, kind, len(pairs), len(set(captions)), prep)
        to_write = pair_cache.cache_bytes(config.model, kind, len(todo), captions_todo, prep)
    if size is None:
        return (f"cache:  not estimated: {config.model}'s config is not on this machine "
                "(download the model, or give a local folder)")
    free = _free_bytes(Path(config.cache_dir))
    where = (f"built, in {directory}" if not len(todo) else
             f"{len(todo):,} pairs and {captions_todo:,} captions to encode in {directory}")
    shapes = pair_cache.text_shape(config.model, kind, prep)
    bound = "at most " if kind in pair_cache.VARIABLE_TEXT_KINDS else ""
    text = 2 * math.prod(shapes[0])
    text_size = f"{text / 2**20:.2f} MiB" if text >= 2**20 else f"{text / 1024:.1f} KiB"
    per_caption = f", text {bound}{text_size} a caption"
    lines = "\n".join([
        f"cache:  {size_text(size)} ({where}; {size_text(free)} free there{per_caption}); "
        "every process memory-maps it and holds a batch's rows",
        encode_line(config, kind, len(todo), captions_todo, processes)])
    if len(todo) and to_write > free:
        raise DoesNotFit(f"the cache needs about {size_text(to_write)} more in "
                         f"{config.cache_dir}, whose disk has {size_text(free)} free: give "
                         "--cache_dir on a disk with room", lines)
    return lines


def encode_flops(model: str, kind: str, prep: pair_cache.Preprocessing
                 ) -> tuple[int, int] | None:
    """(FLOPs to encode one pair: the VAE on both images, and on their mirror under
    random_flip; FLOPs to encode one caption: every text encoder at its cached length),
    counted on the meta device; None where the model's configs are not on this machine."""
    from models.meta import encoders_on_meta
    from train.memory import counted_flops

    built = encoders_on_meta(model)
    if built is None:
        return None
    vae, texts = built
    side = prep.resolution
    pixels = torch.empty(2, 3, *((1,) if kind == "qwenimage" else ()), side, side,
                         device="meta")  # Qwen-Image's VAE reads video: one frame
    pair = counted_flops(lambda: vae.encode(pixels)) * (2 if prep.random_flip else 1)
    caption = 0
    for text in texts:
        clip = text.config.model_type.startswith("clip")  # else T5 or an LLM
        length = (text.config.max_position_embeddings if clip
                  else prep.text_tokens or pair_cache.DEFAULT_TEXT_TOKENS.get(kind, 512))
        tokens = torch.zeros(1, length, dtype=torch.long, device="meta")
        caption += counted_flops(lambda text=text, tokens=tokens: text(tokens))
    return pair, caption


def encode_line(config: TrainConfig, kind: str, pairs: int, captions: int,
                processes: int) -> str:
    """What encoding the cache's missing pairs and captions costs, per process (each
    encodes its share), at `UTILISATION` of a GPU's bf16 peak."""
    from train.memory import PEAK_BF16_TFLOPS, UTILISATION

    prep = cache_folder(config, kind)[1]
    flops = encode_flops(config.model, kind, prep)
    if flops is None:
        return "encode: not estimated: the model's configs are not on this machine"
    total = pairs * flops[0] + captions * flops[1]
    times = ", ".join(
        f"{_duration(total / processes / (UTILISATION * peak * 1e12))} on {gpu}"
        for gpu, peak in PEAK_BF16_TFLOPS.items())
    return (f"encode: {total / 1e15:,.2f} PFLOP for {pairs:,} pairs and {captions:,} captions "
            f"({flops[0] / 1e9:,.1f} GFLOP a pair, {flops[1] / 1e9:,.1f} a caption): per "
            f"process of {processes}, {times} at {UTILISATION:.0%} of bf16 peak")


def _duration(seconds: float) -> str:
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.1f} s"


def launched_processes() -> int:
    """How many processes `accelerate launch` (or torchrun) started: 1 outside it."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def launched_sharded() -> bool:
    """Whether `accelerate launch` shards the networks (an FSDP config: docs/accelerate/
    fsdp.yaml), read as accelerate reads it; `ACCELERATE_USE_FSDP=true` says so to a dry
    run outside a launch."""
    return os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"


def ram_line(config: TrainConfig, pairs: int, processes: int) -> str:
    """A process's RAM (not the GPU's): the whole pipeline in fp32 while it loads, before
    it moves to the GPU, then the run's index of its pairs; the cache is memory-mapped."""
    from models.meta import denoiser_on_meta, encoders_on_meta

    denoiser, encoders = denoiser_on_meta(config.model), encoders_on_meta(config.model)
    if denoiser is None or encoders is None:
        return (f"ram:    not estimated: {config.model}'s config is not on this machine "
                "(download the model, or give a local folder)")
    vae, texts = encoders
    loading = 4 * sum(p.numel() for part in (denoiser[1], vae, *texts) for p in part.parameters())
    index = INDEX_BYTES_PER_PAIR * pairs
    machine = min(int(os.environ.get("LOCAL_WORLD_SIZE", processes)), processes)
    peak = loading + index
    return (f"ram:    about {size_text(peak)} per process while the model loads (every "
            f"part in fp32 before it moves to the GPU; {size_text(machine * peak)} "
            f"for the {machine} process{'es' if machine > 1 else ''} of a machine), then "
            f"{size_text(index)}: the index of {pairs:,} pairs (the cache is memory-mapped)")


def plan(config: TrainConfig, processes: int) -> str:
    """The resolved config as YAML, then a few lines a person checks before a long run."""
    accumulation = config.accumulation(processes)
    shards = processes if launched_sharded() else 1
    run = run_pairs(config)
    trained = len(run.train)
    seen = config.effective_batch * config.max_steps
    what = (f"LoRA rank {config.lora_rank}" if config.lora_rank else "full fine-tune")
    sources = ", ".join(f"{source} ({count:,} pairs)"
                        for source, count in zip(config.data, run.source_counts, strict=True))
    refused = None
    try:
        cache = cache_line(config, run.pairs, processes)
    except DoesNotFit as error:
        cache, refused = error.text, error
    lines = [
        yaml.safe_dump(asdict(config), sort_keys=False).rstrip(),
        "",
        f"model:  {config.model}, {what}, objective {objective_text(asdict(config))}",
        f"data:   {sources}; {holdout_line(run)}",
        f"batch:  {processes} process{'es' if processes > 1 else ''} x {config.batch_size} "
        f"pairs x {accumulation} accumulation = {config.effective_batch:,} pairs per step",
        f"length: {config.max_steps:,} steps = {seen:,} pairs seen, "
        f"{seen / max(trained, 1):.1f} epochs",
        f"output: {config.output_dir}",
        cache,
        ram_line(config, len(run.pairs), processes),
        *estimate_lines(config, shards),
        compute_line(config),
    ]
    if refused is not None:  # the whole plan, then the refusal
        refused.text = "\n".join(lines)
        raise refused
    return "\n".join(lines)
