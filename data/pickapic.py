"""Pick-a-Pic parquet shards in and out of the store.

Import reads the public v1/v2 shards (JPEG bytes inline) and our own exports into the
same tables; export writes exactly the v2 columns and types, so
`datasets.load_dataset("parquet", ...)`, the paper's loader and ours read our data as
they read the public set.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterable
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import yaml
from tqdm import tqdm

from cli.errors import DataError, ShardError
from data.images import MAX_SIDE, ImageProblem, check_jpeg
from data.manifest import SUFFIXES as MANIFEST_SUFFIXES
from data.quality import flagged_users
from data.store import (
    QUESTIONS,
    TIE_UID,
    Store,
    disk_full_error,
    is_disk_full,
    transaction,
    unwritable_folder,
)

# The public pickapic_v2 features, in their order (its pandas index column aside).
PICKAPIC_SCHEMA = pa.schema(
    [
        ("are_different", pa.bool_()),
        ("best_image_uid", pa.string()),
        ("caption", pa.string()),
        ("created_at", pa.timestamp("ns")),
        ("has_label", pa.bool_()),
        ("image_0_uid", pa.string()),
        ("image_0_url", pa.string()),
        ("image_1_uid", pa.string()),
        ("image_1_url", pa.string()),
        ("jpg_0", pa.binary()),
        ("jpg_1", pa.binary()),
        ("label_0", pa.float64()),
        ("label_1", pa.float64()),
        ("model_0", pa.string()),
        ("model_1", pa.string()),
        ("ranking_id", pa.int64()),
        ("user_id", pa.int64()),
        ("num_example_per_prompt", pa.int64()),
    ]
)
IMAGE_COLUMNS = ("jpg_0", "jpg_1")
NO_IMAGES_SCHEMA = pa.schema([f for f in PICKAPIC_SCHEMA if f.name not in IMAGE_COLUMNS])

# What an import cannot do without; the rest is derived or left empty when absent.
REQUIRED_COLUMNS = (
    "caption", "jpg_0", "jpg_1", "label_0", "label_1", "image_0_uid", "image_1_uid",
    "model_0", "model_1", "ranking_id", "user_id", "created_at",
)
OPTIONAL_COLUMNS = (
    "best_image_uid", "image_0_url", "image_1_url", "has_label", "num_example_per_prompt",
)
NOT_NULL_COLUMNS = (
    "caption", "jpg_0", "jpg_1", "label_0", "label_1", "image_0_uid", "image_1_uid",
    "ranking_id", "user_id", "created_at",
)
KNOWN_SPLITS = ("train", "validation", "test", "validation_unique", "test_unique")
VALID_LABEL_SET = pa.array([0.0, 0.5, 1.0])

_TYPE_CHECKS = {
    "string": (pa.types.is_string, pa.types.is_large_string),
    "binary": (pa.types.is_binary, pa.types.is_large_binary),
    "number": (pa.types.is_floating, pa.types.is_integer),
    "integer": (pa.types.is_integer,),
    "timestamp": (pa.types.is_timestamp,),
    "bool": (pa.types.is_boolean,),
}
_EXPECTED_KIND = {
    "caption": "string", "best_image_uid": "string", "image_0_uid": "string",
    "image_1_uid": "string", "image_0_url": "string", "image_1_url": "string",
    "model_0": "string", "model_1": "string", "jpg_0": "binary", "jpg_1": "binary",
    "label_0": "number", "label_1": "number", "ranking_id": "integer", "user_id": "integer",
    "num_example_per_prompt": "integer", "created_at": "timestamp", "has_label": "bool",
}


@dataclass(frozen=True)
class ImportedFile:
    """What importing one shard did: all of its pairs added, or (refused) none."""

    path: Path
    rows: int  # rows in the shard
    added: int  # rankings new to the store
    already: int = 0  # ranking_ids stored before with the same content (a re-import)
    repeated: int = 0  # rows repeating an earlier row of the same file exactly
    refused: str | None = None  # "FILE, row N: problem" when nothing was imported
    skipped: bool = False  # this file, unchanged, was imported before: not read again


@dataclass(frozen=True)
class ExportedSplit:
    split: str
    rows: int
    files: list[Path]
    consensus: Consensus | None = None


# -- import ------------------------------------------------------------------------------


IMPORTED_SUFFIXES = (".parquet", *MANIFEST_SUFFIXES)  # shards, manifests, HPDv3's files


def find_shards(paths: Iterable[str | Path]) -> list[Path]:
    """Parquet shards, JSONL manifests and HPDv3 JSON files named directly, or found under
    named folders (hidden files aside: an export's mark), in sorted order."""
    shards: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.suffix in IMPORTED_SUFFIXES
                           and p.is_file() and not p.name.startswith("."))
            if not found:
                raise DataError(f"{path}: no .parquet, .jsonl or .json files in this folder")
            shards.extend(found)
        elif path.is_file():
            shards.append(path)
        else:
            raise DataError(f"{path}: no such file or folder")
    return shards


