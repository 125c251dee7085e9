"""The toy world: captioned images of one coloured shape on a white background.

Six colours and three shapes make 18 captions ("a red circle"). Each image is drawn at
four times its size and downsampled, so edges are antialiased like a generated image's.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 160, 60),
    "blue": (30, 70, 220),
    "yellow": (240, 210, 20),
    "purple": (140, 50, 170),
    "orange": (245, 130, 20),
}
SHAPES = ("circle", "square", "triangle")
BACKGROUND = (255, 255, 255)
IMAGE_SIZE = 32
WORDS = ("a", *COLORS, *SHAPES)


@dataclass(frozen=True)
class ShapeSpec:
    color: str
    shape: str
    center: tuple[float, float]  # in pixels
    radius: float  # half the shape's width, in pixels

    @property
    def caption(self) -> str:
        return caption_for(self.color, self.shape)


def caption_for(color: str, shape: str) -> str:
    return f"a {color} {shape}"


def all_captions() -> list[str]:
    return [caption_for(c, s) for c in COLORS for s in SHAPES]


def parse_caption(caption: str) -> tuple[str | None, str | None]:
    """The colour and shape a caption names (None where it names none)."""
    words = caption.lower().replace(",", " ").split()
    color = next((w for w in words if w in COLORS), None)
    shape = next((w for w in words if w in SHAPES), None)
    return color, shape


def random_spec(rng: random.Random, color: str | None = None, shape: str | None = None,
                size: int = IMAGE_SIZE) -> ShapeSpec:
    radius = rng.uniform(0.2, 0.36) * size
    margin = radius + 1
    center = (rng.uniform(margin, size - margin), rng.uniform(margin, size - margin))
    return ShapeSpec(
        color=color or rng.choice(list(COLORS)), shape=shape or rng.choice(SHAPES),
        center=center, radius=radius,
    )


def draw(spec: ShapeSpec, size: int = IMAGE_SIZE, supersample: int = 4) -> Image.Image:
    big = size * supersample
    image = Image.new("RGB", (big, big), BACKGROUND)
    pen = ImageDraw.Draw(image)
    cx, cy = (c * supersample for c in spec.center)
    r = spec.radius * supersample
    fill = COLORS[spec.color]
    if spec.shape == "circle":
        pen.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif spec.shape == "square":
        s = r * 0.9  # a square of the same area as the others looks the same size
        pen.rectangle([cx - s, cy - s, cx + s, cy + s], fill=fill)
    else:
        pen.polygon([(cx, cy - r), (cx - r, cy + r * 0.8), (cx + r, cy + r * 0.8)], fill=fill)
    return image.resize((size, size), Image.LANCZOS)


def sample_batch(n: int, seed: int, size: int = IMAGE_SIZE) -> tuple[np.ndarray, list[str]]:
    """n images as uint8 (n, size, size, 3) and their captions, the same for a seed."""
    rng = random.Random(seed)
    specs = [random_spec(rng, size=size) for _ in range(n)]
    pixels = np.stack([np.asarray(draw(spec, size)) for spec in specs])
    return pixels, [spec.caption for spec in specs]
