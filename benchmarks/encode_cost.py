"""What `--dry_run` says the cache costs at real size: disk, and encode FLOPs and time.

Writes the config files (no weights) of real-size SD1.5, SDXL, SD3 and FLUX encoders and
denoiser heads into a temporary folder, then asks the trainer's own functions what a
run's cache of N pairs over M captions takes on disk (`train.cache.cache_bytes`) and
what encoding it costs (`train.plan.encode_flops`: the VAE and text encoders counted on
the meta device), per GPU of 8 and 16 at `train.memory.UTILISATION` of bf16 peak.

    python benchmarks/encode_cost.py                       # Pick-a-Pic v2: 851,000 / 58,961
    python benchmarks/encode_cost.py --pairs 1000 --captions 100
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.real_sizes import CLIP_L, OPENCLIP_BIGG, SD_VAE  # noqa: E402
from train import cache as pair_cache  # noqa: E402
from train.memory import PEAK_BF16_TFLOPS, UTILISATION  # noqa: E402
from train.plan import encode_flops  # noqa: E402

T5_XXL = {"architectures": ["T5EncoderModel"], "model_type": "t5", "d_model": 4096,
          "d_ff": 10240, "d_kv": 64, "num_heads": 64, "num_layers": 24, "vocab_size": 32128,
          "feed_forward_proj": "gated-gelu"}


def clip(config: dict, architecture: str, **more) -> dict:
    return {**config, **more, "architectures": [architecture], "model_type": "clip_text_model"}


# name: (pipeline class, kind, px, VAE, text encoders, denoiser part and its text widths)
MODELS = {
    "sd15": ("StableDiffusionPipeline", "sd", 512, SD_VAE, [clip(CLIP_L, "CLIPTextModel")],
             ("unet", {"cross_attention_dim": 768})),
    "sdxl": ("StableDiffusionXLPipeline", "sdxl", 1024, SD_VAE,
             [clip(CLIP_L, "CLIPTextModel"),
              clip(OPENCLIP_BIGG, "CLIPTextModelWithProjection")],
             ("unet", {"cross_attention_dim": 2048})),
    "sd3": ("StableDiffusion3Pipeline", "sd3", 1024, {**SD_VAE, "latent_channels": 16},
            [clip(CLIP_L, "CLIPTextModelWithProjection", projection_dim=768),
             clip(OPENCLIP_BIGG, "CLIPTextModelWithProjection"), T5_XXL],
            ("transformer", {"joint_attention_dim": 4096, "pooled_projection_dim": 2048})),
    "flux": ("FluxPipeline", "flux", 1024, {**SD_VAE, "latent_channels": 16},
             [clip(CLIP_L, "CLIPTextModel"), T5_XXL],
             ("transformer", {"joint_attention_dim": 4096, "pooled_projection_dim": 768})),
}


def write_configs(folder: Path, pipeline: str, vae: dict, texts: list[dict],
                  denoiser: tuple[str, dict]) -> None:
    files = {"model_index.json": {"_class_name": pipeline},
             "vae/config.json": {"_class_name": "AutoencoderKL", **vae},
             f"{denoiser[0]}/config.json": denoiser[1],
             "tokenizer/tokenizer_config.json": {"model_max_length": 77}}
    for part, text in zip(("text_encoder", "text_encoder_2", "text_encoder_3"), texts,
                          strict=False):
        files[f"{part}/config.json"] = text
    for name, content in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(json.dumps(content))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=851_000)
    parser.add_argument("--captions", type=int, default=58_961)
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, (pipeline, kind, px, vae, texts, denoiser) in MODELS.items():
            folder = Path(tmp) / name
            write_configs(folder, pipeline, vae, texts, denoiser)
            prep = pair_cache.Preprocessing(px, False, True, 0)
            pair, caption = encode_flops(str(folder), kind, prep)
            total = args.pairs * pair + args.captions * caption
            disk = pair_cache.cache_bytes(str(folder), kind, args.pairs, args.captions, prep)
            text = disk - pair_cache.cache_bytes(str(folder), kind, args.pairs, 0, prep)
            results.append({
                "model": name, "resolution": px, "cache_gib": round(disk / 2**30, 2),
                "text_gib": round(text / 2**30, 2), "gflop_per_pair": round(pair / 1e9, 1),
                "gflop_per_caption": round(caption / 1e9, 1),
                "encode_eflop": round(total / 1e18, 3),
                "hours_per_gpu": {f"{gpu} x{n}": round(
                    total / n / (UTILISATION * peak * 1e12) / 3600, 2)
                    for gpu, peak in PEAK_BF16_TFLOPS.items() for n in (8, 16)}})
    print(json.dumps({"benchmark": "encode_cost", "pairs": args.pairs,
                      "captions": args.captions, "utilisation": UTILISATION,
                      "random_flip": True, "results": results}))


if __name__ == "__main__":
    main()
