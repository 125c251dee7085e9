"""Training speed against the peers a user would pick instead, on the same toy model and
the same pairs: the official Diffusion-DPO `train.py` (full UNet, frozen reference copy)
and diffusers' research `train_diffusion_dpo.py` (LoRA, reference = adapters off).

    python benchmarks/peers.py --peers /tmp/peers                # 3 rounds of 20 steps
    python benchmarks/peers.py --peers /tmp/peers --rounds 1 --steps 6 --profile
    python benchmarks/peers.py --peers /tmp/peers --size sd15 --rounds 1 --steps 4 --warmup 1

`--size sd15`: the same comparison at real size: the randomly initialised SD1.5-sized
pipeline benchmarks/real_sizes.py writes (UNet 860M, VAE, CLIP-L), 512 px noise images,
one pair a step, gradient checkpointing on in every trainer (the official recipe's
setting), full and LoRA; the floors run at the toy size only. A step takes about a
minute on two cores and a full run holds about 18 GiB, so one round of the four trainers
is about 25 minutes. `--size tiny` runs that path on a tiny UNet (it checks the script).

The peers are not part of this repository. Put them in a folder first, from clones or
from GitHub (the versions measured in docs/BENCHMARKS.md are named there):

    mkdir -p /tmp/peers
    script=examples/research_projects/diffusion_dpo/train_diffusion_dpo.py
    git -C DIFFUSERS_CLONE show HEAD:$script > /tmp/peers/train_diffusion_dpo.py
    git -C DIFFUSIONDPO_CLONE show HEAD:train.py > /tmp/peers/train.py

or from GitHub's raw files (`curl -Lo /tmp/peers/NAME URL`):

    https://raw.githubusercontent.com/SalesforceAIResearch/DiffusionDPO/main/train.py
    https://raw.githubusercontent.com/huggingface/diffusers/main/examples/research_projects/diffusion_dpo/train_diffusion_dpo.py

Without `--peers`, or with a folder that lacks them, the script prints a JSON line
saying it skipped, and exits 0.

What it does:
- Copies both scripts into its work folder and applies PATCHES: exact text replacements,
  each of which must match exactly once (an upstream change stops the run with one line
  naming the patch). They change only what this machine forces (no torchvision, no
  xformers, no wandb); nothing in a training step.
- Draws `--pairs` pairs as benchmarks/train_throughput.py does, into a store, and exports
  them with `python -m data export` (Pick-a-Pic v2 parquet) to a folder named
  `pickapic_v2`: the peers read it through their dataset arguments, our trainer through
  `--data`. (The official script drops ties only when the dataset's name holds
  "pickapic"; the folder's name keeps that filter on without a patch. The drawn pairs
  hold no ties, so it drops none.)
- Every trainer runs in its own process, as `python SCRIPT` would run it, under one
  wrapper (this file with `--child`): fp32, `--batch` pairs a step, no accumulation, no
  validation images, no checkpoint within the run, `--threads` torch threads
  (OMP/MKL/RAYON_NUM_THREADS and torch.set_num_threads), ACCELERATE_USE_CPU. The wrapper
  registers torch's global optimizer-step post-hook and records the clock at every
  optimizer step, so the peers run unchanged and start-up is left out: a step's time
  is the time between two optimizer steps (data, forwards, backward, clipping, optimizer,
  schedule, logging). The first `--warmup` steps are dropped; a run's figure is the
  median of the rest (its fastest step and CPU seconds per step are kept beside it).
- Interleaved rounds, each: official (full), diffusers (LoRA rank 8), ours full, ours
  LoRA rank 8, and the floors (train_throughput's `floor_step`: the bare reference
  forward, policy forward and backward and optimizer step on one batch in memory, full
  and LoRA). Medians over rounds with their min-max, pairs/s, seconds from the wrapper's
  start to the first step (loading, data preparation, one step), each process's peak RSS
  (its own ru_maxrss at its last step), the load average before and after each run, the
  cores other processes kept busy during it (/proc/stat less the trainer's own CPU
  time), and the ratios of pairs/s. Two threads on two cores collapse when anything else
  runs (a step 10-30 times slower), so figures compare only where `others_cores` is near
  0 for every run.
- `--profile`: one more process per trainer, with torch.profiler around the step after
  the warm-up; the table of the top 15 operators by self CPU time goes to a file each.

Prints JSON on stdout; progress on stderr. Docs: docs/BENCHMARKS.md, "Against the peers".
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import resource
import runpy
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import torch
from PIL import Image
from torch.optim.optimizer import register_optimizer_step_post_hook

REPO = Path(__file__).resolve().parents[1]
BENCHMARKS = REPO / "benchmarks"
TOY_PIPELINE = REPO / "models" / "toy" / "pipeline"

# --size: the pipeline every trainer starts from, its resolution, and whether gradient
# checkpointing is on; "sd15" and "tiny" are built by benchmarks/real_sizes.py. Defaults
# of --pairs and --batch per size: a real-size step is one pair, as in docs' "Real sizes".
SIZES = {
    "toy": {"resolution": 32, "checkpointing": False, "pairs": 256, "batch": 16},
    "sd15": {"resolution": 512, "checkpointing": True, "pairs": 4, "batch": 1},
    "tiny": {"resolution": 64, "checkpointing": True, "pairs": 4, "batch": 1},
}

# The peers: their file names in the --peers folder and where they come from.
PEERS = {
    "official": ("train.py", "SalesforceAIResearch/DiffusionDPO"),
    "diffusers": ("train_diffusion_dpo.py",
                  "huggingface/diffusers examples/research_projects/diffusion_dpo"),
}

# (peer, why, old text, new text): what must change for a peer to run here, and nothing
# else. docs/BENCHMARKS.md states each in words.
PATCHES: list[tuple[str, str, str, str]] = [
    ("official", "torchvision is not installed beside this CPU torch: its transforms come "
                 "from a stand-in in benchmarks/peers.py (PIL resize, crop, flip; tensor; "
                 "normalize), as torchvision does them on PIL images",
     "from torchvision import transforms\n",
     "from peers import transforms  # torchvision stand-in (benchmarks/peers.py)\n"),
    ("official", "torchvision's crop (imported for SDXL only) comes from the stand-in",
     "from torchvision.transforms.functional import crop\n",
     "from peers import crop  # torchvision stand-in (benchmarks/peers.py)\n"),
    ("official", "the script refuses to run without xformers, which has no CPU build: it "
                 "runs with diffusers' default attention instead",
     '    else:\n        raise ValueError("xformers is not available. Make sure it is '
     'installed correctly")\n',
     "    else:\n        pass  # no xformers on a CPU: diffusers' default attention\n"),
    ("diffusers", "wandb is not installed here; the script imports it unconditionally but "
                  "uses it only to log validation images, which this benchmark leaves off",
     "import wandb\n",
     "wandb = None  # not installed; only validation images use it\n"),
    ("diffusers", "torchvision is not installed: the same transforms stand-in",
     "from torchvision import transforms\n",
     "from peers import transforms  # torchvision stand-in (benchmarks/peers.py)\n"),
]

TRAINERS = {
    "official": "official train.py: full UNet, frozen reference copy; VAE and text "
                "encoder every step",
    "diffusers": "diffusers train_diffusion_dpo.py: LoRA rank 8, reference = adapters off; "
                 "VAE and text encoder every step",
    "ours_full": "python -m train toy: full UNet, frozen reference copy; cached latents",
    "ours_lora": "python -m train toy --lora_rank 8: reference = adapters off; cached "
                 "latents",
    "floor_full": "bare step, full: reference forward, policy forward and backward, AdamW",
    "floor_lora": "bare step, LoRA rank 8",
}
RATIOS = [("ours_full", "official"), ("ours_lora", "diffusers"), ("ours_full", "floor_full"),
          ("ours_lora", "floor_lora"), ("official", "floor_full"),
          ("diffusers", "floor_lora")]


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def fail(message: str) -> None:
    """Stop with one line on stderr."""
    say(f"error: {message}")
    sys.exit(1)


# --- torchvision's transforms as the peers use them, on PIL images ---------------------
# The peers build Compose([Resize, CenterCrop | RandomCrop, Lambda | RandomHorizontalFlip,
# ToTensor, Normalize]) and apply it to PIL images; torchvision's PIL path does each step
# with PIL (bilinear resize of the shorter side, crop box, left-right transpose), then a
# float tensor in [0, 1] and (x - mean) / std. Random draws use torch's generator, as
# torchvision's do.
class Compose:
    def __init__(self, steps):
        self.steps = steps

    def __call__(self, image):
        for step in self.steps:
            image = step(image)
        return image


class Resize:
    """The shorter side to `size`, the other in proportion (torchvision's int rule)."""

    def __init__(self, size: int, interpolation=Image.BILINEAR):
        self.size, self.interpolation = size, interpolation

    def __call__(self, image: Image.Image) -> Image.Image:
        w, h = image.size
        short, long = (w, h) if w <= h else (h, w)
        if short == self.size:
            return image
        new_short, new_long = self.size, int(self.size * long / short)
        new = (new_short, new_long) if w <= h else (new_long, new_short)
        return image.resize(new, self.interpolation)


class CenterCrop:
    def __init__(self, size: int):
        self.size = size

    def __call__(self, image: Image.Image) -> Image.Image:
        w, h = image.size
        top, left = int(round((h - self.size) / 2.0)), int(round((w - self.size) / 2.0))
        return image.crop((left, top, left + self.size, top + self.size))


class RandomCrop(CenterCrop):
    def __call__(self, image: Image.Image) -> Image.Image:
        w, h = image.size
        top = int(torch.randint(0, h - self.size + 1, (1,)))
        left = int(torch.randint(0, w - self.size + 1, (1,)))
        return image.crop((left, top, left + self.size, top + self.size))


class RandomHorizontalFlip:
    def __call__(self, image: Image.Image) -> Image.Image:
        if torch.rand(1) < 0.5:
            return image.transpose(Image.FLIP_LEFT_RIGHT)
        return image


class Lambda:
    def __init__(self, function):
        self.function = function

    def __call__(self, image):
        return self.function(image)


class ToTensor:
    def __call__(self, image: Image.Image) -> torch.Tensor:
        array = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8)
        channels = len(image.getbands())
        return array.view(image.size[1], image.size[0], channels).permute(2, 0, 1).float() / 255


