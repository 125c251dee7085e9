"""The blind A/B comparison, without a user interface: pairs, sides, votes, the reveal.

Blindness is a security property here. What the browser gets before a vote is a
`Shown`: an opaque pair id (kept server-side in the page's state), the prompt and the
two images as freshly decoded pixels, so Gradio writes them to content-addressed
temporary files with no metadata. Which model made which image stays in this process
(`BlindEval._pending`, keyed by the pair id) and is told only by `vote`, after the
vote is committed. The image cache's folder names (per-model hashes) and file paths
never leave the server.

Sides are drawn per pair from the operating system's random source (or a given `rng`,
for tests) and recorded with the vote.
"""

from __future__ import annotations

import random
import threading
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from data.errors import DataError
from data.prompts import Prompt
from eval.images import DEFAULT_ROOT, Sampling, images_for, open_image
from eval.stats import Tally, tally_by_category
from eval.votes import SIDES, VoteRow, VoteStore, now, outcome_of

MAX_PENDING = 10_000  # pairs shown and not yet voted on, kept per server


@dataclass(frozen=True)
class Pair:
    """A pair dealt to a voter: which prompt and seed, and which model is on side A."""

    pair_id: str
    prompt: Prompt
    seed: int
    side_a: str  # 'base' or 'aligned'
    shown_at: float  # time.monotonic() when dealt


@dataclass(frozen=True)
class Shown:
    """All the browser may know of a pair before the vote."""

    pair_id: str
    prompt: str
    image_a: np.ndarray
    image_b: np.ndarray


@dataclass(frozen=True)
class Reveal:
    """The stored vote and which model made which side's image."""

    vote: VoteRow
    model_a: str
    model_b: str

    @property
    def side_b(self) -> str:
        return SIDES[1 - SIDES.index(self.vote.side_a)]


def fresh_pixels(path: Path) -> np.ndarray:
    """The image's pixels alone (RGB uint8): no file name, no metadata travels with them."""
    return np.array(open_image(path), dtype=np.uint8)


def deal_order(items: list[tuple[Prompt, int]], seen: dict[tuple[str, int], int],
               rng: random.Random) -> tuple[Prompt, int]:
    """The next (prompt, seed) for a voter: one they have voted on least, at random."""
    fewest = min(seen.get((p.text, s), 0) for p, s in items)
    return rng.choice([(p, s) for p, s in items if seen.get((p.text, s), 0) == fewest])


class BlindEval:
    """One comparison (base against aligned) served to any number of voters."""

    def __init__(self, base: str, aligned: str, prompts: list[Prompt], sampling: Sampling,
                 images: dict[str, dict[tuple[str, int], Path]], votes: VoteStore,
                 rng: random.Random | None = None):
        if not prompts:
            raise DataError("no prompts to compare on")
        self.base, self.aligned = base, aligned
        self.models = {"base": base, "aligned": aligned}
        self.sampling = sampling
        self.items = [(p, s) for p in dict.fromkeys(prompts) for s in range(sampling.seeds)]
        self.images = images
        self.votes = votes
        self.rng = rng or random.SystemRandom()
        self._pending: OrderedDict[str, Pair] = OrderedDict()
        self._lock = threading.Lock()

    @classmethod
    def prepare(cls, base: str, aligned: str, prompts: list[Prompt], sampling: Sampling,
                votes: VoteStore, root: Path = DEFAULT_ROOT,
                rng: random.Random | None = None) -> BlindEval:
        """Make (or reuse from the cache) both models' images for every prompt and seed."""
        texts = [p.text for p in prompts]
        images = {"base": images_for(base, texts, sampling, root),
                  "aligned": images_for(aligned, texts, sampling, root)}
        return cls(base, aligned, prompts, sampling, images, votes, rng)

    def deal(self, voter: str = "") -> Pair:
        """A new pair for `voter` with its sides drawn, remembered until voted on."""
        seen = self.votes.seen(voter, self.base, self.aligned) if voter else {}
        with self._lock:
            prompt, seed = deal_order(self.items, seen, self.rng)
            pair = Pair(uuid.uuid4().hex, prompt, seed, self.rng.choice(SIDES), time.monotonic())
            self._pending[pair.pair_id] = pair
            while len(self._pending) > MAX_PENDING:
                self._pending.popitem(last=False)
        return pair

    def show(self, pair: Pair) -> Shown:
        """The pair as the browser may see it: the prompt and two anonymous images."""
        other = SIDES[1 - SIDES.index(pair.side_a)]
        key = (pair.prompt.text, pair.seed)
        return Shown(pair.pair_id, pair.prompt.text, fresh_pixels(self.images[pair.side_a][key]),
                     fresh_pixels(self.images[other][key]))

    def vote(self, pair_id: str, voter: str, choice: str) -> Reveal:
        """Record `choice` ('A', 'B', 'tie', 'both_bad') on a dealt pair, then reveal it.

        The vote is committed before this returns; voting again on the same pair (a
        double click) stores nothing new and reveals the first vote.
        """
        voter = (voter or "").strip()
        if not voter:
            raise DataError("type your name before voting")
        stored = self.votes.get(pair_id) if pair_id else None
        if stored is None:
            pair = self._pending.get(pair_id) if pair_id else None
            if pair is None:
                raise DataError("this pair is unknown or expired: press Next for a new one")
            stored = self.votes.record(VoteRow(
                vote_id=pair.pair_id, voter=voter, prompt=pair.prompt.text,
                category=pair.prompt.category, seed=pair.seed, base_model=self.base,
                aligned_model=self.aligned, side_a=pair.side_a, choice=choice,
                outcome=outcome_of(choice, pair.side_a), steps=self.sampling.steps,
                guidance=self.sampling.guidance,
                dwell_ms=int(1000 * (time.monotonic() - pair.shown_at)), created_at=now()))
            with self._lock:
                self._pending.pop(pair_id, None)
        side_b = SIDES[1 - SIDES.index(stored.side_a)]
        return Reveal(stored, self.models[stored.side_a], self.models[side_b])

    def tallies(self) -> dict[str, Tally]:
        """Aligned over base from every vote on this comparison, overall and per category."""
        votes = self.votes.votes(self.base, self.aligned)
        return tally_by_category([v.as_stat() for v in votes], bootstrap_samples=500)
