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

import argparse
import json
import resource
import shutil
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from models.toy.shapes import all_captions, sample_batch
from models.toy.train import encode_latents

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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m models.toy.train_flow",
                                     description=__doc__)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="pipeline folder")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--images", type=int, default=20000, help="training images")
    parser.add_argument("--steps", type=int, default=2400)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--width", type=int, default=64, help="transformer width")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--patch", type=int, default=1,
                        help="latent patch size: 1 gives 64 image tokens, 2 gives 16")
    parser.add_argument("--snapshot-every", type=int, default=0)
    args = parser.parse_args(argv)

    from diffusers import FlowMatchEulerDiscreteScheduler, StableDiffusion3Pipeline

    from models.loading import load

    torch.use_deterministic_algorithms(True)
    started = time.time()
    toy = load("toy", device="cpu", dtype=torch.float32).pipeline
    vae = toy.vae
    vae.register_to_config(shift_factor=0.0)  # SD3's pipeline adds it when decoding
    encoder = text_encoders(toy, args.seed)
    transformer = build_transformer(args.seed, args.width, args.layers, args.patch)
    t5, t5_tokenizer = t5_side(args.out / "_build" / "t5", args.seed)
    pipe = StableDiffusion3Pipeline(
        transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=1.0),
        vae=vae, text_encoder=encoder, tokenizer=toy.tokenizer, text_encoder_2=encoder,
        tokenizer_2=toy.tokenizer, text_encoder_3=t5, tokenizer_3=t5_tokenizer,
        image_encoder=None, feature_extractor=None)

    captions = all_captions()
    with torch.no_grad():
        text, _, pooled, _ = pipe.encode_prompt([*captions, ""], None, None, device="cpu",
                                                do_classifier_free_guidance=False)
    pixels, image_captions = sample_batch(args.images, seed=args.seed)
    images = torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 127.5 - 1
    latents = encode_latents(vae, images) * vae.config.scaling_factor
    caption_ids = torch.tensor([captions.index(c) for c in image_captions])

    generator = torch.Generator().manual_seed(args.seed)
    optimizer = torch.optim.AdamW(transformer.parameters(), lr=3e-4, weight_decay=1e-2)
    empty = len(captions)
    transformer.train()
    bar = tqdm(range(1, args.steps + 1), desc="transformer", unit="step")
    for step in bar:
        for group in optimizer.param_groups:
            group["lr"] = 3e-4 * min(1.0, step / 100)
        index = torch.randint(0, len(latents), (args.batch,), generator=generator)
        x0 = latents[index]
        ids = caption_ids[index].clone()
        ids[torch.rand(args.batch, generator=generator) < 0.1] = empty
        noise = torch.randn(x0.shape, generator=generator)
        s = torch.sigmoid(torch.randn(args.batch, generator=generator))
        noisy = (1 - s.view(-1, 1, 1, 1)) * x0 + s.view(-1, 1, 1, 1) * noise
        pred = transformer(hidden_states=noisy, timestep=s * 1000,
                           encoder_hidden_states=text[ids], pooled_projections=pooled[ids]).sample
        loss = F.mse_loss(pred, noise - x0)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(transformer.parameters(), 1.0)
        optimizer.step()
        bar.set_postfix(loss=f"{loss.item():.4f}")
        if args.snapshot_every and step % args.snapshot_every == 0 and step < args.steps:
            transformer.save_pretrained(args.out / "snapshots" / f"transformer-{step}")
    transformer.eval()
    transformer.to(torch.float16)  # as the UNet toy stores them (train.save_pipeline);
    vae.to(torch.float16)  # diffusers loads them as fp32, the text encoders stay fp32
    pipe.save_pretrained(args.out, safe_serialization=True)
    shutil.rmtree(args.out / "_build")
    report = {
        "seed": args.seed, "images": args.images, "steps": args.steps, "batch": args.batch,
        "width": args.width, "layers": args.layers, "patch": args.patch,
        "transformer_params_m": round(sum(p.numel() for p in transformer.parameters()) / 1e6,
                                      3),
        "total_minutes": round((time.time() - started) / 60, 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
    }
    (args.out / "training.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report))


if __name__ == "__main__":
    main()
