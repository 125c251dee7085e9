"""The training view: preference pairs as a torch Dataset, winner first.

One loader reads the store and parquet shards (ours and the public Pick-a-Pic set
alike). Ties are dropped by default, as the paper's code does; both-bad and skip votes
are never pairs. Several sources mix by a stated ratio, deterministically from a seed.

Items come in storage order within each source, interleaved across sources: reading a
parquet image means reading its row group, so sequential access (the trainer's one pass
to cache latents) is fast. Shuffle with the DataLoader's sampler or over the cache.
"""

from __future__ import annotations

import bisect
import io
import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from PIL import Image
from torch.utils.data import Dataset

from cli.errors import DataError, ShardError
from data.images import MAX_SIDE, ImageProblem, check_jpeg
from data.manifest import SUFFIXES as MANIFEST_SUFFIXES
from data.pickapic import check_schema, find_shards, split_of
from data.quality import flagged_users
from data.store import Store, stable_id


@dataclass(frozen=True)
class Provenance:
    """Where a pair came from: enough to trace it back to its row."""

    source: str
    ranking_id: int
    user_id: int
    preferred_uid: str
    rejected_uid: str
    preferred_model: str | None
    rejected_model: str | None
    tie: bool  # only with include_ties=True; then "preferred" is simply image 0
    split: str
    both_bad: bool = False  # only with include_both_bad=True; "preferred" is image 0
    votes: int = 1  # the votes behind the pair (several where a store groups them)
    share: float = 1.0  # of those votes, the share for the preferred image (a tie one half)

    @property
    def by_people(self) -> bool:
        """Whether people cast it: every source but AI feedback (`ai:<scorer>`)."""
        return not self.source.startswith("ai:")


def image_labels(prov: Provenance) -> tuple[int, int]:
    """Unpaired labels of a pair's (preferred, rejected) images, +1 liked and -1 disliked,
    as an objective that reads single images (KTO) takes them: a decisive vote likes its
    winner and dislikes its loser; "both bad" dislikes both. A tie says neither, so it
    has no labels (a `DataError`)."""
    if prov.both_bad:
        return -1, -1
    if prov.tie:
        raise DataError(f"ranking {prov.ranking_id} is a tie: a tie likes or dislikes "
                        "neither image, so it has no unpaired labels")
    return 1, -1


@dataclass(frozen=True)
class PreferencePair:
    caption: str
    preferred: Image.Image
    rejected: Image.Image
    provenance: Provenance


def pair_key(uid_a: str, uid_b: str) -> int:
    """One number for two images, whichever is named first: how a judge's folder lists the
    pairs it trained on, so that its agreement with people is measured on the others."""
    return stable_id("pair:" + "|".join(sorted((uid_a, uid_b))))


JPEG_QUALITY = 95  # what our generated and gold images are stored at


def decode_image(data: bytes) -> Image.Image:
    with Image.open(io.BytesIO(data)) as image:
        return image.convert("RGB")


def encode_jpeg(image: Image.Image) -> bytes:
    """The image as the store keeps it (Pick-a-Pic stores JPEG bytes); `decode_image`
    reads it back."""
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, "JPEG", quality=JPEG_QUALITY)
    return buffer.getvalue()


# A store's votes grouped by their two images (in either order) as one ranking row: the
# first vote's caption, id, annotator and split, image_0 the lesser uid, and as label_0
# the share of the votes for image_0 (a tie one half).
_GROUPED = """
WITH votes AS (
    SELECT r.*, least(r.image_0_uid, r.image_1_uid) AS lesser,
        greatest(r.image_0_uid, r.image_1_uid) AS greater,
        CASE WHEN r.image_0_uid < r.image_1_uid THEN r.label_0 ELSE 1 - r.label_0 END AS for_lesser
    FROM rankings r WHERE {where}
), r AS (
    SELECT lesser AS image_0_uid, greater AS image_1_uid, avg(for_lesser) AS label_0,
        count(*) AS votes, arg_min(caption, (created_at, ranking_id)) AS caption,
        arg_min(source, (created_at, ranking_id)) AS source,
        arg_min(user_id, (created_at, ranking_id)) AS user_id,
        arg_min(split, (created_at, ranking_id)) AS split,
        min(created_at) AS created_at, min(ranking_id) AS ranking_id
    FROM votes GROUP BY lesser, greater
)
SELECT r.caption, r.label_0, r.source, r.ranking_id, r.user_id, r.image_0_uid, r.image_1_uid,
    i0.model, i1.model, r.split, r.votes FROM r
"""