class Normalize:
    def __init__(self, mean, std):
        self.mean, self.std = torch.tensor(mean), torch.tensor(std)

    def __call__(self, tensor: torch.Tensor) -> torch.Tensor:
        return (tensor - self.mean[:, None, None]) / self.std[:, None, None]


transforms = SimpleNamespace(
    Compose=Compose, Resize=Resize, CenterCrop=CenterCrop, RandomCrop=RandomCrop,
    RandomHorizontalFlip=RandomHorizontalFlip, Lambda=Lambda, ToTensor=ToTensor,
    Normalize=Normalize, InterpolationMode=SimpleNamespace(BILINEAR=Image.BILINEAR),
)


def crop(image: Image.Image, top: int, left: int, height: int, width: int) -> Image.Image:
    """torchvision.transforms.functional.crop on a PIL image."""
    return image.crop((left, top, left + width, top + height))


# --- the peers: found, copied, patched ---------------------------------------------------
def peer_sources(folder: str | None, trainers: list[str]) -> dict[str, Path] | str:
    """Each peer's script in `folder` (none where `trainers` names no peer), or why the
    benchmark skips."""
    if not set(trainers) & set(PEERS):
        return {}
    if not folder:
        return "no --peers folder given: the peers' scripts are not in this repository"
    missing = [name for name, _ in PEERS.values() if not (Path(folder) / name).is_file()]
    if missing:
        return f"{folder} lacks {', '.join(missing)} (how to get them: benchmarks/peers.py)"
    return {peer: Path(folder) / name for peer, (name, _) in PEERS.items()}


