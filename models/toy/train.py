"""Train the toy text-to-image pipeline from scratch on a CPU.

    python -m models.toy.train --out models/toy/pipeline

Deterministic from `--seed`: the same command gives the same weights on the same
machine. Steps, in order: a word-level CLIP tokenizer and a frozen random CLIP text
encoder; synthetic captioned shapes (models/toy/shapes.py); an AutoencoderKL
(32x32 RGB -> 8x8x4 latents); a UNet2DConditionModel (epsilon prediction, 10% empty
captions for classifier-free guidance) on cached latents. The result is a standard
Stable Diffusion pipeline directory that plain `DiffusionPipeline.from_pretrained` runs
(see `save_pipeline` for the dtypes it stores).
"""

from __future__ import annotations

import json
import resource
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from cli.entry import run_main
from cli.parser import parse, setting
from models.toy.shapes import IMAGE_SIZE, WORDS, all_captions, sample_batch

DEFAULT_OUT = Path(__file__).resolve().parent / "pipeline"
MAX_TOKENS = 8  # "a yellow triangle" is 5 tokens with its start and end


def build_text_side(directory: Path, seed: int):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from models.tokenizer import write_clip_tokenizer

    tokenizer = CLIPTokenizer.from_pretrained(
        write_clip_tokenizer(directory / "tokenizer", WORDS, MAX_TOKENS)
    )
    torch.manual_seed(seed)
    config = CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128,
        num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=MAX_TOKENS,
        bos_token_id=0, eos_token_id=1, pad_token_id=1,
    )
    return tokenizer, CLIPTextModel(config).eval().requires_grad_(False)


@torch.no_grad()
def embed(tokenizer, text_encoder, captions: list[str]) -> torch.Tensor:
    ids = tokenizer(
        captions, padding="max_length", max_length=MAX_TOKENS, truncation=True,
        return_tensors="pt",
    ).input_ids
    return text_encoder(ids)[0]


def build_vae(seed: int):
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(
        in_channels=3, out_channels=3, block_out_channels=(32, 64, 64),
        down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
        layers_per_block=1, latent_channels=4, norm_num_groups=16, sample_size=IMAGE_SIZE,
    )


def build_unet(seed: int):
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    return UNet2DConditionModel(
        sample_size=IMAGE_SIZE // 4, in_channels=4, out_channels=4,
        block_out_channels=(64, 128), layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=64, attention_head_dim=8, norm_num_groups=32,
    )


def train_vae(vae, images: torch.Tensor, steps: int, batch: int, seed: int) -> float:
    """Reconstruction plus a light KL; returns the final PSNR in dB on a held-out batch."""
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(vae.parameters(), lr=1e-3, weight_decay=0.0)
    vae.train()
    bar = tqdm(range(steps), desc="vae", unit="step")
    for _ in bar:
        x = images[torch.randint(0, len(images) - 256, (batch,), generator=generator)]
        posterior = vae.encode(x).latent_dist
        recon = vae.decode(posterior.sample(generator)).sample
        loss = F.mse_loss(recon, x) + 1e-6 * posterior.kl().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        bar.set_postfix(loss=f"{loss.item():.4f}")
    vae.eval()
    with torch.no_grad():
        held_out = images[-256:]
        recon = vae.decode(vae.encode(held_out).latent_dist.mode()).sample.clamp(-1, 1)
        mse = F.mse_loss((recon + 1) / 2, (held_out + 1) / 2).item()
    return 10 * float(np.log10(1.0 / mse))


@torch.no_grad()
def encode_latents(vae, images: torch.Tensor) -> torch.Tensor:
    return torch.cat([vae.encode(chunk).latent_dist.mode() for chunk in images.split(512)])


def train_unet(unet, latents, text, caption_ids, steps, batch, seed, snapshot_every, out):
    from diffusers import DDPMScheduler

    noise_scheduler = DDPMScheduler(
        num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
        beta_schedule="scaled_linear",
    )
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(unet.parameters(), lr=3e-4, weight_decay=1e-2)
    warmup = 100
    empty = len(text) - 1  # the last embedding is the empty caption
    unet.train()
    bar = tqdm(range(1, steps + 1), desc="unet", unit="step")
    for step in bar:
        for group in optimizer.param_groups:
            group["lr"] = 3e-4 * min(1.0, step / warmup)
        index = torch.randint(0, len(latents), (batch,), generator=generator)
        x0 = latents[index]
        ids = caption_ids[index].clone()
        ids[torch.rand(batch, generator=generator) < 0.1] = empty
        noise = torch.randn(x0.shape, generator=generator)
        t = torch.randint(0, 1000, (batch,), generator=generator)
        pred = unet(noise_scheduler.add_noise(x0, noise, t), t, text[ids]).sample
        loss = F.mse_loss(pred, noise)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        optimizer.step()
        bar.set_postfix(loss=f"{loss.item():.4f}")
        if snapshot_every and step % snapshot_every == 0 and step < steps:
            unet.save_pretrained(out / "snapshots" / f"unet-{step}")
    unet.eval()
    return noise_scheduler