def _winner_first(label_0: float) -> bool:
    """Whether image 0 is the preferred one (a tie keeps the stored order)."""
    return label_0 >= 0.5


def _provenance(source: str, ranking_id: int, user_id: int, label_0: float,
                uids: tuple[str, str], models: tuple[str | None, str | None],
                split: str) -> Provenance:
    """A pair's provenance with image 0 and 1 put in preferred, rejected order (a vote
    with no labels, "both bad", keeps the stored order)."""
    order = (0, 1) if label_0 is None or _winner_first(label_0) else (1, 0)
    return Provenance(
        source=source, ranking_id=ranking_id, user_id=user_id,
        preferred_uid=uids[order[0]], rejected_uid=uids[order[1]],
        preferred_model=models[order[0]], rejected_model=models[order[1]],
        tie=label_0 == 0.5, split=split, both_bad=label_0 is None,
        share=0.5 if label_0 == 0.5 else 1.0,
    )


PAIR_VOTES = ("each", "majority", "share")


class StorePairs(Dataset):
    """Pairs from the DuckDB store (its file, or a `Store` this process already holds).

    `pair_votes` says what several votes on one pair of images make (a crowd's overlap):
    `each` vote its own pair, as stored; or one pair per two images, preferring the side
    most votes preferred, with `share` the fraction of its votes that did (a tie vote one
    half to each side, when ties are included). An even split is a tie.
    """

    def __init__(
        self, store: str | Path | Store, split: str | None = "train", include_ties: bool = False,
        include_both_bad: bool = False, question: str = "preference",
        drop_flagged: bool = False, pair_votes: str = "each",
    ):
        self._store = store if isinstance(store, Store) else None
        self._path = Path(store.path if isinstance(store, Store) else store)
        self._pid = os.getpid()
        where = "(r.label_0 IS NOT NULL" + ("" if include_ties else " AND r.label_0 <> 0.5")
        where += " OR r.outcome = 'both_bad')" if include_both_bad else ")"
        where += " AND r.question = ?"
        params: list = [question]
        if split is not None:
            where += " AND r.split = ?"
            params.append(split)
        if drop_flagged:
            flagged = flagged_users(self._open())
            if flagged:
                where += f" AND r.user_id NOT IN ({', '.join('?' * len(flagged))})"
                params += flagged
        if pair_votes not in PAIR_VOTES:
            raise DataError(f"unknown pair_votes {pair_votes!r}: use one of {PAIR_VOTES}")
        if pair_votes != "each" and include_both_bad:
            raise DataError("both-bad votes have no side to count: group votes by pair "
                            "(pair_votes majority or share) without them")
        rows = self._open().cursor().execute(
            ("SELECT r.caption, r.label_0, r.source, r.ranking_id, r.user_id, r.image_0_uid, "
             "r.image_1_uid, i0.model, i1.model, r.split, 1 AS votes FROM rankings r "
             if pair_votes == "each" else _GROUPED.format(where=where)) +
            "JOIN images i0 ON i0.image_uid = r.image_0_uid "
            "JOIN images i1 ON i1.image_uid = r.image_1_uid "
            f"{'WHERE ' + where if pair_votes == 'each' else ''} "
            "ORDER BY r.created_at, r.ranking_id",
            params,
        ).fetchall()
        self._items = []
        for caption, label_0, source, ranking_id, user_id, uid0, uid1, m0, m1, row_split, \
                votes in rows:
            prov = _provenance(source, ranking_id, user_id, label_0, (uid0, uid1), (m0, m1),
                               row_split)
            if pair_votes != "each":
                if prov.tie and not include_ties:
                    continue  # an even split says neither image is better
                share = max(label_0, 1 - label_0) if pair_votes == "share" else \
                    0.5 if prov.tie else 1.0
                prov = replace(prov, tie=label_0 == 0.5, votes=votes, share=share)
            self._items.append((caption, prov))

    def _open(self) -> Store:
        # A DuckDB connection must not cross a fork: DataLoader workers open their own.
        if self._store is None or self._pid != os.getpid():
            self._store = Store(self._path, read_only=True)
            self._pid = os.getpid()
        return self._store

    def __len__(self) -> int:
        return len(self._items)

    def describe(self, index: int) -> tuple[str, Provenance]:
        """An item's caption and provenance, without reading its images."""
        return self._items[index]

    def __getitem__(self, index: int) -> PreferencePair:
        caption, prov = self._items[index]
        jpgs = self._open().image_jpgs([prov.preferred_uid, prov.rejected_uid])
        return PreferencePair(
            caption, decode_image(jpgs[prov.preferred_uid]),
            decode_image(jpgs[prov.rejected_uid]), prov,
        )


