"""The images an evaluation compares, made once per model and reused.

Both models get the same prompts, seeds, sampler, steps, guidance and size. Images live under
`runs/eval/images/<key>/`, where the key hashes the model's fingerprint (its files'
sizes and times, so a model retrained in place gets new images) and the sampling
settings. File names are hashes of prompt and seed: they name no model.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Callable
from pathlib import Path

from PIL import Image
from tqdm import tqdm

from eval.config import Sampling
from models.generate import generate
from models.launch import ONE_PROCESS, Launch
from models.loading import fingerprint, load

DEFAULT_ROOT = Path("runs/eval/images")


def _hash(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:16]


def image_name(prompt: str, seed: int) -> str:
    return f"{_hash([prompt, seed])}.png"


def model_folder(model: str, sampling: Sampling, root: Path = DEFAULT_ROOT) -> Path:
    settings = [fingerprint(model), sampling.steps, sampling.guidance]
    if sampling.size is not None:  # the model's own size: the key it always had
        settings.append(sampling.size)
    return root / _hash(settings)


def images_for(model: str, prompts: list[str], sampling: Sampling,
               root: Path = DEFAULT_ROOT,
               on_image: Callable[[tuple[str, int], Path], None] | None = None,
               stop: threading.Event | None = None,
               launch: Launch = ONE_PROCESS) -> dict[tuple[str, int], Path]:
    """Paths of every (prompt, seed) image of `model`, generating only what is missing.

    `on_image(key, path)` hears of each image once it exists (those in the cache first),
    so a caller can use images while the rest are made; `stop`, once set, ends the work
    between prompts (the paths of images not made are then absent from the result).
    In a launch of several processes each makes its share of the missing prompts (all
    seeds of a prompt in one call, as one process would) and returns the paths of every
    image, made or not yet: wait for the others before reading them.
    """
    folder = model_folder(model, sampling, root)
    folder.mkdir(parents=True, exist_ok=True)
    wanted = {(p, s): folder / image_name(p, s) for p in dict.fromkeys(prompts)
              for s in range(sampling.seeds)}
    for key, path in wanted.items():
        if path.exists() and on_image:
            on_image(key, path)
    missing = launch.share(sorted({p for (p, s), path in wanted.items() if not path.exists()},
                                  key=prompts.index))
    if missing:
        loaded = load(model, device=launch.device)
        for prompt in tqdm(missing, desc=f"images {Path(model).name}", unit="prompt",
                           disable=not launch.main):
            if stop is not None and stop.is_set():
                return {k: path for k, path in wanted.items() if path.exists()}
            seeds = list(range(sampling.seeds))
            for image in generate(loaded, prompt, seeds, [sampling.guidance] * len(seeds),
                                  sampling.steps, sampling.size, sampling.size):
                path = wanted[(prompt, image.seed)]
                temp = path.with_suffix(".tmp.png")
                image.image.save(temp)
                temp.replace(path)
                if on_image:
                    on_image((prompt, image.seed), path)
    return wanted


def open_image(path: Path) -> Image.Image:
    with Image.open(path) as image:
        return image.convert("RGB")
