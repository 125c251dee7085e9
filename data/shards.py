"""Pairs made by several processes, taken into the one store by one of them.

DuckDB has one writer per file, so the processes of a data-parallel job (AI feedback, a
pair pool) other than the main one never open the store: each writes every batch it
makes to a parquet file of its own in a folder beside the store, whole under a temporary
name and then renamed, and the main process takes the files in, each in one transaction,
and deletes a file once its transaction is committed. Every pair has an id that follows
from the run and its index, and the store skips an id it holds, so a file taken in
twice (a kill between the commit and the delete) adds nothing, and a rerun after a kill
takes in what the killed run left.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, fields
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from data.store import ImageRecord, PoolPair, Store, Vote

Pair = tuple[Vote | PoolPair, tuple[ImageRecord, ImageRecord]]
_IMAGE_META = [f.name for f in fields(ImageRecord) if f.name != "jpg"]


def shard_folder(db: Path, run: str) -> Path:
    """Where the processes of run `run` leave their batches for the store `db`."""
    return db.parent / f"{db.name}.shards" / run


def write_shard(folder: Path, name: str, pairs: list[Pair]) -> Path:
    """`pairs` as one parquet file `folder/name.parquet`, complete or absent."""
    folder.mkdir(parents=True, exist_ok=True)
    table = pa.table({
        "kind": [type(pair).__name__ for pair, _ in pairs],
        "pair": [json.dumps(asdict(pair)) for pair, _ in pairs],
        **{f"image_{side}": [json.dumps({k: getattr(images[side], k) for k in _IMAGE_META})
                             for _, images in pairs] for side in (0, 1)},
        **{f"jpg_{side}": pa.array([images[side].jpg for _, images in pairs], pa.binary())
           for side in (0, 1)},
    })
    path = folder / f"{name}.parquet"
    temp = folder / f".{name}.parquet.tmp-{os.getpid()}"
    pq.write_table(table, temp)
    temp.replace(path)
    return path


def read_shard(path: Path) -> list[Pair]:
    rows = pq.read_table(path).to_pylist()
    kinds = {"Vote": Vote, "PoolPair": PoolPair}
    return [(kinds[row["kind"]](**json.loads(row["pair"])),
             tuple(ImageRecord(jpg=row[f"jpg_{side}"], **json.loads(row[f"image_{side}"]))
                   for side in (0, 1)))
            for row in rows]


def add_pairs(store: Store, pairs: list[Pair]) -> None:
    """Store votes and pool pairs with their images (a transaction for each kind)."""
    votes = [(pair, images) for pair, images in pairs if isinstance(pair, Vote)]
    pool = [(pair, images) for pair, images in pairs if isinstance(pair, PoolPair)]
    if votes:
        store.record_votes(votes)
    if pool:
        store.add_pool_pairs(pool)


def take_in(store: Store, folder: Path) -> int:
    """Store every finished batch under `folder` and delete its file; the pairs read."""
    taken = 0
    for path in sorted(folder.glob("*.parquet")) if folder.is_dir() else []:
        pairs = read_shard(path)
        add_pairs(store, pairs)
        path.unlink()
        taken += len(pairs)
    return taken


def clear_partial(folder: Path) -> None:
    """Remove the half-written files of killed processes; call it before any process of
    a run writes (a live writer's temporary file looks the same)."""
    for temp in folder.glob(".*.parquet.tmp-*") if folder.is_dir() else []:
        temp.unlink(missing_ok=True)
