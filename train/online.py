"""Online RL for flow-matching models: DiffusionNFT (docs/TRAINING.md, "Online RL").

One step: draw `groups_per_step` prompts (each process a whole share of them), sample
`group_size` rollouts of each with the current weights, score them with the rewards,
standardise each reward within its prompt's group, and take one optimizer step of
DiffusionNFT's loss (train/loss.py) on the rollouts' clean latents, each at `noise_levels`
noise levels, plus the KL to the reference. Then the old (sampling) policy follows the
trained one by `old_decay`. The prompts, seeds, noise and levels a step draws are
functions of (seed, step, rank) and the old policy is part of each checkpoint, so a
resumed run is the uninterrupted one. Every rollout goes to a store as pairs labelled by
the reward (data/shards.py takes several processes' pairs into one DuckDB file).

It is `Run` (train/trainer.py) with rollouts in place of cached pairs: the networks, the
reference, the moving average, the sample grid, keep_best with its guards, checkpoints
and the saved model are the same code.
"""

from __future__ import annotations

import hashlib
import math
import resource
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from cli.errors import DataError, TrainError
from data.pairs import decode_image, encode_jpeg
from data.prompts import read_prompts
from data.shards import Pair, clear_partial, shard_folder, take_in, write_shard
from data.store import ImageRecord, PoolPair, Store, Vote, pair_image_uid, stable_id
from models.loading import FLOW_KINDS, check, load
from models.scorers import Scorer, checked_scores, load_scorer
from models.toy import built_in_prompts
from train import cache as pair_cache
from train import samples
from train.config import TrainConfig
from train.errors import Phase
from train.loss import group_advantages, nft_loss, optimality
from train.processes import process_for
from train.trainer import (
    Run,
    adapters_disabled,
    build_networks,
    sample_prompts,
    step_generator,
)

OLD_DECAY_RAMP = 0.001  # the old policy's decay rises this much a step (DiffusionNFT)
ROLLOUT_SEED = 10_000_000  # rollout seeds start here: clear of the evaluations' seeds


def online_prompts(config: TrainConfig) -> list[str]:
    """The prompt set rollouts draw from."""
    if config.prompts:
        return read_prompts(config.prompts)
    built_in = built_in_prompts(config.model)
    if built_in is None:
        raise TrainError(f"{config.objective} samples its own images: give --prompts FILE "
                         "(one prompt a line, or a CSV with a 'prompt' column)")
    return [prompt.text for prompt in built_in]


