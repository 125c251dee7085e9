"""How often each scorer agrees with people's votes: the number a team reads before it lets
AI feedback (a public reward model, or its own judge) stand in for its annotators.

The pairs are the store's decisive votes by people (every source but ai:*), one per vote,
less every pair that a judge named among the scorers trained on (its folder lists them),
so a judge is never scored on its own training data. A scorer agrees with a vote where it
scores the person's choice higher; equal scores count one half. Intervals are Wilson 95%
over votes (several votes on one prompt are not independent: read them as a lower bound
on the uncertainty).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cli.errors import DataError
from data.intervals import Interval, wilson
from data.pairs import StorePairs, pair_key
from models.scorers import JUDGE_PAIRS, Scorer, checked_scores


@dataclass(frozen=True)
class Agreement:
    scorer: str
    pairs: int
    agreed: float  # votes the scorer agrees with, a score tie counting one half
    rate: float | None
    interval: Interval | None


def trained_pairs(scorers: Sequence[str]) -> set[int]:
    """The pair keys (data.pairs.pair_key) that the judges among `scorers` trained on."""
    keys: set[int] = set()
    for name in scorers:
        listed = Path(name) / JUDGE_PAIRS
        if listed.is_file():
            keys.update(np.load(listed).tolist())
    return keys


def people_pairs(db: str | Path, exclude: set[int], max_pairs: int, seed: int) -> _Chosen:
    """The store's decisive votes by people, less the `exclude`d pairs; at most
    `max_pairs` of them, drawn with `seed` (all, in storage order, when fewer)."""
    pairs = StorePairs(db, split=None)
    keep = [i for i in range(len(pairs))
            if (prov := pairs.describe(i)[1]).by_people
            and pair_key(prov.preferred_uid, prov.rejected_uid) not in exclude]
    if not keep:
        raise DataError(f"{db} holds no decisive vote by people that no named judge trained "
                        "on: collect votes (python -m annotate) and measure on those")
    if len(keep) > max_pairs:
        keep = sorted(np.random.default_rng(seed).choice(keep, max_pairs, replace=False))
    return _Chosen(pairs, keep)


class _Chosen:
    def __init__(self, pairs: StorePairs, indices: list[int]):
        self.pairs, self.indices = pairs, indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, k: int):
        return self.pairs[self.indices[k]]


def agreement(pairs, scorers: dict[str, Scorer], batch: int, chunk: int = 256) -> list[Agreement]:
    """Each scorer's agreement with the people's choice on `pairs` (winner first)."""
    agreed = dict.fromkeys(scorers, 0.0)
    for start in range(0, len(pairs), chunk):
        items = [pairs[k] for k in range(start, min(start + chunk, len(pairs)))]
        prompts = [item.caption for item in items for _ in (0, 1)]
        images = [image for item in items for image in (item.preferred, item.rejected)]
        for name, scorer in scorers.items():
            scores = np.array(checked_scores(scorer, name, prompts, images, batch))
            chosen, other = scores[0::2], scores[1::2]
            agreed[name] += float((chosen > other).sum() + 0.5 * (chosen == other).sum())
    n = len(pairs)
    return [Agreement(name, n, value, value / n if n else None, wilson(value, n))
            for name, value in agreed.items()]


def table(results: Sequence[Agreement]) -> str:
    """The agreements as a person reads them, best first."""
    width = max(len("scorer"), *(len(r.scorer) for r in results))
    lines = [f"{'scorer':<{width}}  agreement  Wilson 95%    votes"]
    for r in sorted(results, key=lambda r: -(r.rate or 0)):
        interval = f"{100 * r.interval.low:.1f}-{100 * r.interval.high:.1f}%" \
            if r.interval else "n/a"
        lines.append(f"{r.scorer:<{width}}  {100 * (r.rate or 0):8.1f}%  {interval:<12}  "
                     f"{r.pairs}")
    return "\n".join(lines)