def patched(peer: str, text: str) -> str:
    """The peer's text with its PATCHES applied; each must match exactly once."""
    for owner, why, old, new in PATCHES:
        if owner != peer:
            continue
        found = text.count(old)
        if found != 1:
            fail(f"{peer}: the patch '{why[:60]}...' matched {found} times, not once: the "
                 "upstream script changed; update PATCHES in benchmarks/peers.py")
        text = text.replace(old, new)
    return text


def install_peers(sources: dict[str, Path], work: Path) -> dict[str, Path]:
    """Patched copies of the peers in work/peers/."""
    folder = work / "peers"
    folder.mkdir(parents=True, exist_ok=True)
    copies = {}
    for peer, source in sources.items():
        copies[peer] = folder / source.name
        copies[peer].write_text(patched(peer, source.read_text()))
    return copies


# --- the pairs ----------------------------------------------------------------------------
def make_pipeline(work: Path, size: str) -> Path:
    """The pipeline every trainer starts from: the toy's, or a random one real_sizes.py
    writes (in its own process, as real_sizes.py does)."""
    if size == "toy":
        return TOY_PIPELINE
    folder = work / "pipeline"
    subprocess.run([sys.executable, str(BENCHMARKS / "real_sizes.py"), "--build", str(folder)]
                   + (["--tiny"] if size == "tiny" else []), check=True, stdout=sys.stderr)
    return folder


