"""Win rates of an aligned model over its base, with honest uncertainty (docs/EVAL.md).

A vote compares the two models' images for one prompt and seed: the aligned one won,
the base one won, a tie, or both bad. With W wins, L losses, T ties and B both-bad:

- win rate (W + T/2) / N with N = W + L + T (both-bad votes state no preference);
- decisive win rate W / (W + L);
- tie rate T / N and both-bad rate B / (N + B);
- Wilson 95% intervals for both win rates (ties count one half in the first);
- a two-sided sign test of W against L (exact binomial, ties dropped);
- a bootstrap interval of the win rate that resamples prompts, not votes: several votes
  on one prompt are not independent, and the Wilson interval would be too narrow;
- the left-side win rate over decisive votes whose sides are known, as a check of
  position bias (0.5 when people ignore the side).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from data.intervals import Z95, Interval, wilson  # noqa: F401 (eval's names for them)

OUTCOMES = ("aligned", "base", "tie", "both_bad")


@dataclass(frozen=True)
class Judgement:
    """One judged pair. `aligned_left`: whether the aligned model's image was on the left."""

    prompt: str
    outcome: str  # one of OUTCOMES
    aligned_left: bool | None = None
    category: str | None = None


@dataclass(frozen=True)
class Tally:
    wins: int
    losses: int
    ties: int
    both_bad: int
    win_rate: float | None
    decisive_win_rate: float | None
    tie_rate: float | None
    both_bad_rate: float | None
    wilson: Interval | None
    decisive_wilson: Interval | None
    sign_test_p: float
    bootstrap: Interval | None
    left_win_rate: float | None
    left_decisive_votes: int

    @property
    def n(self) -> int:
        """Votes that state a preference or a tie."""
        return self.wins + self.losses + self.ties


def sign_test(wins: int, losses: int) -> float:
    """Two-sided exact sign test p-value of `wins` against `losses` (1.0 with neither)."""
    n = wins + losses
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(wins, losses) + 1))
    return min(1.0, 2 * tail / 2**n)


def _counts(votes: Sequence[Judgement]) -> np.ndarray:
    counts = np.zeros(len(OUTCOMES), dtype=np.int64)
    for vote in votes:
        if vote.outcome not in OUTCOMES:
            raise ValueError(f"unknown outcome {vote.outcome!r}: use one of {OUTCOMES}")
        counts[OUTCOMES.index(vote.outcome)] += 1
    return counts


def clustered_bootstrap(votes: Sequence[Judgement], samples: int = 2000, seed: int = 0,
                        level: float = 0.95) -> Interval | None:
    """Percentile interval of the win rate, resampling whole prompts with replacement."""
    by_prompt: dict[str, list[Judgement]] = defaultdict(list)
    for vote in votes:
        by_prompt[vote.prompt].append(vote)
    per_prompt = np.array([_counts(group) for group in by_prompt.values()])
    if not len(per_prompt) or per_prompt[:, :3].sum() == 0:
        return None
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(per_prompt), size=(samples, len(per_prompt)))
    totals = per_prompt[draws].sum(axis=1)  # [samples, outcomes]
    n = totals[:, :3].sum(axis=1)
    rates = (totals[:, 0] + totals[:, 2] / 2)[n > 0] / n[n > 0]
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(rates, [tail, 100 - tail])
    return Interval(float(low), float(high))


def tally(votes: Iterable[Judgement], bootstrap_samples: int = 2000, seed: int = 0) -> Tally:
    """Every figure of the module docstring for one set of votes."""
    votes = list(votes)
    wins, losses, ties, both_bad = (int(c) for c in _counts(votes))
    n = wins + losses + ties
    decisive = wins + losses
    sided = [v for v in votes if v.aligned_left is not None and v.outcome in ("aligned", "base")]
    left_wins = sum((v.outcome == "aligned") == v.aligned_left for v in sided)
    return Tally(
        wins=wins, losses=losses, ties=ties, both_bad=both_bad,
        win_rate=(wins + ties / 2) / n if n else None,
        decisive_win_rate=wins / decisive if decisive else None,
        tie_rate=ties / n if n else None,
        both_bad_rate=both_bad / (n + both_bad) if n + both_bad else None,
        wilson=wilson(wins + ties / 2, n),
        decisive_wilson=wilson(wins, decisive),
        sign_test_p=sign_test(wins, losses),
        bootstrap=clustered_bootstrap(votes, bootstrap_samples, seed),
        left_win_rate=left_wins / len(sided) if sided else None,
        left_decisive_votes=len(sided),
    )


def tally_by_category(votes: Iterable[Judgement], **options) -> dict[str, Tally]:
    """One tally per prompt category (votes without one are under 'all' only)."""
    votes = list(votes)
    groups: dict[str, list[Judgement]] = defaultdict(list)
    for vote in votes:
        if vote.category:
            groups[vote.category].append(vote)
    return {"all": tally(votes, **options),
            **{name: tally(group, **options) for name, group in sorted(groups.items())}}
