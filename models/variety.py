"""How the two images of a pair differ: the settings `annotate` and `annotate feedback`
draw pairs with (flags there, through cli/parser.py), kept free of torch."""

from __future__ import annotations

import random
from dataclasses import dataclass

from cli.errors import UsageError
from cli.parser import setting

DEFAULT_GUIDANCE = 7.5


@dataclass(frozen=True)
class PairVariety:
    """How the two images of a pair differ.

    Seeds always differ (drawn from `rng` unless given). Guidance is `guidance` for both,
    or, with `guidance_range`, drawn per image uniformly from it (Pick-a-Pic drew
    U(3, 12)). Two models in `generate_pair` make the third kind of variety.
    """

    guidance: float = setting("guidance scale of both images", DEFAULT_GUIDANCE, metavar="G")
    guidance_range: list[float] | None = setting(
        "draw each image's guidance uniformly from LOW..HIGH (Pick-a-Pic drew 3..12)", None,
        nargs=2, metavar=("LOW", "HIGH"))
    steps: int = setting("sampling steps", 20, metavar="N")
    size: int | None = setting("image side in pixels, a multiple of 16 (default: the model's "
                               "own: 512 for SD1.5, 1024 for SDXL, SD3, FLUX, Qwen-Image and "
                               "Z-Image)", None, metavar="PX")

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise UsageError("--steps must be at least 1")
        if self.size is not None and (self.size < 16 or self.size % 16):
            raise UsageError(f"--size {self.size}: give a multiple of 16, e.g. 512 or 1024")
        if self.guidance_range is None:
            return
        if self.guidance != DEFAULT_GUIDANCE:
            raise UsageError("give --guidance (both images) or --guidance-range (each its "
                             "own), not both")
        if len(self.guidance_range) != 2:
            raise UsageError("--guidance-range takes two numbers, LOW HIGH")
        low, high = self.guidance_range
        if not 1 < low <= high:
            raise UsageError("--guidance-range LOW HIGH needs 1 < LOW <= HIGH")
        object.__setattr__(self, "guidance_range", (low, high))  # frozen: hashable

    def draw(self, rng: random.Random) -> tuple[list[int], list[float]]:
        seeds = [rng.randrange(2**31), rng.randrange(2**31)]
        if self.guidance_range is None:
            return seeds, [self.guidance, self.guidance]
        low, high = self.guidance_range
        return seeds, [round(rng.uniform(low, high), 2), round(rng.uniform(low, high), 2)]

    def variety(self) -> PairVariety:
        """These settings alone (a command's config holds more)."""
        return PairVariety(self.guidance, self.guidance_range, self.steps, self.size)
