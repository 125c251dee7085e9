"""What one DPO pair costs at real model sizes, counted on this machine without a GPU.

    python benchmarks/real_sizes.py                   # FLOPs at SD1.5 512 px, SDXL 1024 px,
                                                      # FLUX.2 [klein], Qwen-Image, Z-Image
    python benchmarks/real_sizes.py --step lora full  # plus real SD1.5-sized steps on this CPU
    python benchmarks/real_sizes.py --tiny --step lora full   # both, on a tiny UNet

Every network is built from its published config on the meta device (no weights, no
download) and one pair's work is counted by torch's flop counter: the policy's forward
and backward on the winner and the loser, the reference's forward on both (full: a
frozen copy; LoRA rank 8: the same UNet with adapters off, so its backward computes no
weight gradients but still every activation gradient), and what an uncached trainer
adds per pair (the VAE encoding two images, the text encoders reading one caption; the
official train.py does this every step). Gradient checkpointing adds one more policy
forward. From the count: pairs per second per GPU at 40% of the A100's and H100's dense
bf16 peaks, against the official SD1.5 recipe's measured rate (2,000 steps x 2,048 pairs
in about 24 hours on 16 A100s).

`--step`: a randomly initialised SD1.5-sized pipeline (UNet, VAE and CLIP text encoder at
their real sizes) is written to a temporary folder and `python -m train` trains it for
`--steps` steps of one 512 px pair (64x64 latents) with gradient checkpointing, once per
mode (LoRA rank 8, full), each in a fresh process: seconds per step and that process's
peak RSS, beside the memory `--dry_run` estimates for the same config. Prints JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from train.config import TrainConfig  # noqa: E402
from train.memory import PEAK_BF16_TFLOPS, UTILISATION, counted_flops, unet_inputs  # noqa: E402

# the paper's SD1.5 run: 2,000 steps of 2,048 pairs in ~24 h on 16 A100s (official README)
OFFICIAL_SD15_PAIRS_PER_S_PER_GPU = 2000 * 2048 / (24 * 3600) / 16

SD15_UNET = {
    "sample_size": 64, "in_channels": 4, "out_channels": 4, "layers_per_block": 2,
    "block_out_channels": [320, 640, 1280, 1280], "attention_head_dim": 8,
    "cross_attention_dim": 768, "norm_num_groups": 32,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D",
                         "CrossAttnDownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D",
                       "CrossAttnUpBlock2D"],
}
SDXL_UNET = {
    "sample_size": 128, "in_channels": 4, "out_channels": 4, "layers_per_block": 2,
    "block_out_channels": [320, 640, 1280], "attention_head_dim": [5, 10, 20],
    "cross_attention_dim": 2048, "transformer_layers_per_block": [1, 2, 10],
    "use_linear_projection": True, "addition_embed_type": "text_time",
    "addition_time_embed_dim": 256, "projection_class_embeddings_input_dim": 2816,
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
}
TINY_UNET = {
    "sample_size": 8, "in_channels": 4, "out_channels": 4, "layers_per_block": 1,
    "block_out_channels": [32, 64], "attention_head_dim": 8, "cross_attention_dim": 32,
    "norm_num_groups": 32, "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"],
}
SD_VAE = {
    "in_channels": 3, "out_channels": 3, "latent_channels": 4, "layers_per_block": 2,
    "block_out_channels": [128, 256, 512, 512], "norm_num_groups": 32,
    "down_block_types": ["DownEncoderBlock2D"] * 4, "up_block_types": ["UpDecoderBlock2D"] * 4,
}
TINY_VAE = {**SD_VAE, "block_out_channels": [32, 32], "layers_per_block": 1,
            "down_block_types": ["DownEncoderBlock2D"] * 2,
            "up_block_types": ["UpDecoderBlock2D"] * 2}
CLIP_L = {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
          "num_attention_heads": 12, "max_position_embeddings": 77, "vocab_size": 49408}
OPENCLIP_BIGG = {"hidden_size": 1280, "intermediate_size": 5120, "num_hidden_layers": 32,
                 "num_attention_heads": 20, "max_position_embeddings": 77,
                 "vocab_size": 49408, "projection_dim": 1280}
TINY_CLIP = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
             "num_attention_heads": 2, "max_position_embeddings": 8, "vocab_size": 1000}


# The 2026 transformers at their published sizes: FLUX.2 [klein] 4B as diffusers'
# conversion script configures it (scripts/convert_flux2_to_diffusers.py); Qwen-Image and
# Z-Image are their transformer classes' defaults (the released configs). With each, the
# VAE config fields that set the cached latents' shape, and the preset it trains with.
TRANSFORMERS = {
    "flux2_klein_4b_1024": {
        "preset": "flux2-klein", "pipeline": "Flux2KleinPipeline",
        "transformer": {"_class_name": "Flux2Transformer2DModel", "num_layers": 5,
                        "num_single_layers": 20, "num_attention_heads": 24,
                        "joint_attention_dim": 7680, "guidance_embeds": False},
        "vae": {"_class_name": "AutoencoderKLFlux2", "latent_channels": 32,
                "block_out_channels": [128, 256, 512, 512]},
    },
    "qwen_image_1024": {
        "preset": "qwen-image", "pipeline": "QwenImagePipeline",
        "transformer": {"_class_name": "QwenImageTransformer2DModel"},
        "vae": {"_class_name": "AutoencoderKLQwenImage", "z_dim": 16,
                "temperal_downsample": [False, True, True]},
    },
    "z_image_1024": {
        "preset": "z-image", "pipeline": "ZImagePipeline",
        "transformer": {"_class_name": "ZImageTransformer2DModel"},
        "vae": {"_class_name": "AutoencoderKL", "latent_channels": 16,
                "block_out_channels": [128, 256, 512, 512]},
    },
}
TINY_TRANSFORMERS = {  # the tests' tiny pipelines' sizes (tests/conftest.py), at 64 px
    "tiny_flux2": {
        "preset": "flux2-klein", "pipeline": "Flux2KleinPipeline",
        "transformer": {"_class_name": "Flux2Transformer2DModel", "in_channels": 4,
                        "num_layers": 1, "num_single_layers": 1, "attention_head_dim": 16,
                        "num_attention_heads": 2, "joint_attention_dim": 48,
                        "axes_dims_rope": [4, 4, 4, 4], "guidance_embeds": False},
        "vae": {"_class_name": "AutoencoderKLFlux2", "latent_channels": 1,
                "block_out_channels": [4, 8]},
    },
    "tiny_qwen_image": {
        "preset": "qwen-image", "pipeline": "QwenImagePipeline",
        "transformer": {"_class_name": "QwenImageTransformer2DModel", "in_channels": 16,
                        "out_channels": 4, "num_layers": 2, "attention_head_dim": 16,
                        "num_attention_heads": 3, "joint_attention_dim": 16,
                        "axes_dims_rope": [8, 4, 4]},
        "vae": {"_class_name": "AutoencoderKLQwenImage", "z_dim": 4,
                "temperal_downsample": [False, True]},
    },
    "tiny_z_image": {
        "preset": "z-image", "pipeline": "ZImagePipeline",
        "transformer": {"_class_name": "ZImageTransformer2DModel", "in_channels": 4,
                        "dim": 32, "n_layers": 2, "n_refiner_layers": 1, "n_heads": 2,
                        "n_kv_heads": 2, "cap_feat_dim": 16, "axes_dims": [8, 4, 4],
                        "axes_lens": [256, 32, 32]},
        "vae": {"_class_name": "AutoencoderKL", "latent_channels": 4,
                "block_out_channels": [4, 8]},
    },
}


def model_sizes(tiny: bool) -> dict[str, dict]:
    """name -> resolution, UNet config, VAE config, text encoder configs, and the
    per-image SDXL conditioning width (0 for SD1.5-style UNets)."""
    if tiny:
        return {"tiny": {"resolution": 64, "unet": TINY_UNET, "vae": TINY_VAE,
                         "text": [TINY_CLIP]}}
    return {
        "sd15_512": {"resolution": 512, "unet": SD15_UNET, "vae": SD_VAE, "text": [CLIP_L]},
        "sdxl_1024": {"resolution": 1024, "unet": SDXL_UNET, "vae": SD_VAE,
                      "text": [CLIP_L, OPENCLIP_BIGG]},
    }


def pair_flops(size: dict, lora_rank: int) -> dict[str, int]:
    """FLOPs of one pair (winner and loser, batch 2) through each part of a DPO step."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    with torch.device("meta"):
        unet = UNet2DConditionModel(**size["unet"])
        if lora_rank:
            unet.requires_grad_(False)
            unet.add_adapter(TrainConfig(lora_rank=lora_rank).lora_adapter())
        vae = AutoencoderKL(**size["vae"])
        texts = [CLIPTextModel(CLIPTextConfig(**config)) for config in size["text"]]
        inputs = unet_inputs(unet, 2, size["resolution"])
        pixels = torch.randn(2, 3, size["resolution"], size["resolution"])
        tokens = torch.randint(0, 100, (1, 77))

        def policy_forward() -> torch.Tensor:
            return unet(**inputs).sample

        def policy_step() -> None:
            policy_forward().float().pow(2).mean().backward()

        def reference_forward() -> None:
            with torch.no_grad():
                if lora_rank:
                    unet.disable_adapters()
                unet(**inputs)
                if lora_rank:
                    unet.enable_adapters()

        def encoders() -> None:
            with torch.no_grad():
                vae.encode(pixels)
                for text in texts:
                    text(tokens[:, : text.config.max_position_embeddings])

        forward = counted_flops(lambda: torch.no_grad()(policy_forward)())
        return {
            "policy_forward_backward": counted_flops(policy_step),
            "reference_forward": counted_flops(reference_forward),
            "checkpointing_recompute": forward,
            "encoders_uncached": counted_flops(encoders),
            "unet_parameters": sum(p.numel() for p in unet.parameters()),
            "trainable_parameters": sum(p.numel() for p in unet.parameters()
                                        if p.requires_grad),
        }