def split_of(path: Path) -> str:
    """The split a shard belongs to: a `split=NAME` or split-named folder, or its file name."""
    for part in reversed(path.parent.parts):
        match = re.fullmatch(r"split=(\w+)", part)
        if match:
            return match.group(1)
        if part in KNOWN_SPLITS:
            return part
    prefix = path.name.split("-")[0]
    return prefix if prefix in KNOWN_SPLITS else "train"


def check_schema(path: Path, schema: pa.Schema) -> list[str]:
    """The shard's importable columns; raises `ShardError` on a missing or mistyped one."""
    missing = [c for c in REQUIRED_COLUMNS if c not in schema.names]
    if missing:
        hint = " (a no-images shard cannot be imported)" if "jpg_0" in missing else ""
        raise ShardError(
            f"{path}: missing column(s) {', '.join(missing)}{hint}; "
            "a Pick-a-Pic v1/v2 shard has all of " + ", ".join(REQUIRED_COLUMNS)
        )
    present = [c for c in (*REQUIRED_COLUMNS, *OPTIONAL_COLUMNS) if c in schema.names]
    for name in present:
        kind = _EXPECTED_KIND[name]
        actual = schema.field(name).type
        if not any(check(actual) for check in _TYPE_CHECKS[kind]):
            raise ShardError(f"{path}: column {name} has type {actual}, expected {kind}")
    return present


_IMAGE_SCHEMA = pa.schema([
    ("image_uid", pa.string()), ("jpg", pa.binary()), ("prompt", pa.string()),
    ("model", pa.string()), ("width", pa.int32()), ("height", pa.int32()), ("url", pa.string()),
])
TRANSACTION_BYTES = 48 << 20  # JPEG bytes an import commits at once (the store allows 256 MB)
_IMAGE_SOURCE_COLUMNS = (
    "image_0_uid", "image_1_uid", "jpg_0", "jpg_1", "caption", "model_0", "model_1",
    "image_0_url", "image_1_url",
)
# What makes two rows with one ranking_id the same vote. num_example_per_prompt is left
# out: it counts a prompt's rows in the set a shard came from (a subset such as
# validation_unique may repeat another split's rankings), and the split is the importer's.
_CONTENT_COLUMNS = (
    "caption", "image_0_uid", "image_1_uid", "label_0", "label_1", "best_image_uid",
    "user_id", "created_at", "has_label",
)


@dataclass(frozen=True)
class _SeenImage:
    size: tuple[int, int]
    digest: bytes
    row: int


