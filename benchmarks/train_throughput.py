"""Training pairs per second on the toy model: the trainer against its floor, cached
against uncached, full against LoRA; and what each holds in memory.

    python benchmarks/train_throughput.py                # toy model, batch 16 pairs
    python benchmarks/train_throughput.py --rounds 8 --steps 10

Modes, interleaved round by round in one process so the ratios are fair on a noisy
machine (each figure is the median over rounds):
- `trainer_full`: `Run.train_step` of the toy preset (full UNet, frozen reference copy):
  cache lookup, noise, both forwards, backward, clipping, optimizer, LR schedule, metrics.
- `floor_full`: a bare step of the same networks on one batch already in memory: reference
  forward, policy forward and backward, optimizer step. Nothing a trainer can skip.
- `uncached_full`: the trainer's step plus what the official code runs every step: the VAE
  encoding both images and the text encoder encoding the captions (pixels already decoded).
- `trainer_lora` / `floor_lora`: the same with LoRA adapters (rank 8) and the reference
  taken from the same UNet with its adapters off.
- `mapo_full` / `mapo_lora`: the trainer's step under `objective: mapo`, which has no
  reference (no frozen copy, no reference forward), against `trainer_full` / `_lora`.
Memory: trained and frozen UNet parameters held by each run (LoRA must hold one UNet),
and the peak RSS of a fresh process that trains 10 steps each way (full, LoRA, MaPO full).
Pairs are drawn shapes (winner: the caption's shape; loser: another), so nothing is
generated. Prints JSON.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from data.pairs import encode_jpeg  # noqa: E402
from data.store import ImageRecord, Store, Vote, new_uid  # noqa: E402
from models.toy import TOY_NAME  # noqa: E402
from models.toy.shapes import SHAPES, draw, random_spec  # noqa: E402
from train.config import resolve  # noqa: E402
from train.loss import dpo_loss, per_sample_error  # noqa: E402
from train.trainer import Run  # noqa: E402


def drawn_pairs(path: Path, n: int) -> None:
    """n pairs: the caption's shape preferred over the same colour in another shape."""
    rng = random.Random(0)
    with Store(path) as store:
        user = store.user_id("bench")
        for _ in range(n):
            good = random_spec(rng)
            other = random_spec(rng, color=good.color,
                                shape=rng.choice([s for s in SHAPES if s != good.shape]))
            images = [ImageRecord(new_uid(), encode_jpeg(draw(spec)), good.caption, "drawn")
                      for spec in (good, other)]
            store.record_vote(Vote(new_uid(), good.caption, images[0].image_uid,
                                   images[1].image_uid, "left", 0, user), images)


def make_run(data: Path, out: Path, lora_rank: int, batch: int, objective: str = "dpo") -> Run:
    config = resolve("toy", {
        "data": [str(data)], "output_dir": str(out), "cache_dir": str(out.parent / "cache"),
        "lora_rank": lora_rank, "eval_every": 0, "holdout_pairs": 0, "batch_size": batch,
        "effective_batch": batch, "checkpoint_every": 0, "objective": objective,
    })
    with contextlib.redirect_stdout(sys.stderr):  # the trainer's progress lines; JSON is ours
        return Run(config)


def floor_step(run: Run, batch) -> None:
    """Reference forward, policy forward and backward, optimizer step: nothing else."""
    noisy, timesteps, text, noise = batch
    with torch.no_grad():
        ref = per_sample_error(run.reference(noisy, timesteps, {"encoder_hidden_states": text}),
                               noise)
    error = per_sample_error(run.denoiser(noisy, timesteps, encoder_hidden_states=text).sample,
                             noise)
    model_w, model_l = error.chunk(2)
    ref_w, ref_l = ref.chunk(2)
    dpo_loss(model_w, model_l, ref_w, ref_l, run.config.beta).loss.backward()
    run.nets.optimizer.step()
    run.nets.optimizer.zero_grad(set_to_none=True)