def make_pairs(work: Path, pairs: int, size: str) -> Path:
    """Pairs in a store, exported as Pick-a-Pic v2 parquet; the export's folder. The toy
    draws its shapes; a built pipeline's pairs are noise at its resolution."""
    # imported here, not at the top: the peers' processes import this file for the
    # transforms stand-in and should hold nothing of this project's
    sys.path.insert(0, str(BENCHMARKS))
    if size == "toy":
        from train_throughput import drawn_pairs

        drawn_pairs(work / "pairs.duckdb", pairs)
    else:
        from real_sizes import noise_pairs

        noise_pairs(work / "pairs.duckdb", pairs, SIZES[size]["resolution"])
    exported = work / "pickapic_v2"
    subprocess.run([sys.executable, "-m", "data", "export", str(exported), "--db",
                    str(work / "pairs.duckdb")], cwd=REPO, check=True,
                   stdout=sys.stderr)
    return exported


# --- what each trainer runs -------------------------------------------------------------
def trainer_specs(name: str, peers: dict[str, Path], data: Path, run: Path,
                  args: argparse.Namespace, steps: int) -> dict:
    """The wrapper's spec for one trainer: a script or module and its arguments. Ours
    runs without its moving average (the peers keep none)."""
    size = SIZES[args.size]
    resolution, checkpointing = str(size["resolution"]), size["checkpointing"]
    batch, common_peer = str(args.batch), [
        "--pretrained_model_name_or_path", str(args.pipeline), "--dataset_name", str(data),
        "--resolution", resolution, "--train_batch_size", str(args.batch),
        "--gradient_accumulation_steps", "1", "--max_train_steps", str(steps),
        "--mixed_precision", "no", "--learning_rate", "2e-5", "--seed", "0",
        "--output_dir", str(run / "out"), "--cache_dir", str(run / "hf-cache"),
        "--checkpointing_steps", str(steps + 1), "--dataloader_num_workers", "0",
        *(["--gradient_checkpointing"] if checkpointing else []),
    ]
    if name == "official":
        return {"target": str(peers["official"]), "argv": [*common_peer, "--beta_dpo", "5000"]}
    if name == "diffusers":
        return {"target": str(peers["diffusers"]),
                "argv": [*common_peer, "--beta_dpo", "2500", "--rank", "8",
                         "--dataset_split_name", "train"]}
    if name.startswith("ours_"):
        return {"module": "train", "target": "train",
                "argv": ["toy", "--model", str(args.pipeline), "--resolution", resolution,
                         "--gradient_checkpointing", str(checkpointing).lower(),
                         "--ema_decay", "0", "--beta", "5000", "--data", str(data),
                         "--output_dir", str(run / "out"),
                         "--cache_dir", str(run / "cache"), "--max_steps", str(steps),
                         "--batch_size", batch, "--effective_batch", batch,
                         "--mixed_precision", "no", "--eval_every", "0",
                         "--checkpoint_every", "0", "--holdout_pairs", "0", "--seed", "0",
                         "--lora_rank", "8" if name == "ours_lora" else "0"]}
    return {"target": str(Path(__file__).resolve()),
            "argv": ["--floor", name.removeprefix("floor_"), "--data", str(data),
                     "--out", str(run / "out"), "--steps", str(steps), "--batch", batch]}


def child_env(threads: int, run: Path) -> dict[str, str]:
    """One thread budget and offline, CPU-only settings for every trainer alike."""
    env = dict(os.environ)
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "RAYON_NUM_THREADS"):
        env[name] = str(threads)
    env.update(ACCELERATE_USE_CPU="true", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1",
               HF_DATASETS_CACHE=str(run / "hf-datasets"))
    return env