_INDEX_COLUMNS = [
    "caption", "label_0", "ranking_id", "user_id", "image_0_uid", "image_1_uid",
    "model_0", "model_1",
]


class ParquetPairs(Dataset):
    """Pairs from Pick-a-Pic format shards: the public set or our exports."""

    def __init__(
        self,
        paths: Sequence[str | Path],
        source: str = "public:pickapic",
        split: str | None = "train",
        include_ties: bool = False,
    ):
        self._files = [p for p in find_shards(paths) if p.suffix == ".parquet"
                       and (split is None or split_of(p) == split)]
        if not self._files:
            raise DataError(f"no {split} shards in {', '.join(map(str, paths))}")
        self._row_group_starts = []
        self._items = []
        self._cached: tuple = (None, None, None)
        for file_index, path in enumerate(self._files):
            shard = pq.ParquetFile(path)
            check_schema(path, shard.schema_arrow)
            meta = shard.metadata
            self._row_group_starts.append(
                np.cumsum([0] + [meta.row_group(g).num_rows for g in range(meta.num_row_groups)])
            )
            index = shard.read(columns=_INDEX_COLUMNS).to_pydict()
            for row in range(meta.num_rows):
                label_0 = index["label_0"][row]
                if label_0 == 0.5 and not include_ties:
                    continue
                prov = _provenance(
                    source, index["ranking_id"][row], index["user_id"][row], label_0,
                    (index["image_0_uid"][row], index["image_1_uid"][row]),
                    (index["model_0"][row], index["model_1"][row]), split_of(path),
                )
                first = _winner_first(label_0)
                self._items.append((file_index, row, first, index["caption"][row], prov))

    def _row_group(self, file_index: int, group: int) -> dict[str, list]:
        """The images of one row group; the last one read is kept for the next item."""
        if self._cached[:2] != (file_index, group):
            shard = pq.ParquetFile(self._files[file_index])
            jpgs = shard.read_row_group(group, columns=["jpg_0", "jpg_1"]).to_pydict()
            self._cached = (file_index, group, jpgs)
        return self._cached[2]

    def __len__(self) -> int:
        return len(self._items)

    def describe(self, index: int) -> tuple[str, Provenance]:
        """An item's caption and provenance, without reading its images."""
        return self._items[index][3:]

    def _decode(self, file_index: int, row: int, k: int, data: bytes) -> Image.Image:
        """A shard's image, checked as `data import` checks it before it is decoded (a few
        hundred bytes can declare a 12000x12000 image)."""
        try:
            check_jpeg(data)
        except ImageProblem as problem:
            raise ShardError(f"{self._files[file_index]}, row {row}: jpg_{k} {problem}; "
                             "drop the row, or import the shard (python -m data import) and train "
                             "from the store") from None
        return decode_image(data)

    def __getitem__(self, index: int) -> PreferencePair:
        file_index, row, first, caption, prov = self._items[index]
        starts = self._row_group_starts[file_index]
        group = bisect.bisect_right(starts, row) - 1
        jpgs = self._row_group(file_index, group)
        offset = row - int(starts[group])
        image_0, image_1 = (self._decode(file_index, row, k, jpgs[f"jpg_{k}"][offset])
                            for k in (0, 1))
        preferred, rejected = (image_0, image_1) if first else (image_1, image_0)
        return PreferencePair(caption, preferred, rejected, prov)