def save_pipeline(pipe, out: Path) -> None:
    """Save the UNet and VAE in fp16, to stay small, and the text encoder in fp32.

    diffusers loads fp16 UNet and VAE weights as fp32 by default, but transformers keeps
    the saved dtype, so an fp16 text encoder beside them fails a plain
    `DiffusionPipeline.from_pretrained(out)` at its first call (Half against Float).
    The text encoder's weights are rounded to fp16 first, as every part's are: the
    shipped model is its fp16 values, and fp32 storage (0.2 MB more) holds them exactly.
    """
    pipe.unet.to(torch.float16)
    pipe.vae.to(torch.float16)
    pipe.text_encoder.to(torch.float16).to(torch.float32)
    pipe.save_pretrained(out, safe_serialization=True)


@dataclass(frozen=True)
class ToyImages:
    """What both toy models train on: drawn toy-world images."""

    seed: int = setting("seed of every draw", 0)
    images: int = setting("training images", 20000)


@dataclass(frozen=True)
class ToyTrainConfig(ToyImages):
    """Train the toy pipeline (VAE, then UNet) from scratch on the toy world's images."""

    out: Path = setting("pipeline folder", DEFAULT_OUT)
    vae_steps: int = setting("VAE training steps", 500)
    vae_batch: int = setting("VAE batch", 32)
    unet_steps: int = setting("UNet training steps", 1000)
    unet_batch: int = setting("UNet batch", 128)
    snapshot_every: int = setting("also save the UNet every N steps under OUT/snapshots (to "
                                  "choose --unet-steps)", 0)


def train_toy(config: ToyTrainConfig) -> int:

    from diffusers import DDIMScheduler, StableDiffusionPipeline

    torch.use_deterministic_algorithms(True)
    started = time.time()
    config.out.mkdir(parents=True, exist_ok=True)
    work = config.out / "_build"
    tokenizer, text_encoder = build_text_side(work, config.seed)
    captions = all_captions()
    text = embed(tokenizer, text_encoder, [*captions, ""])

    pixels, image_captions = sample_batch(config.images, seed=config.seed)
    images = torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 127.5 - 1
    caption_ids = torch.tensor([captions.index(c) for c in image_captions])

    vae = build_vae(config.seed)
    psnr = train_vae(vae, images, config.vae_steps, config.vae_batch, config.seed)
    latents = encode_latents(vae, images)
    scaling = float(1.0 / latents.std())
    vae.register_to_config(scaling_factor=scaling)
    vae_minutes = (time.time() - started) / 60

    unet = build_unet(config.seed)
    noise_scheduler = train_unet(
        unet, latents * scaling, text, caption_ids, config.unet_steps, config.unet_batch,
        config.seed, config.snapshot_every, config.out,
    )

    pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
        scheduler=DDIMScheduler.from_config(
            noise_scheduler.config, clip_sample=False, set_alpha_to_one=False, steps_offset=1
        ),
        safety_checker=None, feature_extractor=None, image_encoder=None,
        requires_safety_checker=False,
    )
    save_pipeline(pipe, config.out)
    for leftover in sorted(work.rglob("*"), reverse=True):
        leftover.unlink() if leftover.is_file() else leftover.rmdir()
    work.rmdir()
    report = {
        "seed": config.seed, "images": config.images, "vae_steps": config.vae_steps,
        "unet_steps": config.unet_steps, "unet_batch": config.unet_batch,
        "vae_psnr_db": round(psnr, 2), "latent_scaling_factor": round(scaling, 4),
        "vae_params_m": round(sum(p.numel() for p in vae.parameters()) / 1e6, 3),
        "unet_params_m": round(sum(p.numel() for p in unet.parameters()) / 1e6, 3),
        "vae_minutes": round(vae_minutes, 1),
        "total_minutes": round((time.time() - started) / 60, 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
    }
    (config.out / "training.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report))
    return 0


def main(argv: list[str] | None = None) -> int:
    def command(argv: list[str]) -> int:
        return train_toy(parse(ToyTrainConfig, argv, "python -m models.toy.train"))

    return run_main(command, argv)


if __name__ == "__main__":
    sys.exit(main())