def _shown(value: str, limit: int = 60) -> str:
    """A value from a shard, quoted and cut short, safe to put in a one-line message."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 4] + "...'"


def _best_problem(best: str, uids: tuple[str, str], label_0: float, label_1: float) -> str | None:
    """Why `best_image_uid` contradicts the labels, or None when it agrees."""
    winner = None if label_0 == 0.5 else (0 if label_0 == 1 else 1)
    expected = TIE_UID if winner is None else uids[winner]
    if best == expected:
        return None
    if best in uids:
        named = f"image_{uids.index(best)}'s uid"
    elif best == TIE_UID:
        named = f"'{TIE_UID}', a tie's"
    else:
        named = f"{_shown(best)}, naming neither image"
    says = (
        f"a tie (best_image_uid '{TIE_UID}')" if winner is None else f"image_{winner} preferred"
    )
    return (
        f"best_image_uid ({named}) contradicts the labels ({label_0:g}, {label_1:g}), "
        f"which say {says}: fix the labels or best_image_uid"
    )


def _check_batch(
    path: Path, batch: pa.RecordBatch, first_row: int, seen: dict[str, _SeenImage],
    max_side: int, checker: Executor,
) -> list[tuple[str, int, int, bytes]]:
    """Refuse the first bad row of a batch; note each image not seen before, and return
    them as (uid, row, k, bytes) for `_check_stored`."""
    for name in NOT_NULL_COLUMNS:
        nulls = pc.is_null(batch.column(name))
        if pc.any(nulls).as_py():
            row = first_row + pc.index(nulls, True).as_py()
            raise ShardError(f"{path}, row {row}: {name} is empty (null)")
    label_0 = pc.cast(batch.column("label_0"), pa.float64())
    label_1 = pc.cast(batch.column("label_1"), pa.float64())
    bad = pc.invert(
        pc.and_(
            pc.and_(pc.is_in(label_0, VALID_LABEL_SET), pc.is_in(label_1, VALID_LABEL_SET)),
            pc.equal(pc.add(label_0, label_1), 1.0),
        )
    )
    if pc.any(bad).as_py():
        i = pc.index(bad, True).as_py()
        raise ShardError(
            f"{path}, row {first_row + i}: labels ({label_0[i].as_py():g}, "
            f"{label_1[i].as_py():g}) are not (1, 0), (0, 1) or (0.5, 0.5)"
        )
    _check_pair(path, batch, first_row, label_0)
    names = batch.schema.names
    uids = [batch.column(f"image_{k}_uid").to_pylist() for k in (0, 1)]
    jpgs = [batch.column(f"jpg_{k}").to_pylist() for k in (0, 1)]
    # JPEG checks on all cores (PIL decodes without the GIL); read in row order below, so
    # the first bad row is still the one reported
    checks = {(i, k): checker.submit(check_jpeg, jpgs[k][i], max_side)
              for i in range(batch.num_rows) for k in (0, 1) if uids[k][i] not in seen}
    best = batch.column("best_image_uid").to_pylist() if "best_image_uid" in names else None
    labels = label_0.to_pylist(), label_1.to_pylist()
    new: list[tuple[str, int, int, bytes]] = []  # (uid, row, k, bytes) first seen here
    for i in range(batch.num_rows):
        row = first_row + i
        pair = (uids[0][i], uids[1][i])
        if best is not None and best[i] is not None:
            problem = _best_problem(best[i], pair, labels[0][i], labels[1][i])
            if problem:
                raise ShardError(f"{path}, row {row}: {problem}")
        for k in (0, 1):
            data = jpgs[k][i]
            digest = hashlib.blake2b(data, digest_size=16).digest()
            first = seen.get(pair[k])
            if first is not None:
                if first.digest != digest:
                    raise ShardError(
                        f"{path}, row {row}: image_{k}_uid {_shown(pair[k])} is also an "
                        f"image of row {first.row}, with different bytes: one uid is one "
                        "image; give one of them a new uid"
                    )
                continue
            try:
                size = (checks[i, k].result() if (i, k) in checks
                        else check_jpeg(data, max_side))
            except ImageProblem as problem:
                raise ShardError(f"{path}, row {row}: jpg_{k} {problem}") from None
            seen[pair[k]] = _SeenImage(size, digest, row)
            new.append((pair[k], row, k, data))
    return new


def _first(mask: pa.Array) -> int | None:
    """The index of the first true value of a boolean array (nulls are not true)."""
    return pc.index(mask, True).as_py() if pc.any(mask).as_py() else None


def _check_pair(path: Path, batch: pa.RecordBatch, first_row: int, label_0: pa.Array) -> None:
    """Refuse a row that contradicts itself: one image on both sides, Pick-a-Pic's tie
    marker as an image uid (a decisive pair would get best_image_uid 'none'), or
    `has_label` false beside a decisive label."""
    uids = [batch.column(f"image_{k}_uid") for k in (0, 1)]
    i = _first(pc.equal(uids[0], uids[1]))
    if i is not None:
        raise ShardError(
            f"{path}, row {first_row + i}: image_0_uid and image_1_uid are both "
            f"{_shown(uids[0][i].as_py())}: a pair compares two images; give one of them "
            "its own uid"
        )
    for k in (0, 1):
        i = _first(pc.equal(uids[k], TIE_UID))
        if i is not None:
            raise ShardError(
                f"{path}, row {first_row + i}: image_{k}_uid is '{TIE_UID}', Pick-a-Pic's "
                "best_image_uid for a tie: give the image a real uid"
            )
    if "has_label" in batch.schema.names:
        i = _first(pc.and_(pc.invert(batch.column("has_label")), pc.not_equal(label_0, 0.5)))
        if i is not None:
            label = label_0[i].as_py()
            raise ShardError(
                f"{path}, row {first_row + i}: has_label is false but the labels "
                f"({label:g}, {1 - label:g}) say image_{0 if label == 1 else 1} preferred: "
                "fix has_label or the labels"
            )


def _check_stored(path: Path, store: Store, new: list[tuple[str, int, int, bytes]]) -> None:
    """Refuse a batch's image whose uid the store already holds with other bytes."""
    stored = store.image_jpgs([uid for uid, *_ in new])
    for uid, row, k, data in new:
        if uid in stored and stored[uid] != data:
            raise ShardError(
                f"{path}, row {row}: image_{k}_uid {_shown(uid)} is already stored with "
                "different bytes: one uid is one image; give this one a new uid"
            )


def _column(columns: list[str], name: str, default: str = "NULL") -> str:
    return name if name in columns else default


def _shard_rankings(columns: list[str]) -> str:
    """SQL: the shard's rows as the store keeps them (`row` is the row's number)."""
    best = _column(columns, "best_image_uid")
    return (
        "SELECT file_row_number AS row, ranking_id, caption, image_0_uid, image_1_uid, "
        "label_0::DOUBLE AS label_0, label_1::DOUBLE AS label_1, "
        f"coalesce({best}, CASE WHEN label_0 = 0.5 THEN '{TIE_UID}' WHEN label_0 = 1 "
        "THEN image_0_uid ELSE image_1_uid END) AS best_image_uid, "
        "user_id, created_at::TIMESTAMP_NS AS created_at, "
        f"coalesce({_column(columns, 'has_label')}, true) AS has_label, "
        f"{_column(columns, 'num_example_per_prompt')} AS num_example_per_prompt "
        "FROM read_parquet($path, file_row_number = true)"
    )