class ManifestPairs(Dataset):
    """Pairs from JSONL manifests and HPDv3 JSON files (data/manifest.py), read in place:
    each row checked when the dataset is made, its two image files read when the item is.
    An image's path (resolved) stands for its uid; a row's line or pair number for its
    ranking id. A row that states a share of several votes (a `label` between 0.5 and 1,
    HPDv3's `choice_dist`) is one decisive pair, or with `pair_votes` "share" a pair of
    that share."""

    def __init__(self, paths: Sequence[str | Path], split: str | None = "train",
                 include_ties: bool = False, pair_votes: str = "each"):
        from data.manifest import manifest_items, manifest_row, manifest_split

        self._files = [p for p in find_shards(paths) if p.suffix in MANIFEST_SUFFIXES]
        self._items = []
        matched = 0  # files of the split
        for file_index, path in enumerate(self._files):
            items, where_of = manifest_items(path)
            state: dict = {}
            # a row may state a share of several votes (`label`, HPDv3's `choice_dist`):
            # kept as the pair's share with pair_votes "share", else the row is one vote
            rows = [(number, manifest_row(item, where_of(number), state, shares=True))
                    for number, item in items]
            file_split = manifest_split(path, state)
            if split is not None and file_split != split:
                continue
            matched += 1
            folder = path.parent.resolve()
            for number, row in rows:
                if row.label == 0.5 and not include_ties:
                    continue
                chosen, rejected = (str(folder / value) for value in (row.chosen, row.rejected))
                prov = Provenance(
                    source=f"manifest:{path.name}", ranking_id=number, user_id=row.user,
                    preferred_uid=chosen, rejected_uid=rejected,
                    preferred_model=row.model_chosen or None,
                    rejected_model=row.model_rejected or None, tie=row.label == 0.5,
                    split=file_split, share=row.share if pair_votes == "share" else
                    0.5 if row.label == 0.5 else 1.0)
                self._items.append((file_index, number, row.prompt, prov))
        if not matched:
            raise DataError(f"no {split} manifests in {', '.join(map(str, paths))}")

    def __len__(self) -> int:
        return len(self._items)

    def describe(self, index: int) -> tuple[str, Provenance]:
        """An item's caption and provenance, without reading its images."""
        return self._items[index][2:]

    def __getitem__(self, index: int) -> PreferencePair:
        from data.manifest import manifest_items, read_image

        file_index, number, caption, prov = self._items[index]
        where = manifest_items(self._files[file_index])[1](number)
        preferred, rejected = (
            decode_image(read_image(Path(uid), key, where, MAX_SIDE))
            for key, uid in (("chosen", prov.preferred_uid), ("rejected", prov.rejected_uid)))
        return PreferencePair(caption, preferred, rejected, prov)


