"""The preference store: one DuckDB file holding images, rankings and users.

DuckDB allows one read-write process per file. The process that owns the file (an app)
shares one `Store` between its threads; each thread gets its own cursor. Another process
that finds the file locked gets a `DataError` naming the holder and the fix.

A vote is one transaction. Its `vote_id` is the client's idempotency key: a replayed
vote (double click, client retry) is stored once and answered with the first result.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, fields
from datetime import datetime, timezone
from pathlib import Path

import duckdb

from cli.errors import (
    DailyCapReached,
    DataError,
    DiskFullError,
    StoreWriteError,
    UpgradeNeededError,
    report_warning,
)
from data.migrations import MIGRATIONS

DEFAULT_DB = Path("runs/prefs.duckdb")
# DuckDB's own default is 80% of RAM, which it fills with cached pages during a large
# import. A small cap keeps an import's memory flat (docs/BENCHMARKS.md); queries that
# need more spill to a temporary folder beside the file.
MEMORY_LIMIT = "256MB"
OUTCOMES = ("left", "right", "tie", "both_bad", "skip")
# The three questions of the Diffusion-DPO paper's human evaluation, as put to annotators;
# "preference" is the one every vote answers, and the one exported and trained on by default.
QUESTIONS = {
    "preference": "Which image do you prefer given the prompt?",
    "appeal": "Which image is more visually appealing?",
    "alignment": "Which image better fits the text description?",
}
TIE_UID = "none"  # Pick-a-Pic's best_image_uid for a tie
# DuckDB reports a write that raced another thread's commit as one of these (a
# TransactionException is a conflict only when it says so: a commit that could not be
# written, a full disk say, is one too).
_CONFLICTS = (duckdb.ConstraintException, duckdb.TransactionException)
_RETRIES = range(5)
# A DuckDB file starts with three 4096-byte headers; block i follows at 12288 + i * size.
_HEADERS_BYTES = 3 * 4096
_TRUNCATED = "could not read enough bytes"  # DuckDB, reading a header past the file's end


def stable_id(text: str) -> int:
    """A positive 63-bit integer derived from `text`.

    Pick-a-Pic's ranking_id and user_id are int64. Deriving ours from the vote id and
    the user name keeps them stable across servers (two annotate servers exporting
    shards for one trainer never collide) and clear of the public set's small integers.
    """
    digest = hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> 1


# the namespace AI feedback has named its images in from the start (annotate/feedback.py)
_PAIR_IMAGE_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "diffusion-dpo-loop/annotate/feedback")


def pair_image_uid(vote_id: str, side: int) -> str:
    """A uuid fixed by a generated pair's id and side, so a replayed pair (a resumed run)
    names the same images."""
    return str(uuid.uuid5(_PAIR_IMAGE_NAMESPACE, f"{vote_id}/{side}"))


def new_uid() -> str:
    """A fresh image or vote id (uuid4, as Pick-a-Pic uses)."""
    return str(uuid.uuid4())


@dataclass(frozen=True)
class ImageRecord:
    """One generated (or imported) image and how it was made."""

    image_uid: str
    jpg: bytes
    prompt: str | None = None
    model: str | None = None
    seed: int | None = None
    guidance_scale: float | None = None
    steps: int | None = None
    scheduler: str | None = None
    width: int | None = None
    height: int | None = None
    gen_ms: float | None = None
    url: str | None = None
    model_round: int | None = None  # the round of `python -m rounds` that trained `model`


_IMAGE_FIELDS = tuple(f.name for f in fields(ImageRecord))  # the images table's columns


@dataclass(frozen=True)
class Vote:
    """What a person did with one shown pair.

    `shown_left` is the index (0 or 1) of the image that was on the left, so `outcome`
    ('left', 'right', 'tie', 'both_bad', 'skip') can be turned into Pick-a-Pic labels.
    A gold (control) pair's vote names the known better image in `gold_best_uid`.
    """

    vote_id: str
    caption: str
    image_0_uid: str
    image_1_uid: str
    outcome: str
    shown_left: int
    user_id: int
    dwell_ms: int | None = None
    source: str = "human"
    is_gold: bool = False
    split: str = "train"
    gold_best_uid: str | None = None
    question: str = "preference"
    votes_wanted: int = 1  # 2+: the pair is to be shown to that many annotators


@dataclass(frozen=True)
class PoolPair:
    """An unlabelled pair made ahead of time for the page to show; `pool` names the run
    that made it (`python -m annotate pool`)."""

    pair_id: str
    pool: str
    caption: str
    image_0_uid: str
    image_1_uid: str


@dataclass(frozen=True)
class Ranking:
    """One stored row of `rankings`."""

    ranking_id: int
    vote_id: str | None
    caption: str
    image_0_uid: str
    image_1_uid: str
    label_0: float | None
    label_1: float | None
    best_image_uid: str | None
    user_id: int
    created_at: datetime
    has_label: bool
    num_example_per_prompt: int | None
    shown_left: int | None
    dwell_ms: int | None
    outcome: str
    source: str
    is_gold: bool
    split: str
    question: str


RANKING_COLUMNS = [f.name for f in fields(Ranking)]


def utc_day_start() -> datetime:
    """Midnight UTC today, naive as `created_at` is stored: where a daily cap counts from."""
    return datetime.now(timezone.utc).replace(tzinfo=None, hour=0, minute=0, second=0,
                                              microsecond=0)


def preference_labels(
    outcome: str, shown_left: int, image_0_uid: str, image_1_uid: str
) -> tuple[float | None, float | None, str | None, bool]:
    """(label_0, label_1, best_image_uid, has_label) for a vote, in Pick-a-Pic terms."""
    if outcome not in OUTCOMES:
        raise DataError(f"unknown outcome {outcome!r}: use one of {', '.join(OUTCOMES)}")
    if shown_left not in (0, 1):
        raise DataError(f"shown_left must be 0 or 1, got {shown_left!r}")
    if outcome == "tie":
        return 0.5, 0.5, TIE_UID, True
    if outcome in ("both_bad", "skip"):
        return None, None, None, False
    winner = shown_left if outcome == "left" else 1 - shown_left
    uids = (image_0_uid, image_1_uid)
    return float(winner == 0), float(winner == 1), uids[winner], True


def _holder(error: Exception) -> tuple[str, str]:
    """(who, pid) of the process holding a locked DuckDB file, from DuckDB's lock error."""
    holder = re.search(r"held in (.+?) \(PID (\d+)\)", str(error))
    if not holder:
        return "another process", "it"
    return f"process {holder.group(2)} ({holder.group(1)})", holder.group(2)


