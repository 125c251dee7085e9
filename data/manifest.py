"""Plain pair manifests: the form the 2026 trainers exchange preference pairs in.

A manifest is a JSONL file, one pair a line: the prompt and the paths of its chosen and
rejected images, relative to the manifest (Flow-Factory's offline DPO and SimpleTuner's
folder pairs read this shape), with optional `label`, `split` and `annotator`. An export
(`python -m data export OUT --format jsonl`) writes `OUT/<split>.jsonl` and the images it
names as `OUT/images/<image_uid>.jpg`, each once, the stored JPEG bytes unchanged; so
`datasets.load_dataset("json", data_dir=OUT)` reads it with a split per file.

`label` is the share of the vote (or votes) for `chosen`: 1.0 for a decisive vote; a tie
is 0.5, with chosen and rejected then in the stored pair's order. `annotator` is the
store's user id of the vote (0 for a consensus row, which speaks for several).

An import (`python -m data import FILE.jsonl`, or a folder holding manifests) reads the
same fields (`label` 1 or 0.5, default 1; `split` one per file, default from the file's
name; `annotator` a number or a name), and HPDv3's JSON files the same way (a JSON array of
prompt, path1 - always the preferred image -, path2, model1, model2, ...; read a chunk at
a time). Each row is checked as it is read, a bad one refused with its file and line (or
pair) and nothing stored; the rows are written a few hundred at a time as a Pick-a-Pic
shard beside the store, which the shard import then takes in. Images are identified by
their content and pairs by prompt, images, label and annotator, so importing a file again
adds nothing; images in other formats than JPEG are stored re-encoded as JPEG. A manifest
records no time: its pairs are stamped 1970-01-01.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import re
from array import array
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path

from cli.errors import ShardError

IMAGES = "images"  # the folder beside the manifests that holds the images they name
SUFFIXES = (".jsonl", ".json")  # JSONL manifests, HPDv3's files
_SAFE_NAME = re.compile(r"[A-Za-z0-9_.-]{1,100}")


def image_path(uid: str) -> str:
    """The image's path relative to the manifest: its uid, or a hash of a uid that is
    no safe file name."""
    name = uid if _SAFE_NAME.fullmatch(uid) and not uid.startswith(".") else \
        hashlib.sha256(uid.encode()).hexdigest()[:32]
    return f"{IMAGES}/{name}.jpg"


def exported_row(row: dict) -> dict:
    """One exported pair (a row of the export query) as a manifest line's fields."""
    first = row["label_0"] >= row["label_1"]
    chosen, rejected = (0, 1) if first else (1, 0)
    return {
        "prompt": row["caption"],
        "chosen": image_path(row[f"image_{chosen}_uid"]),
        "rejected": image_path(row[f"image_{rejected}_uid"]),
        "label": float(row[f"label_{chosen}"]),
        "split": row["split"],
        "annotator": int(row["user_id"]),
        "ranking_id": int(row["ranking_id"]),
        "model_chosen": row[f"model_{chosen}"],
        "model_rejected": row[f"model_{rejected}"],
    }


def write_split(rows, split: str, root: Path, written: set[str]) -> tuple[int, list[Path]]:
    """Write `rows` (dicts of the export query, images included) as `root/<split>.jsonl`,
    and each image not in `written` (uids, shared over splits) under `root/images/`.
    Returns (pairs written, files written)."""
    path = root / f"{split}.jsonl"
    (root / IMAGES).mkdir(exist_ok=True)
    files, count = [path], 0
    with path.open("w", encoding="utf-8") as out:
        for row in rows:
            for side in (0, 1):
                uid = row[f"image_{side}_uid"]
                if uid not in written:
                    image = root / image_path(uid)
                    image.write_bytes(row[f"jpg_{side}"])
                    files.append(image)
                    written.add(uid)
            out.write(json.dumps(exported_row({**row, "split": split}), ensure_ascii=False)
                      + "\n")
            count += 1
    return count, files


# -- import ------------------------------------------------------------------------------

EPOCH = datetime(1970, 1, 1)  # a manifest records no time: its pairs are all stamped so