# --- the wrapper: one trainer in this process, the clock at each optimizer step ----------
def child(spec_path: Path) -> None:
    """Run the spec's script or module as `python` would, recording the time of every
    optimizer step (torch's global post-hook: nothing in the trainer changes), this
    process's peak RSS at each, and a profile of one step if asked."""
    spec = json.loads(spec_path.read_text())
    torch.set_num_threads(spec["threads"])
    began = time.perf_counter()
    record: dict = {"step_times": [], "cpu_times": [], "threads": None, "peak_rss_mb": None}
    profile_step = spec.get("profile_step")
    profiler: list = []

    def after_step(optimizer, args, kwargs) -> None:
        times = record["step_times"]
        times.append(time.perf_counter() - began)
        usage = resource.getrusage(resource.RUSAGE_SELF)
        record["cpu_times"].append(usage.ru_utime + usage.ru_stime)
        record["peak_rss_mb"] = usage.ru_maxrss // 1024
        record["threads"] = torch.get_num_threads()
        if profile_step and len(times) == profile_step - 1:
            profiler.append(torch.profiler.profile(
                activities=[torch.profiler.ProfilerActivity.CPU]))
            profiler[0].start()
        elif profile_step and len(times) == profile_step and profiler:
            profiler[0].stop()
            record["profile"] = profile_report(profiler[0], Path(spec["profile_out"]))

    register_optimizer_step_post_hook(after_step)
    sys.argv = [spec["target"], *spec["argv"]]
    code = 0
    try:
        if spec.get("module"):
            sys.path.insert(0, str(REPO))
            runpy.run_module(spec["target"], run_name="__main__", alter_sys=True)
        else:
            sys.path.insert(0, str(Path(spec["target"]).parent))
            runpy.run_path(spec["target"], run_name="__main__")
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
    finally:
        Path(spec["result"]).write_text(json.dumps(record))
    sys.exit(code)


def profile_report(profiler, out: Path) -> list[list]:
    """The top 15 operators by self CPU time to `out`, then the top 15 by total CPU time
    (what each calls included: the data loader's and the optimizer's whole share); the
    top 10 by self CPU time as [name, ms]."""
    averages = profiler.key_averages()
    out.write_text("By self CPU time:\n"
                   + averages.table(sort_by="self_cpu_time_total", row_limit=15)
                   + "\nBy total CPU time (with what each calls):\n"
                   + averages.table(sort_by="cpu_time_total", row_limit=15))
    top = sorted(averages, key=lambda e: e.self_cpu_time_total, reverse=True)[:10]
    return [[event.key, round(event.self_cpu_time_total / 1000, 1)] for event in top]


# --- the floor: train_throughput's bare step, run under the same wrapper -----------------
def floor(mode: str, data: Path, out: Path, steps: int, batch: int) -> None:
    """`steps` bare steps on one batch already in memory (train_throughput.floor_step)."""
    sys.path.insert(0, str(BENCHMARKS))
    from train_throughput import fixed_batch, floor_step, make_run

    torch.manual_seed(0)
    run = make_run(data, out, 8 if mode == "lora" else 0, batch)
    fixed = fixed_batch(run)
    for _ in range(steps):
        floor_step(run, fixed)


# --- the parent: runs, rounds, figures ----------------------------------------------------
def busy_cpu_seconds() -> float | None:
    """CPU seconds all cores have spent busy since boot (/proc/stat); None off Linux."""
    try:
        fields = [int(f) for f in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    except OSError:
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_trainer(name: str, spec: dict, run: Path, threads: int) -> dict:
    """One trainer in its own process under the wrapper: its step times, peak RSS, the
    load average before and after, and how many cores other processes kept busy
    meanwhile (the machine's busy time less the trainer's own: the load average counts
    this benchmark's previous run too)."""
    run.mkdir(parents=True)
    spec = {**spec, "threads": threads, "result": str(run / "result.json")}
    (run / "spec.json").write_text(json.dumps(spec, indent=1))
    load_before = os.getloadavg()
    busy_before, own_before = busy_cpu_seconds(), children_cpu_seconds()
    started = time.perf_counter()
    with open(run / "log.txt", "w") as log:
        done = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child",
                               str(run / "spec.json")], cwd=run, env=child_env(threads, run),
                              stdout=log, stderr=subprocess.STDOUT)
    wall = time.perf_counter() - started
    busy_after, own = busy_cpu_seconds(), children_cpu_seconds() - own_before
    others = None if busy_before is None else (busy_after - busy_before - own) / wall
    if done.returncode != 0:
        say((run / "log.txt").read_text()[-3000:])
        fail(f"{name} exited with {done.returncode}; its log: {run / 'log.txt'}")
    record = json.loads((run / "result.json").read_text())
    record.update(wall_s=round(wall, 2), load_before=[round(x, 2) for x in load_before],
                  load_after=[round(x, 2) for x in os.getloadavg()],
                  others_cores=None if others is None else round(max(others, 0.0), 2))
    return record