def build_pipeline(folder: Path, tiny: bool) -> None:
    """A randomly initialised SD1.5-sized (or tiny) pipeline, saved to `folder`."""
    from diffusers import (
        AutoencoderKL,
        DDPMScheduler,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from models.tokenizer import write_clip_tokenizer

    size = model_sizes(tiny)["tiny" if tiny else "sd15_512"]
    torch.manual_seed(0)
    text = {**size["text"][0], "bos_token_id": 0, "eos_token_id": 1, "pad_token_id": 1}
    limit = text["max_position_embeddings"]
    tokenizer = CLIPTokenizer.from_pretrained(
        write_clip_tokenizer(folder.parent / "tokenizer-words"), model_max_length=limit)
    StableDiffusionPipeline(
        vae=AutoencoderKL(**size["vae"]), text_encoder=CLIPTextModel(CLIPTextConfig(**text)),
        tokenizer=tokenizer, unet=UNet2DConditionModel(**size["unet"]),
        scheduler=DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085,
                                beta_end=0.012, clip_sample=False,
                                steps_offset=1),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    ).save_pretrained(folder)


def noise_pairs(store_path: Path, pairs: int, side: int) -> None:
    """`pairs` votes between random `side` px images: what is learnt does not matter here."""
    import numpy as np
    from PIL import Image

    from data.pairs import encode_jpeg
    from data.store import ImageRecord, Store, Vote, new_uid

    rng = np.random.default_rng(0)
    with Store(store_path) as store:
        user = store.user_id("bench")
        for _ in range(pairs):
            images = [ImageRecord(new_uid(), encode_jpeg(Image.fromarray(
                rng.integers(0, 256, (side, side, 3), dtype=np.uint8))), "noise", "random")
                for _ in range(2)]
            store.record_vote(Vote(new_uid(), "noise", images[0].image_uid,
                                   images[1].image_uid, "left", 0, user), images)


