"""What oversubscribed CPU threads cost: one training step alone, and beside copies of itself.

    python benchmarks/threads.py                  # 20 steps per process, 3 copies
    python benchmarks/threads.py --steps 5 --copies 2

Each process trains the toy UNet (forward, backward, AdamW on a batch of 32 latents) and
prints its seconds per step after a warm-up. Cases, run one after another: one process
with as many threads as cores; `--copies` such processes at once (more threads than
cores); the same with OpenMP told to sleep rather than spin while it waits
(OMP_WAIT_POLICY=PASSIVE), alone and beside copies; and the copies on one thread each.
The ratio of a case to the process alone is the figure; machines are noisy. Prints JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

STEP = r"""
import sys, time, torch
from diffusers import UNet2DConditionModel
unet = UNet2DConditionModel.from_pretrained(sys.argv[2], subfolder="unet")
latents, timesteps = torch.randn(32, 4, 4, 4), torch.randint(0, 1000, (32,))
text = torch.randn(32, 8, unet.config.cross_attention_dim)
optimizer = torch.optim.AdamW(unet.parameters())
def step():
    unet(latents, timesteps, text).sample.pow(2).mean().backward()
    optimizer.step()
    optimizer.zero_grad()
for _ in range(3):
    step()
start = time.perf_counter()
for _ in range(int(sys.argv[1])):
    step()
print((time.perf_counter() - start) / int(sys.argv[1]))
"""


def run(copies: int, threads: int, steps: int, wait_policy: str | None = None) -> list[float]:
    """Seconds per step of each of `copies` processes started together."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    env.pop("OMP_WAIT_POLICY", None)
    if wait_policy:
        env["OMP_WAIT_POLICY"] = wait_policy
    toy = str(REPO / "models" / "toy" / "pipeline")
    processes = [subprocess.Popen([sys.executable, "-c", STEP, str(steps), toy], env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
                 for _ in range(copies)]
    return [round(float(p.communicate()[0]), 4) for p in processes]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20, help="timed steps per process")
    parser.add_argument("--copies", type=int, default=3, help="processes started together")
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    cases = {
        "alone": (1, cores, None),
        "copies": (args.copies, cores, None),
        "alone_passive": (1, cores, "PASSIVE"),
        "copies_passive": (args.copies, cores, "PASSIVE"),
        "copies_one_thread": (args.copies, 1, None),
    }
    load_before = os.getloadavg()[0]
    seconds = {name: run(copies, threads, args.steps, policy)
               for name, (copies, threads, policy) in cases.items()}
    alone = seconds["alone"][0]
    print(json.dumps({
        "benchmark": "threads", "cores": cores, "copies": args.copies, "steps": args.steps,
        "date": time.strftime("%Y-%m-%d"),
        "load_before_after": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "seconds_per_step": seconds,
        "slowdown_over_alone": {name: round(statistics.median(s) / alone, 2)
                                for name, s in seconds.items()},
    }, indent=1))


if __name__ == "__main__":
    main()