def step_prompts(config: TrainConfig, count: int, step: int) -> list[int]:
    """The prompt indices of a step's groups, from (seed, step): a fresh permutation of the
    set, repeated when a step takes more groups than there are prompts."""
    rng = np.random.default_rng([config.seed, step])
    order = np.concatenate([rng.permutation(count)
                            for _ in range(-(-config.groups_per_step // count))])
    return order[:config.groups_per_step].tolist()


def rollout_seed(config: TrainConfig, step: int, slot: int) -> int:
    """The first seed of group `slot` at `step` (the group takes group_size seeds)."""
    digest = hashlib.blake2b(f"{config.seed}:{step}:{slot}".encode(), digest_size=4).digest()
    return ROLLOUT_SEED + (int.from_bytes(digest, "big") % 2**30) * config.group_size


@dataclass
class Rewards:
    """The weighted sum of several scorers: the reward a rollout gets."""

    names: list[str]
    scorers: list[Scorer]
    weights: list[float]

    @property
    def source(self) -> str:
        """The provenance of the rollouts' pairs, as AI feedback writes it."""
        return "ai:" + "+".join(self.names)

    def __call__(self, prompts: list[str], images: list[Image.Image]
                 ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        each = {name: torch.tensor(checked_scores(scorer, name, prompts, images))
                for name, scorer in zip(self.names, self.scorers, strict=True)}
        total = sum(w * each[name] for name, w in zip(self.names, self.weights, strict=True))
        return total.float(), each


@dataclass
class Rollouts:
    """One process's rollouts of a step: `len(prompts)` samples, group by group."""

    prompts: list[str]
    groups: torch.Tensor  # [N] the group (slot) of each sample
    seeds: list[int]
    latents: torch.Tensor  # [N, C, h, w] the clean samples as training reads them
    texts: pair_cache.Texts  # one row per sample
    rewards: torch.Tensor  # [N] the weighted reward
    optimality: torch.Tensor  # [N] DiffusionNFT's r in [0, 1]
    live: torch.Tensor  # [N] whether the sample's group carries a signal
    pairs: list[Pair]  # what goes to the store


class OldPolicy:
    """The weights rollouts are judged against (DiffusionNFT's "old" policy): after each
    step old = d old + (1 - d) new. Checkpointed with the run (accelerate calls
    `state_dict`)."""

    def __init__(self, trainable: list[torch.nn.Parameter]):
        self.weights = [p.detach().clone() for p in trainable]

    @torch.no_grad()
    def follow(self, trainable: list[torch.nn.Parameter], decay: float) -> None:
        for old, new in zip(self.weights, trainable, strict=True):
            old.mul_(decay).add_(new.detach(), alpha=1 - decay)

    @contextmanager
    def swapped_in(self, trainable: list[torch.nn.Parameter]):
        """The old weights in the trained ones' place (no copy), then back."""
        current = [p.data for p in trainable]
        for p, old in zip(trainable, self.weights, strict=True):
            p.data = old
        try:
            yield
        finally:
            for p, data in zip(trainable, current, strict=True):
                p.data = data

    def state_dict(self) -> dict:
        return {"weights": self.weights}

    def load_state_dict(self, state: dict) -> None:
        for old, saved in zip(self.weights, state["weights"], strict=True):
            old.copy_(saved)


def old_decay(config: TrainConfig, step: int) -> float:
    return min(OLD_DECAY_RAMP * step, config.old_decay)


def plan(config: TrainConfig, processes: int) -> str:
    """What `--dry_run` prints for an online run: each step's work, before any model loads."""
    c = config
    if c.groups_per_step % (processes * c.updates_per_step):
        raise TrainError(f"groups_per_step {c.groups_per_step} is not a multiple of "
                         f"{processes} processes x updates_per_step {c.updates_per_step}")
    guided = 2 if (c.sample_guidance if c.rollout_guidance is None
                   else c.rollout_guidance) != 1 else 1
    rollouts = c.groups_per_step * c.group_size
    sampling = rollouts * c.rollout_steps * guided
    training = rollouts * c.noise_levels * guided * 5  # old, reference, policy, backward x2
    trained = f"LoRA rank {c.lora_rank}" if c.lora_rank else "full"
    weights = c.reward_weights or [1.0] * len(c.rewards)
    reward = " + ".join(f"{w:g} {n}" for n, w in zip(c.rewards, weights, strict=True))
    store = c.rollout_db or Path(c.output_dir) / "rollouts.duckdb"
    return "\n".join([
        f"model:  {c.model}, {trained}, objective {c.objective} (nft_beta {c.nft_beta:g}, "
        f"kl_beta {c.kl_beta:g})",
        f"step:   {c.groups_per_step} prompts x {c.group_size} rollouts = {rollouts} "
        f"rollouts, {c.groups_per_step // processes} prompts on each of {processes} "
        f"process(es), {c.updates_per_step} optimizer step(s)",
        f"cost:   about {sampling:,} denoiser passes sampling + {training:,} training a "
        f"step, {c.max_steps} steps",
        f"reward: {reward}",
        f"output: {c.output_dir} (rollouts: {store})"])


class OnlineRun(Run):
    """An nft run. `OnlineRun(config)` sets up; `.train()` is the loop."""

    def __init__(self, config: TrainConfig):
        c = config
        kind = check(c.model)  # before anything is made: a wrong model is one line
        if kind not in FLOW_KINDS:
            raise TrainError(f"{c.objective} trains flow-matching models (sd3, flux, flux2, "
                             f"qwenimage, zimage); {c.model} is {kind}: use --objective dpo")
        self.prompts = online_prompts(c)
        self.start(config)
        acc = self.accelerator
        if self.sharded:
            raise TrainError(f"{c.objective} trains under DDP for now "
                             "(docs/accelerate/multi_gpu.yaml), not FSDP")
        if c.groups_per_step % (self.processes * c.updates_per_step):
            raise TrainError(f"groups_per_step {c.groups_per_step} is not a multiple of "
                             f"{self.processes} processes x updates_per_step "
                             f"{c.updates_per_step}: each update takes whole groups")
        self.say_threads()
        self.model = load(c.model, device=str(acc.device), dtype=torch.float32)
        self.process = process_for(self.model, c)
        self.text_options = ({"max_sequence_length": c.max_sequence_length}
                             if c.max_sequence_length else {})
        self.empty = pair_cache.encode_empty(self.model.pipeline, self.model.kind,
                                             self.text_options)
        self.sample_prompts = sample_prompts(c, self.model)
        self.nets = build_networks(c, self.model.denoiser, acc)
        self.old = OldPolicy(self.nets.trainable)
        acc.register_for_checkpointing(self.old)
        self.load_scorers()
        weights = c.reward_weights or [1.0] * len(c.rewards)
        self.rewards = Rewards(list(c.rewards), [load_scorer(name, device=str(acc.device))
                                                 for name in c.rewards], list(weights))
        self.db = (None if c.rollout_db == "none"
                   else Path(c.rollout_db or self.out / "rollouts.duckdb"))
        if self.db is not None:
            self.shards = shard_folder(self.db, "rollouts")
            if self.main:
                clear_partial(self.shards)

    def heldout_accuracy(self) -> None:
        return None  # no held-out pairs: the sample grid and its score measure the run

    # -- one step ----------------------------------------------------------------------
    @torch.no_grad()
    def rollout(self, step: int) -> Rollouts:
        """Sample, score and label this process's groups of `step`."""
        c, acc, kind = self.config, self.accelerator, self.model.kind
        slots = list(range(c.groups_per_step))[acc.process_index::self.processes]
        chosen = step_prompts(c, len(self.prompts), step)
        texts = pair_cache.encode_prompts(self.model.pipeline, kind,
                                          [self.prompts[chosen[s]] for s in slots],
                                          self.text_options)
        prompts, seeds, groups, images = [], [], [], []
        self.denoiser.eval()
        for row, slot in enumerate(slots):
            prompt = self.prompts[chosen[slot]]
            first = rollout_seed(c, step, slot)
            group = samples.generate(
                self.model.pipeline, kind,
                samples.SamplePrompts([prompt], _row(texts, row), self.empty),
                c.group_size, c.rollout_steps, self.guidance, c.resolution, first)[0]
            prompts += [prompt] * c.group_size
            seeds += range(first, first + c.group_size)
            groups += [slot] * c.group_size
            images += group
        self.denoiser.train()
        jpgs = [encode_jpeg(image) for image in images]
        stored = [decode_image(jpg) for jpg in jpgs]  # the reward describes what is stored
        rewards, _ = self.rewards(prompts, stored)
        group_index = torch.tensor(groups)
        advantages, live = group_advantages(rewards, group_index)
        rows = torch.arange(len(slots)).repeat_interleave(c.group_size)
        return Rollouts(
            prompts, group_index, seeds,
            pair_cache.image_latents(self.model.pipeline.vae, kind, images),
            pair_cache.Texts(texts.embeds[rows],
                             None if texts.pooled is None else texts.pooled[rows],
                             None if texts.lengths is None else texts.lengths[rows]),
            rewards, optimality(advantages, c.advantage_clip), live,
            self.store_pairs(step, prompts, seeds, groups, jpgs, rewards))

    def store_pairs(self, step: int, prompts: list[str], seeds: list[int], groups: list[int],
                    jpgs: list[bytes], rewards: torch.Tensor) -> list[Pair]:
        """Each group's rollouts two by two as pairs labelled by the reward (a tie where
        equal), and the same pairs unlabelled in the store's pool, which the annotate page
        shows people (`--pool true`); the images are recorded with the run's folder and
        step as their model."""
        c = self.config
        source = self.rewards.source
        user = stable_id(f"user:{source}")
        model = f"{c.output_dir} step {step}"
        pairs = []
        for i in [start + k for start in range(0, len(jpgs), c.group_size)
                  for k in range(0, c.group_size - 1, 2)]:  # within each group
            vote_id = f"rollout-{self.run_key}-{step:07d}-{groups[i]:05d}-{i % c.group_size:04d}"
            records = tuple(ImageRecord(
                pair_image_uid(vote_id, side), jpgs[i + side], prompts[i + side], model,
                seeds[i + side], self.guidance, c.rollout_steps, self.model.scheduler_name,
                c.resolution, c.resolution) for side in (0, 1))
            gap = float(rewards[i] - rewards[i + 1])
            outcome = "tie" if gap == 0 else "left" if gap > 0 else "right"
            pairs.append((Vote(vote_id, prompts[i], records[0].image_uid, records[1].image_uid,
                               outcome, 0, user, source=source), records))
            pairs.append((PoolPair(vote_id, f"rollouts-{self.run_key}", prompts[i],
                                   records[0].image_uid, records[1].image_uid), records))
        return pairs

    @property
    def run_key(self) -> str:
        """8 hex digits naming the run (its folder and seed) in its rollouts' pair ids."""
        text = f"{Path(self.config.output_dir).resolve()}:{self.config.seed}"
        return hashlib.blake2b(text.encode(), digest_size=4).hexdigest()

    @property
    def guidance(self) -> float:
        c = self.config
        return c.sample_guidance if c.rollout_guidance is None else c.rollout_guidance

    def inputs(self, texts: pair_cache.Texts) -> dict:
        """The denoiser's text inputs for rows `texts`."""
        device = self.accelerator.device
        values = {"encoder_hidden_states": texts.embeds.to(device)}
        if texts.pooled is not None:
            values["pooled_projections"] = texts.pooled.to(device)
        if texts.lengths is not None:
            values["text_lengths"] = texts.lengths.to(device)
        return values

    def velocity(self, net: torch.nn.Module, noisy: torch.Tensor, sigma: torch.Tensor,
                 texts: pair_cache.Texts) -> torch.Tensor:
        """The velocity the rollouts were sampled with: with guidance g above 1, the
        guided v(empty) + g (v(caption) - v(empty)) (the policy is the sampler itself,
        as Flow-GRPO trains it); at 1, the plain conditional one (DiffusionNFT's CFG-free
        form)."""
        g, n = self.guidance, len(noisy)
        if g == 1:
            return self.predict(net, noisy, sigma, self.inputs(texts))
        empty = self.empty
        both = pair_cache.concat([texts, pair_cache.Texts(
            empty.embeds.expand(n, -1, -1),
            None if empty.pooled is None else empty.pooled.expand(n, -1),
            None if empty.lengths is None else empty.lengths.expand(n))])
        out = self.predict(net, torch.cat([noisy, noisy]), torch.cat([sigma, sigma]),
                           self.inputs(both))
        caption, unconditional = out.chunk(2)
        return unconditional + g * (caption - unconditional)

    def reference_velocity(self, noisy, sigma, texts) -> torch.Tensor:
        """The frozen reference's velocity (LoRA: the adapters off)."""
        with torch.no_grad(), self.accelerator.autocast():
            if self.config.lora_rank:
                with adapters_disabled(self.denoiser):
                    return self.velocity(self.denoiser, noisy, sigma, texts)
            return self.velocity(self.nets.reference, noisy, sigma, texts)

    def update(self, step: int, rollouts: Rollouts) -> dict[str, float]:
        """One optimizer step of DiffusionNFT's loss on this process's rollouts."""
        c, acc, nets = self.config, self.accelerator, self.nets
        n = len(rollouts.prompts)
        items = torch.arange(n).repeat(c.noise_levels)  # each rollout at each level
        # Each group's noise and levels come from (seed, step, its slot), whichever
        # process trains it. Shared (the default), a group's rollouts are trained at the
        # same noise and levels, so they differ in their clean sample alone and the
        # noise's part of their gradients cancels in the advantage-weighted sum (a group's
        # advantages sum to 0): common random numbers, as DPO's pairs share their noise.
        per_group = c.noise_levels * (1 if c.shared_noise else c.group_size)
        sigma, noise = [], []
        for slot in rollouts.groups[::c.group_size].tolist():
            generator = step_generator(c.seed, step, slot)
            sigma.append(self.process.draw(per_group, generator).view(c.noise_levels, -1))
            noise.append(torch.randn((per_group, *rollouts.latents.shape[1:]),
                                     generator=generator).view(c.noise_levels, -1,
                                                               *rollouts.latents.shape[1:]))
        # [levels, groups, draws] -> item order (level-major, then sample)
        sigma = torch.stack(sigma, 1).repeat_interleave(
            c.group_size if c.shared_noise else 1, dim=2).reshape(-1)
        noise = torch.stack(noise, 1).repeat_interleave(
            c.group_size if c.shared_noise else 1, dim=2).reshape(-1, *noise[0].shape[2:])
        clean = rollouts.latents[items]
        noisy = self.process.noisy(clean, noise, sigma)
        device = acc.device

        def texts(part: torch.Tensor) -> pair_cache.Texts:
            index, t = items[part], rollouts.texts
            return pair_cache.Texts(t.embeds[index], None if t.pooled is None else
                                    t.pooled[index], None if t.lengths is None else
                                    t.lengths[index])

        everything = torch.arange(len(items))
        with torch.no_grad(), self.old.swapped_in(nets.trainable), acc.autocast():
            old = torch.cat([self.velocity(self.denoiser, noisy[b].to(device),
                                           sigma[b].to(device), texts(b))
                             for b in everything.split(c.batch_size)])
        # updates_per_step optimizer steps, each on whole groups (their noise shared)
        update_of = (items // c.group_size) // (n // c.group_size // c.updates_per_step)
        totals: dict[str, float] = {}
        norms = []
        for update in range(c.updates_per_step):
            members = everything[update_of == update]
            batches = members.split(c.batch_size)
            for k, part in enumerate(batches):
                index = items[part]
                x_t, s = noisy[part].to(device), sigma[part].to(device)
                last = k == len(batches) - 1
                with nullcontext() if last else acc.no_sync(nets.ddp_denoiser):
                    with acc.autocast():
                        velocity = self.velocity(nets.ddp_denoiser, x_t, s, texts(part))
                    reference = self.reference_velocity(x_t, s, texts(part))
                    terms = nft_loss(velocity, old[part], reference, x_t,
                                     clean[part].to(device), s, rollouts.optimality[index],
                                     c.nft_beta, c.advantage_clip)
                    live = rollouts.live[index].float().to(device)
                    loss = (terms.policy * live + c.kl_beta * terms.kl).sum() / len(members)
                    acc.backward(loss)
                for name, value in (("loss", loss.detach() * len(members)), ("policy", (
                        terms.policy.detach() * live).sum()), ("kl", terms.kl.detach().sum()),
                                    ("old_deviation", terms.old_deviation.sum())):
                    totals[name] = totals.get(name, 0.0) + float(value) / len(items)
            grad_norm = acc.clip_grad_norm_(nets.trainable, c.max_grad_norm)
            finite = bool(torch.isfinite(torch.as_tensor(grad_norm)))
            norms.append(float(grad_norm) if finite else float("nan"))
            if finite:
                nets.optimizer.step()
            if nets.average is not None:
                nets.average.step(nets.trainable)
            nets.lr_scheduler.step()
            nets.optimizer.zero_grad(set_to_none=True)
        self.old.follow(nets.trainable, old_decay(c, step))
        groups = len(rollouts.live) // c.group_size
        totals.update(reward=float(rollouts.rewards.mean()),
                      reward_std=float(rollouts.rewards.std()),
                      live_groups=float(rollouts.live.float().sum()) / c.group_size / groups)
        names = sorted(totals)
        values = acc.reduce(torch.tensor([totals[k] for k in names], device=device),
                            reduction="mean")
        metrics = dict(zip(names, values.tolist(), strict=True))
        metrics["grad_norm"] = sum(norms) / len(norms)
        metrics["skipped"] = float(sum(map(math.isnan, norms)))
        metrics["lr"] = nets.lr_scheduler.get_last_lr()[0]
        return metrics

    def keep_rollouts(self, step: int, rollouts: Rollouts) -> None:
        """This process's pairs to its shard file; the main process takes every shard into
        the store (a store another process holds is tried again next step)."""
        if self.db is None:
            return
        write_shard(self.shards, f"step-{step:07d}-rank-{self.accelerator.process_index:03d}",
                    rollouts.pairs)
        self.accelerator.wait_for_everyone()
        if self.main:
            self.take_in_rollouts()

    def take_in_rollouts(self) -> int:
        """The shards' pairs into the store; where it cannot be written now (another
        process holds it, a full disk), the shards wait for the next try, and the run goes
        on."""
        try:
            with Store(self.db) as store:
                store.user_id(self.rewards.source)
                return take_in(store, self.shards)
        except DataError as error:
            print(f"rollouts wait in {self.shards}: {error}")
            return 0

    # -- the loop ----------------------------------------------------------------------
    def train(self) -> dict:
        c, acc = self.config, self.accelerator
        state = {"skipped_steps": 0, "best_score": None, "best_step": None}
        start = self.begin(state, "nft")
        window: dict[str, float] = {}
        logged = trained = 0
        began = time.perf_counter()
        rollout_s = 0.0
        bar = tqdm(range(start, c.max_steps), initial=start, total=c.max_steps,
                   desc=f"{c.objective} {self.out.name}", unit="step", disable=not self.main)
        try:
            for step in bar:
                Phase.now = f"sampling the rollouts of step {step + 1}"
                clock = time.perf_counter()
                rollouts = self.rollout(step)
                rollout_s += time.perf_counter() - clock
                Phase.now = "training"
                metrics = self.update(step, rollouts)
                self.keep_rollouts(step, rollouts)
                trained += 1
                state["skipped_steps"] += int(metrics["skipped"])
                for name, value in metrics.items():
                    window[name] = window.get(name, 0.0) + value
                logged += 1
                done = step + 1
                if done % c.log_every == 0 or done == c.max_steps:
                    averaged = {n: v / logged for n, v in window.items()}
                    averaged["skipped_steps"] = state["skipped_steps"]
                    self._log(done, averaged)
                    bar.set_postfix(reward=f"{averaged['reward']:.3f}",
                                    kl=f"{averaged['kl']:.2g}")
                    window, logged = {}, 0
                self.evaluate_if_due(done, state)
                self.checkpoint_if_due(done, state)
        finally:
            bar.close()
        seconds = time.perf_counter() - began
        acc.wait_for_everyone()
        samples_per_step = c.groups_per_step * c.group_size
        summary = {"output": str(self.out / "final"), "steps": c.max_steps,
                   "trained_steps": trained, "skipped_steps": state["skipped_steps"],
                   "rollouts": trained * samples_per_step, "seconds": round(seconds, 1),
                   "rollout_seconds": round(rollout_s, 1),
                   "seconds_per_step": round(seconds / max(trained, 1), 2),
                   "best_score": state["best_score"], "best_step": state["best_step"],
                   "rollout_db": None if self.db is None else str(self.db),
                   "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024}
        return self.finish(summary, state)


def _row(texts: pair_cache.Texts, row: int) -> pair_cache.Texts:
    return pair_cache.Texts(texts.embeds[row:row + 1],
                            None if texts.pooled is None else texts.pooled[row:row + 1],
                            None if texts.lengths is None else texts.lengths[row:row + 1])

