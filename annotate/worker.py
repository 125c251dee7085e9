"""One generation thread per server: pairs are made on one pipeline, ahead of demand.

diffusers pipelines are not thread-safe, and a CPU or GPU runs one generation well at a
time, so every pair is made by this one thread. A person who votes should not wait for
a generation: the worker keeps a small buffer of finished pairs for each prompt source
that was used recently, and serves people who are waiting before it refills buffers.

A prompt source is what a session is drawing pairs from: one typed prompt (every pair
for that prompt), or a prompt set (each pair for the set's next prompt, in order).

The queue of people waiting is bounded (`max_waiting`): over it, `take` answers at once
with `NotCounted` ("busy, N ahead") instead of holding a server thread for minutes, so
a burst of requests cannot starve the page and the votes of threads. `stop` interrupts
a generation between two sampler steps, so a server stops within a step's time.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field

from cli.errors import NotCounted, PageError
from models.generate import GeneratedImage

MakePair = Callable[[str, Callable[[int, int], None]], tuple[GeneratedImage, GeneratedImage]]
Progress = Callable[[str, float | None], None]


class _Stopped(Exception):
    """Raised from inside a generation when the worker is stopped."""


@dataclass(frozen=True)
class Pair:
    prompt: str
    images: tuple[GeneratedImage, GeneratedImage]


class PromptSet:
    """The prompts of a set, handed out in order and round again, shared by all sessions."""

    def __init__(self, prompts: Sequence[str]):
        if not prompts:
            raise ValueError("a prompt set needs at least one prompt")
        self.prompts = list(prompts)
        self._next = itertools.cycle(self.prompts)
        self._lock = threading.Lock()

    def next_prompt(self) -> str:
        with self._lock:
            return next(self._next)


SET_SOURCE = "set"  # the source key of the server's prompt set; any other key is a prompt


@dataclass
class _Waiter:
    source: str
    future: Future = field(default_factory=Future)


@dataclass
class _Buffer:
    pairs: deque = field(default_factory=deque)
    used_at: float = field(default_factory=time.monotonic)


class PairWorker:
    """Makes pairs on one thread: first for whoever waits, then to fill the buffers.

    `buffer_size` pairs are kept ready per source (0 turns prefetching off: every pair
    is made when it is asked for). Sources unused for `idle_s` seconds lose their
    buffer, and at most `max_sources` are kept, so a busy server's memory stays bounded.
    A refill starts `refill_delay_s` after a pair was served from a buffer, so that the
    answer to the vote leaves before a generation takes the CPU.
    """

    def __init__(self, make_pair: MakePair, prompt_set: PromptSet | None = None,
                 buffer_size: int = 3, idle_s: float = 600.0, max_sources: int = 32,
                 refill_delay_s: float = 0.3, max_waiting: int = 8):
        if max_waiting < 1:
            raise ValueError("max_waiting must be at least 1")
        self._make_pair = make_pair
        self.max_waiting = max_waiting
        self._prompt_set = prompt_set
        self.buffer_size = buffer_size
        self._idle_s = idle_s
        self._max_sources = max_sources
        self._refill_delay_s = refill_delay_s
        self._served_at = 0.0
        self._cond = threading.Condition()
        self._waiting: deque[_Waiter] = deque()
        self._buffers: dict[str, _Buffer] = {}
        self._progress: tuple[int, int] | None = None  # steps of the pair being made
        self._running = False
        self._thread: threading.Thread | None = None
        self.made = 0

    # -- lifecycle ---------------------------------------------------------------

    def start(self) -> PairWorker:
        self._running = True
        self._thread = threading.Thread(target=self._loop, name="pair-worker", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> bool:
        """Stop the thread, interrupting a generation at its next sampler step; whether
        it ended within `timeout` seconds (it is a daemon thread either way)."""
        with self._cond:
            self._running = False
            self._cond.notify_all()
        if self._thread is None:
            return True
        self._thread.join(timeout=timeout)
        return not self._thread.is_alive()

    # -- what sessions call ------------------------------------------------------

    def take(self, source: str, progress: Progress | None = None,
             timeout: float = 300.0) -> Pair:
        """The next pair for `source`: from its buffer, or made now (the caller waits)."""
        with self._cond:
            pair = self._buffered(source)
            if pair is not None:
                return pair
            if not self._running:
                raise PageError("the server is shutting down")
            if len(self._waiting) >= self.max_waiting:
                raise NotCounted(f"The generator is busy, {len(self._waiting)} ahead: "
                                 "try again in a moment.")
            waiter = _Waiter(source)
            self._waiting.append(waiter)
            self._cond.notify_all()
        deadline = time.monotonic() + timeout
        while True:
            try:
                return waiter.future.result(timeout=0.1)
            except FutureTimeout:
                if time.monotonic() > deadline:
                    with self._cond:
                        if waiter in self._waiting:
                            self._waiting.remove(waiter)
                    raise PageError("no pair came in time: the generator is overloaded") from None
                if progress is not None:
                    progress(*self._describe(waiter))

    def take_ready(self, source: str) -> Pair | None:
        """The next pair for `source` if one is buffered now, else None; never waits."""
        with self._cond:
            return self._buffered(source)

    def _buffered(self, source: str) -> Pair | None:
        buffer = self._touch(source)
        if not buffer.pairs:
            return None
        self._served_at = time.monotonic()
        return buffer.pairs.popleft()

    def ready(self, source: str) -> int:
        """Pairs buffered for `source` now."""
        with self._cond:
            buffer = self._buffers.get(source)
            return len(buffer.pairs) if buffer else 0

    def prefetch(self, source: str) -> None:
        """Start filling `source`'s buffer before anyone asks (a prompt was just typed)."""
        with self._cond:
            self._touch(source)
            self._cond.notify_all()

    # -- the thread --------------------------------------------------------------

    def _touch(self, source: str) -> _Buffer:
        buffer = self._buffers.setdefault(source, _Buffer())
        buffer.used_at = time.monotonic()
        return buffer

    def _describe(self, waiter: _Waiter) -> tuple[str, float | None]:
        with self._cond:
            if waiter in self._waiting:
                place = list(self._waiting).index(waiter)
                if place:
                    return f"waiting for the generator: {place} ahead", None
            done = self._progress
        if done is None:
            return "starting the generator", None
        step, total = done
        return f"generating step {step}/{total}", step / total

    def _next_job(self) -> tuple[str, _Waiter | None] | None:
        """The source to make a pair for next, and who waits for it; None: nothing to do."""
        if self._waiting:
            waiter = self._waiting.popleft()
            return waiter.source, waiter
        now = time.monotonic()
        for source in [s for s, b in self._buffers.items() if now - b.used_at > self._idle_s]:
            del self._buffers[source]
        recent = sorted(self._buffers.items(), key=lambda item: -item[1].used_at)
        for source, _ in recent[self._max_sources:]:
            del self._buffers[source]
        hungry = [(len(b.pairs), -b.used_at, s) for s, b in self._buffers.items()
                  if len(b.pairs) < self.buffer_size]
        if not hungry or now - self._served_at < self._refill_delay_s:
            return None
        return min(hungry)[2], None

    def _loop(self) -> None:
        while True:
            with self._cond:
                job = None
                while self._running and (job := self._next_job()) is None:
                    self._cond.wait(timeout=self._refill_delay_s)
                if not self._running:
                    for waiter in self._waiting:
                        waiter.future.set_exception(PageError("the server is shutting down"))
                    return
            source, waiter = job
            try:
                pair = self._make(source)
            except _Stopped:
                if waiter is not None:
                    waiter.future.set_exception(PageError("the server is shutting down"))
                continue
            except Exception as error:  # a waiter gets the failure; a refill stops until asked
                with self._cond:
                    if waiter is not None:
                        waiter.future.set_exception(PageError(f"generation failed: {error}"))
                    else:
                        self._buffers.pop(source, None)
                continue
            with self._cond:
                self.made += 1
                if waiter is None:  # someone who started waiting meanwhile comes first
                    waiter = next((w for w in self._waiting if w.source == source), None)
                    if waiter is not None:
                        self._waiting.remove(waiter)
                if waiter is not None:
                    waiter.future.set_result(pair)
                elif source in self._buffers:
                    self._buffers[source].pairs.append(pair)

    def _make(self, source: str) -> Pair:
        if source == SET_SOURCE:
            if self._prompt_set is None:
                raise PageError("this server has no prompt set")
            prompt = self._prompt_set.next_prompt()
        else:
            prompt = source

        def on_step(done: int, total: int) -> None:
            if not self._running:
                raise _Stopped
            self._progress = (done, total)

        self._progress = None
        try:
            return Pair(prompt, self._make_pair(prompt, on_step))
        finally:
            self._progress = None