_DIFFERS = " OR ".join(f"a.{c} IS DISTINCT FROM b.{c}" for c in _CONTENT_COLUMNS)
_FIRST_DIFFERENCE = (
    "CASE " + " ".join(f"WHEN a.{c} IS DISTINCT FROM b.{c} THEN '{c}'" for c in _CONTENT_COLUMNS)
    + " END"
)


def _check_ids(cur: duckdb.DuckDBPyConnection, path: Path, shard: str) -> tuple[int, int]:
    """Refuse a ranking_id that names two different votes, in the file or with the store.

    Returns (repeated, already): rows that repeat an earlier row of the file exactly,
    and the file's ranking_ids stored before with the same content.
    """
    params = {"path": str(path)}
    clash = cur.execute(
        f"WITH shard AS ({shard}) SELECT a.row, b.row, a.ranking_id, {_FIRST_DIFFERENCE} "
        "FROM shard a JOIN shard b ON a.ranking_id = b.ranking_id AND b.row < a.row "
        f"WHERE {_DIFFERS} ORDER BY a.row LIMIT 1",
        params,
    ).fetchone()
    if clash:
        row, first, ranking_id, column = clash
        raise ShardError(
            f"{path}, row {row}: ranking_id {ranking_id} repeats row {first} with a "
            f"different {column}: one ranking_id is one vote; drop the row or give it a new id"
        )
    clash = cur.execute(
        f"WITH shard AS ({shard}) SELECT a.row, a.ranking_id, {_FIRST_DIFFERENCE}, b.source "
        "FROM shard a JOIN rankings b ON a.ranking_id = b.ranking_id "
        f"WHERE {_DIFFERS} ORDER BY a.row LIMIT 1",
        params,
    ).fetchone()
    if clash:
        row, ranking_id, column, source = clash
        raise ShardError(
            f"{path}, row {row}: ranking_id {ranking_id} is already stored (from {source}) "
            f"with a different {column}: one ranking_id is one vote; drop the row or give "
            "it a new id"
        )
    [(rows, distinct, already)] = cur.execute(
        f"WITH shard AS ({shard}) SELECT count(*), count(DISTINCT ranking_id), "
        "(SELECT count(DISTINCT ranking_id) FROM shard JOIN rankings USING (ranking_id)) "
        "FROM shard",
        params,
    ).fetchall()
    return rows - distinct, already


def _new_images(batch: pa.RecordBatch, columns: list[str], seen: dict, done: set) -> pa.Table:
    """The batch's images not stored yet by this import, as a table for the store (taken
    column-wise: the JPEG bytes are not copied into Python objects)."""
    parts = []
    for k in (0, 1):
        uids = batch.column(f"image_{k}_uid").to_pylist()
        rows = []
        for i, uid in enumerate(uids):
            if uid not in done:
                done.add(uid)
                rows.append(i)
        if not rows:
            continue
        take = pa.array(rows, pa.int64())
        url = f"image_{k}_url"
        urls = batch.column(url) if url in columns else pa.nulls(batch.num_rows, pa.string())
        parts.append(pa.table([
            pa.array([uids[i] for i in rows], pa.string()),
            batch.column(f"jpg_{k}").take(take),
            batch.column("caption").take(take),
            batch.column(f"model_{k}").take(take),
            pa.array([seen[uids[i]].size[0] for i in rows], pa.int32()),
            pa.array([seen[uids[i]].size[1] for i in rows], pa.int32()),
            urls.take(take),
        ], names=_IMAGE_SCHEMA.names).cast(_IMAGE_SCHEMA))  # a shard may use large types
    # one chunk: DuckDB's scan of a many-chunk table of BLOBs ran out of its capped memory
    return pa.concat_tables(parts).combine_chunks() if parts else _IMAGE_SCHEMA.empty_table()


def _forget_images(cur: duckdb.DuckDBPyConnection, uids: set[str]) -> None:
    """Best effort after a failed import: drop its images that no pair references."""
    if not uids:
        return
    try:
        with transaction(cur):
            cur.register("_import_forget", pa.table({"image_uid": sorted(uids)}))
            cur.execute(
                "DELETE FROM images WHERE image_uid IN (SELECT image_uid FROM _import_forget) "
                "AND NOT EXISTS (SELECT 1 FROM rankings r "
                "WHERE images.image_uid IN (r.image_0_uid, r.image_1_uid))"
            )
            cur.unregister("_import_forget")
    except duckdb.Error:
        pass  # what stays is never part of a pair, and a re-import reuses it


