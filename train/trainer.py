"""The training run, top to bottom: set up, cache, loop, save (docs/TRAINING.md).

One optimizer step consumes `effective_batch` pairs, split over processes and
accumulation micro-steps. Which pairs, which of them are mirrored, which noise, which
timesteps and which captions are dropped are all functions of (seed, step, micro-step,
rank): a resumed run sees exactly what an uninterrupted one would, and nothing replays a
data loader.

`Run(config)` builds everything a run needs, in order, in `__init__` (each part by a
function below that returns what it built); `Run.train()` is the loop.
"""

from __future__ import annotations

import copy
import gc
import json
import math
import os
import random
import resource
import shutil
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, replace
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from tqdm import tqdm

from cli.errors import DamagedCache, TrainError
from cli.parser import CONFIG_FILE, save_config
from data.pairs import image_labels
from models.loading import FLOW_KINDS, LoadedModel, load
from models.threads import free_cores, use_free_cores
from train import cache as pair_cache
from train import checkpoints, samples
from train.config import REFERENCE_OBJECTIVES, TrainConfig
from train.errors import Phase
from train.loss import (
    DPOTerms,
    dpo_loss,
    ipo_loss,
    kto_loss,
    mapo_loss,
    per_sample_error,
    scaled_gradient,
    sft_loss,
    winner_safe_scale,
)
from train.output import save_model
from train.plan import RunPairs, cache_folder, holdout_line, launched_sharded, run_pairs
from train.processes import DDPMProcess, FlowProcess, conditioning, predict, process_for

if TYPE_CHECKING:
    from diffusers.training_utils import EMAModel

HELDOUT_SEED = 1234  # the held-out check uses the same noise and timesteps every time
SKIP_JUDGED_FROM = 20  # from this step (or a shorter run's end), more than half skipped fails
NONFINITE_LATENTS = "nonfinite_latents"  # a step's metric, 1 when it read NaN/inf latents;
# it goes to the run's state (why steps were skipped), not to the logs
LOGS = ("metrics.jsonl", "eval.jsonl")


# --- what a step sees ------------------------------------------------------------------
def mixed_precision(config: TrainConfig) -> str:
    if config.mixed_precision != "auto":
        return config.mixed_precision
    if not torch.cuda.is_available():
        return "no"
    return "bf16" if torch.cuda.is_bf16_supported() else "fp16"


def shard_on_cpu(accelerator) -> None:
    """Turn FSDP on for a CPU launch of an FSDP config. accelerate keeps FSDP to GPUs and
    silently runs such a launch as DDP; torch's `fully_shard` itself runs on CPU with
    gloo, so the sharded path (accelerate's FSDP2 prepare, sharded checkpoints, gathered
    saves) runs here as on GPUs and is tested on a laptop (tests/test_cluster.py)."""
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    if accelerator.device.type == "cpu" and accelerator.num_processes > 1 and launched_sharded():
        from accelerate.state import PartialState

        accelerator.state.fsdp_plugin = FullyShardedDataParallelPlugin()
        # the state accelerate shares: every AcceleratorState() made later copies it
        PartialState._shared_state["distributed_type"] = DistributedType.FSDP
        accelerator.state.distributed_type = DistributedType.FSDP


def sharded(accelerator) -> bool:
    """Whether the launch shards the networks (FSDP2, docs/accelerate/fsdp.yaml): then
    every forward is a collective, so every process runs the evaluations and the saves."""
    from accelerate.utils import DistributedType

    return accelerator.distributed_type == DistributedType.FSDP


def step_generator(seed: int, *position: int) -> torch.Generator:
    """A generator for one (step, micro-step, rank) position: resumable by construction."""
    state = np.random.SeedSequence([seed, *position]).generate_state(1)[0]
    return torch.Generator("cpu").manual_seed(int(state))


class PairOrder:
    """The training stream: one permutation of the training pairs per epoch, in sequence."""

    def __init__(self, indices: np.ndarray, seed: int):
        self.indices, self.seed = indices, seed
        self._epochs: dict[int, np.ndarray] = {}

    def at(self, positions: range) -> list[int]:
        n = len(self.indices)
        out = []
        for position in positions:
            epoch = position // n
            if epoch not in self._epochs:
                rng = np.random.default_rng([self.seed, epoch])
                self._epochs = {epoch: self.indices[rng.permutation(n)]}
            out.append(int(self._epochs[epoch][position % n]))
        return out


def batch_positions(config: TrainConfig, step: int, micro: int, rank: int,
                    processes: int) -> range:
    """Stream positions of one process's micro-batch."""
    start = (step * config.effective_batch + micro * config.batch_size * processes
             + rank * config.batch_size)
    return range(start, start + config.batch_size)


def draw_flips(generator: torch.Generator, pairs: int) -> np.ndarray:
    """Which pairs of a micro-batch are mirrored (both images together), p = 1/2."""
    return (torch.rand(pairs, generator=generator) < 0.5).numpy()


@contextmanager
def adapters_disabled(net):
    """The LoRA model's reference: the same network with its adapters off, always back on."""
    net.disable_adapters()
    try:
        yield
    finally:
        net.enable_adapters()