def step_seconds(times: list[float], warmup: int) -> list[float]:
    """Each step's seconds (clock at its optimizer step minus the previous one's), from
    the step after the first `warmup`."""
    return [b - a for a, b in zip(times[warmup - 1:], times[warmup:], strict=False)]


def summarise_run(record: dict, warmup: int, steps: int) -> dict:
    times = record["step_times"]
    if len(times) != steps:
        fail(f"expected {steps} optimizer steps, saw {len(times)}")
    measured = step_seconds(times, warmup)
    cpu = step_seconds(record["cpu_times"], warmup)
    return {"s_per_step": round(statistics.median(measured), 4),
            "fastest_step_s": round(min(measured), 4),
            "cpu_s_per_step": round(statistics.median(cpu), 4),
            "first_step_s": round(times[0], 2), "wall_s": record["wall_s"],
            "peak_rss_mb": record["peak_rss_mb"], "threads": record["threads"],
            "load_before": record["load_before"], "load_after": record["load_after"],
            "others_cores": record["others_cores"]}


def spread(values: list[float], digits: int) -> dict:
    return {"median": round(statistics.median(values), digits),
            "min": round(min(values), digits), "max": round(max(values), digits)}


def summarise(runs: dict[str, list[dict]], batch: int) -> dict:
    """Per trainer: s/step and pairs/s (median and min-max over rounds), start-up, RSS."""
    out = {}
    for name, records in runs.items():
        seconds = [r["s_per_step"] for r in records]
        out[name] = {
            "what": TRAINERS[name],
            "s_per_step": spread(seconds, 4),
            "pairs_per_s": spread([batch / s for s in seconds], 4),
            "fastest_step_s": round(min(r["fastest_step_s"] for r in records), 4),
            "cpu_s_per_step": spread([r["cpu_s_per_step"] for r in records], 4),
            "first_step_s": spread([r["first_step_s"] for r in records], 2),
            "peak_rss_mb": spread([r["peak_rss_mb"] for r in records], 0),
            "runs": records,
        }
    return out


def machine_load(runs: dict[str, list[dict]]) -> dict:
    """The range of the 1-minute load average before the runs, and of the cores other
    processes kept busy during them: the figures compare only on a quiet machine."""
    records = [r for rs in runs.values() for r in rs]
    others = [r["others_cores"] for r in records if r["others_cores"] is not None]
    return {"load_1min_before": spread([r["load_before"][0] for r in records], 2),
            "others_cores": spread(others, 2) if others else None}


def ratios(trainers: dict) -> dict[str, float]:
    """Pairs/s of one over the other, from the median seconds a step (every trainer takes
    the same pairs a step): above 1, the first is faster."""
    return {f"{a}/{b}": round(trainers[b]["s_per_step"]["median"]
                              / trainers[a]["s_per_step"]["median"], 3)
            for a, b in RATIOS if a in trainers and b in trainers}


