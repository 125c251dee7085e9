"""Train the flow-matching toy: an SD3-style pipeline on the toy world, on a CPU.

    python -m models.toy.train_flow --out models/toy/flow_pipeline

It reuses the bundled toy's trained VAE and its frozen CLIP text encoder (given a fixed
random projection, as SD3's encoders have one), so only the denoiser is trained: a small
`SD3Transformer2DModel` by rectified flow (x_s = (1 - s) x0 + s eps, velocity target,
logit-normal noise levels, 10% empty captions), on the same synthetic shapes. Its T5 is
a one-layer random frozen encoder with a locally written tokenizer (plain
`from_pretrained` needs one); the pipeline pads it to `max_sequence_length` tokens, 256
by default, and the transformer is trained on exactly what `pipe(prompt)` gives it.
Deterministic from `--seed`. The result is a `StableDiffusion3Pipeline` folder.
"""

from __future__ import annotations

import json
import resource
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from cli.entry import run_main
from cli.parser import parse, setting
from models.toy.shapes import all_captions, sample_batch
from models.toy.train import ToyImages, encode_latents

DEFAULT_OUT = Path(__file__).resolve().parent / "flow_pipeline"


def text_encoders(toy, seed: int):
    """The toy's CLIP text encoder with a projection, twice (SD3 takes two CLIPs)."""
    from transformers import CLIPTextModelWithProjection

    config = toy.text_encoder.config
    config.projection_dim = config.hidden_size
    torch.manual_seed(seed)
    encoder = CLIPTextModelWithProjection(config)
    encoder.text_model.load_state_dict(toy.text_encoder.state_dict())  # transformers 5: flat
    return encoder.eval().requires_grad_(False)


def t5_side(directory: Path, seed: int):
    """A frozen random one-layer T5 encoder (width 128) and its tokenizer."""
    from transformers import AutoTokenizer, T5Config, T5EncoderModel

    from models.tokenizer import write_t5_tokenizer
    from models.toy.shapes import WORDS

    tokenizer = AutoTokenizer.from_pretrained(write_t5_tokenizer(directory, WORDS))
    torch.manual_seed(seed)
    encoder = T5EncoderModel(T5Config(
        vocab_size=len(tokenizer), d_model=128, d_kv=32, d_ff=256, num_layers=1, num_heads=4,
        relative_attention_num_buckets=8, pad_token_id=0, eos_token_id=1,
        decoder_start_token_id=0))
    return encoder.eval().requires_grad_(False), tokenizer


def build_transformer(seed: int, width: int, layers: int, patch: int):
    from diffusers import SD3Transformer2DModel

    torch.manual_seed(seed)
    return SD3Transformer2DModel(
        sample_size=8, patch_size=patch, in_channels=4, out_channels=4, num_layers=layers,
        attention_head_dim=32, num_attention_heads=width // 32, joint_attention_dim=128,
        caption_projection_dim=width, pooled_projection_dim=128, pos_embed_max_size=8)


@dataclass(frozen=True)
class FlowToyTrainConfig(ToyImages):
    """Train the flow toy's transformer on the toy's VAE and text encoder."""

    out: Path = setting("pipeline folder", DEFAULT_OUT)
    steps: int = setting("training steps", 2400)
    batch: int = setting("batch", 128)
    width: int = setting("transformer width", 64)
    layers: int = setting("transformer layers", 4)
    patch: int = setting("latent patch size: 1 gives 64 image tokens, 2 gives 16", 1)
    snapshot_every: int = setting("also save the transformer every N steps under "
                                  "OUT/snapshots", 0)


def train_flow_toy(config: FlowToyTrainConfig) -> int:

    from diffusers import FlowMatchEulerDiscreteScheduler, StableDiffusion3Pipeline

    from models.loading import load

    torch.use_deterministic_algorithms(True)
    started = time.time()
    toy = load("toy", device="cpu", dtype=torch.float32).pipeline
    vae = toy.vae
    vae.register_to_config(shift_factor=0.0)  # SD3's pipeline adds it when decoding
    encoder = text_encoders(toy, config.seed)
    transformer = build_transformer(config.seed, config.width, config.layers, config.patch)
    t5, t5_tokenizer = t5_side(config.out / "_build" / "t5", config.seed)
    pipe = StableDiffusion3Pipeline(
        transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=1.0),
        vae=vae, text_encoder=encoder, tokenizer=toy.tokenizer, text_encoder_2=encoder,
        tokenizer_2=toy.tokenizer, text_encoder_3=t5, tokenizer_3=t5_tokenizer,
        image_encoder=None, feature_extractor=None)

    captions = all_captions()
    with torch.no_grad():
        text, _, pooled, _ = pipe.encode_prompt([*captions, ""], None, None, device="cpu",
                                                do_classifier_free_guidance=False)
    pixels, image_captions = sample_batch(config.images, seed=config.seed)
    images = torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 127.5 - 1
    latents = encode_latents(vae, images) * vae.config.scaling_factor
    caption_ids = torch.tensor([captions.index(c) for c in image_captions])

    generator = torch.Generator().manual_seed(config.seed)
    optimizer = torch.optim.AdamW(transformer.parameters(), lr=3e-4, weight_decay=1e-2)
    empty = len(captions)
    transformer.train()
    bar = tqdm(range(1, config.steps + 1), desc="transformer", unit="step")
    for step in bar:
        for group in optimizer.param_groups:
            group["lr"] = 3e-4 * min(1.0, step / 100)
        index = torch.randint(0, len(latents), (config.batch,), generator=generator)
        x0 = latents[index]
        ids = caption_ids[index].clone()
        ids[torch.rand(config.batch, generator=generator) < 0.1] = empty
        noise = torch.randn(x0.shape, generator=generator)
        s = torch.sigmoid(torch.randn(config.batch, generator=generator))
        noisy = (1 - s.view(-1, 1, 1, 1)) * x0 + s.view(-1, 1, 1, 1) * noise
        pred = transformer(hidden_states=noisy, timestep=s * 1000,
                           encoder_hidden_states=text[ids], pooled_projections=pooled[ids]).sample
        loss = F.mse_loss(pred, noise - x0)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(transformer.parameters(), 1.0)
        optimizer.step()
        bar.set_postfix(loss=f"{loss.item():.4f}")
        if config.snapshot_every and step % config.snapshot_every == 0 and step < config.steps:
            transformer.save_pretrained(config.out / "snapshots" / f"transformer-{step}")
    transformer.eval()
    transformer.to(torch.float16)  # as the UNet toy stores them (train.save_pipeline);
    vae.to(torch.float16)  # diffusers loads them as fp32, the text encoders stay fp32
    pipe.save_pretrained(config.out, safe_serialization=True)
    shutil.rmtree(config.out / "_build")
    report = {
        "seed": config.seed, "images": config.images, "steps": config.steps, "batch": config.batch,
        "width": config.width, "layers": config.layers, "patch": config.patch,
        "transformer_params_m": round(sum(p.numel() for p in transformer.parameters()) / 1e6,
                                      3),
        "total_minutes": round((time.time() - started) / 60, 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
    }
    (config.out / "training.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report))
    return 0


def main(argv: list[str] | None = None) -> int:
    def command(argv: list[str]) -> int:
        return train_flow_toy(parse(FlowToyTrainConfig, argv, "python -m models.toy.train_flow"))

    return run_main(command, argv)


if __name__ == "__main__":
    sys.exit(main())