def forward_pairs(net, reference, process: DDPMProcess | FlowProcess, kind: str, batch, cache,
                  generator, config: TrainConfig) -> tuple[torch.Tensor, dict]:
    """The loss of one micro-batch and its health metrics.

    Winner and loser share noise and timestep (flow: noise level), and go through each
    network in one batched forward: [winners; losers]. SFT sees the winners only; MaPO
    and SFT need no reference. `reference(noisy, t, inputs)` is the reference's prediction.
    """
    latents = batch.latents
    pairs = latents.shape[0]
    noise = torch.randn(latents[:, 0].shape, generator=generator).to(latents.device)
    timesteps = process.draw(pairs, generator).to(latents.device)
    sft = config.objective == "sft"
    copies = 1 if sft else 2
    clean = latents[:, 0] if sft else torch.cat([latents[:, 0], latents[:, 1]])
    noise, timesteps = noise.repeat(copies, 1, 1, 1), timesteps.repeat(copies)
    noisy = process.noisy(clean, noise, timesteps)
    target = process.target(clean, noise, timesteps)
    weights = process.weights(timesteps)
    inputs = conditioning(kind, batch, cache, generator, config.prompt_dropout, copies)

    def errors(prediction: torch.Tensor) -> torch.Tensor:
        error = per_sample_error(prediction, target)
        return error if weights is None else error * weights.to(error.device)

    def policy() -> torch.Tensor:
        return predict(net, kind, noisy, timesteps, inputs, config.flux_guidance)

    if sft:
        error = errors(policy())
        loss = sft_loss(error)
        return loss, {"loss": loss.detach(), "model_mse_preferred": error.detach().mean()}
    if config.objective == "mapo":
        error = errors(policy())
        model_w, model_l = error.chunk(2)
        mapo = mapo_loss(model_w, model_l, config.beta_mapo, config.mapo_snr,
                         process.num_train_timesteps)
        return mapo.loss, {
            "loss": mapo.loss.detach(), "accuracy": mapo.accuracy, "margin": mapo.margin,
            "ratio": mapo.ratio, "model_mse_preferred": model_w.detach().mean(),
            "model_mse_rejected": model_l.detach().mean(),
        }
    with torch.no_grad():
        ref_error = errors(reference(noisy, timesteps, inputs))
    prediction = policy()
    error = errors(prediction)
    if config.objective == "kto":
        liked = torch.cat([batch.liked[:, 0], batch.liked[:, 1]])
        kto = kto_loss(error, ref_error, liked, config.beta)
        return kto.loss, {
            "loss": kto.loss.detach(), "accuracy": kto.accuracy, "margin": kto.margin,
            "reward_liked": kto.reward_liked, "reward_disliked": kto.reward_disliked,
            "reference_point": kto.reference_point, "model_mse": error.detach().mean(),
            "ref_mse": ref_error.mean(),
        }
    model_w, model_l = error.chunk(2)
    ref_w, ref_l = ref_error.chunk(2)
    extra = {}
    if config.winner_safe:
        scale = winner_safe_scale(*(prediction - target).chunk(2), config.winner_safe_mu)
        model_l = scaled_gradient(model_l, scale)
        extra["loser_scale"] = scale
    if config.objective == "ipo":
        terms: DPOTerms = ipo_loss(model_w, model_l, ref_w, ref_l, config.beta)
    else:
        terms = dpo_loss(model_w, model_l, ref_w, ref_l, config.beta,
                         1.0 if batch.shares is None else batch.shares, config.share_loss)
    return terms.loss, {**extra,
        "loss": terms.loss.detach(), "accuracy": terms.accuracy,
        "reward_preferred": terms.reward_preferred, "reward_rejected": terms.reward_rejected,
        "margin": terms.margin, "model_mse_preferred": model_w.detach().mean(),
        "model_mse_rejected": model_l.detach().mean(), "ref_mse_preferred": ref_w.mean(),
        "ref_mse_rejected": ref_l.mean(),
    }