def train_command(folder: Path, work: Path, mode: str, steps: int, side: int) -> list[str]:
    """`python -m train CONFIG` for one real-size run (the config file is written here)."""
    config = work / f"{mode}.yaml"
    config.write_text(json.dumps({
        "model": str(folder), "data": [str(work / "pairs.duckdb")],
        "output_dir": str(work / mode), "cache_dir": str(work / "cache"),
        "resolution": side, "batch_size": 1, "effective_batch": 1, "max_steps": steps,
        "lora_rank": 8 if mode == "lora" else 0, "gradient_checkpointing": True,
        "mixed_precision": "no", "eval_every": 0, "checkpoint_every": 0,
        "holdout_pairs": 0, "log_every": 1, "warmup_steps": 0,
    }))
    return [sys.executable, "-m", "train", str(config)]


def real_steps(modes: list[str], steps: int, tiny: bool) -> dict:
    """Seconds per step and peak RSS of `python -m train` at real size, per mode."""
    with tempfile.TemporaryDirectory(prefix="real-size-") as folder:
        return _real_steps(Path(folder), modes, steps, tiny)


def _real_steps(work: Path, modes: list[str], steps: int, tiny: bool) -> dict:
    side = 64 if tiny else 512
    subprocess.run([sys.executable, __file__, "--build", str(work / "pipeline")]
                   + (["--tiny"] if tiny else []), check=True)
    noise_pairs(work / "pairs.duckdb", 2, side)
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    results = {}
    for mode in modes:
        command = train_command(work / "pipeline", work, mode, steps, side)
        plan = subprocess.run(command + ["--dry_run"], capture_output=True, text=True,
                              check=True, env=env).stdout
        load_before = os.getloadavg()[0]
        done = subprocess.run(command, capture_output=True, text=True, env=env)
        if done.returncode:
            raise SystemExit(f"{mode}: {done.stderr.strip().splitlines()[-1]}")
        summary = json.loads(done.stdout.strip().splitlines()[-1])
        results[mode] = {
            "seconds_per_step": round(summary["seconds"] / steps, 1),
            "peak_rss_mb": summary["peak_rss_mb"],
            "dry_run_memory": next(line for line in plan.splitlines()
                                   if line.startswith("memory:")),
            "load_before_after": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        }
    return {"steps": steps, "resolution": side, "gradient_checkpointing": True,
            "pairs_per_step": 1, "modes": results}