def import_shard(
    store: Store,
    path: Path,
    source: str,
    split: str | None = None,
    max_side: int = MAX_SIDE,
    batch_rows: int = 256,
) -> ImportedFile:
    """Import one shard: all of its pairs, or (raising `ShardError`) none.

    One streaming pass keeps memory flat for shards of any size: each batch of
    `batch_rows` rows is checked (values, images), then its new images are committed on
    a writer thread while the next batch is checked (more rows a batch is faster and
    takes more memory: docs/BENCHMARKS.md). Once every row has passed, and no ranking_id
    names two different votes, the pairs are written in one transaction, so they appear
    all at once. A refused shard or a failed write removes the file's images again where
    it can; a crash leaves some images without pairs (never part of a pair or an
    export), which importing the shard again reuses. A full disk raises `DiskFullError`.
    """
    cur = store.cursor()
    stamp = _stamp(path)
    if _imported_before(cur, stamp):
        return ImportedFile(path=path, rows=0, added=0, skipped=True)
    try:
        # Unbuffered page-by-page reads keep memory flat however large the row groups.
        shard = pq.ParquetFile(path, pre_buffer=False, buffer_size=1 << 20)
    except Exception as error:
        raise ShardError(f"{path}: not a readable parquet file ({_first_line(error)})") from None
    columns = check_schema(path, shard.schema_arrow)
    split = split or split_of(path)
    read = [c for c in columns if c in (*NOT_NULL_COLUMNS, "best_image_uid", "has_label",
                                         *_IMAGE_SOURCE_COLUMNS)]
    image_columns = [c for c in columns if c in _IMAGE_SOURCE_COLUMNS]

    seen: dict[str, _SeenImage] = {}
    done: set[str] = set()  # image uids this import has stored (or is storing)
    rows = 0
    try:
        with ThreadPoolExecutor(os.cpu_count() or 1) as checker, \
                ThreadPoolExecutor(1) as writer:
            written = None  # the previous batch's write: one in flight keeps memory flat
            for batch in shard.iter_batches(batch_size=batch_rows, columns=read):
                new = _check_batch(path, batch, rows, seen, max_side, checker)
                rows += batch.num_rows
                if written is not None:
                    written.result()
                _check_stored(path, store, new)
                images = _new_images(batch, image_columns, seen, done)
                written = writer.submit(_store_images, store, images)
            if written is not None:
                written.result()
        rankings = _shard_rankings(columns)
        repeated, already = _check_ids(cur, path, rankings)
        added = _store_rankings(cur, path, rankings, source, split, (*stamp, rows))
    except BaseException as error:
        _forget_images(cur, done)
        if is_disk_full(error):
            raise disk_full_error(store.path, f"nothing of {path} was imported") from None
        raise
    return ImportedFile(path=path, rows=rows, added=added, already=already, repeated=repeated)


def _store_images(store: Store, images: pa.Table) -> None:
    """New images, on the calling thread's cursor, in transactions of at most
    TRANSACTION_BYTES of JPEG: DuckDB holds a transaction's BLOBs in memory and cannot
    spill them, so large images in a batch would run past the store's memory limit."""
    cur = store.cursor()

    def insert(start: int, end: int) -> None:
        with transaction(cur):
            cur.register("_import_images", images.slice(start, end - start))
            cur.execute(
                f"INSERT INTO images ({', '.join(_IMAGE_SCHEMA.names)}) "
                "SELECT * FROM _import_images ON CONFLICT DO NOTHING"
            )
            cur.unregister("_import_images")

    sizes = pc.binary_length(images.column("jpg")).to_pylist()
    start = total = 0
    for end, size in enumerate(sizes):
        if end > start and total + size > TRANSACTION_BYTES:
            insert(start, end)
            start, total = end, 0
        total += size
    if start < len(sizes):
        insert(start, len(sizes))


def _stamp(path: Path) -> tuple[str, int, int]:
    """(absolute path, size, modification time in ns): what tells a file imported before
    from one changed since (its pairs are then checked again)."""
    try:
        info = path.stat()
    except OSError as error:
        raise ShardError(f"{path}: cannot be read ({error.strerror})") from None
    return str(path.resolve()), info.st_size, info.st_mtime_ns


def _imported_before(cur: duckdb.DuckDBPyConnection, stamp: tuple[str, int, int]) -> bool:
    return cur.execute("SELECT count(*) FROM imported_files WHERE path = ? AND size = ? "
                       "AND mtime_ns = ?", list(stamp)).fetchone()[0] > 0


