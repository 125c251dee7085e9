"""The page's side of a pair pool: which of the store's pool pairs it still has to show.

`python -m annotate --pool` shows the prompt set's pairs from the store's pool (made ahead
of time by `python -m annotate pool`, on every GPU) instead of generating them, so the
next pair is a store read, not a sampler run. Each pool pair is handed to one annotator
at a time and leaves the queue with its first vote; the overlap mechanism
(annotate/showings.py) then shows it to the further annotators it wants. A pair whose
showing was left without a vote returns to the queue after `HOLD_S`; a skipped pair
returns at once, for someone other than the skipper. When the queue is empty the page
generates again, and says so.
"""

from __future__ import annotations

import threading
import time
from collections import deque

from data.store import PoolPair, Store

DRY_NOTE = ("The pool of prepared pairs is used up: pairs are generated now, which takes "
            "longer.")


class PoolQueue:
    def __init__(self, store: Store, hold_s: float):
        pairs, skipped = store.pool_to_show()
        self._waiting: deque[PoolPair] = deque(pairs)
        self._skipped = skipped  # pair id -> users who skipped it
        self._held: dict[str, tuple[PoolPair, float]] = {}  # handed out, not yet voted
        self._hold_s = hold_s
        self._lock = threading.Lock()

    def take(self, user_id: int) -> PoolPair | None:
        """The next pool pair for `user_id` (not one they skipped), now held for them;
        None when none is left."""
        with self._lock:
            now = time.monotonic()
            for pair_id, (pair, since) in list(self._held.items()):
                if now - since > self._hold_s:  # shown and left without a vote
                    del self._held[pair_id]
                    self._waiting.appendleft(pair)
            for _ in range(len(self._waiting)):
                pair = self._waiting.popleft()
                if user_id in self._skipped.get(pair.pair_id, ()):
                    self._waiting.append(pair)
                    continue
                self._held[pair.pair_id] = (pair, now)
                return pair
            return None

    def voted(self, pair_id: str, user_id: int, outcome: str) -> None:
        """A vote on a held pair is stored: it leaves the queue, or, skipped, goes back
        for another annotator."""
        with self._lock:
            pair, _ = self._held.pop(pair_id, (None, None))
            if pair is not None and outcome == "skip":
                self._skipped.setdefault(pair_id, set()).add(user_id)
                self._waiting.append(pair)

    def left(self) -> int:
        """Pool pairs not yet voted on (those shown now included)."""
        with self._lock:
            return len(self._waiting) + len(self._held)
