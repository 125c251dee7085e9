"""The blind A/B comparison, without a user interface: pairs, sides, votes, the reveal.

Blindness is a security property here. What the browser gets before a vote is a `Shown`:
an opaque pair id (kept server-side in the page's state), the prompt and the two images,
each decoded, enlarged for the page (`pages.shared.enlarge`) and written afresh for this
one showing as a PNG without metadata, under a random name in a folder of this process
(`BlindEval.showings`, a `pages.shared.PageImages`). So no two showings share a URL, not
even the same image shown again, to another voter or after a restart: a voter who has
seen earlier reveals learns nothing from an address. (Content-addressed names, as
Gradio gives images by default, would repeat.) Which model made which image stays in
this process (`BlindEval._pending`, keyed by the pair id) and is told only by `vote`,
after the vote is committed. The image cache's folder names (per-model hashes) and file
paths never leave the server.

Images are made in the background (`start`): the page is served at once and deals a
pair as soon as both of its images exist, showing `progress` until then.

No voter is dealt a pair with an image they have seen revealed (`unseen_items`): they
would know its model by sight, and the vote would not be blind. While nothing unseen is
ready, the voter waits; once they have voted on every pair, they are done.

Sides are drawn per pair from the operating system's random source (or a given `rng`,
for tests) and recorded with the vote.

A comparison is two models (base, then aligned) or a board of more (the models of a
leaderboard, `python -m eval --board`). On a board each pair is dealt from the matchup
whose next vote says most (`informative_matchup`: ratings close, few votes so far) and
stored as a vote between those two, the one listed first as its base.
"""

from __future__ import annotations

import random
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cli.errors import DataError, ModelError, StoreWriteError
from data.prompts import Prompt
from data.store import QUESTIONS
from eval.config import Sampling
from eval.images import DEFAULT_ROOT, images_for, open_image
from eval.stats import Tally, tally_by_category
from eval.votes import SIDES, VoteRow, VoteStore, now, other_side, outcome_of
from pages.shared import PageImages, enlarge, unsaved_vote

MAX_PENDING = 10_000  # pairs shown and not yet voted on, kept per server


@dataclass(frozen=True)
class Pair:
    """A pair dealt to a voter: which prompt and seed, and which model is on side A."""

    pair_id: str
    prompt: Prompt
    seed: int
    base: str  # the matchup's two models (on a board: the one listed first is the base)
    aligned: str
    side_a: str  # 'base' or 'aligned'
    shown_at: float  # time.monotonic() when dealt

    def model(self, side: str) -> str:
        return self.base if side == "base" else self.aligned


@dataclass(frozen=True)
class Shown:
    """All the browser may know of a pair before the vote: the images are files made for
    this showing alone, under fresh random names."""

    pair_id: str
    prompt: str
    image_a: Path
    image_b: Path


@dataclass(frozen=True)
class Progress:
    """How far the background image making is."""

    images: int  # images that exist (made now or found in the cache)
    total: int  # images the comparison needs
    pairs: int  # (prompt, seed) pairs with every model's image, ready to deal
    items: int  # (prompt, seed) pairs the comparison shows
    failed: str | None = None  # the one-line reason it stopped, if it did


@dataclass(frozen=True)
class Reveal:
    """The stored vote and which model made which side's image (and its board name)."""

    vote: VoteRow
    model_a: str
    model_b: str
    name_a: str
    name_b: str

    @property
    def side_b(self) -> str:
        return other_side(self.vote.side_a)


def fresh_pixels(path: Path) -> np.ndarray:
    """The image's pixels alone (RGB uint8): no file name, no metadata travels with them."""
    return np.array(open_image(path), dtype=np.uint8)


def informative_matchup(matchups: Sequence[tuple[int, int]], ratings: Sequence[float],
                        votes: dict[tuple[int, int], int], rng: random.Random) -> tuple[int, int]:
    """The matchup (i, j) whose next vote tells most about the ratings: p(1 - p) / (1 + n),
    p the chance that i beats j by the ratings (Elo scale), n the votes it has had; ties
    drawn at random. Close ratings and few votes come first."""
    def value(m: tuple[int, int]) -> float:
        p = 1 / (1 + 10 ** ((ratings[m[1]] - ratings[m[0]]) / 400))
        return p * (1 - p) / (1 + votes.get(m, 0))

    best = max(value(m) for m in matchups)
    return rng.choice([m for m in matchups if value(m) >= best * (1 - 1e-12)])


def unseen_items(items: list[tuple[Prompt, int]], models: Sequence[str],
                 revealed: set[tuple[str, str, int]]) -> list[tuple[Prompt, int]]:
    """The (prompt, seed) items none of whose images by `models` is in `revealed`, the
    (model, prompt, seed) images a voter has seen revealed. An image once revealed is
    known by sight: dealt again, to that voter it names its model."""
    return [(p, s) for p, s in items if not any((m, p.text, s) in revealed for m in models)]