def _store_rankings(cur, path: Path, rankings: str, source: str, split: str,
                    done: tuple[str, int, int, int]) -> int:
    """The shard's pairs in one transaction, with the record of the file (`done`: its
    stamp and rows) that lets a rerun skip it; how many pairs were new."""
    with transaction(cur):
        [(before,)] = cur.execute("SELECT count(*) FROM rankings").fetchall()
        cur.execute(
            "INSERT INTO rankings (ranking_id, caption, image_0_uid, image_1_uid, "
            "label_0, label_1, best_image_uid, user_id, created_at, has_label, "
            "num_example_per_prompt, outcome, source, split) "
            "SELECT ranking_id, caption, image_0_uid, image_1_uid, label_0, label_1, "
            "best_image_uid, user_id, created_at, has_label, num_example_per_prompt, "
            # Public shards do not record which image was on the left (shown_left is
            # NULL); their outcome is stated as if image_0 had been (ARCHITECTURE.md).
            "CASE WHEN label_0 = 0.5 THEN 'tie' WHEN label_0 = 1 THEN 'left' "
            f"ELSE 'right' END, $source, $split FROM ({rankings}) "
            # Stored before with the same content (checked before): skipped by an anti
            # join, not ON CONFLICT, whose cost grows with the stored rankings (13x per
            # row at 450K: docs/BENCHMARKS.md).
            "WHERE ranking_id NOT IN (SELECT ranking_id FROM rankings) "
            # A row repeating an earlier one exactly (checked before) is stored once.
            "QUALIFY row_number() OVER (PARTITION BY ranking_id ORDER BY row) = 1",
            {"path": str(path), "source": source, "split": split},
        )
        [(after,)] = cur.execute("SELECT count(*) FROM rankings").fetchall()
        cur.execute("INSERT INTO imported_files (path, size, mtime_ns, rows, added, source, "
                    "split) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                    [*done, after - before, source, split])
    return after - before


def _first_line(error: Exception) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


def import_shards(
    store: Store,
    paths: Iterable[str | Path],
    source: str = "public:pickapic",
    split: str | None = None,
    max_side: int = MAX_SIDE,
    progress: bool = True,
    on_file: Callable[[ImportedFile], None] | None = None,
) -> list[ImportedFile]:
    """Import shards file by file; each file is all-or-nothing, re-imports add nothing.

    A refused file does not stop the others: its `ImportedFile.refused` says why, and
    nothing of it is in the store. A file imported before and unchanged since (path,
    size, modification time) is skipped. `on_file` hears of each file as it is done, so
    a caller can say so before a full disk stops the import with `DiskFullError` (the
    files before it stay imported).
    """
    done = []
    shards = find_shards(paths)
    for shard in tqdm(shards, desc="import", unit="shard", disable=None if progress else True):
        try:
            if shard.suffix in (".jsonl", ".json"):
                from data.manifest import import_manifest

                result = import_manifest(store, shard, source, split, max_side)
            else:
                result = import_shard(store, shard, source, split=split, max_side=max_side)
        except ShardError as error:
            result = ImportedFile(path=shard, rows=0, added=0, refused=str(error))
        done.append(result)
        if on_file is not None:
            on_file(result)
    return done


# -- export ------------------------------------------------------------------------------

# The votes an export reads, one row each: {keep} chooses the question and annotators.
_LABELLED = "SELECT * FROM rankings r WHERE r.label_0 IS NOT NULL AND {keep}"

# One row per pair (and split): the label most of its votes give, a tie when no label
# has more votes than each other; the id of its first vote, user_id 0 (several people).
_CONSENSUS = """
SELECT *,
    CASE WHEN label_0 = 1 THEN image_0_uid WHEN label_0 = 0 THEN image_1_uid
         ELSE 'none' END AS best_image_uid,
    1 - label_0 AS label_1
FROM (
    SELECT *,
        CASE WHEN w0 > greatest(w1, ties) THEN 1.0 WHEN w1 > greatest(w0, ties) THEN 0.0
             ELSE 0.5 END AS label_0
    FROM (
        SELECT image_0_uid, image_1_uid, split, any_value(caption) AS caption,
            max(created_at) AS created_at, true AS has_label, min(ranking_id) AS ranking_id,
            0::BIGINT AS user_id, NULL::BIGINT AS num_example_per_prompt,
            count(*) AS votes, count(*) FILTER (label_0 = 1) AS w0,
            count(*) FILTER (label_1 = 1) AS w1, count(*) FILTER (label_0 = 0.5) AS ties
        FROM labelled GROUP BY image_0_uid, image_1_uid, split
    )
)
"""

_EXPORT_QUERY = """
WITH labelled AS ({labelled}), exported AS ({rows}), pairs AS (
    SELECT r.*, count(*) OVER (PARTITION BY r.caption) AS n_prompt FROM exported r
)
SELECT
    coalesce(i0.model, '') <> coalesce(i1.model, '') AS are_different,
    p.best_image_uid,
    p.caption,
    p.created_at,
    p.has_label,
    p.image_0_uid,
    i0.url AS image_0_url,
    p.image_1_uid,
    i1.url AS image_1_url,
    {images}
    p.label_0,
    p.label_1,
    i0.model AS model_0,
    i1.model AS model_1,
    p.ranking_id,
    p.user_id,
    coalesce(p.num_example_per_prompt, p.n_prompt) AS num_example_per_prompt
FROM pairs p
JOIN images i0 ON i0.image_uid = p.image_0_uid
JOIN images i1 ON i1.image_uid = p.image_1_uid
WHERE p.split = ?
ORDER BY p.created_at, p.ranking_id
"""


@dataclass(frozen=True)
class Consensus:
    """How the votes of a consensus export's pairs agreed, in one split."""

    pairs: int
    votes: int
    single: int  # pairs with one vote
    unanimous: int  # 2+ votes, all alike
    majority: int  # 2+ votes, one label ahead of each other
    no_majority: int  # exported as ties (0.5/0.5), which training leaves out by default

    def text(self) -> str:
        return (f"{self.pairs} pairs from {self.votes} votes: {self.single} with one vote, "
                f"{self.unanimous} unanimous, {self.majority} by majority, "
                f"{self.no_majority} without a majority (exported as ties)")


def _keep(store: Store, question: str, drop_flagged: bool) -> str:
    if question not in QUESTIONS:
        raise DataError(f"unknown question {question!r}: use one of {', '.join(QUESTIONS)}")
    keep = f"r.question = '{question}'"
    flagged = flagged_users(store) if drop_flagged else []
    if flagged:
        keep += f" AND r.user_id NOT IN ({', '.join(str(int(u)) for u in flagged)})"
    return keep


def export_pairs(
    store: Store,
    out_dir: str | Path,
    images: bool = True,
    shard_rows: int = 1000,
    overwrite: bool = False,
    question: str = "preference",
    consensus: bool = False,
    drop_flagged: bool = False,
    settings: dict | None = None,
    manifest: bool = False,
) -> list[ExportedSplit]:
    """Write preference pairs as Pick-a-Pic v2 shards, `OUT/<split>/<split>-i-of-n.parquet`,
    or (`manifest`) as JSONL manifests with their images (data/manifest.py).

    One row per vote on `question`, as Pick-a-Pic; or (`consensus`) one row per pair,
    labelled as most of its votes say, with how they agreed in `ExportedSplit.consensus`.
    `drop_flagged` leaves out the votes of annotators `data.quality` flags. Ties are
    exported as 0.5/0.5 with best_image_uid 'none'; both-bad and skip votes are not pairs
    and stay behind. The folder appears whole or not at all. `settings`, the command's
    resolved config, is kept in it as EXPORT_CONFIG.
    """
    out_dir = Path(out_dir)
    if manifest and not images:
        raise DataError("a JSONL manifest names its image files, which the export writes "
                        "beside it: leave out --no-images")
    _check_target(store, out_dir, overwrite)
    schema = PICKAPIC_SCHEMA if images else NO_IMAGES_SCHEMA
    labelled = _LABELLED.format(keep=_keep(store, question, drop_flagged))
    rows = _CONSENSUS if consensus else "SELECT * FROM labelled"
    query = _EXPORT_QUERY.format(
        labelled=labelled, rows=rows,
        images="i0.jpg AS jpg_0, i1.jpg AS jpg_1," if images else "")
    cur = store.cursor()
    target = out_dir.resolve()
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    except OSError as error:
        raise _export_write_error(out_dir, error) from None
    try:
        with transaction(cur):  # one consistent snapshot, even while an app writes
            splits = cur.execute(
                f"WITH labelled AS ({labelled}) SELECT DISTINCT split FROM labelled ORDER BY 1"
            ).fetchall()
            written: set[str] = set()  # a manifest export's images, each once
            exported = [
                (_export_manifest if manifest else _export_split)(
                    cur, query, schema, split, staging, shard_rows,
                    _consensus(cur, labelled, split) if consensus else None, written)
                for (split,) in splits
            ]
        _mark_export(store, staging, [f for e in exported for f in e.files])
        if settings is not None:
            (staging / EXPORT_CONFIG).write_text(yaml.safe_dump(settings, sort_keys=False))
        _replace(staging, target)
    except BaseException as error:
        shutil.rmtree(staging, ignore_errors=True)
        if isinstance(error, OSError):
            raise _export_write_error(out_dir, error) from None
        raise
    return [
        ExportedSplit(e.split, e.rows, [out_dir / f.relative_to(staging) for f in e.files],
                      e.consensus)
        for e in exported
    ]


# Every export carries this file: `--overwrite` replaces only a folder that has it, and
# only when the folder holds nothing but the files it lists. A dot file, so the
# `datasets` library's folder loading and our import (*.parquet) pass it by.
EXPORT_MARK = ".export.json"
EXPORT_CONFIG = ".export.yaml"  # the settings that made it: `python -m data export --config`
_WRITTEN_BY = "python -m data export"


def _check_target(store: Store, out_dir: Path, overwrite: bool) -> None:
    """Refuse an export folder that is not free to write: a file, the working folder or
    one above it, a non-empty folder without `overwrite`; and with it, a folder that
    holds the store or anything an export did not write."""
    existing = next(p for p in (out_dir, *out_dir.parents) if p.exists())
    if not existing.is_dir():
        raise unwritable_folder(out_dir, "the export", _EXPORT_FIX)
    if existing != out_dir:
        return
    resolved, cwd = out_dir.resolve(), Path.cwd().resolve()
    if resolved == cwd or resolved in cwd.parents:
        raise DataError(f"{out_dir} is or holds the folder this command runs in: export to "
                        "another folder")
    if not any(out_dir.iterdir()):
        return
    if not overwrite:
        raise DataError(f"{out_dir} is not empty: choose a new folder or pass --overwrite")
    if resolved in store.path.resolve().parents:
        raise DataError(f"--overwrite would delete {out_dir}, which holds the store being "
                        f"exported ({store.path}): export to another folder")
    listed = _exported_files(out_dir)
    if listed is None:
        raise DataError(f"--overwrite replaces only an earlier export, and {out_dir} has no "
                        f"{EXPORT_MARK} (the mark every export carries): export to another "
                        "folder, or empty this one yourself")
    kept = listed | {EXPORT_MARK, EXPORT_CONFIG} | {Path(f).parent.as_posix() for f in listed}
    for path in sorted(out_dir.rglob("*")):
        if path.relative_to(out_dir).as_posix() not in kept:
            raise DataError(
                f"--overwrite replaces only an earlier export, and {out_dir} holds "
                f"{path.relative_to(out_dir).as_posix()}, which no export wrote: move it "
                "away, or export to another folder")


def _exported_files(folder: Path) -> set[str] | None:
    """The files (relative, posix) an export's mark lists; None without a valid mark."""
    try:
        mark = json.loads((folder / EXPORT_MARK).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(mark, dict) or mark.get("written_by") != _WRITTEN_BY:
        return None
    return {str(f) for f in mark.get("files", [])}


def _mark_export(store: Store, folder: Path, files: list[Path]) -> None:
    (folder / EXPORT_MARK).write_text(json.dumps({
        "written_by": _WRITTEN_BY, "store": str(store.path),
        "files": [f.relative_to(folder).as_posix() for f in files],
    }, indent=1) + "\n")


def _replace(staging: Path, target: Path) -> None:
    """Put the written folder in place; an earlier export there (checked before) is
    moved aside first and deleted after, so a crash between leaves it whole."""
    if not target.exists():
        os.replace(staging, target)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{target.name}-old-", dir=target.parent))
    os.replace(target, old / target.name)
    os.replace(staging, target)
    shutil.rmtree(old, ignore_errors=True)


_EXPORT_FIX = "choose a folder you can write to"


def _export_write_error(out_dir: Path, error: OSError) -> DataError:
    """The one-line answer to an export the file system refused."""
    if is_disk_full(error):
        return disk_full_error(out_dir, "nothing was exported")
    return unwritable_folder(out_dir, "the export", _EXPORT_FIX, error)


def _consensus(cur, labelled: str, split: str) -> Consensus:
    kind = ("CASE WHEN votes = 1 THEN 'single' WHEN greatest(w0, w1, ties) = votes THEN "
            "'unanimous' WHEN label_0 <> 0.5 OR ties > greatest(w0, w1) THEN 'majority' "
            "ELSE 'none' END")
    [row] = cur.execute(
        f"WITH labelled AS ({labelled}), c AS (SELECT *, {kind} AS kind FROM ({_CONSENSUS})) "
        "SELECT count(*), coalesce(sum(votes), 0), count(*) FILTER (kind = 'single'), "
        "count(*) FILTER (kind = 'unanimous'), count(*) FILTER (kind = 'majority'), "
        "count(*) FILTER (kind = 'none') FROM c WHERE split = ?", [split]).fetchall()
    return Consensus(*(int(x) for x in row))


def _export_manifest(cur, query, schema, split, root: Path, shard_rows: int,
                     consensus: Consensus | None, written: set[str]) -> ExportedSplit:
    from data.manifest import write_split

    rows = (row for batch in cur.sql(query, params=[split]).to_arrow_reader(batch_size=256)
            for row in batch.to_pylist())
    count, files = write_split(rows, split, root, written)
    return ExportedSplit(split, count, files, consensus)


def _export_split(cur, query, schema, split, root: Path, shard_rows: int,
                  consensus: Consensus | None, written: set[str]) -> ExportedSplit:
    [(total,)] = cur.execute(f"SELECT count(*) FROM ({query})", [split]).fetchall()
    n_shards = max(1, math.ceil(total / shard_rows))
    (root / split).mkdir()
    files: list[Path] = []
    writer, in_shard, rows = None, 0, 0
    for batch in cur.sql(query, params=[split]).to_arrow_reader(batch_size=shard_rows):
        table = pa.Table.from_batches([batch]).cast(schema)
        start = 0
        while start < table.num_rows:
            if writer is None:
                path = root / split / f"{split}-{len(files):05d}-of-{n_shards:05d}.parquet"
                writer = pq.ParquetWriter(path, schema)
                files.append(path)
                in_shard = 0
            take = min(shard_rows - in_shard, table.num_rows - start)
            writer.write_table(table.slice(start, take), row_group_size=256)
            start, in_shard, rows = start + take, in_shard + take, rows + take
            if in_shard == shard_rows:
                writer.close()
                writer = None
    if writer is not None:
        writer.close()
    return ExportedSplit(split, rows, files, consensus)
