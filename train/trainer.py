"""The training run, top to bottom: set up, cache, loop, save (DESIGN.md section 5).

One optimizer step consumes `effective_batch` pairs, split over processes and
accumulation micro-steps. Which pairs, which noise, which timesteps and which captions
are dropped are all functions of (seed, step, micro-step, rank): a resumed run sees
exactly what an uninterrupted one would, and nothing replays a data loader.
"""

from __future__ import annotations

import copy
import gc
import json
import math
import os
import time
from contextlib import contextmanager, nullcontext
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from models.loading import fingerprint, load
from train import cache as pair_cache
from train import checkpoints, samples
from train.config import TrainConfig, save
from train.errors import TrainError
from train.loss import DPOTerms, dpo_loss, per_sample_error, sft_loss
from train.output import save_model
from train.plan import training_pairs

HELDOUT_SEED = 1234  # the held-out check uses the same noise and timesteps every time


def mixed_precision(config: TrainConfig) -> str:
    if config.mixed_precision != "auto":
        return config.mixed_precision
    if not torch.cuda.is_available():
        return "no"
    return "bf16" if torch.cuda.is_bf16_supported() else "fp16"


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


@contextmanager
def adapters_disabled(unet):
    """The LoRA model's reference: the same UNet with its adapters off, always back on."""
    unet.disable_adapters()
    try:
        yield
    finally:
        unet.enable_adapters()


def unet_inputs(batch: pair_cache.CachedBatch, cache: pair_cache.PairCache,
                generator: torch.Generator, dropout: float, copies: int) -> dict:
    """Text conditioning for `copies` stacked copies of the batch, with prompt dropout."""
    drop = torch.rand(len(batch.text), generator=generator) < dropout
    text = batch.text.clone()
    text[drop.to(text.device)] = cache.empty_text.to(text.device)
    inputs = {"encoder_hidden_states": text.repeat(copies, 1, 1)}
    if batch.pooled is not None:
        pooled = batch.pooled.clone()
        pooled[drop.to(pooled.device)] = cache.empty_pooled.to(pooled.device)
        inputs["added_cond_kwargs"] = {"text_embeds": pooled.repeat(copies, 1),
                                       "time_ids": batch.time_ids.repeat(copies, 1)}
    return inputs


def forward_pairs(unet, reference, noise_scheduler, batch, cache, generator, config,
                  objective: str) -> tuple[torch.Tensor, dict]:
    """The loss of one micro-batch and its health metrics.

    Winner and loser share noise and timestep, and go through each network in one batched
    forward: [winners; losers]. SFT sees the winners only.
    """
    latents = batch.latents
    pairs = latents.shape[0]
    noise = torch.randn(latents[:, 0].shape, generator=generator).to(latents.device)
    timesteps = torch.randint(0, noise_scheduler.config.num_train_timesteps, (pairs,),
                              generator=generator).to(latents.device)
    copies = 1 if objective == "sft" else 2
    clean = latents[:, 0] if copies == 1 else torch.cat([latents[:, 0], latents[:, 1]])
    noise, timesteps = noise.repeat(copies, 1, 1, 1), timesteps.repeat(copies)
    noisy = noise_scheduler.add_noise(clean, noise, timesteps)
    target = (noise_scheduler.get_velocity(clean, noise, timesteps)
              if noise_scheduler.config.prediction_type == "v_prediction" else noise)
    inputs = unet_inputs(batch, cache, generator, config.prompt_dropout, copies)
    if objective == "sft":
        error = per_sample_error(unet(noisy, timesteps, **inputs).sample, target)
        loss = sft_loss(error)
        return loss, {"loss": loss.detach(), "model_mse_preferred": error.detach().mean()}
    with torch.no_grad():
        ref_error = per_sample_error(reference(noisy, timesteps, **inputs), target)
    error = per_sample_error(unet(noisy, timesteps, **inputs).sample, target)
    model_w, model_l = error.chunk(2)
    ref_w, ref_l = ref_error.chunk(2)
    terms: DPOTerms = dpo_loss(model_w, model_l, ref_w, ref_l, config.beta)
    return terms.loss, {
        "loss": terms.loss.detach(), "accuracy": terms.accuracy,
        "reward_preferred": terms.reward_preferred, "reward_rejected": terms.reward_rejected,
        "margin": terms.margin, "model_mse_preferred": model_w.detach().mean(),
        "model_mse_rejected": model_l.detach().mean(), "ref_mse_preferred": ref_w.mean(),
        "ref_mse_rejected": ref_l.mean(),
    }


