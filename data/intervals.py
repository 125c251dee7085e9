"""The interval of a proportion: how sure a win rate or an accuracy is, given its count.

Shared by every command that reports one (eval's win rates, a judge's held-out accuracy,
a scorer's agreement with people's votes)."""

from __future__ import annotations

import math
from dataclasses import dataclass

Z95 = 1.959963984540054


@dataclass(frozen=True)
class Interval:
    low: float
    high: float

    def contains(self, value: float) -> bool:
        return self.low <= value <= self.high


def wilson(successes: float, n: int, z: float = Z95) -> Interval | None:
    """The Wilson score interval of a proportion (None without observations)."""
    if n == 0:
        return None
    p = successes / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    # at p = 0 or 1 one bound is exactly 0 or 1; say so rather than 0.9999999999999999
    low = 0.0 if successes == 0 else max(0.0, centre - half)
    high = 1.0 if successes == n else min(1.0, centre + half)
    return Interval(low, high)