def is_disk_full(error: BaseException) -> bool:
    """Whether an OS or DuckDB error says the disk is full (ENOSPC)."""
    if getattr(error, "errno", None) == errno.ENOSPC:
        return True
    return os.strerror(errno.ENOSPC) in str(error)  # DuckDB quotes the OS message


def disk_full_error(path: Path, lost: str) -> DiskFullError:
    """The one-line answer to a write that found the disk holding `path` full."""
    try:
        free = f"{shutil.disk_usage(path.resolve().parent).free / 2**20:.1f} MB free"
    except OSError:
        free = "free space unknown"
    return DiskFullError(
        f"no space left on the disk holding {path} ({free}): {lost}; "
        "free some space and run the command again"
    )


def unwritable_folder(folder: Path, what: str, fix: str,
                      error: OSError | None = None) -> DataError:
    """The one line for `what` (the export, the report) that cannot be written into
    `folder`: a file in the way of its path, else the OS's reason (`error`); `fix` says
    what to give instead. A full disk is `disk_full_error`'s."""
    blocker = next((p for p in (folder, *folder.parents) if p.exists() and not p.is_dir()),
                   None)
    if blocker is not None:
        cause = f"{blocker} is a file, not a folder"
    else:  # without a file in the way, the caller has the OS's error
        cause = os.strerror(error.errno) if error.errno else _first_line(error)
    return DataError(f"cannot write {what} to {folder}: {cause}: {fix}")


def _is_conflict(error: Exception) -> bool:
    """Whether a failed write raced another thread (retry) rather than hit the file system."""
    if isinstance(error, duckdb.ConstraintException):
        return True
    lowered = str(error).lower()
    io_failure = ("could not write", "read-only", "permission denied", "i/o error",
                  "input/output error")
    return not (is_disk_full(error) or any(words in lowered for words in io_failure))


def write_error(path: Path, error: Exception) -> StoreWriteError:
    """The one-line error of a write to the store at `path` that the file system refused."""
    if is_disk_full(error):
        return disk_full_error(path, "nothing of that write was kept")
    lowered = str(error).lower()
    if "read-only" in lowered or "permission denied" in lowered:
        return StoreWriteError(f"{path} cannot be written (read-only or no permission): "
                               "fix its permissions")
    detail = str(error).splitlines()[0] if str(error) else type(error).__name__
    return StoreWriteError(f"{path} could not be written ({detail}): check the disk")


@contextmanager
def transaction(cursor: duckdb.DuckDBPyConnection) -> Iterator[duckdb.DuckDBPyConnection]:
    """BEGIN ... COMMIT, rolled back on any exception."""
    cursor.execute("BEGIN TRANSACTION")
    try:
        yield cursor
    except BaseException:
        cursor.execute("ROLLBACK")
        raise
    cursor.execute("COMMIT")


