"""Fixed-prompt, fixed-seed samples during training: a grid to look at, a score to log.

Implicit accuracy cannot tell a run that improves the model from one that destroys it
(both rise), so the trainer also generates the same images every N steps and scores them
with a scorer from the model layer. Prompt embeddings are computed once at the start, so
the text encoders need not stay in memory.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image, ImageDraw

from models.scorers import checked_scores
from train.cache import Texts

CHUNK = 16  # images per pipeline call


@dataclass
class SamplePrompts:
    prompts: list[str]
    texts: Texts  # one row per prompt
    negative: Texts  # one row: the unconditional embedding


def _rows(texts: Texts, index: torch.Tensor) -> list[torch.Tensor]:
    """Rows `index` of variable-length texts, each cut to its own length."""
    return [texts.embeds[i, :texts.lengths[i]] for i in index.tolist()]


def text_inputs(pipeline, kind: str, prompts: SamplePrompts, index: torch.Tensor,
                dtype: torch.dtype) -> dict:
    """The pipeline call's text arguments for prompts `index` (one image each), in each
    pipeline's own form; the negative (the unconditional embedding) where it takes one."""
    import inspect

    device, n = pipeline.device, len(index)

    def to(tensor: torch.Tensor) -> torch.Tensor:
        return tensor.to(device, dtype)

    texts, negative = prompts.texts, prompts.negative
    if kind == "zimage":  # lists of [L_i, D]
        return {"prompt_embeds": [to(r) for r in _rows(texts, index)],
                "negative_prompt_embeds": [to(r) for r in _rows(negative, torch.zeros(
                    n, dtype=torch.long))]}
    if kind == "qwenimage":  # padded, with masks
        embeds = to(texts.embeds[index])
        mask = torch.arange(embeds.shape[1]) < texts.lengths[index, None]
        empty = to(negative.embeds[:, :negative.lengths[0]]).expand(n, -1, -1)
        return {"prompt_embeds": embeds, "prompt_embeds_mask": mask.long().to(device),
                "negative_prompt_embeds": empty,
                "negative_prompt_embeds_mask": torch.ones(empty.shape[:2], dtype=torch.long,
                                                          device=device)}
    inputs = {"prompt_embeds": to(texts.embeds[index])}
    takes = inspect.signature(pipeline.__call__).parameters
    if "negative_prompt_embeds" in takes and kind != "flux":  # FLUX.1: no negative
        inputs["negative_prompt_embeds"] = to(negative.embeds).expand(n, -1, -1)
    if texts.pooled is not None:
        inputs["pooled_prompt_embeds"] = to(texts.pooled[index])
        if kind != "flux":
            inputs["negative_pooled_prompt_embeds"] = to(negative.pooled).expand(n, -1)
    return inputs


@torch.inference_mode()
def generate(pipeline, kind: str, prompts: SamplePrompts, seeds: int, steps: int,
             guidance: float, resolution: int, seed_start: int = 0) -> list[list[Image.Image]]:
    """images[p][s]: prompt p with seed seed_start + s, the same every time for the same
    weights. `guidance` in the pipeline's own convention (FLUX.1 and FLUX.2 dev: its
    guidance input; Qwen-Image: its true CFG scale)."""
    from models.loading import denoiser_part

    jobs = [(p, seed_start + s) for p in range(len(prompts.prompts)) for s in range(seeds)]
    dtype = next(getattr(pipeline, denoiser_part(kind)).parameters()).dtype
    images: list[list[Image.Image]] = [[] for _ in prompts.prompts]
    guidance_name = "true_cfg_scale" if kind == "qwenimage" else "guidance_scale"
    for start in range(0, len(jobs), CHUNK):
        chunk = jobs[start:start + CHUNK]
        index = torch.tensor([p for p, _ in chunk])
        out = pipeline(
            generator=[torch.Generator("cpu").manual_seed(s) for _, s in chunk],
            num_inference_steps=steps, height=resolution, width=resolution,
            **{guidance_name: guidance}, **text_inputs(pipeline, kind, prompts, index, dtype),
        ).images
        for (p, _), image in zip(chunk, out, strict=True):
            images[p].append(image)
    return images


def grid(images: list[list[Image.Image]], prompts: list[str], title: str) -> Image.Image:
    """One row per prompt, one column per seed, the prompt written on the left."""
    cell = max(96, min(256, images[0][0].width))
    label, header = 220, 24
    rows, cols = len(images), len(images[0])
    sheet = Image.new("RGB", (label + cols * cell, header + rows * cell), "white")
    pen = ImageDraw.Draw(sheet)
    pen.text((6, 6), title, fill="black")
    for r, (row, prompt) in enumerate(zip(images, prompts, strict=True)):
        text = prompt if len(prompt) <= 34 else prompt[:33] + "..."
        pen.text((6, header + r * cell + cell // 2 - 6), text, fill="black")
        for c, image in enumerate(row):
            resample = Image.NEAREST if image.width < cell else Image.BICUBIC
            sheet.paste(image.resize((cell, cell), resample), (label + c * cell, header + r * cell))
    return sheet


def score(scorer, name: str, images: list[list[Image.Image]], prompts: list[str]) -> float:
    """The mean checked score of all samples (a ModelError naming `name` if unusable)."""
    flat_prompts = [p for p, row in zip(prompts, images, strict=True) for _ in row]
    flat_images = [image for row in images for image in row]
    scores = checked_scores(scorer, name, flat_prompts, flat_images)
    return sum(scores) / len(scores)


def save_grid(sheet: Image.Image, folder: Path, step: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"step-{step:06d}.png"
    sheet.save(path)
    return path


def plot_scores(rows: list[dict], path: Path, scorer: str | None) -> Path | None:
    """The sample score and every guard score against the step, on one chart (`rows`:
    eval.jsonl's); None when there is nothing to draw."""
    names = [n for n in ("sample_score", *sorted({k for r in rows for k in r
                                                   if k.startswith("guard_")}))
             if any(n in r for r in rows)]
    if not names:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 3.5), dpi=100)
    guard_axes = axes.twinx() if len(names) > 1 and names[0] == "sample_score" else axes
    lines = []
    for index, name in enumerate(names):
        points = [(r["step"], r[name]) for r in rows if name in r]
        label = (scorer or "score") if name == "sample_score" else \
            f"guard: {name.removeprefix('guard_')}"
        on = axes if name == "sample_score" else guard_axes
        lines += on.plot(*zip(*points, strict=True), marker="o", label=label,
                         color=f"C{index}")
    axes.set_xlabel("step")
    axes.set_ylabel(scorer or "score")
    axes.set_title("mean scores of the fixed-seed samples", fontsize=10)
    if guard_axes is not axes:
        guard_axes.set_ylabel("guard scores")
    axes.legend(lines, [line.get_label() for line in lines], loc="best")
    axes.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    return path
