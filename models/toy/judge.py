"""The toy judge: does an image show its prompt's colour and shape? From pixels alone.

Foreground is what is far from the white background. Its colour is the palette colour
nearest its median; its shape is read from how much of its bounding box it fills
(square about 1, circle pi/4, triangle 1/2). Soft versions of both give a score in
[0, 1]: the probability that colour and shape are both right.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from models.toy.shapes import COLORS, SHAPES, parse_caption

_PALETTE = np.array(list(COLORS.values()), dtype=np.float32)
_FILL = {"square": 0.99, "circle": 0.77, "triangle": 0.55}  # means on drawn shapes
_COLOR_SCALE = 40.0  # RGB distance at which a colour's odds fall by e
_FILL_SCALE = 0.06


@dataclass(frozen=True)
class Verdict:
    color: str | None  # what the judge sees
    shape: str | None
    color_ok: bool  # whether it is what the prompt asked for
    shape_ok: bool
    score: float  # probability that both are right, in [0, 1]

    @property
    def adherent(self) -> bool:
        return self.color_ok and self.shape_ok


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = np.exp(logits - logits.max())
    return z / z.sum()


def judge(prompt: str, image: Image.Image | np.ndarray) -> Verdict:
    """Whether `image` shows the colour and shape that `prompt` names."""
    want_color, want_shape = parse_caption(prompt)
    pixels = np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image)
    pixels = pixels.astype(np.float32)
    ink = (255.0 - pixels).max(axis=-1)  # how far each pixel is from white
    mask = ink > 100
    if mask.sum() < 4:
        return Verdict(None, None, False, False, 0.0)

    core = ink > 160
    median = np.median(pixels[core if core.sum() >= 4 else mask], axis=0)
    color_p = _softmax(-(((_PALETTE - median) ** 2).sum(axis=1)) / _COLOR_SCALE**2)
    ys, xs = np.nonzero(mask)
    box = (ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1)
    fill = mask.sum() / box
    shape_p = _softmax(np.array([-((fill - _FILL[s]) / _FILL_SCALE) ** 2 for s in SHAPES]))

    color = list(COLORS)[int(color_p.argmax())]
    shape = SHAPES[int(shape_p.argmax())]
    p_color = color_p[list(COLORS).index(want_color)] if want_color else 0.0
    p_shape = shape_p[SHAPES.index(want_shape)] if want_shape else 0.0
    return Verdict(
        color=color, shape=shape, color_ok=color == want_color, shape_ok=shape == want_shape,
        score=float(p_color * p_shape),
    )


def score(prompts: list[str], images: list[Image.Image]) -> torch.Tensor:
    """The scorer interface: one score in [0, 1] per (prompt, image)."""
    return torch.tensor([judge(p, im).score for p, im in zip(prompts, images, strict=True)])