def cpu_threads_hint(device: str, processes: int) -> str | None:
    """A line when a CPU run uses fewer threads than the machine has: `accelerate launch`
    sets OMP_NUM_THREADS=1 on a machine without GPUs unless told otherwise."""
    cores = (os.cpu_count() or 1) // processes
    threads = torch.get_num_threads()
    if device != "cpu" or threads >= cores:
        return None
    return (f"training on {threads} CPU thread{'s' if threads > 1 else ''} of {cores}: "
            f"for more, accelerate launch --num_cpu_threads_per_process {cores} -m train ...")


class Run:
    """One training run. `Run(config).train()` does everything; the parts are methods."""

    def __init__(self, config: TrainConfig):
        from accelerate import Accelerator

        self.config = config
        self.out = Path(config.output_dir)
        self.accelerator = Accelerator(
            mixed_precision=mixed_precision(config), log_with="tensorboard",
            project_dir=str(self.out / "logs"),
        )
        self.lora = config.lora_rank > 0
        self.weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(
            self.accelerator.mixed_precision, torch.float32)
        self.processes = self.accelerator.num_processes
        self.accumulation = config.accumulation(self.processes)
        self.main = self.accelerator.is_main_process

    # --- set-up --------------------------------------------------------------------------
    def check_output_dir(self) -> Path | None:
        """The checkpoint to resume from; refuse to silently train over an earlier run."""
        resume = (checkpoints.find(self.out, self.config.resume)
                  if self.config.resume else None)
        if resume is None and checkpoints.completed(self.out):
            raise TrainError(
                f"{self.out} already holds checkpoints: pass --resume latest to continue, "
                "or --output_dir NEW for a fresh run"
            )
        if self.config.resume and resume is None and self.main:
            print(f"no checkpoint in {self.out}: starting from step 0")
        return resume

    def load_model(self) -> None:
        self.model = load(self.config.model, device=str(self.accelerator.device),
                          dtype=torch.float32)
        self.pipeline = self.model.pipeline
        self.unet = self.pipeline.unet
        from diffusers import DDPMScheduler

        self.noise_scheduler = DDPMScheduler.from_config(self.pipeline.scheduler.config)

    def load_pairs(self):
        return training_pairs(self.config)

    def load_cache(self, pairs) -> None:
        """Cache latents and embeddings (main process first), then free the encoders."""
        c = self.config
        prep = pair_cache.Preprocessing(c.resolution, c.random_crop, c.random_flip, c.seed)
        key = pair_cache.cache_key(
            fingerprint(c.model, pair_cache.ENCODER_PARTS),
            pair_cache.data_fingerprint(pairs), prep)
        directory = Path(c.cache_dir) / key
        with self.accelerator.main_process_first():
            if (directory / "meta.json").exists():
                self.cache = pair_cache.PairCache(directory)
                reused = True
            else:
                self.cache = pair_cache.build(pairs, self.pipeline, self.model.kind, prep,
                                              directory, workers=c.cache_workers)
                reused = False
        if self.main:
            print(f"{len(pairs)} pairs, cache {directory} ({'reused' if reused else 'built'})")
        self.cache_reused = reused
        order = np.random.default_rng([c.seed, 7]).permutation(len(self.cache))
        self.heldout = np.sort(order[:c.holdout_pairs])
        self.order = PairOrder(np.sort(order[c.holdout_pairs:]), c.seed)
        self.sample_prompts = self._encode_sample_prompts()
        self.pipeline.text_encoder = None
        if self.model.kind == "sdxl":
            self.pipeline.text_encoder_2 = None
        if not self.sample_prompts:
            self.pipeline.vae = None
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def _encode_sample_prompts(self) -> samples.SamplePrompts | None:
        c = self.config
        if not (c.eval_every and c.sample_prompts):
            return None
        embeds, pooled = pair_cache.encode_prompts(self.pipeline, self.model.kind,
                                                   c.sample_prompts)
        negative, negative_pooled = pair_cache.encode_empty(self.pipeline, self.model.kind)
        return samples.SamplePrompts(c.sample_prompts, embeds, negative, pooled,
                                     negative_pooled)

    def build_networks(self) -> None:
        """The trained UNet (full or LoRA), its reference, the optimizer and LR schedule."""
        c = self.config
        unet = self.unet
        if c.gradient_checkpointing:
            unet.enable_gradient_checkpointing()
        if self.lora:
            from peft import LoraConfig

            unet.requires_grad_(False)
            if self.weight_dtype != torch.float32:
                unet.to(dtype=self.weight_dtype)
            unet.add_adapter(LoraConfig(
                r=c.lora_rank, lora_alpha=c.lora_alpha or c.lora_rank,
                init_lora_weights="gaussian", target_modules=c.lora_targets))
            for parameter in unet.parameters():
                if parameter.requires_grad:
                    parameter.data = parameter.data.float()
            self.reference_unet = None
        else:
            self.reference_unet = None
            if c.objective == "dpo":
                self.reference_unet = copy.deepcopy(unet).requires_grad_(False).eval()
                if self.weight_dtype != torch.float32:
                    self.reference_unet.to(dtype=self.weight_dtype)
            unet.requires_grad_(True)
        unet.train()
        self.trainable = [p for p in unet.parameters() if p.requires_grad]
        if c.optimizer == "adafactor":
            from transformers.optimization import Adafactor

            optimizer = Adafactor(self.trainable, lr=c.learning_rate, scale_parameter=False,
                                  relative_step=False, warmup_init=False,
                                  weight_decay=c.weight_decay)
        else:
            optimizer = torch.optim.AdamW(
                self.trainable, lr=c.learning_rate, betas=(c.adam_beta1, c.adam_beta2),
                weight_decay=c.weight_decay, eps=c.adam_epsilon)
        from diffusers.optimization import get_scheduler

        self.lr_scheduler = get_scheduler(c.lr_scheduler, optimizer,
                                          num_warmup_steps=c.warmup_steps,
                                          num_training_steps=c.max_steps)
        self.ddp_unet, self.optimizer = self.accelerator.prepare(unet, optimizer)
        self.accelerator.register_for_checkpointing(self.lr_scheduler)

    def reference(self, noisy, timesteps, **inputs) -> torch.Tensor:
        """The frozen reference's prediction (for LoRA: adapters off)."""
        with self.accelerator.autocast():
            if self.lora:
                with adapters_disabled(self.unet):
                    return self.unet(noisy, timesteps, **inputs).sample
            return self.reference_unet(noisy, timesteps, **inputs).sample

    # --- the loop ------------------------------------------------------------------------
    def train_step(self, step: int) -> dict[str, float]:
        """One optimizer step over `effective_batch` pairs; returns its metrics."""
        c, acc = self.config, self.accelerator
        rank = acc.process_index
        totals: dict[str, torch.Tensor] = {}
        for micro in range(self.accumulation):
            positions = batch_positions(c, step, micro, rank, self.processes)
            batch = self.cache.batch(self.order.at(positions), acc.device)
            generator = step_generator(c.seed, step, micro, rank)
            last = micro == self.accumulation - 1
            with nullcontext() if last else acc.no_sync(self.ddp_unet):
                with acc.autocast():
                    loss, metrics = forward_pairs(self.ddp_unet, self.reference,
                                                  self.noise_scheduler, batch, self.cache,
                                                  generator, c, c.objective)
                acc.backward(loss / self.accumulation)
            for name, value in metrics.items():
                totals[name] = totals.get(name, 0) + value.float() / self.accumulation
        grad_norm = acc.clip_grad_norm_(self.trainable, c.max_grad_norm)
        finite = bool(torch.isfinite(torch.as_tensor(grad_norm)))
        if finite or acc.scaler is not None:  # fp16's scaler skips and backs off by itself
            self.optimizer.step()
        self.lr_scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        names = sorted(totals)
        values = acc.reduce(torch.stack([totals[n] for n in names]), reduction="mean")
        metrics = {n: float(v) for n, v in zip(names, values.tolist(), strict=True)}
        metrics["grad_norm"] = float(grad_norm) if finite else float("nan")
        metrics["skipped"] = 0.0 if finite else 1.0
        metrics["lr"] = self.lr_scheduler.get_last_lr()[0]
        return metrics

    @torch.no_grad()
    def heldout_accuracy(self) -> float | None:
        """Implicit accuracy on held-out pairs, with fixed noise and timesteps."""
        if not len(self.heldout) or self.config.objective != "dpo":
            return None
        self.unet.eval()
        correct = 0.0
        for start in range(0, len(self.heldout), self.config.batch_size):
            indices = self.heldout[start:start + self.config.batch_size].tolist()
            batch = self.cache.batch(indices, self.accelerator.device)
            generator = step_generator(HELDOUT_SEED, start)
            with self.accelerator.autocast():
                _, metrics = forward_pairs(self.unet, self.reference, self.noise_scheduler,
                                           batch, self.cache, generator,
                                           _no_dropout(self.config), "dpo")
            correct += float(metrics["accuracy"]) * len(indices)
        self.unet.train()
        return correct / len(self.heldout)

    def evaluate(self, step: int) -> dict[str, float]:
        """Held-out accuracy, the sample grid and its score (main process only)."""
        result: dict[str, float] = {}
        accuracy = self.heldout_accuracy()
        if accuracy is not None:
            result["heldout_accuracy"] = accuracy
        if self.sample_prompts is not None:
            c = self.config
            self.unet.eval()
            images = samples.generate(self.pipeline, self.sample_prompts, c.sample_seeds,
                                      c.sample_steps, c.sample_guidance, c.resolution,
                                      c.sample_seed_start)
            self.unet.train()
            title = f"step {step}"
            if self.scorer is not None:
                result["sample_score"] = samples.score(self.scorer, c.scorer, images,
                                                         c.sample_prompts)
                title += f"   {c.scorer} {result['sample_score']:.3f}"
            samples.save_grid(samples.grid(images, c.sample_prompts, title),
                              self.out / "samples", step)
        return result

    def train(self) -> dict:
        c, acc = self.config, self.accelerator
        resume = self.check_output_dir()
        if self.main:
            self.out.mkdir(parents=True, exist_ok=True)
            save(c, self.out / "config.yaml")
            if (hint := cpu_threads_hint(acc.device.type, self.processes)):
                print(hint)
        pairs = self.load_pairs()
        self.load_model()
        self.load_cache(pairs)
        self.build_networks()
        from models.scorers import load_scorer

        self.scorer = (load_scorer(c.scorer, device=str(acc.device))
                       if c.scorer and self.main else None)
        state = {"skipped_steps": 0, "best_score": None, "best_step": None}
        start = 0
        if resume is not None:
            state.update(checkpoints.load(acc, resume))
            start = state.pop("step")
            if self.main:
                print(f"resumed from {resume} at step {start}")
        if self.main:
            acc.init_trackers("dpo")
            self._log_eval(start, state)
        window: dict[str, float] = {}
        logged = 0
        began, trained_steps = time.perf_counter(), 0
        bar = tqdm(range(start, c.max_steps), initial=start, total=c.max_steps,
                   desc=f"{c.objective} {self.out.name}", unit="step", disable=not self.main)
        for step in bar:
            metrics = self.train_step(step)
            trained_steps += 1
            state["skipped_steps"] += int(metrics["skipped"])
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
            if c.eval_every and (done % c.eval_every == 0 or done == c.max_steps):
                if self.main:
                    self._log_eval(done, state)
                acc.wait_for_everyone()
            if c.checkpoint_every and done % c.checkpoint_every == 0:
                checkpoints.save(acc, self.out, done, state, c.checkpoints_kept)
        seconds = time.perf_counter() - began
        acc.wait_for_everyone()
        summary = {"output": str(self.out / "final"), "steps": c.max_steps,
                   "trained_steps": trained_steps, "skipped_steps": state["skipped_steps"],
                   "pairs": len(self.cache), "heldout_pairs": len(self.heldout),
                   "seconds": round(seconds, 1),
                   "pairs_per_s": round(trained_steps * c.effective_batch / max(seconds, 1e-9),
                                        2),
                   "best_score": state["best_score"], "best_step": state["best_step"]}
        if self.main:
            save_model(acc.unwrap_model(self.ddp_unet), c.model, self.model.kind, self.lora,
                       self.out / "final")
            (self.out / "summary.json").write_text(json.dumps(summary, indent=1))
        acc.end_training()
        return summary

    def _log(self, step: int, values: dict[str, float]) -> None:
        if not self.main:
            return
        self.accelerator.log({f"train/{k}": v for k, v in values.items()}, step=step)
        with open(self.out / "metrics.jsonl", "a") as log:
            log.write(json.dumps({"step": step, **values}) + "\n")

    def _log_eval(self, step: int, state: dict) -> None:
        result = self.evaluate(step)
        if not result:
            return
        self.accelerator.log({f"eval/{k}": v for k, v in result.items()}, step=step)
        with open(self.out / "eval.jsonl", "a") as log:
            log.write(json.dumps({"step": step, **result}) + "\n")
        score = result.get("sample_score")
        if self.config.keep_best and score is not None and (
                state["best_score"] is None or score > state["best_score"]):
            state["best_score"], state["best_step"] = score, step
            save_model(self.unet, self.config.model, self.model.kind, self.lora,
                       self.out / "best")


def _no_dropout(config: TrainConfig) -> TrainConfig:
    return TrainConfig(**{**asdict(config), "prompt_dropout": 0.0})