class DuckDBFile:
    """One DuckDB file of a known kind, opened once per process and shared by its threads.

    The lifecycle every such file has (the preference store, the eval's votes): open it,
    turning DuckDB's failures into one-line `DataError`s (a lock names its holder and
    what to do instead); one cursor per thread; close, also as a context manager; and the
    schema as ordered migrations recorded in `schema_version`, each applied in one
    transaction with its version row, so a crash leaves the file at the previous version.
    A subclass sets the class attributes below and adds its own tables' queries.
    """

    KIND = "DuckDB file"  # what the file is, in messages
    MIGRATIONS: list[tuple[int, list[str]]] = []
    TABLE = ""  # a table migration 1 creates: a file with tables but not this one is foreign
    MISSING = "{path} does not exist"  # read-only open of a missing file; then the fix
    IN_USE = "stop the app that holds it"  # what to do while another holds it ({pid})
    UPGRADE = "open it once read-write"  # how to apply pending migrations

    def __init__(self, path: str | Path, read_only: bool = False):
        self.path = Path(path)
        self.read_only = read_only
        self._con = self._connect()
        self._local = threading.local()
        self._capped = threading.Lock()  # capped votes, one at a time (record_vote)
        try:
            self._migrate()
        except BaseException:
            self._con.close()
            raise

    def _connect(self) -> duckdb.DuckDBPyConnection:
        """Open the file, whole: a truncated file is refused, and a .wal beside it that
        DuckDB skips (it says nothing) is moved aside with a warning."""
        path = self.path
        if self.read_only and not path.exists():
            raise DataError(self.MISSING.format(path=path))
        if not self.read_only:
            path.parent.mkdir(parents=True, exist_ok=True)
            if not path.exists():
                self._create()
        wal = Path(f"{path}.wal")
        had_wal = wal.exists() and wal.stat().st_size > 0
        con = self._open()
        try:
            self._check_whole(con)
            if had_wal and wal.exists() and not _replayed_wal(con):
                con.close()
                report_warning(self._set_aside(wal))
                con = self._open()
        except BaseException:
            con.close()
            raise
        return con

    def _create(self) -> None:
        """Make a new file whole under another name, then link it to its own: killed
        while DuckDB writes a new file's first blocks, a store would otherwise be left
        truncated, refused by every later open. The link fails where another process
        made the store first, and that one is opened instead."""
        fresh = self.path.with_name(f".{self.path.name}.new-{os.getpid()}")
        fresh.unlink(missing_ok=True)
        try:
            duckdb.connect(str(fresh), config={"memory_limit": MEMORY_LIMIT}).close()
            try:
                os.link(fresh, self.path)
            except FileExistsError:
                pass  # another process made it first: open theirs
            except OSError as error:
                if error.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP):
                    raise
                if not self.path.exists():  # a file system without hard links
                    os.replace(fresh, self.path)
        except (duckdb.Error, OSError) as error:
            if is_disk_full(error):
                raise disk_full_error(self.path, f"the {self.KIND} was not made") from None
            raise DataError(f"cannot make {self.path}: {_first_line(error)}") from None
        finally:
            fresh.unlink(missing_ok=True)

    def _open(self) -> duckdb.DuckDBPyConnection:
        """duckdb.connect, its failures as one-line `DataError`s."""
        path = self.path
        try:
            return duckdb.connect(
                str(path), read_only=self.read_only, config={"memory_limit": MEMORY_LIMIT}
            )
        except duckdb.IOException as error:
            if "lock" in str(error).lower():
                who, pid = _holder(error)
                raise DataError(
                    f"{path} is in use by {who}: {self.IN_USE.format(path=path, pid=pid)}"
                ) from None
            if is_disk_full(error):
                raise disk_full_error(path, f"the {self.KIND} was not opened") from None
            if _TRUNCATED in str(error).lower():
                raise self._damaged(f"truncated: {path.stat().st_size:,} bytes, fewer than "
                                    "its header says") from None
            raise DataError(f"cannot open {path}: {_first_line(error)}") from None
        except duckdb.Error as error:
            if "checksum" in str(error).lower():
                raise self._damaged(_first_line(error)) from None
            raise DataError(f"{path} is not a {self.KIND}: {_first_line(error)}") from None

    def _check_whole(self, con: duckdb.DuckDBPyConnection) -> None:
        """Refuse a file shorter than the blocks its header counts. DuckDB opens such a
        file (a copy cut short, a disk that filled) and fails only on the first query
        that reads a missing block, so every command would end in a traceback and every
        vote would fail. The bound is the blocks in use: DuckDB itself cuts free blocks
        off the end of its file while `total_blocks` still counts them (a store written
        and closed step after step is shorter than its total blocks, and whole)."""
        [(block_size, blocks)] = con.execute(
            "SELECT block_size, used_blocks FROM pragma_database_size() "
            "WHERE database_name = current_database()").fetchall()
        need, size = _HEADERS_BYTES + blocks * block_size, self.path.stat().st_size
        if size < need:
            raise self._damaged(f"truncated: {size:,} bytes of the {need:,} its blocks take")

    def _damaged(self, detail: str) -> DataError:
        return DataError(f"{self.path} is damaged ({detail}): restore it from a copy, or "
                         "move it away to start a new store")

    def _set_aside(self, wal: Path) -> str:
        """Move a .wal DuckDB did not replay out of its way (it would overwrite it with
        the next write), keeping its bytes; the warning that says so."""
        said = (f"{wal} could not be replayed (damaged, or not this store's), so the store "
                "was opened without it")
        aside = wal.with_name(f"{wal.name}.bad-{time.strftime('%Y%m%d-%H%M%S')}")
        try:
            wal.rename(aside)
        except OSError as error:
            return f"{said}; it could not be moved aside ({error.strerror}): move it away"
        return f"{said}; moved aside as {aside}"

    def close(self) -> None:
        self._con.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _write(self, work: Callable[[duckdb.DuckDBPyConnection], None]) -> None:
        """Run `work` in one transaction; again, after a pause, if it raced another
        thread's write (which may not have committed yet: retrying at once meets it again).

        A write the file system refuses (a full disk, a read-only folder) rolls back and
        raises `StoreWriteError` naming the problem; the store stays usable, so the same
        write can be made again once the problem is fixed.
        """
        cur = self.cursor()
        for attempt in _RETRIES:
            try:
                with transaction(cur):
                    work(cur)
                return
            except _CONFLICTS as error:
                if not _is_conflict(error):
                    raise write_error(self.path, error) from None
                if attempt == _RETRIES[-1]:
                    raise
                time.sleep(0.01 * 2**attempt)
            except (duckdb.IOException, duckdb.FatalException, OSError) as error:
                raise write_error(self.path, error) from None

    def cursor(self) -> duckdb.DuckDBPyConnection:
        """This thread's own cursor (DuckDB connections are not shared across threads)."""
        cur = getattr(self._local, "cursor", None)
        if cur is None:
            cur = self._con.cursor()
            self._local.cursor = cur
        return cur

    def schema_version(self) -> int:
        row = self.cursor().execute("SELECT max(version) FROM schema_version").fetchone()
        return row[0] or 0

    def _migrate(self) -> None:
        cur = self.cursor()
        tables = {row[0] for row in cur.execute(
            "SELECT table_name FROM information_schema.tables").fetchall()}
        if tables and self.TABLE not in tables:
            raise DataError(f"{self.path} is not a {self.KIND} (no {self.TABLE} table): "
                            "name the right file")
        upgrade = f"{self.path} needs a schema upgrade: {self.UPGRADE.format(path=self.path)}"
        if self.read_only:
            if "schema_version" not in tables:
                if tables:
                    raise UpgradeNeededError(upgrade)
                raise DataError(f"{self.path} is not a {self.KIND} (no schema_version)")
        else:
            cur.execute(
                "CREATE TABLE IF NOT EXISTS schema_version ("
                "version INTEGER PRIMARY KEY, applied_at TIMESTAMP DEFAULT current_timestamp)"
            )
        current = self.schema_version()
        latest = self.MIGRATIONS[-1][0]
        if current > latest:
            raise DataError(
                f"{self.path} has schema version {current}, newer than this code "
                f"({latest}): upgrade the project"
            )
        pending = [(v, steps) for v, steps in self.MIGRATIONS if v > current]
        if pending and self.read_only:
            raise UpgradeNeededError(upgrade)
        for version, statements in pending:
            with transaction(cur):
                for statement in statements:
                    cur.execute(statement)
                cur.execute("INSERT INTO schema_version (version) VALUES (?)", [version])