# --- set-up: each part a function of what came before ----------------------------------
def cpu_threads_hint(device: str, processes: int) -> str | None:
    """A line when a CPU run's threads do not fit the cores free now: fewer (`accelerate
    launch` sets OMP_NUM_THREADS=1 on a machine without GPUs unless told otherwise) or
    more, which makes every step several times slower (models/threads.py)."""
    if device != "cpu":
        return None
    threads, cores = torch.get_num_threads(), os.cpu_count() or 1
    fit = max(1, free_cores() // processes)
    per = " per process" if processes > 1 else ""
    if threads < fit:
        return (f"training on {threads} CPU thread{'s' if threads > 1 else ''}{per} of "
                f"{cores} cores: for more, accelerate launch --num_cpu_threads_per_process "
                f"{fit} -m train ...")
    if threads > fit:
        return (f"training on {threads} CPU threads{per} with {fit * processes} of {cores} "
                "cores free: more threads than free cores make each step several times "
                f"slower; use accelerate launch --num_cpu_threads_per_process {fit} -m "
                "train ...")
    return None


def resume_point(config: TrainConfig, out: Path, accelerator) -> Path | None:
    """The checkpoint to resume from; for `latest`, the newest step every process has
    complete (machines with their own disks each keep a copy of each checkpoint, and a
    kill can land between copies), so all resume at one step. Refuse to silently train
    over an earlier run."""
    from accelerate.utils import gather_object

    main = accelerator.is_main_process
    if config.resume == "latest":
        steps = {checkpoints.step_of(p) for p in checkpoints.completed(out)}
        if accelerator.num_processes > 1:
            steps = set.intersection(*map(set, gather_object([sorted(steps)])))
        resume = checkpoints.checkpoint_dir(out, max(steps)) if steps else None
    else:
        resume = checkpoints.find(out, config.resume) if config.resume else None
    if resume is not None:
        checkpoints.check_kind(resume, config)
    if resume is None and checkpoints.completed(out):
        raise TrainError(f"{out} already holds checkpoints: pass --resume latest to continue, "
                         "or --output_dir NEW for a fresh run")
    if config.resume and resume is None and main:
        print(f"no checkpoint in {out}: starting from step 0")
    return resume


def one_folder(accelerator, folder: Path) -> bool:
    """Whether every process of a launch sees `folder` as one folder (a file system all
    machines mount) rather than each machine its own. Found by looking: the main process
    writes a file there and the others check whether they see it."""
    from accelerate.utils import broadcast_object_list, gather_object

    if accelerator.num_processes == 1:
        return True
    token = broadcast_object_list([os.urandom(8).hex()])[0]
    probe = folder / f".probe-{token}"
    if accelerator.is_main_process:
        folder.mkdir(parents=True, exist_ok=True)
        probe.touch()
    accelerator.wait_for_everyone()
    shared = all(gather_object([probe.exists()]))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        probe.unlink()
    return shared


@dataclass
class TrainingData:
    """The pairs as the loop reads them: the cache, held-out indices and training stream."""

    cache: pair_cache.PairCache
    reused: bool  # an earlier run's cache was opened, nothing was encoded
    heldout: np.ndarray  # cache indices, sorted
    order: PairOrder  # the rest, one permutation per epoch
    liked: np.ndarray | None = None  # KTO: [pairs, 2], each cached image liked or disliked
    pair_flips: np.ndarray | None = None  # flip_per_pair: each pair's flip for the whole run
    shares: np.ndarray | None = None  # DPO: [pairs], the chance its preferred image is better

    def batch(self, indices: list[int], device, flips: np.ndarray | None = None
              ) -> pair_cache.CachedBatch:
        """Cached pairs `indices` (mirrored where `flips`), with KTO's labels or DPO's
        preferred shares where the run has them."""
        batch = self.cache.batch(indices, device, flips)
        if self.liked is not None:
            batch = replace(batch, liked=torch.from_numpy(self.liked[indices]).to(device))
        if self.shares is not None:
            batch = replace(batch, shares=torch.from_numpy(self.shares[indices]).to(device))
        return batch


def storage_share(accelerator, directory: Path) -> pair_cache.Share:
    """Which processes see one cache folder, so that they split its build: all of them on a
    shared file system; each machine's own where machines have their own disks."""
    if one_folder(accelerator, directory):
        return pair_cache.Share(accelerator.process_index, accelerator.num_processes)
    local = int(os.environ.get("LOCAL_WORLD_SIZE", accelerator.num_processes))
    return pair_cache.Share(accelerator.local_process_index, local)


def build_cache(config: TrainConfig, pairs, model: LoadedModel, accelerator,
                ) -> tuple[pair_cache.PairCache, int]:
    """Encode what the cache folder lacks, every process its share (in the run's
    precision), and open it; the pairs this process encoded. A damaged chunk is removed
    and encoded again."""
    from accelerate.utils import gather_object

    directory, prep = cache_folder(config, model.kind)
    keys = [pair_cache.pair_key(pairs, i) for i in range(len(pairs))]
    captions = [pairs.describe(i)[0] for i in range(len(pairs))]
    share = storage_share(accelerator, directory)
    encoded = 0
    for _ in range(3):
        todo = pair_cache.missing(directory, keys, captions)
        accelerator.wait_for_everyone()  # every process has looked before any writes
        if len(todo):
            began, cpu = time.perf_counter(), time.process_time()
            with accelerator.autocast():
                mine = pair_cache.encode(todo, pairs, keys, model.pipeline, model.kind, prep,
                                         directory, share, config.cache_workers,
                                         show_progress=accelerator.is_main_process)
            encoded += mine
            said = gather_object([(accelerator.process_index, mine,
                                   time.perf_counter() - began, time.process_time() - cpu)])
            for process, count, seconds, cpu in said if accelerator.is_main_process else []:
                print(f"process {process}: encoded {count:,} of {len(todo):,} pairs to "
                      f"cache in {seconds:.1f} s ({cpu:.1f} s CPU)")
        accelerator.wait_for_everyone()
        try:
            return pair_cache.PairCache(directory, keys, captions), encoded
        except DamagedCache as damage:
            if accelerator.is_main_process:
                print(f"cache {damage.directory} is damaged ({damage.reason}): encoding it "
                      "again")
            if share.rank == 0 and damage.directory != directory:
                shutil.rmtree(damage.directory, ignore_errors=True)
            accelerator.wait_for_everyone()
    raise TrainError(f"the cache in {directory} stays incomplete after three builds: delete "
                     "that folder and start again")


def cache_pairs(config: TrainConfig, run: RunPairs, model: LoadedModel, accelerator
                ) -> TrainingData:
    """Cache latents and embeddings of the run's pairs, training and held out (every
    process its share)."""
    c, pairs = config, run.pairs
    Phase.now = "building the cache"
    cache, encoded = build_cache(c, pairs, model, accelerator)
    if accelerator.is_main_process:
        print(f"{len(pairs)} pairs: {holdout_line(run)}; cache {cache.directory} "
              f"({f'{encoded:,} pairs encoded here' if encoded else 'reused'})")
    liked = None
    if c.objective == "kto":
        liked = np.array([[label > 0 for label in image_labels(pairs.describe(i)[1])]
                          for i in range(len(pairs))], dtype=bool).reshape(-1, 2)
    pair_flips = None
    if c.random_flip and c.flip_per_pair:
        pair_flips = np.array([random.Random(c.seed * 1_000_003 + i).random() < 0.5
                               for i in range(len(cache))])
    shares = None
    if c.objective == "dpo" and (c.label_smoothing or c.include_ties or c.pair_votes == "share"):
        eps = c.label_smoothing  # each vote wrong with chance eps
        shares = np.array([share * (1 - eps) + (1 - share) * eps for share in
                           (pairs.describe(i)[1].share for i in range(len(pairs)))],
                          dtype=np.float32)
    return TrainingData(cache, not encoded, run.heldout, PairOrder(run.train, c.seed), liked,
                        pair_flips, shares)


def sample_prompts(config: TrainConfig, model: LoadedModel) -> samples.SamplePrompts | None:
    """The sample grid's prompts, encoded once (None when the run draws no grid)."""
    if not (config.eval_every and config.sample_prompts):
        return None
    options = ({"max_sequence_length": config.max_sequence_length}
               if model.kind in FLOW_KINDS and config.max_sequence_length else {})
    return samples.SamplePrompts(
        config.sample_prompts,
        pair_cache.encode_prompts(model.pipeline, model.kind, config.sample_prompts, options),
        pair_cache.encode_empty(model.pipeline, model.kind, options))


def free_encoders(model: LoadedModel, keep_vae: bool) -> None:
    """Drop what the cache made unnecessary: the text encoders, and the VAE without grids."""
    for part in ("text_encoder", "text_encoder_2", "text_encoder_3"):
        if getattr(model.pipeline, part, None) is not None:
            setattr(model.pipeline, part, None)
    if not keep_vae:
        model.pipeline.vae = None
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


@dataclass
class Networks:
    """The trained denoiser (UNet or transformer), its reference, and what steps it."""

    denoiser: torch.nn.Module  # the trained network itself (LoRA: with its adapters)
    ddp_denoiser: torch.nn.Module  # the same, as accelerate prepared it for the loop
    reference: torch.nn.Module | None  # full DPO's, IPO's or KTO's frozen copy; else None
    trainable: list[torch.nn.Parameter]
    optimizer: torch.optim.Optimizer
    lr_scheduler: torch.optim.lr_scheduler.LRScheduler
    average: EMAModel | None  # ema_decay's moving average of `trainable`; else None


def _cast(module: torch.nn.Module, dtype: torch.dtype) -> None:
    # Module.half()/bfloat16() rather than .to(dtype): diffusers' .to warns about
    # "modules that should be kept in float32: []" for a network that has none.
    {torch.float16: module.half, torch.bfloat16: module.bfloat16}[dtype]()


def reference_copy(config: TrainConfig, net: torch.nn.Module, device: str) -> torch.nn.Module:
    """Full fine-tuning's frozen reference: `reference_model`'s denoiser, or the policy's
    own weights before training."""
    if not config.reference_model:
        return copy.deepcopy(net).requires_grad_(False).eval()
    other = load(config.reference_model, device=device, dtype=torch.float32).denoiser
    mine, theirs = net.state_dict(), other.state_dict()
    if mine.keys() != theirs.keys() or any(mine[k].shape != theirs[k].shape for k in mine):
        raise TrainError(f"reference_model {config.reference_model} is not the same "
                         f"architecture as model {config.model}: give a reference of the "
                         "same network (the base it was fine-tuned from)")
    return other.requires_grad_(False).eval()


def build_networks(config: TrainConfig, net: torch.nn.Module, accelerator) -> Networks:
    """The trained denoiser (full or LoRA), its reference, the optimizer and LR schedule.

    Full DPO's reference is a frozen copy with the policy's own fp32 weights, run under
    the same autocast: at step 0 the two compute the same thing, so the loss is ln 2
    exactly (a bf16 copy would differ by rounding that beta 5000 turns into a loss far
    from ln 2). It costs 4 bytes per parameter instead of 2 (docs/TRAINING.md).
    LoRA's reference is the base itself with its adapters off; the frozen base is cast
    to the mixed-precision dtype, the adapters stay fp32.
    """
    c = config
    if c.ema_decay and sharded(accelerator):
        raise TrainError("ema_decay does not run under FSDP yet (its average would be "
                         "checkpointed from one process's shard only): give --ema_decay 0, "
                         "or train under DDP (docs/accelerate/multi_gpu.yaml)")
    if c.lora_rank and sharded(accelerator):
        raise TrainError("LoRA trains under DDP (docs/accelerate/multi_gpu.yaml): its base is "
                         "frozen and small next to a full fine-tune's state; FSDP "
                         "(docs/accelerate/fsdp.yaml) is for full fine-tuning")
    if c.gradient_checkpointing:
        net.enable_gradient_checkpointing()
    reference = None
    if c.lora_rank:
        net.requires_grad_(False)
        if accelerator.mixed_precision in ("fp16", "bf16"):
            _cast(net, {"fp16": torch.float16, "bf16": torch.bfloat16}[
                accelerator.mixed_precision])
        torch.manual_seed(c.seed)  # the adapters' random init: the same run, the same init
        net.add_adapter(c.lora_adapter())
        for parameter in net.parameters():
            if parameter.requires_grad:
                parameter.data = parameter.data.float()
    else:
        if c.objective in REFERENCE_OBJECTIVES:
            reference = reference_copy(c, net, str(accelerator.device))
        net.requires_grad_(True)
    net.train()
    trainable = [p for p in net.parameters() if p.requires_grad]
    if c.optimizer == "adafactor":
        from transformers.optimization import Adafactor

        optimizer = Adafactor(trainable, lr=c.learning_rate, scale_parameter=False,
                              relative_step=False, warmup_init=False,
                              weight_decay=c.weight_decay)
    else:
        optimizer = torch.optim.AdamW(
            trainable, lr=c.learning_rate, betas=(c.adam_beta1, c.adam_beta2),
            weight_decay=c.weight_decay, eps=c.adam_epsilon)
    from diffusers.optimization import get_scheduler

    lr_scheduler = get_scheduler(c.lr_scheduler, optimizer, num_warmup_steps=c.warmup_steps,
                                 num_training_steps=c.max_steps)
    ddp_net, optimizer = accelerator.prepare(net, optimizer)
    accelerator.register_for_checkpointing(lr_scheduler)
    if sharded(accelerator):  # the policy's parameters are now its shards
        from accelerate.utils.fsdp_utils import fsdp2_prepare_model

        trainable = [p for p in ddp_net.parameters() if p.requires_grad]
        if reference is not None:  # sharded as the policy is, and not checkpointed (frozen)
            reference = fsdp2_prepare_model(accelerator, reference)
    average = None
    if c.ema_decay:  # diffusers' EMA: its decay ramps up as (1 + step) / (10 + step)
        from diffusers.training_utils import EMAModel

        average = EMAModel(trainable, decay=c.ema_decay)
        accelerator.register_for_checkpointing(average)
    return Networks(net, ddp_net, reference, trainable, optimizer, lr_scheduler, average)


def within_guard(guards: dict[str, float], start: dict[str, float],
                 max_drop: float | None) -> bool:
    """Whether every guard score is at most `max_drop` below its first value (no bound:
    always)."""
    return max_drop is None or all(guards[name] >= start[name] - max_drop for name in start)


def check_skipped(config: TrainConfig, done: int, state: dict, cache_dir: Path) -> None:
    """Stop a run whose steps are mostly skipped, which would end as its base model: more
    than half of the steps so far, judged from step SKIP_JUDGED_FROM or at a shorter
    run's end (fp16's loss scaler skips a few early steps by design)."""
    skipped = state["skipped_steps"]
    if (done < SKIP_JUDGED_FROM and done < config.max_steps) or skipped * 2 <= done:
        return
    if state["nonfinite_latent_steps"]:
        cause = (f"{state['nonfinite_latent_steps']} of them read NaN or inf cached latents: "
                 f"delete {cache_dir} to rebuild the cache")
    else:
        cause = (f"the loss or its gradient was NaN or inf: lower --learning_rate (now "
                 f"{config.learning_rate:g}) or resume from an earlier checkpoint")
    raise TrainError(f"{skipped} of {done} steps were skipped (a run stops when more than "
                     f"half are), so it would end as its base model; {cause}. final/ was "
                     "not written")


def begin_logs(out: Path, resumed_at: int | None) -> None:
    """Make the logs read as one run: a resumed run drops the lines past its checkpoint's
    step (written before the interruption, to be written again); a new run moves an
    earlier run's logs aside (to NAME.old-TIME)."""
    stamp = time.strftime("%Y%m%dT%H%M%S")
    for name in LOGS:
        log = out / name
        if not log.exists():
            continue
        if resumed_at is None:
            log.rename(log.with_name(f"{name}.old-{stamp}"))
            print(f"{out} holds an earlier run's {name} and no checkpoint: moved to "
                  f"{name}.old-{stamp}")
            continue
        lines = log.read_text().splitlines(keepends=True)
        kept = [line for line, step in zip(lines, map(_step, lines), strict=True)
                if step is not None and step <= resumed_at]
        if len(kept) < len(lines):
            aside = log.with_name(name + ".tmp")
            aside.write_text("".join(kept))
            aside.replace(log)


def _step(line: str) -> int | None:
    """A log line's step; None for a line a kill cut short."""
    try:
        return json.loads(line)["step"]
    except (ValueError, KeyError, TypeError):
        return None


# --- the run ---------------------------------------------------------------------------
class Run:
    """One training run. `Run(config)` sets everything up; `.train()` runs the loop."""

    def __init__(self, config: TrainConfig):
        self.start(config)
        c, acc = config, self.accelerator
        self.accumulation = c.accumulation(self.processes)
        pairs = run_pairs(c)
        self.say_threads()
        self.model = load(c.model, device=str(acc.device), dtype=torch.float32)
        self.process = process_for(self.model, c)
        self.data = cache_pairs(c, pairs, self.model, acc)
        self.sample_prompts = sample_prompts(c, self.model)
        free_encoders(self.model, keep_vae=self.sample_prompts is not None)
        self.nets = build_networks(c, self.model.denoiser, acc)
        self.load_scorers()

    def start(self, config: TrainConfig) -> None:
        """The accelerator, the output folder and where to resume from: what every
        objective's run sets up first."""
        from accelerate import Accelerator
        from accelerate.utils import InitProcessGroupKwargs

        c = self.config = config
        self.out = Path(c.output_dir)
        Phase.now = "starting"
        self.accelerator = acc = Accelerator(
            mixed_precision=mixed_precision(c), log_with="tensorboard",
            project_dir=str(self.out / "logs"), kwargs_handlers=[
                InitProcessGroupKwargs(timeout=timedelta(seconds=c.process_group_timeout))])
        shard_on_cpu(acc)
        self.main = acc.is_main_process
        self.processes = acc.num_processes
        # where each machine has its own output disk, each keeps a whole copy of each
        # checkpoint (written by its first process) to resume from
        shared = one_folder(acc, self.out)
        self.sharded = sharded(acc)
        if self.sharded and not shared:
            raise TrainError(f"FSDP writes every process's shard of a checkpoint into one "
                             f"folder, and {self.out} is not one folder for all machines: give "
                             "--output_dir on storage every machine mounts (docs/TRAINING.md, "
                             "'Running on a cluster')")
        self.evaluates = self.main or self.sharded  # sharded forwards need every process
        acc.project_configuration.save_on_each_node = not shared
        self.writes_checkpoints = acc.is_main_process if shared else acc.is_local_main_process
        self.resume = resume_point(c, self.out, acc)

    def say_threads(self) -> None:
        """Make the output folder; on a CPU, use or name the free cores (main process)."""
        acc = self.accelerator
        if not self.main:
            return
        self.out.mkdir(parents=True, exist_ok=True)
        if (acc.device.type == "cpu" and self.processes == 1
                and not os.environ.get("OMP_NUM_THREADS")):
            hint = use_free_cores(how="set OMP_NUM_THREADS")  # picks the free cores
        else:  # the count is given (accelerate sets OMP_NUM_THREADS): does it fit?
            hint = cpu_threads_hint(acc.device.type, self.processes)
        if hint:
            print(hint)

    def load_scorers(self) -> None:
        """The sample grid's scorer and guards, on the process that scores the grid."""
        from models.scorers import load_scorer

        c, acc = self.config, self.accelerator
        self.scorer = (load_scorer(c.scorer, device=str(acc.device))
                       if c.scorer and self.main else None)
        self.guards = ({name: load_scorer(name, device=str(acc.device))
                        for name in c.guard_scorers} if self.main else {})

    @property
    def denoiser(self) -> torch.nn.Module:
        return self.nets.denoiser

    def reference(self, noisy, timesteps, inputs: dict) -> torch.Tensor:
        """The frozen reference's prediction (for LoRA: adapters off)."""
        with self.accelerator.autocast():
            if self.config.lora_rank:
                with adapters_disabled(self.denoiser):
                    return self.predict(self.denoiser, noisy, timesteps, inputs)
            return self.predict(self.nets.reference, noisy, timesteps, inputs)

    def predict(self, net, noisy, timesteps, inputs) -> torch.Tensor:
        return predict(net, self.model.kind, noisy, timesteps, inputs,
                       self.config.flux_guidance)

    def micro_batch(self, step: int, micro: int) -> tuple[pair_cache.CachedBatch,
                                                          torch.Generator]:
        """This process's pairs at (step, micro-step), mirrored as drawn, and the generator
        that then draws their noise, timesteps and dropped captions."""
        c, acc = self.config, self.accelerator
        positions = batch_positions(c, step, micro, acc.process_index, self.processes)
        generator = step_generator(c.seed, step, micro, acc.process_index)
        indices = self.data.order.at(positions)
        flips = None
        if self.data.pair_flips is not None:
            flips = self.data.pair_flips[indices]
        elif c.random_flip:
            flips = draw_flips(generator, len(positions))
        batch = self.data.batch(indices, acc.device, flips)
        return batch, generator

    def train_step(self, step: int) -> dict[str, float]:
        """One optimizer step over `effective_batch` pairs; returns its metrics."""
        c, acc, nets = self.config, self.accelerator, self.nets
        totals: dict[str, torch.Tensor] = {}
        for micro in range(self.accumulation):
            batch, generator = self.micro_batch(step, micro)
            last = micro == self.accumulation - 1
            with nullcontext() if last else acc.no_sync(nets.ddp_denoiser):
                with acc.autocast():
                    loss, metrics = forward_pairs(nets.ddp_denoiser, self.reference,
                                                  self.process, self.model.kind, batch,
                                                  self.data.cache, generator, c)
                acc.backward(loss / self.accumulation)
            metrics[NONFINITE_LATENTS] = (~torch.isfinite(batch.latents).all()).float()
            for name, value in metrics.items():
                totals[name] = totals.get(name, 0) + value.float() / self.accumulation
        grad_norm = acc.clip_grad_norm_(nets.trainable, c.max_grad_norm)
        if hasattr(grad_norm, "full_tensor"):  # FSDP2: a DTensor over the shards
            grad_norm = grad_norm.full_tensor()
        finite = bool(torch.isfinite(torch.as_tensor(grad_norm)))
        if finite or acc.scaler is not None:  # fp16's scaler skips and backs off by itself
            nets.optimizer.step()
        if nets.average is not None:
            nets.average.step(nets.trainable)
        nets.lr_scheduler.step()
        nets.optimizer.zero_grad(set_to_none=True)
        names = sorted(totals)
        values = acc.reduce(torch.stack([totals[n] for n in names]), reduction="mean")
        metrics = {n: float(v) for n, v in zip(names, values.tolist(), strict=True)}
        metrics["grad_norm"] = float(grad_norm) if finite else float("nan")
        metrics["skipped"] = 0.0 if finite else 1.0
        metrics[NONFINITE_LATENTS] = float(metrics[NONFINITE_LATENTS] > 0)
        metrics["lr"] = nets.lr_scheduler.get_last_lr()[0]
        return metrics

    @torch.no_grad()
    def heldout_accuracy(self) -> float | None:
        """Implicit accuracy on held-out pairs, with fixed noise and timesteps, unmirrored."""
        heldout, c = self.data.heldout, self.config
        if not len(heldout) or c.objective == "sft":
            return None
        self.denoiser.eval()
        fixed = replace(c, prompt_dropout=0.0)
        correct = 0.0
        for start in range(0, len(heldout), c.batch_size):
            indices = heldout[start:start + c.batch_size].tolist()
            flips = None if self.data.pair_flips is None else self.data.pair_flips[indices]
            batch = self.data.batch(indices, self.accelerator.device, flips)
            with self.accelerator.autocast():
                _, metrics = forward_pairs(self.denoiser, self.reference, self.process,
                                           self.model.kind, batch, self.data.cache,
                                           step_generator(HELDOUT_SEED, start), fixed)
            correct += float(metrics["accuracy"]) * len(indices)
        self.denoiser.train()
        return correct / len(heldout)

    def evaluate(self, step: int) -> dict[str, float]:
        """Held-out accuracy, the sample grid and its score (main process only)."""
        result: dict[str, float] = {}
        accuracy = self.heldout_accuracy()
        if accuracy is not None:
            result["heldout_accuracy"] = accuracy
        if self.sample_prompts is not None:
            c = self.config
            self.denoiser.eval()
            images = samples.generate(self.model.pipeline, self.model.kind, self.sample_prompts,
                                      c.sample_seeds,
                                      c.sample_steps, c.sample_guidance, c.resolution,
                                      c.sample_seed_start)
            self.denoiser.train()
            title = f"step {step}"
            if self.scorer is not None:
                result["sample_score"] = samples.score(self.scorer, c.scorer, images,
                                                         c.sample_prompts)
                title += f"   {c.scorer} {result['sample_score']:.3f}"
            for name, guard in self.guards.items():
                result[f"guard_{name}"] = samples.score(guard, name, images, c.sample_prompts)
                title += f"   guard {name} {result[f'guard_{name}']:.3f}"
            if self.main:
                samples.save_grid(samples.grid(images, c.sample_prompts, title),
                                  self.out / "samples", step)
        return result

    def train(self) -> dict:
        c, acc = self.config, self.accelerator
        state = {"skipped_steps": 0, "nonfinite_latent_steps": 0, "best_score": None,
                 "best_step": None}
        start = self.begin(state, "dpo")
        window: dict[str, float] = {}
        logged = 0
        began, trained_steps = time.perf_counter(), 0
        bar = tqdm(range(start, c.max_steps), initial=start, total=c.max_steps,
                   desc=f"{c.objective} {self.out.name}", unit="step", disable=not self.main)
        try:  # the bar ends its line before an error or an interruption is said
            Phase.now = "training"
            for step in bar:
                metrics = self.train_step(step)
                trained_steps += 1
                bad_latents = metrics.pop(NONFINITE_LATENTS)
                state["skipped_steps"] += int(metrics["skipped"])
                state["nonfinite_latent_steps"] += int(metrics["skipped"] and bad_latents)
                for name, value in metrics.items():
                    if math.isfinite(value):
                        window[name] = window.get(name, 0.0) + value
                logged += 1
                done = step + 1
                if done % c.log_every == 0 or done == c.max_steps:
                    averaged = {n: v / logged for n, v in window.items()}
                    averaged["skipped_steps"] = state["skipped_steps"]
                    averaged["pairs_per_s"] = (trained_steps * c.effective_batch
                                               / (time.perf_counter() - began))
                    self._log(done, averaged)
                    bar.set_postfix(loss=f"{averaged.get('loss', float('nan')):.4f}",
                                    acc=f"{averaged.get('accuracy', float('nan')):.2f}")
                    window, logged = {}, 0
                self.evaluate_if_due(done, state)
                check_skipped(c, done, state, self.data.cache.directory)
                self.checkpoint_if_due(done, state)
                Phase.now = "training"
        finally:
            bar.close()
        seconds = time.perf_counter() - began
        acc.wait_for_everyone()
        summary = {"output": str(self.out / "final"), "steps": c.max_steps,
                   "trained_steps": trained_steps, "skipped_steps": state["skipped_steps"],
                   "pairs": len(self.data.cache), "heldout_pairs": len(self.data.heldout),
                   "seconds": round(seconds, 1),
                   "pairs_per_s": round(trained_steps * c.effective_batch / max(seconds, 1e-9),
                                        2),
                   "best_score": state["best_score"], "best_step": state["best_step"],
                   "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024}
        return self.finish(summary, state)

    def begin(self, state: dict, tracker: str) -> int:
        """Restore a resumed run's `state` (and its step, returned), write config.yaml, start
        the logs, and evaluate the starting model (a resumed run's eval.jsonl has it)."""
        c, acc = self.config, self.accelerator
        start = 0
        if self.resume is not None:
            state.update(checkpoints.load(acc, self.resume))
            start = state.pop("step")
            if acc.is_local_main_process:  # once a machine
                print(f"resumed from {self.resume} at step {start}")
        if self.main:
            save_config(c, self.out / CONFIG_FILE)
            begin_logs(self.out, start if self.resume is not None else None)
            acc.init_trackers(tracker)
        if self.resume is None and self.evaluates:
            self._log_eval(start, state)
        return start

    def evaluate_if_due(self, done: int, state: dict) -> None:
        """The grid and held-out checks of the averaged weights every eval_every steps and
        at the last; every process waits for them."""
        c = self.config
        if c.eval_every and (done % c.eval_every == 0 or done == c.max_steps):
            Phase.now = f"evaluating at step {done}"
            if self.evaluates:
                with self.averaged():
                    self._log_eval(done, state)
            self.accelerator.wait_for_everyone()

    def checkpoint_if_due(self, done: int, state: dict) -> None:
        c = self.config
        if c.checkpoint_every and done % c.checkpoint_every == 0:
            Phase.now = f"saving the checkpoint of step {done}"
            checkpoints.save(self.accelerator, self.out, done, state, c.checkpoints_kept,
                             checkpoints.run_kind(c), self.writes_checkpoints)

    def finish(self, summary: dict, state: dict) -> dict:
        """Write final/ (the average, with ema_decay), summary.json (with what the guards
        did) and scores.png; end the process group. `summary`: the loop's own figures."""
        c = self.config
        if torch.cuda.is_available():
            summary["peak_gpu_mb"] = torch.cuda.max_memory_allocated() // 2**20
        if c.guard_scorers:
            summary["guard_start"] = state.get("guard_start")
            summary["best_guards"] = state.get("best_guards")
            summary["held_back_steps"] = state.get("held_back_steps", [])
        with self.averaged():
            self.save_denoiser(self.out / "final")
        if self.main:
            (self.out / "summary.json").write_text(json.dumps(summary, indent=1))
            evals = self.out / "eval.jsonl"
            if evals.exists():
                samples.plot_scores([json.loads(line) for line in evals.open()],
                                    self.out / "scores.png", c.scorer)
        self.accelerator.end_training()
        if torch.distributed.is_initialized():  # gloo's threads alive at exit abort it
            torch.distributed.destroy_process_group()
        return summary

    def _log(self, step: int, values: dict[str, float]) -> None:
        if not self.main:
            return
        self.accelerator.log({f"train/{k}": v for k, v in values.items()}, step=step)
        with open(self.out / "metrics.jsonl", "a") as log:
            log.write(json.dumps({"step": step, **values}) + "\n")

    @contextmanager
    def averaged(self):
        """With ema_decay, the moving average in the trained weights' place (then the
        weights back); else nothing changes."""
        average, trainable = self.nets.average, self.nets.trainable
        if average is None:
            yield
            return
        average.store(trainable)
        average.copy_to(trainable)
        try:
            yield
        finally:
            average.restore(trainable)

    def save_denoiser(self, directory: Path) -> None:
        """Write the trained denoiser to `directory` from the main process; sharded, every
        process first gives its shard to the main one's full copy."""
        c, acc = self.config, self.accelerator
        if self.sharded:
            net = acc.get_state_dict(self.nets.ddp_denoiser)  # a collective
        else:
            net = acc.unwrap_model(self.nets.ddp_denoiser)
        if self.main:
            save_model(net, c.model, self.model.kind, bool(c.lora_rank), directory)

    def _log_eval(self, step: int, state: dict) -> None:
        result = self.evaluate(step)
        best = False
        if self.main and result:
            self.accelerator.log({f"eval/{k}": v for k, v in result.items()}, step=step)
            with open(self.out / "eval.jsonl", "a") as log:
                log.write(json.dumps({"step": step, **result}) + "\n")
            guards = {k: v for k, v in result.items() if k.startswith("guard_")}
            state.setdefault("guard_start", guards)  # the first evaluation's: the base's
            score = result.get("sample_score")
            better = bool(self.config.keep_best and score is not None and (
                state["best_score"] is None or score > state["best_score"]))
            best = better and within_guard(guards, state["guard_start"],
                                           self.config.guard_max_drop)
            if better and not best:  # what the guards held back, for the summary
                state.setdefault("held_back_steps", []).append(step)
            if best:
                state["best_score"], state["best_step"] = score, step
                state["best_guards"] = guards
        if self.sharded:  # the main process scored; every process saves
            from accelerate.utils import broadcast_object_list

            best = broadcast_object_list([best])[0]
        if best:
            self.save_denoiser(self.out / "best")
