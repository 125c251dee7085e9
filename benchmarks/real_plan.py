"""What `--dry_run` says at real size: 851,000 pairs over 58,961 prompts (Pick-a-Pic v2's
decisive pairs), the four model families' presets, 8 and 16 GPUs.

Writes the config files (no weights) of real-size SD1.5, SDXL, SD3 (Medium-sized) and
FLUX.1 pipelines and a Pick-a-Pic-shaped shard of that many pairs (one row in five a
tie, as the store's exports; 8 px images, which a dry run never reads), then runs the
trainer's own `python -m train PRESET --model FOLDER --data SHARD --dry_run` under
`WORLD_SIZE` (and `ACCELERATE_USE_FSDP` for the sharded rows) and keeps its lines: data
and held-out split, cache disk, encode time, a process's RAM, memory per GPU; and the
dry run's own peak RSS, which holds the index of every pair as a training process does.
Where the cache cannot fit this machine's disk, the dry run prints its figures and then
refuses in one line; `refused` keeps that line.

    python benchmarks/real_plan.py                     # 851,000 pairs
    python benchmarks/real_plan.py --pairs 2000 --processes 8 --runs sd15 flux-fsdp  # tiny
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks.encode_cost import MODELS, write_configs  # noqa: E402
from benchmarks.import_shard import build_shard  # noqa: E402
from benchmarks.real_sizes import SD15_UNET, SDXL_UNET  # noqa: E402

PICKAPIC_PROMPTS_PER_PAIR = 58_961 / 851_000
# the denoisers' configs at real size (diffusers' own for these checkpoints)
DENOISERS = {
    "sd15": {"_class_name": "UNet2DConditionModel", **SD15_UNET},
    "sdxl": {"_class_name": "UNet2DConditionModel", **SDXL_UNET},
    "sd3": {"_class_name": "SD3Transformer2DModel", "sample_size": 128, "patch_size": 2,
            "in_channels": 16, "num_layers": 24, "attention_head_dim": 64,
            "num_attention_heads": 24, "joint_attention_dim": 4096,
            "caption_projection_dim": 1536, "pooled_projection_dim": 2048,
            "out_channels": 16, "pos_embed_max_size": 192},
    "flux": {"_class_name": "FluxTransformer2DModel", "patch_size": 1, "in_channels": 64,
             "num_layers": 19, "num_single_layers": 38, "attention_head_dim": 128,
             "num_attention_heads": 24, "joint_attention_dim": 4096,
             "pooled_projection_dim": 768, "guidance_embeds": True},
}
# name: (preset, model folder, extra flags, sharded): the presets as they are, and full
# fine-tuning of the transformers at 1024 px under FSDP
RUNS = {"sd15": ("sd15", "sd15", [], False), "sdxl": ("sdxl", "sdxl", [], False),
        "sd3": ("sd3", "sd3", [], False), "flux": ("flux", "flux", [], False),
        "sd3-fsdp": ("sd3", "sd3", ["--lora_rank", "0", "--resolution", "1024"], True),
        "flux-fsdp": ("flux", "flux", ["--lora_rank", "0", "--resolution", "1024"], True)}
# the one-GPU presets' 32 pairs a step do not divide over 16 processes of 4 pairs
MULTI_GPU_BATCH = ["--effective_batch", "128"]
KEPT = ("data:   ", "cache:  ", "encode: ", "ram:    ", "memory: ")  # not the YAML's data:


def dry_run(preset: str, folder: Path, shard: Path, cache: Path, more: list[str],
            processes: int, sharded: bool) -> dict:
    env = {**os.environ, "WORLD_SIZE": str(processes), "LOCAL_WORLD_SIZE": "8",
           **({"ACCELERATE_USE_FSDP": "true"} if sharded else {})}
    began = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-c", "import resource, runpy, sys; sys.argv = sys.argv[1:]; "
         "sys.argv[0] = 'train'\ntry:\n    runpy.run_module('train', run_name='__main__')\n"
         "finally:\n    print('peak_rss_kb', resource.getrusage(resource.RUSAGE_SELF)"
         ".ru_maxrss)", "train", preset, "--model", str(folder), "--data", str(shard),
         "--cache_dir", str(cache), *more, "--dry_run"],
        cwd=ROOT, env=env, capture_output=True, text=True)
    refused = out.stderr.strip() if "on a disk with room" in out.stderr else None
    if out.returncode != 0 and not (out.returncode == 1 and refused):
        raise SystemExit(f"dry run {preset} {more} failed: {out.stderr[-2000:]}")
    lines = [line for line in out.stdout.splitlines() if line.startswith(KEPT)]
    memory = next(line for line in lines if line.startswith("memory:"))
    return {"preset": preset, "flags": " ".join(more), "processes": processes,
            "fsdp": sharded, "seconds": round(time.perf_counter() - began, 1),
            "peak_rss_mb": round(int(re.search(r"peak_rss_kb (\d+)", out.stdout)[1]) / 1024),
            "memory_gib": float(re.search(r"about ([\d.]+) GiB", memory)[1])
            if "GiB" in memory.split("per process")[0] else None,
            "lines": lines, "refused": refused}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=851_000)
    parser.add_argument("--processes", type=int, nargs="+", default=[8, 16])
    parser.add_argument("--runs", nargs="+", choices=tuple(RUNS), default=list(RUNS))
    parser.add_argument("--work", help="keep the configs and the shard here, for another run")
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.work or tmp)
        for name, (pipeline, _, _, vae, texts, (part, head)) in MODELS.items():
            write_configs(work / name, pipeline, vae, texts, (part, {**head,
                                                                     **DENOISERS[name]}))
        shard = work / f"shards-{args.pairs}" / "train-00000-of-00001.parquet"
        began = time.perf_counter()
        prompts = max(1, round(args.pairs * PICKAPIC_PROMPTS_PER_PAIR))
        if not shard.exists():  # --work keeps it for the next run
            shard.parent.mkdir(parents=True)
            build_shard(shard, args.pairs * 5 // 4, size=8, prompts=prompts)
        built = time.perf_counter() - began
        for name in args.runs:
            preset, folder, more, sharded = RUNS[name]
            for processes in args.processes:
                results.append({"run": name, **dry_run(
                    preset, work / folder, shard, work / "cache",
                    more + (MULTI_GPU_BATCH if preset in ("sd3", "flux") else []),
                    processes, sharded)})
    print(json.dumps({"benchmark": "real_plan", "date": str(date.today()),
                      "machine": platform.machine(), "pairs": args.pairs,
                      "prompts": prompts, "shard_seconds": round(built, 1),
                      "results": results}))


if __name__ == "__main__":
    main()