class MixedPairs(Dataset):
    """Several pair datasets mixed by ratio, deterministic given `seed`.

    Source i contributes round(ratio_i * num_samples) items (ratios are normalised).
    Without `num_samples`, the mix is as large as it can be without repeating any
    source; with it, a source that runs out starts a fresh permutation (oversampling,
    e.g. to weight a few hundred human pairs against the public set). The chosen items
    are interleaved evenly, so every stretch of the mix holds the sources in ratio.
    """

    def __init__(
        self,
        sources: Sequence[Dataset],
        ratios: Sequence[float] | None = None,
        seed: int = 0,
        num_samples: int | None = None,
    ):
        lengths = [len(s) for s in sources]
        ratios = list(ratios) if ratios is not None else [float(n) for n in lengths]
        if len(ratios) != len(sources):
            raise DataError(f"{len(sources)} sources but {len(ratios)} ratios: give one each")
        if any(r < 0 for r in ratios) or sum(ratios) <= 0:
            raise DataError(f"ratios must be non-negative and not all zero, got {ratios}")
        weights = [r / sum(ratios) for r in ratios]
        for i, (n, w) in enumerate(zip(lengths, weights, strict=True)):
            if w > 0 and n == 0:
                raise DataError(f"source {i} has no pairs but ratio {ratios[i]}: drop it")
        if num_samples is None:
            pairs = zip(lengths, weights, strict=True)
            num_samples = int(min(n / w for n, w in pairs if w > 0) + 1e-9)
        rng = np.random.default_rng(seed)
        keyed = []
        for i, (n, w) in enumerate(zip(lengths, weights, strict=True)):
            take = round(w * num_samples)
            if take == 0:
                continue
            cycles = -(-take // n)
            chosen = np.concatenate([rng.permutation(n) for _ in range(cycles)])[:take]
            chosen.sort(kind="stable")
            keyed += [((k + 0.5) / take, i, int(item)) for k, item in enumerate(chosen)]
        keyed.sort()
        self.sources = list(sources)
        self._order = [(i, item) for _, i, item in keyed]

    def __len__(self) -> int:
        return len(self._order)

    def __getitem__(self, index: int) -> PreferencePair:
        source, item = self._order[index]
        return self.sources[source][item]

    def describe(self, index: int) -> tuple[str, Provenance]:
        """An item's caption and provenance, without reading its images."""
        source, item = self._order[index]
        return self.sources[source].describe(item)

    def source_counts(self) -> list[int]:
        return [sum(1 for s, _ in self._order if s == i) for i in range(len(self.sources))]


class ChainedPairs(Dataset):
    """Datasets one after another in one index space (a run's training mix, then the
    data's own validation pairs), so one cache holds them all."""

    def __init__(self, parts: Sequence[Dataset]):
        self.parts = list(parts)
        self._starts = np.cumsum([0] + [len(part) for part in self.parts])

    def __len__(self) -> int:
        return int(self._starts[-1])

    def _locate(self, index: int) -> tuple[Dataset, int]:
        part = int(np.searchsorted(self._starts, index, side="right")) - 1
        return self.parts[part], index - int(self._starts[part])

    def __getitem__(self, index: int) -> PreferencePair:
        part, item = self._locate(index)
        return part[item]

    def describe(self, index: int) -> tuple[str, Provenance]:
        part, item = self._locate(index)
        return part.describe(item)


def load_pairs(
    sources: Sequence[str | Path | Store],
    ratios: Sequence[float] | None = None,
    seed: int = 0,
    num_samples: int | None = None,
    split: str | None = "train",
    include_ties: bool = False,
    include_both_bad: bool = False,
    question: str = "preference",
    drop_flagged: bool = False,
    pair_votes: str = "each",
) -> MixedPairs:
    """One loader for every source: a `.duckdb` store, or parquet files and folders.
    `include_both_bad` adds a store's "both bad" votes (Pick-a-Pic shards have none).
    `question` and `drop_flagged` (data.quality) choose a store's votes; a parquet
    export holds one question's votes, as `data export` chose them. `pair_votes` groups a
    store's votes by pair (`StorePairs`); a manifest's row is a pair, with "share" its
    stated share of several votes (`ManifestPairs`); a shard's rows stay a pair each."""
    datasets: list[Dataset] = []
    for source in sources:
        if _is_store(source):
            datasets.append(StorePairs(source, split=split, include_ties=include_ties,
                                       include_both_bad=include_both_bad,
                                       question=question, drop_flagged=drop_flagged,
                                       pair_votes=pair_votes))
        else:
            found = {path.suffix for path in find_shards([source])}
            if ".parquet" in found:
                datasets.append(ParquetPairs([source], split=split, include_ties=include_ties))
            if found & set(MANIFEST_SUFFIXES):
                datasets.append(ManifestPairs([source], split=split, include_ties=include_ties,
                                              pair_votes=pair_votes))
    if not any(len(d) for d in datasets):
        raise _no_pairs(sources, split, question, include_both_bad)
    return MixedPairs(datasets, ratios=ratios, seed=seed, num_samples=num_samples)


def _is_store(source: str | Path | Store) -> bool:
    return isinstance(source, Store) or str(source).endswith(".duckdb")


def _no_pairs(sources: Sequence[str | Path | Store], split: str | None, question: str,
              include_both_bad: bool) -> DataError:
    """Why no source gave a pair, and what would: KTO where both-bad votes exist (DPO
    trains on decisive votes alone), else more votes."""
    names = [str(s.path if isinstance(s, Store) else s) for s in sources]
    holds = f"{' and '.join(names)} {'hold' if len(names) > 1 else 'holds'}"
    where = (f" in split {split!r}" if split else "") + (
        f" for question {question!r}" if question != "preference" else "")
    if include_both_bad:
        return DataError(f"{holds} no decisive pair and no both-bad vote{where}: collect "
                         "votes first (python -m annotate)")
    both_bad = sum(len(StorePairs(s, split=split, include_both_bad=True, question=question))
                   for s in sources if _is_store(s))
    fix = (f"the {both_bad} both-bad vote{'s' if both_bad > 1 else ''} there "
           f"train{'' if both_bad > 1 else 's'} with --objective kto, or collect more votes"
           if both_bad else
           "collect decisive votes first (python -m annotate) or import shards")
    return DataError(f"{holds} no decisive pair{where}: ties, both-bad votes and skips are "
                     f"not DPO pairs; {fix}")