def fixed_batch(run: Run):
    cached = run.data.cache.batch(list(range(run.config.batch_size)), "cpu")
    latents = torch.cat([cached.latents[:, 0], cached.latents[:, 1]])
    noise = torch.randn_like(latents[: len(latents) // 2]).repeat(2, 1, 1, 1)
    timesteps = torch.randint(0, 1000, (len(latents) // 2,)).repeat(2)
    noisy = run.process.noisy(latents, noise, timesteps)
    return noisy, timesteps, cached.text.repeat(2, 1, 1), noise


def encode_step(vae, pipeline_for_text, pixels, captions) -> None:
    """What an uncached trainer adds per step: both images through the VAE, the captions
    through the text encoder."""
    from train.cache import encode_prompts

    with torch.no_grad():
        vae.encode(pixels).latent_dist.sample()
        encode_prompts(pipeline_for_text, "sd", captions)


def timed(function, steps: int) -> float:
    start = time.perf_counter()
    for _ in range(steps):
        function()
    return time.perf_counter() - start


def parameters(module) -> int:
    return sum(p.numel() for p in module.parameters()) if module is not None else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=256)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=10, help="steps per mode per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--peak", choices=["full", "lora", "mapo"], help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.manual_seed(0)
    work = Path(tempfile.mkdtemp(prefix="train-bench-"))
    if args.peak:  # a child process: train --steps steps one way, report the peak RSS
        run = make_run(Path(args.data), work / args.peak, 8 if args.peak == "lora" else 0,
                       args.batch, "mapo" if args.peak == "mapo" else "dpo")
        for step in range(args.steps):
            run.train_step(step)
        print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024)
        return
    drawn_pairs(work / "pairs.duckdb", args.pairs)
    peak_mb = {
        mode: int(subprocess.run(
            [sys.executable, __file__, "--peak", mode, "--data", str(work / "pairs.duckdb"),
             "--batch", str(args.batch), "--steps", str(args.steps)],
            capture_output=True, text=True, check=True,
        ).stdout.split()[-1])
        for mode in ("full", "lora", "mapo")
    }
    full = make_run(work / "pairs.duckdb", work / "full", 0, args.batch)
    lora = make_run(work / "pairs.duckdb", work / "lora", 8, args.batch)
    mapo_full = make_run(work / "pairs.duckdb", work / "mapo-full", 0, args.batch, "mapo")
    mapo_lora = make_run(work / "pairs.duckdb", work / "mapo-lora", 8, args.batch, "mapo")

    from models.loading import load

    encoders = load(TOY_NAME, device="cpu", dtype=torch.float32).pipeline
    pixels = torch.rand(2 * args.batch, 3, 32, 32) * 2 - 1
    captions = ["a red circle"] * args.batch
    batches = {"full": fixed_batch(full), "lora": fixed_batch(lora)}
    modes = {
        "trainer_full": lambda s=[0]: (full.train_step(s[0]), s.__setitem__(0, s[0] + 1)),
        "floor_full": lambda: floor_step(full, batches["full"]),
        "uncached_full": lambda s=[10_000]: (encode_step(encoders.vae, encoders, pixels,
                                                         captions),
                                             full.train_step(s[0]),
                                             s.__setitem__(0, s[0] + 1)),
        "trainer_lora": lambda s=[0]: (lora.train_step(s[0]), s.__setitem__(0, s[0] + 1)),
        "floor_lora": lambda: floor_step(lora, batches["lora"]),
        "mapo_full": lambda s=[0]: (mapo_full.train_step(s[0]), s.__setitem__(0, s[0] + 1)),
        "mapo_lora": lambda s=[0]: (mapo_lora.train_step(s[0]), s.__setitem__(0, s[0] + 1)),
    }
    for function in modes.values():  # warm-up
        timed(function, 2)
    seconds: dict[str, list[float]] = {m: [] for m in modes}
    for _ in range(args.rounds):
        for mode, function in modes.items():
            seconds[mode].append(timed(function, args.steps) / args.steps)
    pairs_per_s = {m: args.batch / statistics.median(s) for m, s in seconds.items()}
    result = {
        "machine": f"{platform.processor() or platform.machine()}, "
                   f"{torch.get_num_threads()} torch threads",
        "batch_pairs": args.batch, "steps_per_round": args.steps, "rounds": args.rounds,
        "pairs_per_s": {m: round(v, 1) for m, v in pairs_per_s.items()},
        "trainer_over_floor": {
            "full": round(pairs_per_s["trainer_full"] / pairs_per_s["floor_full"], 3),
            "lora": round(pairs_per_s["trainer_lora"] / pairs_per_s["floor_lora"], 3),
        },
        "cached_over_uncached": round(pairs_per_s["trainer_full"]
                                      / pairs_per_s["uncached_full"], 3),
        "mapo_over_dpo": {
            "full": round(pairs_per_s["mapo_full"] / pairs_per_s["trainer_full"], 3),
            "lora": round(pairs_per_s["mapo_lora"] / pairs_per_s["trainer_lora"], 3),
            "peak_rss_full": round(peak_mb["mapo"] / peak_mb["full"], 3),
        },
        "unet_parameters_held": {
            "full": parameters(full.denoiser) + parameters(full.nets.reference),
            "lora": parameters(lora.denoiser) + parameters(lora.nets.reference),
            "mapo_full": parameters(mapo_full.denoiser)
            + parameters(mapo_full.nets.reference),
            "one_unet": parameters(encoders.unet),
        },
        "peak_rss_mb": peak_mb,
        "trainable_parameters": {"full": sum(p.numel() for p in full.nets.trainable),
                                 "lora": sum(p.numel() for p in lora.nets.trainable)},
    }
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