def peer_versions(sources: dict[str, Path]) -> dict:
    """Which files were measured (sha256) and the libraries they ran on."""
    import accelerate
    import diffusers
    import peft
    import transformers

    files = {peer: {"from": PEERS[peer][1], "file": path.name,
                    "sha256": hashlib.sha256(path.read_bytes()).hexdigest()[:16]}
             for peer, path in sources.items()}
    files["libraries"] = {"torch": torch.__version__, "diffusers": diffusers.__version__,
                          "accelerate": accelerate.__version__,
                          "transformers": transformers.__version__,
                          "peft": peft.__version__}
    return files


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peers", help="folder with train.py and train_diffusion_dpo.py")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=20, help="optimizer steps per run")
    parser.add_argument("--warmup", type=int, default=2, help="first steps left out")
    parser.add_argument("--size", choices=list(SIZES), default="toy",
                        help="the model every trainer starts from (see the docstring)")
    parser.add_argument("--pairs", type=int, help="pairs drawn (default: 256 toy, 4 else)")
    parser.add_argument("--batch", type=int, help="pairs per step (default: 16 toy, 1 else)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads per process")
    parser.add_argument("--only", nargs="+", choices=list(TRAINERS),
                        help="run these trainers only (default: all; no floors but at toy "
                             "size)")
    parser.add_argument("--profile", action="store_true",
                        help="also profile one step of each (tables under WORK/profiles)")
    parser.add_argument("--work", help="work folder (default: a new temporary one)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--floor", choices=["full", "lora"], help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    size = SIZES[args.size]
    args.pairs = args.pairs or size["pairs"]
    args.batch = args.batch or size["batch"]
    args.only = args.only or [name for name in TRAINERS
                              if args.size == "toy" or not name.startswith("floor_")]
    return args

def timed_rounds(args: argparse.Namespace, peers: dict[str, Path], data: Path,
                 work: Path) -> dict[str, list[dict]]:
    """Every trainer once a round, in the same order, so that a change in the machine's
    load falls on all of them; each run's figures."""
    runs: dict[str, list[dict]] = {name: [] for name in args.only}
    for round_ in range(args.rounds):
        for name in args.only:
            run = work / f"round{round_}" / name
            record = run_trainer(name, trainer_specs(name, peers, data, run, args, args.steps),
                                 run, args.threads)
            last = {"round": round_, **summarise_run(record, args.warmup, args.steps)}
            runs[name].append(last)
            say(f"round {round_ + 1}/{args.rounds} {name}: {last['s_per_step']} s/step, "
                f"first step at {last['first_step_s']} s, other processes "
                f"{last['others_cores']} cores")
    return runs


def profiles(args: argparse.Namespace, peers: dict[str, Path], data: Path,
             work: Path) -> dict[str, dict]:
    """One step of each trainer under torch.profiler: the step after the warm-up."""
    folder = work / "profiles"
    folder.mkdir(exist_ok=True)
    step = args.warmup + 1
    out = {}
    for name in args.only:
        run = work / "profile" / name
        spec = {**trainer_specs(name, peers, data, run, args, step), "profile_step": step,
                "profile_out": str(folder / f"{name}.txt")}
        record = run_trainer(name, spec, run, args.threads)
        times = record["step_times"]
        out[name] = {"table": spec["profile_out"], "step_s": round(times[-1] - times[-2], 4),
                     "top_self_cpu_ms": record.get("profile")}
        say(f"profile {name}: {spec['profile_out']}")
    return out


def main() -> None:
    args = parse_args()
    if args.child:
        return child(Path(args.child))
    if args.floor:
        return floor(args.floor, Path(args.data), Path(args.out), args.steps, args.batch)
    if args.size != "toy" and any(name.startswith("floor_") for name in args.only):
        fail("the floors run at --size toy only: leave floor_full and floor_lora out of --only")
    sources = peer_sources(args.peers, args.only)
    if isinstance(sources, str):
        print(json.dumps({"benchmark": "peers", "skipped": sources}))
        return
    if args.steps < args.warmup + 2:
        fail(f"--steps must be at least --warmup + 2 = {args.warmup + 2}")
    work = Path(args.work or tempfile.mkdtemp(prefix="peers-bench-"))
    say(f"work folder: {work}")
    peers = install_peers(sources, work)
    args.pipeline = make_pipeline(work, args.size)
    data = make_pairs(work, args.pairs, args.size)
    runs = timed_rounds(args, peers, data, work)
    trainers = summarise(runs, args.batch)
    result = {
        "benchmark": "peers",
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "size": args.size, "resolution": SIZES[args.size]["resolution"],
        "gradient_checkpointing": SIZES[args.size]["checkpointing"],
        "threads": args.threads, "batch_pairs": args.batch, "pairs": args.pairs,
        "steps_per_run": args.steps, "warmup_steps": args.warmup, "rounds": args.rounds,
        "peers": peer_versions(sources),
        "patches": [{"peer": peer, "why": why} for peer, why, _, _ in PATCHES],
        "trainers": trainers,
        "pairs_per_s_ratios": ratios(trainers),
        "machine_load": machine_load(runs),
        "work": str(work),
    }
    if args.profile:
        result["profiles"] = profiles(args, peers, data, work)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