def _replayed_wal(con: duckdb.DuckDBPyConnection) -> bool:
    """Whether DuckDB replayed any of the .wal beside the file it just opened: it reports
    the replayed log's size ("0 bytes" when it skipped the file as not a valid log)."""
    [(size,)] = con.execute("SELECT wal_size FROM pragma_database_size() "
                            "WHERE database_name = current_database()").fetchall()
    return not str(size).startswith("0 ")


def _first_line(error: Exception) -> str:
    return str(error).splitlines()[0] if str(error) else type(error).__name__


class Store(DuckDBFile):
    """The preference store in one DuckDB file; share one instance between threads."""

    KIND = "preference store"
    MIGRATIONS = MIGRATIONS
    TABLE = "rankings"
    MISSING = "{path} does not exist: record some votes or import shards first"
    # DuckDB refuses a second process even read-only (so `data export` and `data stats`
    # fail the same way): the one thing that works is to stop the holder first
    IN_USE = ("stop that process (Ctrl+C in its terminal, or kill {pid}), then run this "
              "command again")
    UPGRADE = "open it once read-write (any data command)"

    def __init__(self, path: str | Path = DEFAULT_DB, read_only: bool = False):
        super().__init__(path, read_only)

    # -- users -----------------------------------------------------------------

    def user_id(self, name: str) -> int:
        """The id of the annotator called `name`, registering them on first sight."""
        name = name.strip()
        if not name:
            raise DataError("an annotator name is required")
        user_id = stable_id(f"user:{name}")
        known = self.cursor().execute(
            "SELECT count(*) FROM users WHERE user_id = ?", [user_id]).fetchone()[0]
        if known:  # a read: a known annotator can vote while the disk is full
            return user_id
        self._write(
            lambda cur: cur.execute(
                "INSERT INTO users (user_id, name) VALUES (?, ?) ON CONFLICT DO NOTHING",
                [user_id, name],
            )
        )
        return user_id

    # -- images and votes ------------------------------------------------------

    def add_images(self, images: Iterable[ImageRecord]) -> None:
        """Store images (one transaction); an image already stored is left as it is."""
        images = list(images)
        self._write(lambda cur: self._insert_images(cur, images))

    @staticmethod
    def _insert_images(cur: duckdb.DuckDBPyConnection, images: Iterable[ImageRecord]) -> None:
        # One statement for all rows: executemany costs ~15x more per row in DuckDB.
        rows = [[getattr(im, name) for name in _IMAGE_FIELDS] for im in images]
        if rows:
            marks = ", ".join(["(" + ", ".join("?" * len(_IMAGE_FIELDS)) + ")"] * len(rows))
            cur.execute(
                f"INSERT INTO images ({', '.join(_IMAGE_FIELDS)}) VALUES {marks} "
                "ON CONFLICT DO NOTHING",
                [value for row in rows for value in row],
            )

    def record_vote(self, vote: Vote, images: Iterable[ImageRecord] = (),
                    also: Iterable[Vote] = (), daily_cap: int | None = None) -> Ranking:
        """Store a vote (and the pair's images, if given) in one transaction; `also`:
        its answers to the other questions, stored in the same transaction.

        Returns the stored ranking. A vote whose `vote_id` is already stored changes
        nothing and returns the ranking stored the first time. With `daily_cap`, a vote
        that counts (`vote_tally`) when its user has that many today raises
        `DailyCapReached`: counted in the transaction that would insert it, so a pair
        handed out before the cap was reached cannot take the user past it. Capped votes
        are also written one at a time: two transactions at once would each count the
        other's vote as not there yet (DuckDB sees no conflict between two inserts).
        """
        labelled = self._labelled([vote, *also])
        images = list(images)

        def work(cur: duckdb.DuckDBPyConnection) -> None:
            if self._ranking_by_vote(cur, vote.vote_id) is None:
                if daily_cap is not None and vote.outcome != "skip":
                    today, _ = self._tally(cur, vote.user_id, utc_day_start(), vote.source)
                    if today >= daily_cap:
                        raise DailyCapReached(f"user {vote.user_id} has {today} votes today: "
                                              f"the cap is {daily_cap}")
                self._insert_images(cur, images)
                self._insert_answers(cur, labelled)

        if daily_cap is None:
            self._write(work)
        else:
            with self._capped:
                self._write(work)
        return self.ranking_by_vote(vote.vote_id)

    def record_votes(self, pairs: Iterable[tuple[Vote, Iterable[ImageRecord]]]) -> None:
        """Store many votes, each with its pair's images, in one transaction: all or none.

        For writers that make many votes at once (AI feedback): one commit costs more
        than generating a small pair. A vote whose `vote_id` is already stored is skipped.
        """
        batch = [(vote, self._labelled([vote]), list(images)) for vote, images in pairs]

        def work(cur: duckdb.DuckDBPyConnection) -> None:
            stored = {vote_id for (vote_id,) in cur.execute(
                "SELECT vote_id FROM rankings WHERE vote_id IN (SELECT unnest(?))",
                [[vote.vote_id for vote, *_ in batch]]).fetchall()}
            new = []
            for vote, labelled, images in batch:
                if vote.vote_id not in stored:
                    stored.add(vote.vote_id)
                    new.append((labelled, images))
            # all the images in one statement: a statement costs more than its rows
            self._insert_images(cur, [image for _, images in new for image in images])
            for labelled, _ in new:
                self._insert_answers(cur, labelled)

        self._write(work)

    def add_pool_pairs(self, pairs: Iterable[tuple[PoolPair, Iterable[ImageRecord]]]) -> None:
        """Store unlabelled pairs with their images in one transaction: all or none. A pair
        whose `pair_id` is already stored is skipped."""
        batch = [(pair, list(images)) for pair, images in pairs]

        def work(cur: duckdb.DuckDBPyConnection) -> None:
            stored = {pair_id for (pair_id,) in cur.execute(
                "SELECT pair_id FROM pool WHERE pair_id IN (SELECT unnest(?))",
                [[pair.pair_id for pair, _ in batch]]).fetchall()}
            new = {pair.pair_id: (pair, images) for pair, images in batch
                   if pair.pair_id not in stored}
            self._insert_images(cur, [im for _, images in new.values() for im in images])
            for pair, _ in new.values():
                cur.execute("INSERT INTO pool (pair_id, pool, caption, image_0_uid, "
                            "image_1_uid) VALUES (?, ?, ?, ?, ?)",
                            [pair.pair_id, pair.pool, pair.caption, pair.image_0_uid,
                             pair.image_1_uid])

        self._write(work)

    _POOL_VOTED = ("EXISTS (SELECT 1 FROM rankings r WHERE r.image_0_uid = p.image_0_uid "
                   "AND r.image_1_uid = p.image_1_uid AND r.question = 'preference' "
                   "AND r.outcome <> 'skip')")

    def pool_to_show(self) -> tuple[list[PoolPair], dict[str, set[int]]]:
        """The pool pairs nobody has voted on yet (a skip is no vote), oldest first, and
        for each the users who skipped it."""
        cur = self.cursor()
        pairs = [PoolPair(*row) for row in cur.execute(
            "SELECT p.pair_id, p.pool, p.caption, p.image_0_uid, p.image_1_uid FROM pool p "
            f"WHERE NOT {self._POOL_VOTED} ORDER BY p.created_at, p.pair_id").fetchall()]
        skipped: dict[str, set[int]] = {}
        for pair_id, user_id in cur.execute(
                "SELECT p.pair_id, r.user_id FROM pool p JOIN rankings r ON r.image_0_uid = "
                "p.image_0_uid AND r.image_1_uid = p.image_1_uid WHERE r.outcome = 'skip'"
                ).fetchall():
            skipped.setdefault(pair_id, set()).add(user_id)
        return pairs, skipped

    def pool_progress(self, since: datetime) -> tuple[int, int, int]:
        """(pool pairs nobody has voted on, pool pairs, pool pairs first voted since
        `since`)."""
        return self.cursor().execute(
            f"SELECT count(*) FILTER (NOT {self._POOL_VOTED}), count(*), "
            "count(*) FILTER ((SELECT min(r.created_at) FROM rankings r WHERE r.image_0_uid "
            "= p.image_0_uid AND r.image_1_uid = p.image_1_uid AND r.outcome <> 'skip' "
            "AND r.question = 'preference') >= ?) FROM pool p", [since]).fetchone()

    def pool_ids(self, prefix: str) -> list[str]:
        """Every stored pool pair id that starts with `prefix` (a pool run's pairs)."""
        rows = self.cursor().execute(
            "SELECT pair_id FROM pool WHERE starts_with(pair_id, ?)", [prefix]).fetchall()
        return [pair_id for (pair_id,) in rows]

    @staticmethod
    def _labelled(votes: list[Vote]) -> list[tuple[Vote, tuple]]:
        """Each vote with its Pick-a-Pic labels; refuses an unknown question."""
        for v in votes:
            if v.question not in QUESTIONS:
                raise DataError(f"unknown question {v.question!r}: use one of "
                                f"{', '.join(QUESTIONS)}")
        return [(v, preference_labels(v.outcome, v.shown_left, v.image_0_uid,
                                      v.image_1_uid)) for v in votes]

    def _insert_answers(self, cur: duckdb.DuckDBPyConnection,
                        labelled: list[tuple[Vote, tuple]]) -> None:
        """Inside a transaction: a vote and its answers to the other questions (the first
        is the vote), and its overlap row when more annotators are wanted."""
        vote = labelled[0][0]
        for v, labels in labelled:
            self._insert_vote(cur, v, *labels)
        if vote.votes_wanted > 1:
            cur.execute(
                "INSERT INTO overlap (image_0_uid, image_1_uid, caption, votes_wanted) "
                "VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING",
                [vote.image_0_uid, vote.image_1_uid, vote.caption, vote.votes_wanted])

    @staticmethod
    def _insert_vote(cur, vote: Vote, label_0, label_1, best, has_label) -> None:
        known = cur.execute(
            "SELECT count(*) FROM images WHERE image_uid IN (?, ?)",
            [vote.image_0_uid, vote.image_1_uid],
        ).fetchone()[0]
        if known != len({vote.image_0_uid, vote.image_1_uid}):
            raise DataError(
                f"vote {vote.vote_id} names an image that is not stored: "
                "store the pair's images first (or pass them with the vote)"
            )
        cur.execute(
            "INSERT INTO rankings (ranking_id, vote_id, caption, image_0_uid, "
            "image_1_uid, label_0, label_1, best_image_uid, user_id, created_at, "
            "has_label, shown_left, dwell_ms, outcome, source, is_gold, split, question) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                stable_id(f"vote:{vote.vote_id}"), vote.vote_id, vote.caption,
                vote.image_0_uid, vote.image_1_uid, label_0, label_1, best,
                vote.user_id, datetime.now(timezone.utc).replace(tzinfo=None),
                has_label, vote.shown_left, vote.dwell_ms, vote.outcome,
                vote.source, vote.is_gold, vote.split, vote.question,
            ],
        )
        if vote.gold_best_uid is not None:
            cur.execute(
                "INSERT INTO gold_answers (vote_id, best_image_uid) VALUES (?, ?)",
                [vote.vote_id, vote.gold_best_uid],
            )

    def ranking_by_vote(self, vote_id: str) -> Ranking | None:
        return self._ranking_by_vote(self.cursor(), vote_id)

    @staticmethod
    def _ranking_by_vote(cur: duckdb.DuckDBPyConnection, vote_id: str) -> Ranking | None:
        row = cur.execute(
            f"SELECT {', '.join(RANKING_COLUMNS)} FROM rankings WHERE vote_id = ?", [vote_id]
        ).fetchone()
        return Ranking(*row) if row else None

    def rankings(self, where: str = "true", params: list | None = None) -> list[Ranking]:
        """Stored rankings matching a SQL condition, oldest first."""
        rows = self.cursor().execute(
            f"SELECT {', '.join(RANKING_COLUMNS)} FROM rankings WHERE {where} "
            "ORDER BY created_at, ranking_id",
            params or [],
        ).fetchall()
        return [Ranking(*row) for row in rows]

    def image_records(self, uids: list[str]) -> dict[str, ImageRecord]:
        """The stored images with these uids, by uid."""
        if not uids:
            return {}
        names = [f.name for f in fields(ImageRecord)]
        rows = self.cursor().execute(
            f"SELECT {', '.join(names)} FROM images WHERE image_uid IN "
            f"({', '.join('?' * len(uids))})", uids).fetchall()
        return {row[0]: ImageRecord(*row) for row in rows}

    def open_overlap(self, user_id: int, limit: int = 64) -> list[tuple[str, str, str, int]]:
        """Pairs still wanting votes that `user_id` has not been shown: (image_0_uid,
        image_1_uid, caption, votes still wanted), nearest to complete first, then oldest.
        A skip does not count as a vote, but the skipper is not shown the pair again."""
        return self.cursor().execute(
            "SELECT o.image_0_uid, o.image_1_uid, o.caption, "
            "o.votes_wanted - count(r.ranking_id) AS wanted FROM overlap o "
            "LEFT JOIN rankings r ON r.image_0_uid = o.image_0_uid "
            "AND r.image_1_uid = o.image_1_uid AND r.question = 'preference' "
            "AND r.source = 'human' AND r.outcome <> 'skip' "
            "WHERE NOT EXISTS (SELECT 1 FROM rankings x WHERE x.user_id = ? "
            "AND x.image_0_uid = o.image_0_uid AND x.image_1_uid = o.image_1_uid) "
            "GROUP BY o.image_0_uid, o.image_1_uid, o.caption, o.votes_wanted, o.created_at "
            "HAVING count(r.ranking_id) < o.votes_wanted "
            "ORDER BY wanted, o.created_at LIMIT ?", [user_id, limit]).fetchall()

    def overlap_progress(self) -> tuple[int, int]:
        """(overlap pairs with all the votes they want, overlap pairs started)."""
        return self.cursor().execute(
            "SELECT count(*) FILTER (votes >= votes_wanted), count(*) FROM ("
            "SELECT o.votes_wanted, count(r.ranking_id) AS votes FROM overlap o "
            "LEFT JOIN rankings r ON r.image_0_uid = o.image_0_uid "
            "AND r.image_1_uid = o.image_1_uid AND r.question = 'preference' "
            "AND r.source = 'human' AND r.outcome <> 'skip' "
            "GROUP BY o.image_0_uid, o.image_1_uid, o.votes_wanted)").fetchone()

    def image_jpgs(self, uids: list[str]) -> dict[str, bytes]:
        """JPEG bytes of the given images, by uid."""
        if not uids:
            return {}
        marks = ", ".join("?" * len(uids))
        rows = self.cursor().execute(
            f"SELECT image_uid, jpg FROM images WHERE image_uid IN ({marks})", uids
        ).fetchall()
        return dict(rows)

    def vote_tally(self, user_id: int, since: datetime, source: str = "human") -> tuple[int, int]:
        """(votes since `since`, votes in all) of one user from `source`, skips not counted."""
        return self._tally(self.cursor(), user_id, since, source)

    @staticmethod
    def _tally(cur: duckdb.DuckDBPyConnection, user_id: int, since: datetime,
               source: str) -> tuple[int, int]:
        return cur.execute(
            "SELECT count(*) FILTER (created_at >= ?), count(*) FROM rankings "
            "WHERE user_id = ? AND source = ? AND outcome <> 'skip' "
            "AND question = 'preference'",
            [since, user_id, source],
        ).fetchone()

    def vote_ids(self, prefix: str) -> list[str]:
        """Every stored vote id that starts with `prefix` (a feedback run's votes)."""
        rows = self.cursor().execute(
            "SELECT vote_id FROM rankings WHERE starts_with(vote_id, ?)", [prefix]
        ).fetchall()
        return [vote_id for (vote_id,) in rows]

    def labelled_pairs(self, models: Iterable[str]) -> list[str]:
        """vote_ids of the labelled (decisive or tie), non-gold pairs whose two images were
        both made by one of `models`, oldest first."""
        models = list(models)
        if not models:
            return []
        marks = ", ".join("?" * len(models))
        return [vote_id for (vote_id,) in self.cursor().execute(
            "SELECT r.vote_id FROM rankings r "
            "JOIN images i0 ON i0.image_uid = r.image_0_uid "
            "JOIN images i1 ON i1.image_uid = r.image_1_uid "
            "WHERE r.has_label AND NOT r.is_gold AND r.question = 'preference' "
            f"AND i0.model IN ({marks}) "
            f"AND i1.model IN ({marks}) ORDER BY r.created_at, r.ranking_id",
            models + models).fetchall()]

    def models(self) -> list[str]:
        """Every model name the stored images record."""
        return [m for (m,) in self.cursor().execute(
            "SELECT DISTINCT model FROM images WHERE model IS NOT NULL ORDER BY 1").fetchall()]

    def copy_pairs(self, source: Store, vote_ids: list[str]) -> None:
        """Copy these rankings of `source` with their images and annotators, as they are,
        in one transaction (all or nothing); a ranking already here is left as it is."""
        if not vote_ids:
            return
        read = source.cursor()
        marks = ", ".join("?" * len(vote_ids))
        columns = {table: [c for (c,) in read.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_name = ? "
            "ORDER BY ordinal_position", [table]).fetchall()]
            for table in ("rankings", "images", "users")}
        chosen = f"SELECT * FROM rankings WHERE vote_id IN ({marks})"
        taken = {
            "rankings": read.execute(chosen, vote_ids).fetchall(),
            "images": read.execute(
                f"WITH r AS ({chosen}) SELECT * FROM images WHERE image_uid IN "
                "(SELECT image_0_uid FROM r UNION SELECT image_1_uid FROM r)",
                vote_ids).fetchall(),
            "users": read.execute(
                f"WITH r AS ({chosen}) SELECT * FROM users WHERE user_id IN "
                "(SELECT user_id FROM r)", vote_ids).fetchall(),
        }

        def work(cur: duckdb.DuckDBPyConnection) -> None:
            have = {v for (v,) in cur.execute(
                f"SELECT vote_id FROM rankings WHERE vote_id IN ({marks})", vote_ids).fetchall()}
            at = columns["rankings"].index("vote_id")
            taken["rankings"] = [r for r in taken["rankings"] if r[at] not in have]
            for table in ("users", "images", "rankings"):
                if taken[table]:
                    names = columns[table]
                    cur.executemany(
                        f"INSERT INTO {table} ({', '.join(names)}) VALUES "
                        f"({', '.join('?' * len(names))}) ON CONFLICT DO NOTHING",
                        taken[table])

        self._write(work)

    def counts(self) -> dict[str, int]:
        """Row counts per table, for summaries and tests."""
        cur = self.cursor()
        return {
            table: cur.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
            for table in ("images", "rankings", "users")
        }