def transformer_folder(folder: Path, size: dict) -> Path:
    """A model folder of configs only (no weights): what `--dry_run` reads; the
    transformer's written in full (every default) as `save_pretrained` writes it."""
    import diffusers

    (folder / "vae").mkdir(parents=True)
    (folder / "tokenizer").mkdir()
    (folder / "model_index.json").write_text(json.dumps({"_class_name": size["pipeline"]}))
    with torch.device("meta"):
        net = getattr(diffusers, size["transformer"]["_class_name"]).from_config(
            size["transformer"])
    net.save_config(folder / "transformer")
    (folder / "vae" / "config.json").write_text(json.dumps(size["vae"]))
    (folder / "tokenizer" / "tokenizer_config.json").write_text("{}")
    return folder


def transformer_row(folder: Path, size: dict, resolution: int, shards: int) -> dict:
    """One transformer's DPO pair, counted on meta as `--dry_run` counts it, with
    what `--dry_run` estimates for its preset: LoRA (the preset's rank and targets) on one
    GPU, full with FSDP2 over
    `shards` GPUs, and the text cache's size per caption."""
    from models.meta import denoiser_on_meta
    from train.cache import VARIABLE_TEXT_KINDS, Preprocessing, text_shape
    from train.config import resolve
    from train.memory import GIB, estimate, pair_flops

    row: dict = {}
    for mode, rank in (("full", 0), ("lora", resolve(size["preset"]).lora_rank)):
        config = resolve(size["preset"], {"model": str(folder), "lora_rank": rank,
                                          "resolution": resolution, "batch_size": 1,
                                          "mixed_precision": "bf16"})
        kind, net = denoiser_on_meta(str(folder))
        if rank:
            net.requires_grad_(False)
            with torch.device("meta"):
                net.add_adapter(config.lora_adapter())
        flops = pair_flops(config)
        step, ref = flops.policy, flops.reference
        memory = estimate(config, 1 if rank else shards)
        cached = step + ref
        row[mode] = {
            "transformer_parameters": sum(p.numel() for p in net.parameters()),
            "trainable_parameters": sum(p.numel() for p in net.parameters()
                                        if p.requires_grad),
            "policy_forward_backward": step, "reference_forward": ref,
            "tflop_per_pair_cached": round(cached / 1e12, 4),
            "tflop_per_pair_cached_checkpointing": round(flops.total / 1e12, 4),
            "pairs_per_s_per_gpu_cached": implied_rates(flops.total),
            "dry_run_gib_per_gpu": round(memory.total / GIB, 2),
            "dry_run_processes": 1 if rank else shards,
            "dry_run_activations_gib": round((memory.activations or 0) / GIB, 2),
        }
    (tokens, width), _ = text_shape(str(folder), kind, Preprocessing(
        resolution, False, False, 0, resolve(size["preset"]).max_sequence_length))
    row["text_tokens"] = tokens
    row["text_cache_mib_per_caption"] = round(2 * tokens * width / 2**20, 2)
    row["text_cache_is_a_bound"] = kind in VARIABLE_TEXT_KINDS  # captions at own length
    return row


