"""The collection logic behind the page: the pairs shown to annotators (showings) and their votes.

A showing is one pair shown to one annotator. Its id is the vote's idempotency key, so a
double click or a client retry stores one ranking. Showings live on the server (the page
holds only the id); a vote is checked against the annotator the showing was shown to, then
stored with the pair's images in one transaction before the next showing is made.

A vote belongs to the pair that was on screen when it was cast: it names its showing, and
a vote for a showing that is not the annotator's current one (a second key pressed while
the first vote was on its way, a pair replaced by Generate) is refused with `NotCounted`,
never moved on to the next pair. A vote that comes sooner than `min_display_ms` after
the pair was delivered is refused too (`NotCounted`): nobody judges two images that fast.
A vote the store cannot commit (a full disk) raises `NotCounted` and keeps its showing
open, so the same vote can be cast again.

After a vote the next showing follows the annotator's mode:
- "new": a fresh pair for the same prompt (or the same prompt set);
- "keep": Pick-a-Pic's keep-the-winner chain: the winner stays, the loser is replaced by a
  new image for the same prompt (a tie, both-bad or skip starts a fresh pair);
- "auto": a fresh pair for the prompt set's next prompt, without asking for a prompt.

Overlap (`Settings.overlap` k > 1): a share of the prompt set's fresh pairs is marked, with
its first vote, to be shown to k different annotators. A showing from the prompt set first
offers such a pair that the annotator has not been shown, nearest to complete first, so
pairs complete soon; a pair is not handed to more annotators at once than it still
needs (a showing left open longer than `HOLD_S` no longer holds its place).

Questions (`Settings.questions`): the general preference alone, or with it the paper's two
other questions (visual appeal, prompt alignment); the answers to those come with the
vote and are stored in its transaction, one ranking per question.
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from PIL import Image

from annotate.config import MIN_DISPLAY_MS
from annotate.gold import GoldPair
from annotate.pool import DRY_NOTE, PoolQueue
from annotate.screening import Blocklist, check_length, screen
from annotate.worker import SET_SOURCE, Pair, PairWorker, Progress
from cli.errors import DailyCapReached, NotCounted, PageError, StoreWriteError
from data.pairs import decode_image, encode_jpeg
from data.store import (
    OUTCOMES,
    QUESTIONS,
    ImageRecord,
    Ranking,
    Store,
    Vote,
    new_uid,
    utc_day_start,
)
from models.generate import GeneratedImage
from pages.shared import unsaved_vote

MODES = ("new", "keep", "auto")
_MAX_SHOWINGS = 10_000  # showings awaiting a vote, across sessions; the oldest are forgotten
HOLD_S = 300  # an open showing keeps its overlap pair's place this long
ANSWERS = ("left", "right", "tie")  # what the appeal and alignment questions take


@dataclass(frozen=True)
class Annotator:
    user_id: int
    name: str


@dataclass(frozen=True)
class Tally:
    today: int
    total: int

    def text(self, cap: int | None) -> str:
        limit = f" of {cap}" if cap else ""
        return f"Your votes today: {self.today}{limit} · in total: {self.total}"


@dataclass(frozen=True)
class Showing:
    """One pair shown to one annotator; images in storage order (image_0, image_1)."""

    showing_id: str
    user_id: int
    source: str  # the prompt, or SET_SOURCE
    prompt: str
    images: tuple[ImageRecord, ImageRecord]
    pictures: tuple[Image.Image, Image.Image]
    shown_left: int  # which of the two images is on the left
    shown_at: float  # time.monotonic() when the showing was made
    gold_best_uid: str | None = None
    note: str | None = None
    votes_wanted: int = 1  # 2+: an overlap pair, to be voted by that many annotators
    pool_pair: str | None = None  # the pool pair's id, when the pair came from the pool
    stored: bool = False  # its images are in the store already (pool and overlap pairs)

    @property
    def pair(self) -> tuple[str, str]:
        return self.images[0].image_uid, self.images[1].image_uid

    @property
    def sides(self) -> tuple[tuple[Image.Image, ImageRecord], tuple[Image.Image, ImageRecord]]:
        """(picture, stored record) on the left, then on the right."""
        left, right = self.shown_left, 1 - self.shown_left
        return ((self.pictures[left], self.images[left]),
                (self.pictures[right], self.images[right]))


@dataclass(frozen=True)
class Pending:
    """A showing whose pair the generator has yet to make: `finish(progress)` waits for it
    (seconds) and returns the showing."""

    finish: Callable[[Progress | None], Showing]


@dataclass(frozen=True)
class Settings:
    gold_rate: float = 0.05
    daily_cap: int | None = None
    blocklist: Blocklist = Blocklist()
    min_display_ms: int = MIN_DISPLAY_MS
    overlap: int = 1  # annotators each overlap pair is shown to
    overlap_share: float = 0.0  # share of the prompt set's fresh pairs that overlap
    questions: tuple[str, ...] = ("preference",)  # or all of QUESTIONS


class Collector:
    """One per server: makes showings for annotators and records their votes."""

    def __init__(self, store: Store, worker: PairWorker, settings: Settings = Settings(),
                 gold: list[GoldPair] | None = None,
                 count_tokens: tuple[Callable[[str], int], int] | None = None,
                 rng: random.Random | None = None, pool: PoolQueue | None = None):
        self.store = store
        self.worker = worker
        self.pool = pool  # the prompt set's pairs come from here while it has any
        self.settings = settings
        self.gold = gold or []
        self._count, self._limit = count_tokens or (None, None)
        self._rng = rng or random.Random()
        self._rng_lock = threading.Lock()
        self._showings: OrderedDict[str, Showing] = OrderedDict()  # awaiting a vote
        self._current: dict[int, str] = {}  # user id -> the showing last shown to them
        self._voting: dict[str, threading.Event] = {}  # showings whose vote is being stored
        self._lock = threading.Lock()
        self._overlap_lock = threading.Lock()  # one overlap pair handed out at a time

    # -- annotators --------------------------------------------------------------

    def annotator(self, name: str) -> Annotator:
        name = (name or "").strip()
        if not name:
            raise PageError("Type your name first: your votes are recorded under it.")
        return Annotator(self.store.user_id(name), name)

    def tally(self, annotator: Annotator) -> Tally:
        return Tally(*self.store.vote_tally(annotator.user_id, utc_day_start()))

    def _check_cap(self, annotator: Annotator) -> None:
        """Refuse a new showing at the cap (the vote itself is checked again as it is stored)."""
        if self.settings.daily_cap is not None and (
                self.tally(annotator).today >= self.settings.daily_cap):
            raise self._cap_reached()

    def _cap_reached(self) -> PageError:
        return PageError(f"You have reached today's limit of {self.settings.daily_cap} "
                             "votes. Thank you! Come back tomorrow.")

    # -- showings ----------------------------------------------------------------

    def start(self, annotator: Annotator, prompt: str, mode: str,
              progress: Progress | None = None) -> Showing:
        """The first showing for a typed prompt (or, in auto mode, for the prompt set)."""
        self._check_mode(mode)
        self._check_cap(annotator)
        if mode == "auto" and not prompt.strip():
            return self._fresh(annotator, SET_SOURCE, progress)
        note = screen(prompt, self.settings.blocklist, self._count, self._limit)
        return self._fresh(annotator, prompt, progress, note)

    def vote(self, annotator: Annotator, showing_id: str, outcome: str,
             dwell_ms: int | None = None,
             answers: Mapping[str, str] | None = None) -> tuple[Ranking, Showing | None]:
        """Store the vote on a showing; (the ranking, the showing), or (ranking, None) if repeated.

        `answers`: the other questions' answers ('left', 'right' or 'tie'), needed when
        the campaign asks them and the vote prefers an image or calls a tie.
        The same vote sent again (a double click, a client retry) returns its first
        ranking and no showing, so the page keeps showing what followed it. A different
        vote on a showing already voted, or a vote on a showing that is no longer the
        annotator's current one, raises `NotCounted`; one sooner than the minimum display
        time raises `NotCounted`. Neither stores anything, nor does `NotCounted`, nor a vote
        past the daily cap (counted as the vote is stored: a second tab may hold a pair
        handed out before the cap was reached), nor a showing whose prompt is over the
        length cap (a gold or prompt-set prompt the screening never saw).
        """
        if outcome not in OUTCOMES:
            raise PageError(f"unknown vote {outcome!r}: use one of {', '.join(OUTCOMES)}")
        extra = self._answers(outcome, answers or {})
        shown = self._claim(annotator, showing_id, outcome)
        if isinstance(shown, Ranking):
            return shown, None
        if dwell_ms is None:
            dwell_ms = int((time.monotonic() - shown.shown_at) * 1000)
        gold = shown.gold_best_uid is not None

        def as_vote(vote_id: str, question: str, said: str) -> Vote:
            return Vote(
                vote_id=vote_id, caption=shown.prompt,
                image_0_uid=shown.images[0].image_uid, image_1_uid=shown.images[1].image_uid,
                outcome=said, shown_left=shown.shown_left, user_id=annotator.user_id,
                dwell_ms=dwell_ms, source="human", is_gold=gold,
                split="gold" if gold else "train",
                gold_best_uid=shown.gold_best_uid if question == "preference" else None,
                question=question, votes_wanted=shown.votes_wanted,
            )

        try:
            check_length(shown.prompt)
            ranking = self.store.record_vote(
                as_vote(shown.showing_id, "preference", outcome),
                () if shown.stored else shown.images,
                also=[as_vote(f"{shown.showing_id}/{q}", q, a) for q, a in extra.items()],
                daily_cap=self.settings.daily_cap,
            )
        except DailyCapReached:
            self._settle(shown, stored=False)
            raise self._cap_reached() from None
        except StoreWriteError as error:
            self._settle(shown, stored=False)
            raise NotCounted(unsaved_vote(error, self.store.path.parent)) from None
        except BaseException:
            self._settle(shown, stored=False)
            raise
        self._settle(shown, stored=True)
        if shown.pool_pair is not None and self.pool is not None:
            self.pool.voted(shown.pool_pair, annotator.user_id, outcome)
        return ranking, shown

    def _answers(self, outcome: str, answers: Mapping[str, str]) -> dict[str, str]:
        """The other questions' answers to store with a vote; refused when one is missing."""
        asked = [q for q in self.settings.questions if q != "preference"]
        if not asked or outcome not in ANSWERS:  # both bad or skipped: nothing to compare
            return {}
        for question in asked:
            if answers.get(question) not in ANSWERS:
                raise PageError(f"Answer every question first: {QUESTIONS[question]} "
                                    "(nothing was stored).")
        return {q: answers[q] for q in asked}

    def _claim(self, annotator: Annotator, showing_id: str, outcome: str) -> Showing | Ranking:
        """The open showing `showing_id`, taken out of the open showings so that one vote
        alone is stored on it; or the ranking already stored for the same vote."""
        with self._lock:
            shown = self._showings.get(showing_id)
            if shown is not None and shown.user_id != annotator.user_id:
                raise PageError("This pair was shown to another annotator: press Generate.")
            if shown is not None and self._current.get(annotator.user_id) == showing_id:
                waited_ms = (time.monotonic() - shown.shown_at) * 1000
                if waited_ms < self.settings.min_display_ms:
                    raise NotCounted("Too quick: look at both images first; that vote was not "
                                  "stored, vote again.")
                self._voting[showing_id] = threading.Event()
                return self._showings.pop(showing_id)
            voting = self._voting.get(showing_id)
        if voting is not None:  # another vote on this showing is being stored: its answer
            voting.wait(timeout=60)
        ranking = self.store.ranking_by_vote(showing_id) if showing_id else None
        if ranking is not None and ranking.user_id == annotator.user_id:
            if ranking.outcome == outcome:
                return ranking
            raise NotCounted(f"This pair already had your vote ({ranking.outcome}): "
                            f"the second one ({outcome}) was not stored.")
        if shown is not None:
            raise NotCounted("That vote was for a pair no longer on your screen: it was not "
                            "stored. Vote on the pair shown now.")
        raise NotCounted("This pair is no longer open: press Generate for a new one.")

    def _settle(self, shown: Showing, stored: bool) -> None:
        """The vote on `shown` is stored, or (not stored) its showing is open again."""
        with self._lock:
            if not stored:
                self._showings[shown.showing_id] = shown
            self._voting.pop(shown.showing_id).set()

    def display_wait(self, showing_id: str) -> float | None:
        """Seconds until a vote on the open showing `showing_id` counts; None if not open."""
        with self._lock:
            shown = self._showings.get(showing_id)
        if shown is None:
            return None
        waited = time.monotonic() - shown.shown_at
        return max(0.0, self.settings.min_display_ms / 1000 - waited)

    def next_showing(self, annotator: Annotator, voted: Showing, outcome: str, mode: str,
                     progress: Progress | None = None,
                     wait: bool = True) -> Showing | Pending:
        """The showing after a vote on `voted`, as the mode says. `wait` False: when the
        generator must make its pair, a `Pending` instead of waiting here (for a caller
        that serialises the fast path and waits elsewhere)."""
        self._check_mode(mode)
        self._check_cap(annotator)
        if mode == "auto":
            return self._fresh(annotator, SET_SOURCE, progress, wait=wait)
        if (mode == "keep" and outcome in ("left", "right")
                and voted.gold_best_uid is None):
            winner = voted.shown_left if outcome == "left" else 1 - voted.shown_left
            return self._challenge(annotator, voted, winner, progress, wait)
        return self._fresh(annotator, voted.source, progress, voted.note, wait)

    def _check_mode(self, mode: str) -> None:
        if mode not in MODES:
            raise PageError(f"unknown mode {mode!r}: use one of {', '.join(MODES)}")

    def _fresh(self, annotator: Annotator, source: str, progress: Progress | None,
               note: str | None = None, wait: bool = True) -> Showing | Pending:
        with self._rng_lock:
            gold = self.gold and self._rng.random() < self.settings.gold_rate
            gold_pair = self._rng.choice(self.gold) if gold else None
            overlap = (source == SET_SOURCE and self.settings.overlap > 1
                       and self._rng.random() < self.settings.overlap_share)
        if gold_pair is not None:
            return self._remember(annotator, source, gold_pair.prompt,
                                  (gold_pair.better, gold_pair.worse), None, note,
                                  gold_pair.better.image_uid)
        if source == SET_SOURCE and self.settings.overlap > 1:
            shared = self._overlap_showing(annotator)
            if shared is not None:
                return shared
        wanted = self.settings.overlap if overlap else 1
        if source == SET_SOURCE:
            note = None  # a prompt-set pair's note is its own prompt's (`_screened`)
        if source == SET_SOURCE and self.pool is not None:
            pooled = self.pool.take(annotator.user_id)
            if pooled is not None:
                records = self.store.image_records([pooled.image_0_uid, pooled.image_1_uid])
                return self._remember(
                    annotator, source, pooled.caption,
                    (records[pooled.image_0_uid], records[pooled.image_1_uid]), None,
                    self._screened(pooled.caption, None), votes_wanted=wanted,
                    pool_pair=pooled.pair_id, stored=True)
            note = DRY_NOTE

        def made(pair: Pair) -> Showing:
            said = self._screened(pair.prompt, note) if source == SET_SOURCE else note
            records = (_record(pair.images[0]), _record(pair.images[1]))
            return self._remember(annotator, source, pair.prompt, records,
                                  tuple(image.image for image in pair.images), said,
                                  votes_wanted=wanted)

        return self._generated(source, made, progress, wait)

    def _screened(self, prompt: str, note: str | None) -> str | None:
        """A prompt-set pair's note: `note`, then the screening's (a prompt the encoder
        truncates)."""
        if self._count is None:
            return note
        said = screen(prompt, Blocklist(), self._count, self._limit)
        return "\n\n".join(n for n in (note, said) if n) or None

    def _overlap_showing(self, annotator: Annotator) -> Showing | None:
        """A stored overlap pair this annotator has not been shown (nor holds open) that
        still needs votes beyond the showings now showing it; None when there is none."""
        with self._overlap_lock:
            wanting = self.store.open_overlap(annotator.user_id)
            if not wanting:
                return None
            now = time.monotonic()
            with self._lock:
                held = Counter(r.pair for r in self._showings.values()
                               if now - r.shown_at < HOLD_S)
                mine = {r.pair for r in self._showings.values()
                        if r.user_id == annotator.user_id}
            for uid_0, uid_1, caption, still_wanted in wanting:
                if (uid_0, uid_1) not in mine and held[uid_0, uid_1] < still_wanted:
                    records = self.store.image_records([uid_0, uid_1])
                    return self._remember(annotator, SET_SOURCE, caption,
                                          (records[uid_0], records[uid_1]), None, None,
                                          votes_wanted=self.settings.overlap, stored=True)
        return None

    def _challenge(self, annotator: Annotator, voted: Showing, winner: int,
                   progress: Progress | None, wait: bool = True) -> Showing | Pending:
        """The winner of `voted` against a new image for its prompt."""
        loser_model = voted.images[1 - winner].model

        def made(pair: Pair) -> Showing:
            new = next((im for im in pair.images if im.model == loser_model), pair.images[0])
            return self._remember(
                annotator, voted.prompt, voted.prompt, (voted.images[winner], _record(new)),
                (voted.pictures[winner], new.image), voted.note,
            )

        return self._generated(voted.prompt, made, progress, wait)

    def _generated(self, source: str, made: Callable[[Pair], Showing],
                   progress: Progress | None, wait: bool) -> Showing | Pending:
        """`made` of the generator's next pair for `source`, waited for; with `wait` False,
        a buffered one at once, else a `Pending` that waits when finished."""
        if wait:
            return made(self.worker.take(source, progress))
        pair = self.worker.take_ready(source)
        if pair is not None:
            return made(pair)
        return Pending(lambda progress: made(self.worker.take(source, progress)))

    def _remember(self, annotator: Annotator, source: str, prompt: str,
                  images: tuple[ImageRecord, ImageRecord],
                  pictures: tuple[Image.Image, Image.Image] | None, note: str | None,
                  gold_best_uid: str | None = None, votes_wanted: int = 1,
                  pool_pair: str | None = None, stored: bool = False) -> Showing:
        if pictures is None:
            pictures = tuple(decode_image(image.jpg) for image in images)
        with self._rng_lock:
            shown_left = self._rng.randrange(2)
        shown = Showing(
            showing_id=new_uid(), user_id=annotator.user_id, source=source, prompt=prompt,
            images=images, pictures=pictures, shown_left=shown_left,
            shown_at=time.monotonic(), gold_best_uid=gold_best_uid, note=note,
            votes_wanted=votes_wanted, pool_pair=pool_pair, stored=stored,
        )
        with self._lock:
            self._showings[shown.showing_id] = shown
            self._current[annotator.user_id] = shown.showing_id
            while len(self._showings) > _MAX_SHOWINGS:
                self._showings.popitem(last=False)
            while len(self._current) > _MAX_SHOWINGS:
                self._current.pop(next(iter(self._current)))
        return shown


def _record(image: GeneratedImage) -> ImageRecord:
    return image.record(new_uid(), encode_jpeg(image.image))
