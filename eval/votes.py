"""The blind eval's own votes: one DuckDB file (default runs/eval/votes.duckdb).

The eval keeps its votes apart from the annotate store: they judge models, not images
for training, and must never be exported as preference pairs. The file's lifecycle
(the lock message, a cursor per thread, migrations with `schema_version`) is
`data.store.DuckDBFile`'s, shared with the store; this module holds the votes table
and its queries. DuckDB allows one read-write process per file, so the running blind
app owns the file and `python -m eval report` reads it when the app is stopped.

A vote is one transaction, committed before the page hears of it. Its `vote_id` is the
id of the shown pair, so a double click or a client retry stores one row and is
answered with the first vote.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from datetime import datetime, timezone
from pathlib import Path

from cli.errors import DataError
from data.store import DuckDBFile
from eval.stats import Judgement

DEFAULT_VOTES = Path("runs/eval/votes.duckdb")
SIDES = ("base", "aligned")
CHOICES = ("A", "B", "tie", "both_bad")

# Append a migration, never edit one. Version 1 adopts files written before the votes
# file had a schema_version (their votes table is the same).
MIGRATIONS: list[tuple[int, list[str]]] = [(1, ["""
CREATE TABLE IF NOT EXISTS votes (
    vote_id VARCHAR PRIMARY KEY,
    voter VARCHAR NOT NULL,
    prompt VARCHAR NOT NULL,
    category VARCHAR,
    seed INTEGER NOT NULL,
    base_model VARCHAR NOT NULL,
    aligned_model VARCHAR NOT NULL,
    side_a VARCHAR NOT NULL CHECK (side_a IN ('base', 'aligned')),
    choice VARCHAR NOT NULL CHECK (choice IN ('A', 'B', 'tie', 'both_bad')),
    outcome VARCHAR NOT NULL CHECK (outcome IN ('aligned', 'base', 'tie', 'both_bad')),
    steps INTEGER NOT NULL,
    guidance DOUBLE NOT NULL,
    dwell_ms BIGINT,
    created_at TIMESTAMP NOT NULL
)
"""]), (2, [
    # which of data.store.QUESTIONS the page asked (python -m eval --question)
    "ALTER TABLE votes ADD COLUMN question VARCHAR DEFAULT 'preference'",
    "UPDATE votes SET question = 'preference' WHERE question IS NULL",
])]


@dataclass(frozen=True)
class VoteRow:
    """One stored vote: which model was on side A, what the voter chose, what that means."""

    vote_id: str
    voter: str
    prompt: str
    category: str | None
    seed: int
    base_model: str
    aligned_model: str
    side_a: str  # 'base' or 'aligned': the model whose image was labelled A (on the left)
    choice: str  # 'A', 'B', 'tie' or 'both_bad': the button pressed
    outcome: str  # 'aligned', 'base', 'tie' or 'both_bad': the choice in model terms
    steps: int
    guidance: float
    dwell_ms: int | None
    created_at: datetime
    question: str = "preference"

    def as_stat(self) -> Judgement:
        """The vote as eval.stats counts it (aligned over base, side A is the left)."""
        return Judgement(self.prompt, self.outcome, self.side_a == "aligned", self.category)


COLUMNS = [f.name for f in fields(VoteRow)]


def other_side(side: str) -> str:
    """'aligned' for 'base', 'base' for 'aligned'."""
    return SIDES[1 - SIDES.index(side)]


def outcome_of(choice: str, side_a: str) -> str:
    """The model that won a choice made between sides A and B (or 'tie', 'both_bad')."""
    if choice not in CHOICES:
        raise DataError(f"unknown choice {choice!r}: use one of {', '.join(CHOICES)}")
    if side_a not in SIDES:
        raise DataError(f"side_a must be one of {SIDES}, got {side_a!r}")
    if choice == "A":
        return side_a
    if choice == "B":
        return other_side(side_a)
    return choice


class VoteStore(DuckDBFile):
    """The votes file; one instance per process, shared by the app's threads."""

    KIND = "votes file"
    MIGRATIONS = MIGRATIONS
    TABLE = "votes"
    MISSING = "no votes yet: {path} does not exist (vote first: python -m eval)"
    IN_USE = "stop the blind eval app that holds it first, or read the tallies on its page"
    UPGRADE = "open it once read-write (python -m eval --db {path})"

    def __init__(self, path: str | Path = DEFAULT_VOTES, read_only: bool = False):
        super().__init__(path, read_only)

    def record(self, row: VoteRow) -> VoteRow:
        """Store `row` unless its vote_id is stored already; returns the stored row.

        The insert commits before this returns. A replay of the same vote_id (a double
        click, even one with another choice) keeps the first vote and returns it. A write
        the file system refuses (a full disk) is a `StoreWriteError`, nothing kept; the
        file stays usable, so the same vote can be stored once the cause is fixed.
        """
        outcome = outcome_of(row.choice, row.side_a)
        if outcome != row.outcome:
            raise DataError(f"vote {row.vote_id}: outcome {row.outcome!r} does not follow "
                            f"from choice {row.choice!r} with {row.side_a} on side A")
        self._write(lambda cur: cur.execute(  # a concurrent twin's insert: retried, then kept
            f"INSERT INTO votes ({', '.join(COLUMNS)}) VALUES "
            f"({', '.join('?' * len(COLUMNS))}) ON CONFLICT (vote_id) DO NOTHING",
            [getattr(row, c) for c in COLUMNS]))
        stored = self.get(row.vote_id)
        if stored is None:
            raise DataError(f"vote {row.vote_id} was not stored")
        return stored

    def get(self, vote_id: str) -> VoteRow | None:
        rows = self._select("vote_id = ?", [vote_id])
        return rows[0] if rows else None

    def _select(self, where: str, params: list) -> list[VoteRow]:
        result = self.cursor().execute(
            f"SELECT {', '.join(COLUMNS)} FROM votes WHERE {where} ORDER BY created_at, vote_id",
            params).fetchall()
        return [VoteRow(*row) for row in result]

    def votes(self, base: str | None = None, aligned: str | None = None,
              question: str | None = None) -> list[VoteRow]:
        """Every vote, or those of one comparison (either model may be left open), on
        every question or one."""
        return self._select("(? IS NULL OR base_model = ?) AND (? IS NULL OR aligned_model = ?) "
                            "AND (? IS NULL OR question = ?)",
                            [base, base, aligned, aligned, question, question])

    def comparisons(self, question: str | None = None) -> list[tuple[str, str, int]]:
        """(base, aligned, votes) of every comparison voted on, the latest voted first;
        with `question`, only the votes that rank the two models on it (both-bad votes
        and other questions' votes say nothing of which is better)."""
        return [tuple(r) for r in self.cursor().execute(
            "SELECT base_model, aligned_model, count(*) FROM votes WHERE ? IS NULL OR "
            "(question = ? AND outcome <> 'both_bad') GROUP BY ALL "
            "ORDER BY max(created_at) DESC", [question, question]).fetchall()]

    def revealed(self, voter: str) -> set[tuple[str, str, int]]:
        """(model, prompt, seed) of every image `voter` has seen revealed: both images of
        each pair they voted on, whatever the question, steps or guidance (the same seed
        at other settings draws a look-alike)."""
        rows = self.cursor().execute(
            "SELECT DISTINCT base_model, aligned_model, prompt, seed FROM votes "
            "WHERE voter = ?", [voter]).fetchall()
        return {(model, prompt, seed) for base, aligned, prompt, seed in rows
                for model in (base, aligned)}


def now() -> datetime:
    """The vote time, UTC without a zone (DuckDB TIMESTAMP)."""
    return datetime.now(timezone.utc).replace(tzinfo=None)