class BlindEval:
    """One comparison (base against aligned, or a board of more models) served to any
    number of voters.

    `images` maps each model to its (prompt, seed) image paths; given complete, every
    pair can be dealt at once; `prepare` starts empty and `start` fills it. `names` are
    the models' names on the page after a vote (default: base and aligned, or the models
    themselves); `ratings` a board's (Elo scale) by which its matchups are chosen.
    """

    def __init__(self, models: Sequence[str], prompts: list[Prompt], sampling: Sampling,
                 images: dict[str, dict[tuple[str, int], Path]] | None, votes: VoteStore,
                 rng: random.Random | None = None, root: Path = DEFAULT_ROOT,
                 names: Sequence[str] | None = None, ratings: Sequence[float] | None = None,
                 question: str = "preference"):
        if not prompts:
            raise DataError("no prompts to compare on")
        if len(models) < 2 or (len(models) > 2 and len(set(models)) != len(models)):
            raise DataError("compare two models, or a board of different ones")
        self.models = list(models)
        self.names = list(names or (SIDES if len(models) == 2 else models))
        self.ratings = list(ratings or [0.0] * len(models))
        if not len(self.names) == len(self.ratings) == len(self.models):
            raise DataError("give one name and one rating per model")
        self.is_board = len(models) > 2
        if question not in QUESTIONS:
            raise DataError(f"unknown question {question!r}: use one of {', '.join(QUESTIONS)}")
        self.question = question  # what the page asks; each vote records it
        self.matchups = [(i, j) for i in range(len(models)) for j in range(i + 1, len(models))]
        self.sampling = sampling
        self.items = [(p, s) for p in dict.fromkeys(prompts) for s in range(sampling.seeds)]
        self.images = images or {m: {} for m in self.models}
        self.root = root  # the image cache `start` fills
        self.votes = votes
        self.rng = rng or random.SystemRandom()
        self.showings = PageImages("eval-shown-")
        self.failed: str | None = None
        self._pending: OrderedDict[str, Pair] = OrderedDict()
        self._files: dict[str, list[Path]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._maker: threading.Thread | None = None

    @classmethod
    def prepare(cls, models: Sequence[str], prompts: list[Prompt], sampling: Sampling,
                votes: VoteStore, root: Path = DEFAULT_ROOT,
                rng: random.Random | None = None, names: Sequence[str] | None = None,
                ratings: Sequence[float] | None = None,
                question: str = "preference") -> BlindEval:
        """A comparison whose images `start` makes (or finds in the cache) under `root`."""
        return cls(models, prompts, sampling, None, votes, rng, root, names, ratings, question)

    @property
    def base(self) -> str:
        return self.models[0]

    @property
    def aligned(self) -> str:
        return self.models[1]

    # -- the images, made in the background ----------------------------------------

    def start(self, on_failure: Callable[[str], None] | None = None) -> None:
        """Make every model's images in a background thread, one model at a time (one
        pipeline in memory); each pair can be dealt once both its images exist."""
        self._maker = threading.Thread(target=self._make, args=(on_failure,),
                                       name="eval-images", daemon=True)
        self._maker.start()

    def _make(self, on_failure: Callable[[str], None] | None) -> None:
        texts = [p.text for p, _ in self.items]
        try:
            for model in self.models:
                images_for(model, texts, self.sampling, self.root,
                           on_image=lambda key, path, model=model: self._add(model, key, path),
                           stop=self._stop)
        except (DataError, ModelError) as error:
            self.failed = str(error)
        except Exception as error:
            self.failed = f"{type(error).__name__}: {error}"
            raise
        finally:
            if self.failed and on_failure:
                on_failure(self.failed)

    def _add(self, model: str, key: tuple[str, int], path: Path) -> None:
        with self._lock:
            self.images[model][key] = path

    def wait(self, timeout: float | None = None) -> Progress:
        """Block until the background work has ended (or `timeout`); its progress."""
        if self._maker is not None:
            self._maker.join(timeout)
        return self.progress()

    def ready(self, models: Sequence[str] | None = None) -> list[tuple[Prompt, int]]:
        """The (prompt, seed) items whose images by `models` (default: all) all exist."""
        with self._lock:
            return [(p, s) for p, s in self.items
                    if all((p.text, s) in self.images[m] for m in models or self.models)]

    def progress(self) -> Progress:
        with self._lock:
            made = sum(len(self.images[m]) for m in self.models)
        return Progress(made, len(self.models) * len(self.items), len(self.ready()),
                        len(self.items), self.failed)

    # -- pairs ---------------------------------------------------------------------

    def deal(self, voter: str = "") -> Pair | None:
        """A new pair for `voter` with its sides drawn, remembered until voted on; None
        while no pair is ready that `voter` has not seen revealed (its images are still
        being made, or the voter has voted on every pair)."""
        revealed = self.votes.revealed(voter) if voter else set()
        unseen = {m: unseen_items(self.ready(self._pair_of(m)), self._pair_of(m), revealed)
                  for m in self.matchups}
        open_matchups = [m for m, items in unseen.items() if items]
        if not open_matchups:
            return None
        matchup = informative_matchup(open_matchups, self.ratings, self._matchup_counts(),
                                      self.rng)
        base, aligned = self._pair_of(matchup)
        with self._lock:
            prompt, seed = self.rng.choice(unseen[matchup])
            pair = Pair(uuid.uuid4().hex, prompt, seed, base, aligned, self.rng.choice(SIDES),
                        time.monotonic())
            self._pending[pair.pair_id] = pair
            while len(self._pending) > MAX_PENDING:
                self._forget(self._pending.popitem(last=False)[0])
        return pair

    def _matchup_counts(self) -> dict[tuple[int, int], int]:
        """Votes so far per matchup (i < j) that inform the board (on the page's question,
        not both bad), whichever model was the base when voted."""
        counts: dict[tuple[int, int], int] = {}
        for b, a, n in self.votes.comparisons(self.question):
            if b in self.models and a in self.models:
                key = tuple(sorted((self.models.index(b), self.models.index(a))))
                counts[key] = counts.get(key, 0) + n
        return counts

    def _pair_of(self, matchup: tuple[int, int]) -> list[str]:
        return [self.models[matchup[0]], self.models[matchup[1]]]

    def show(self, pair: Pair) -> Shown:
        """The pair as the browser may see it: the prompt and two anonymous images, as
        files written for this showing only (freed once the pair is voted on)."""
        other = other_side(pair.side_a)
        key = (pair.prompt.text, pair.seed)
        files = [self.showings.write(enlarge(fresh_pixels(self.images[pair.model(side)][key])))
                 for side in (pair.side_a, other)]
        with self._lock:
            self._files.setdefault(pair.pair_id, []).extend(files)
        return Shown(pair.pair_id, pair.prompt.text, *files)

    def _forget(self, pair_id: str) -> None:
        """Delete a pair's showing files (the caller holds the lock)."""
        for path in self._files.pop(pair_id, []):
            path.unlink(missing_ok=True)

    def close(self) -> None:
        """Stop making images (between prompts) and delete every showing file."""
        self._stop.set()
        if self._maker is not None:
            self._maker.join(timeout=5)
        self.showings.close()

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
            if pair is None:  # a concurrent click may have just stored it and let it go
                stored = self.votes.get(pair_id) if pair_id else None
            if pair is None and stored is None:
                raise DataError("this pair is unknown or expired: press Next for a new one")
        if stored is None:
            stored = self._record(pair, voter, choice)
        by_side = {"base": stored.base_model, "aligned": stored.aligned_model}
        side_b = other_side(stored.side_a)
        a, b = by_side[stored.side_a], by_side[side_b]
        return Reveal(stored, a, b, self.name_of(a, stored.side_a), self.name_of(b, side_b))

    def _record(self, pair: Pair, voter: str, choice: str) -> VoteRow:
        """Store `voter`'s vote on a dealt pair, then free its showing files. Refused when
        the voter has seen the pair's images revealed (a pair dealt before their name was
        typed): that vote would not be blind."""
        if not unseen_items([(pair.prompt, pair.seed)], [pair.base, pair.aligned],
                            self.votes.revealed(voter)):
            stored = self.votes.get(pair.pair_id)  # a concurrent twin of this click stored it
            if stored is None:
                raise DataError("you have seen who made these images (you voted on them "
                                "before): press Next for a pair new to you")
            return stored
        try:
            stored = self.votes.record(VoteRow(
                vote_id=pair.pair_id, voter=voter, prompt=pair.prompt.text,
                category=pair.prompt.category, seed=pair.seed, base_model=pair.base,
                aligned_model=pair.aligned, side_a=pair.side_a, choice=choice,
                outcome=outcome_of(choice, pair.side_a), steps=self.sampling.steps,
                guidance=self.sampling.guidance,
                dwell_ms=int(1000 * (time.monotonic() - pair.shown_at)), created_at=now(),
                question=self.question))
        except StoreWriteError as error:  # the pair stays dealt, to vote on again
            raise DataError(unsaved_vote(error, self.votes.path.parent)) from None
        with self._lock:
            self._pending.pop(pair.pair_id, None)
            self._forget(pair.pair_id)
        return stored

    def name_of(self, model: str, side: str) -> str:
        """A model's name on the page: its side in a two-model comparison, its board name
        on a board."""
        return self.names[self.models.index(model)] if self.is_board else side

    def tallies(self, voter: str | None = None) -> dict[str, Tally]:
        """Aligned over base from every vote on a two-model comparison (or `voter`'s
        alone), overall and per category."""
        votes = [v for v in self.votes.votes(self.base, self.aligned, self.question)
                 if voter is None or v.voter == voter]
        return tally_by_category([v.as_stat() for v in votes], bootstrap_samples=500)

    def matchup_votes(self) -> list[tuple[str, str, int]]:
        """(name, name, votes) of every matchup of a board, the most voted first."""
        counts = self._matchup_counts()
        rows = [(self.names[i], self.names[j], counts.get((i, j), 0)) for i, j in self.matchups]
        return sorted(rows, key=lambda row: -row[2])