def _id(*parts) -> int:
    """A stable positive 63-bit id of `parts`: the same manifest row, the same id."""
    digest = hashlib.blake2b(json.dumps(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> 1


def _image(folder: Path, value, key: str, where: str, max_side: int) -> bytes:
    """The JPEG bytes a manifest row's `key` names (other formats re-encoded as JPEG, as
    the store keeps JPEG), checked as the parquet import checks them."""
    from PIL import Image

    from data.images import ImageProblem, check_jpeg
    from data.pairs import encode_jpeg

    if not isinstance(value, str) or not value:
        raise ShardError(f"{where}: `{key}` must be an image path")
    path = Path(value) if Path(value).is_absolute() else folder / value
    try:
        data = path.read_bytes()
    except OSError as error:
        raise ShardError(f"{where}: `{key}` {value}: {error.strerror or error}") from None
    try:
        try:
            check_jpeg(data, max_side)
        except ImageProblem as problem:
            if "not JPEG" not in str(problem):
                raise
            with Image.open(io.BytesIO(data)) as image:
                if max(image.size) > max_side:
                    raise ImageProblem(f"declares {image.width}x{image.height} pixels, over "
                                       f"the {max_side} px per side limit") from None
                data = encode_jpeg(image)
            check_jpeg(data, max_side)
    except ImageProblem as problem:
        raise ShardError(f"{where}: `{key}` {value} {problem}") from None
    except Exception as error:  # PIL raises many types for bytes it cannot read
        raise ShardError(f"{where}: `{key}` {value} is not a decodable image "
                         f"({type(error).__name__})") from None
    return data


def _user_id(value, where: str) -> int:
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ShardError(f"{where}: `annotator` must be a name or a number")
    return value if isinstance(value, int) and value >= 0 else _id("annotator", str(value))


def jsonl_where(path: Path, number: int) -> str:
    return f"{path}:{number}"


def array_where(path: Path, number: int) -> str:
    return f"{path}, pair {number}"


def jsonl_items(path: Path) -> Iterator[tuple[int, object]]:
    """(line number, parsed line) of a JSONL manifest (`jsonl_where` names it); a line that
    is no JSON raises `ShardError` naming it."""
    try:
        with path.open(encoding="utf-8") as lines:
            for number, line in enumerate(lines, 1):
                if line.strip():
                    try:
                        item = json.loads(line)
                    except ValueError as error:
                        raise ShardError(f"{jsonl_where(path, number)}: not a JSON object "
                                         f"({error.msg})") from None
                    yield number, item
    except (OSError, UnicodeDecodeError) as error:
        raise ShardError(f"{path}: cannot be read as UTF-8 text ({error})") from None


CHUNK_CHARS = 1 << 20  # characters of a JSON array read at a time


def json_array_items(path: Path) -> Iterator[tuple[int, object]]:
    """(number, element) of a file holding one JSON array (HPDv3's files), read a chunk at
    a time so a file of a million pairs is never held whole (`array_where` names it)."""
    decoder = json.JSONDecoder()
    try:
        with path.open(encoding="utf-8") as text:
            buffer, at, count, started, done = text.read(CHUNK_CHARS), 0, 0, False, False
            while True:
                while at < len(buffer) and (buffer[at].isspace()
                                            or (started and buffer[at] == ",")):
                    at += 1
                if at == len(buffer):
                    more = text.read(CHUNK_CHARS)
                    if not more:
                        break
                    buffer, at = buffer[at:] + more, 0
                    continue
                if not started:
                    if buffer[at] != "[":
                        raise ShardError(f"{path}: not a JSON array of pairs")
                    started, at = True, at + 1
                    continue
                if buffer[at] == "]":
                    done = True
                    break
                try:
                    item, end = decoder.raw_decode(buffer, at)
                except ValueError as error:
                    more = text.read(CHUNK_CHARS)
                    if not more:
                        raise ShardError(f"{path}, pair {count + 1}: not valid JSON "
                                         f"({error.msg})") from None
                    buffer, at = buffer[at:] + more, 0
                    continue
                count += 1
                yield count, item
                at = end
            if not done:
                raise ShardError(f"{path}: the JSON array does not end (a cut file?)")
    except (OSError, UnicodeDecodeError) as error:
        raise ShardError(f"{path}: cannot be read as UTF-8 text ({error})") from None


def hpdv3_items(path: Path) -> Iterator[tuple[int, object]]:
    """HPDv3's pairs (MizzenAI/HPSv3's README, "Pairwise Training Data Format": a JSON
    array of prompt, path1, path2, model1, model2, choice_dist, confidence, with path1
    always the preferred image and paths relative to the file) as manifest items."""
    for number, item in json_array_items(path):
        if not isinstance(item, dict) or not {"path1", "path2"} <= item.keys():
            raise ShardError(f"{array_where(path, number)}: not an HPDv3 pair (an object "
                             "with prompt, path1 and path2)")
        yield number, {"prompt": item.get("prompt"), "chosen": item["path1"],
                      "rejected": item["path2"], "model_chosen": item.get("model1"),
                      "model_rejected": item.get("model2"),
                      "choice_dist": item.get("choice_dist")}


@dataclass(frozen=True)
class ManifestRow:
    """A manifest line's (or HPDv3 pair's) fields, checked; its images not read yet."""

    prompt: str
    chosen: str  # the image's path as the manifest names it
    rejected: str
    label: float  # the row's label: 1.0 chosen preferred, 0.5 a tie (or a share between)
    share: float  # of the votes behind the row, the share for `chosen` (HPDv3: choice_dist)
    user: int
    model_chosen: str
    model_rejected: str


def manifest_row(item: object, where: str, state: dict, shares: bool = False) -> ManifestRow:
    """`item`'s fields, or `ShardError` naming `where`; `state["split"]` keeps the split
    the file's rows name (one per file). With `shares` (read in place by the trainer),
    `label` may be any share from 0.5 to 1, and an HPDv3 pair's `choice_dist` votes give
    its share; otherwise (the store's import) a label is 1 or 0.5."""
    if not isinstance(item, dict):
        raise ShardError(f"{where}: not a JSON object")
    prompt = item.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise ShardError(f"{where}: `prompt` must be non-empty text")
    label = item.get("label", 1.0)
    votes = item.get("choice_dist")
    share = label
    if shares and votes is not None:
        if not (isinstance(votes, list) and len(votes) == 2 and all(
                isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in votes)
                and sum(votes) > 0):
            raise ShardError(f"{where}: `choice_dist` {votes!r}: give two vote counts "
                             "[for path1, for path2], or null")
        share = votes[0] / sum(votes)
    if isinstance(label, bool) or not isinstance(label, int | float) or not (
            0.5 <= label <= 1 if shares else label in (1, 0.5)):
        raise ShardError(
            f"{where}: `label` {label!r}: give the share of the votes for chosen, from 0.5 (a "
            "tie) to 1" if shares else f"{where}: `label` {label!r}: give 1 (chosen "
            "preferred) or 0.5 (a tie); other shares are not imported yet (train on the "
            "file in place: --data FILE)")
    row_split, split = item.get("split"), state.get("split")
    if row_split is not None and (not isinstance(row_split, str) or not row_split):
        raise ShardError(f"{where}: `split` must be a name such as train or test")
    if row_split is not None and split is not None and row_split != split:
        raise ShardError(f"{where}: split {row_split!r} after {split!r}: one split per "
                         "file; put each split's rows in its own file")
    state["split"] = row_split or split
    for key in ("chosen", "rejected"):
        if not isinstance(item.get(key), str) or not item[key]:
            raise ShardError(f"{where}: `{key}` must be an image path")
    if item["chosen"] == item["rejected"]:
        raise ShardError(f"{where}: `chosen` and `rejected` are the same image")
    return ManifestRow(prompt, item["chosen"], item["rejected"], float(label), float(share),
                       _user_id(item.get("annotator"), where),
                       str(item.get("model_chosen") or ""), str(item.get("model_rejected") or ""))


def manifest_split(path: Path, state: dict) -> str:
    """The split of a manifest file: the one its rows name, else its name's (train.jsonl,
    test.json), else train."""
    from data.pickapic import KNOWN_SPLITS

    return state.get("split") or (path.stem if path.stem in KNOWN_SPLITS else "train")


def manifest_items(path: Path) -> tuple[Iterator[tuple[int, object]], Callable[[int], str]]:
    """A manifest's (number, item)s, HPDv3's JSON or JSONL, and what names item `number`."""
    if path.suffix == ".json":
        return hpdv3_items(path), functools.partial(array_where, path)
    return jsonl_items(path), functools.partial(jsonl_where, path)


def read_image(path: Path, key: str, where: str, max_side: int) -> bytes:
    """A manifest row's image file as the store keeps it (`_image`)."""
    return _image(path.parent, str(path), key, where, max_side)


def manifest_rows(items: Iterable[tuple[int, object]], where_of, folder: Path,
                  max_side: int, state: dict) -> Iterator[dict]:
    """Pick-a-Pic rows of manifest `items` (images read and checked, relative paths from
    `folder`); `ShardError` names the first bad one by `where_of(number)`. `state` collects
    each row's line or pair number ("numbers", 8 bytes a row) and the split the rows name
    ("split": one per file)."""
    for number, item in items:
        where = where_of(number)
        row = manifest_row(item, where, state)
        chosen, rejected = (_image(folder, value, key, where, max_side) for key, value
                            in (("chosen", row.chosen), ("rejected", row.rejected)))
        uids = [hashlib.sha256(data).hexdigest()[:32] for data in (chosen, rejected)]
        if uids[0] == uids[1]:
            raise ShardError(f"{where}: `chosen` and `rejected` are the same image")
        state.setdefault("numbers", array("q")).append(number)
        yield {
            "are_different": False, "best_image_uid": uids[0] if row.label == 1 else "none",
            "caption": row.prompt, "created_at": EPOCH, "has_label": True,
            "image_0_uid": uids[0], "image_0_url": None, "image_1_uid": uids[1],
            "image_1_url": None, "jpg_0": chosen, "jpg_1": rejected,
            "label_0": row.label, "label_1": 1.0 - row.label,
            "model_0": row.model_chosen, "model_1": row.model_rejected,
            "ranking_id": _id(row.prompt, *uids, row.label, row.user), "user_id": row.user,
            "num_example_per_prompt": None,
        }


ROWS_PER_WRITE = 256  # rows (with their images) held at once while a file is converted


def import_manifest(store, path: Path, source: str, split: str | None, max_side: int):
    """Import one manifest (JSONL, or HPDv3's JSON array) as the parquet import imports a
    shard: all of it or nothing, ids from the content so a re-import adds nothing. Its
    rows are checked here one by one and written, a few hundred at a time, as a
    Pick-a-Pic shard beside the store, which the shard import then reads."""
    import tempfile

    import pyarrow as pa
    import pyarrow.parquet as pq

    from data.pickapic import (
        PICKAPIC_SCHEMA,
        ImportedFile,
        _imported_before,
        _stamp,
        import_shard,
    )

    stamp, cur = _stamp(path), store.cursor()
    if _imported_before(cur, stamp):
        return ImportedFile(path=path, rows=0, added=0, skipped=True)
    items, where_of = manifest_items(path)
    state: dict = {}
    with tempfile.TemporaryDirectory(prefix=".manifest-", dir=store.path.parent) as work:
        shard = Path(work) / f"{path.stem}.parquet"
        with pq.ParquetWriter(shard, PICKAPIC_SCHEMA) as writer:
            batch = []
            for row in manifest_rows(items, where_of, path.parent, max_side, state):
                batch.append(row)
                if len(batch) == ROWS_PER_WRITE:
                    writer.write_table(pa.Table.from_pylist(batch, schema=PICKAPIC_SCHEMA))
                    batch = []
            if batch:
                writer.write_table(pa.Table.from_pylist(batch, schema=PICKAPIC_SCHEMA))
        numbers = state.get("numbers", [])
        if not numbers:
            raise ShardError(f"{path}: no pairs in this file")
        split = split or manifest_split(path, state)
        try:
            done = import_shard(store, shard, source, split=split, max_side=max_side)
        except ShardError as error:
            text = str(error).replace(str(shard), str(path))
            text = re.sub(rf"{re.escape(str(path))}, row (\d+)",
                          lambda m: where_of(numbers[int(m.group(1))]), text)
            raise ShardError(text) from None
        # the record that lets a rerun skip the file: the manifest's, not the shard's
        cur.execute("UPDATE imported_files SET path = ?, size = ?, mtime_ns = ? "
                    "WHERE path = ?", [*stamp, str(shard.resolve())])
    return replace(done, path=path)