def transformer_rows(tiny: bool, shards: int = 8) -> dict:
    sizes, resolution = (TINY_TRANSFORMERS, 64) if tiny else (TRANSFORMERS, 1024)
    with tempfile.TemporaryDirectory(prefix="real-size-") as work:
        return {name: transformer_row(transformer_folder(Path(work) / name, size), size,
                                      resolution, shards)
                for name, size in sizes.items()}


def implied_rates(flops_per_pair: float) -> dict[str, float]:
    """Pairs per second per GPU at UTILISATION of each GPU's dense bf16 peak."""
    return {gpu: round(UTILISATION * peak * 1e12 / flops_per_pair, 2)
            for gpu, peak in PEAK_BF16_TFLOPS.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="a tiny UNet: checks the script")
    parser.add_argument("--step", nargs="*", choices=["lora", "full"], default=[],
                        help="train these modes for real on this CPU")
    parser.add_argument("--steps", type=int, default=2, help="steps per --step mode")
    parser.add_argument("--build", help=argparse.SUPPRESS)  # a child: write the pipeline
    args = parser.parse_args()
    if args.build:
        build_pipeline(Path(args.build), args.tiny)
        return
    result: dict = {
        "benchmark": "real_sizes", "utilisation": UTILISATION,
        "peak_bf16_tflops": PEAK_BF16_TFLOPS,
        "official_sd15_pairs_per_s_per_gpu": round(OFFICIAL_SD15_PAIRS_PER_S_PER_GPU, 2),
        "models": {},
    }
    for name, size in model_sizes(args.tiny).items():
        for mode, rank in (("full", 0), ("lora8", 8)):
            parts = pair_flops(size, rank)
            cached = parts["policy_forward_backward"] + parts["reference_forward"]
            uncached = cached + parts["encoders_uncached"]
            result["models"][f"{name}_{mode}"] = {
                **parts,
                "tflop_per_pair_cached": round(cached / 1e12, 4),
                "tflop_per_pair_uncached": round(uncached / 1e12, 4),
                "tflop_per_pair_cached_checkpointing":
                    round((cached + parts["checkpointing_recompute"]) / 1e12, 4),
                "pairs_per_s_per_gpu_cached": implied_rates(cached),
                "pairs_per_s_per_gpu_uncached": implied_rates(uncached),
            }
    sd15 = result["models"].get("sd15_512_full")
    if sd15:  # the official recipe: full UNet, encoders every step, no checkpointing
        per_pair = sd15["tflop_per_pair_uncached"] * 1e12
        result["official_sd15_a100_utilisation"] = round(
            OFFICIAL_SD15_PAIRS_PER_S_PER_GPU * per_pair / (PEAK_BF16_TFLOPS["A100"] * 1e12), 3)
    result["transformers"] = transformer_rows(args.tiny)
    if args.step:
        print(f"training {', '.join(args.step)} at real size...", file=sys.stderr)
        result["cpu_step"] = real_steps(args.step, args.steps, args.tiny)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
