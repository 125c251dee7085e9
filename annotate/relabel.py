"""`python -m annotate relabel`: a scorer's margin on pairs that already exist, as a soft
label (SmPO's smoothed preferences).

SmPO (Lu et al., ICML 2025, arXiv 2506.02698) scores both images of every Pick-a-Pic pair
with PickScore and trains on p = sigmoid((s_w - s_l) / T), the winner being the image the
scorer prefers and T = 0.1666 on PickScore's cosine (the spread of its scores over
Pick-a-Pic; their `preprocessing.py` and `train.py`). A people's vote says which image
won; the scorer's margin says by how much, so a near coin-flip pair pulls the model
less than a clear one.

Here a manifest goes in (JSONL, or an HPDv3 JSON file) and a JSONL manifest comes out:
each row's prompt and images (paths rewritten relative to the new file, nothing copied),
the scorer's preferred image as `chosen`, p as `label` (0.5 to 1), both scores, and
whether the scorer turned the row round. The trainer reads it in place (`--data
OUT.jsonl --pair_votes share`, in the conservative loss or, with `--share_loss smpo`, in
SmPO's); `data import` keeps only its decisive side. A store or a parquet shard becomes
a manifest with `python -m data export OUT --format jsonl` first.

The whole manifest is checked before the first image is read (a bad row is named with its
file and line). Rows are written as they are scored to a `.partial` file beside OUT named
for the run's settings and the manifest's size and time; the same command again goes on
after its last whole line, and OUT appears, whole, only at the end.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sys
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from PIL import Image

from annotate.config import RelabelConfig
from cli.errors import ShardError, UsageError
from cli.parser import save_config_beside
from data.manifest import (
    SUFFIXES,
    ManifestRow,
    manifest_items,
    manifest_row,
    manifest_split,
)
from data.store import disk_full_error, is_disk_full
from models.loading import default_device_and_dtype
from models.scorers import SCORE_BATCH, checked_scores, load_scorer

PAIRS_PER_WRITE = 64  # pairs scored and written together; two such batches' images in RAM


def smoothed(chosen: float, rejected: float, temperature: float) -> float:
    """SmPO's label: the chance `chosen` is preferred, from the two scores."""
    return 1 / (1 + math.exp(-(chosen - rejected) / temperature))


def _rows(path: Path, state: dict) -> Iterator[tuple[str, ManifestRow]]:
    """(where, row) of every row of the manifest, each checked; `state` gets the split
    the rows name (`manifest_split`)."""
    items, where_of = manifest_items(path)
    for number, item in items:
        where = where_of(number)
        yield where, manifest_row(item, where, state, shares=True)


def _partial(config: RelabelConfig) -> Path:
    """Where the run's rows go until the last one: named for everything that changes them."""
    stat = config.data.stat()
    key = hashlib.sha256(json.dumps([
        str(config.data.resolve()), stat.st_size, stat.st_mtime_ns, config.scorer,
        config.scorer_options(), config.scale]).encode()).hexdigest()[:12]
    return config.out.with_name(f"{config.out.name}.{key}.partial")


def _whole_lines(path: Path) -> int:
    """The whole lines a partial file holds, a torn last line cut off (read a block at a
    time: at a million pairs the file is about 300 MB)."""
    if not path.exists():
        return 0
    lines, whole = 0, 0
    with path.open("rb+") as file:
        while block := file.read(1 << 20):
            lines += block.count(b"\n")
            if (last := block.rfind(b"\n")) >= 0:
                whole = file.tell() - len(block) + last + 1
        file.truncate(whole)
    return lines


def _image(folder: Path, value: str, key: str, where: str) -> Image.Image:
    """A row's image as the scorer sees it (any format PIL reads, as it is: nothing is
    stored, so nothing is re-encoded), or `ShardError` naming the row."""
    try:
        with Image.open(folder / value) as image:
            return image.convert("RGB")
    except OSError as error:
        if isinstance(error, FileNotFoundError | PermissionError | IsADirectoryError):
            raise ShardError(f"{where}: `{key}` {value}: {error.strerror}") from None
        raise ShardError(f"{where}: `{key}` {value} is not a decodable image") from None
    except Exception as error:  # PIL raises many types for bytes it cannot read
        raise ShardError(f"{where}: `{key}` {value} is not a decodable image "
                         f"({type(error).__name__})") from None


def relabel(config: RelabelConfig) -> int:
    """Score the manifest's pairs and write the soft-labelled manifest; the exit status."""
    source = config.data
    if not source.is_file() or source.suffix not in SUFFIXES:
        raise UsageError(f"{source}: give a manifest file (.jsonl, or an HPDv3 .json); a "
                         "store or a shard: python -m data export OUT --format jsonl first")
    if config.out.exists():
        raise UsageError(f"{config.out} exists: give another OUT or remove it")
    state: dict = {}
    total = sum(1 for _ in _rows(source, state))
    file_split = manifest_split(source, state)
    config.out.parent.mkdir(parents=True, exist_ok=True)
    save_config_beside(config, config.out, "relabel")
    partial = _partial(config)
    for stale in config.out.parent.glob(f"{config.out.name}.*.partial"):
        if stale != partial:
            print(f"removed {stale}: written with other settings or another manifest",
                  file=sys.stderr)
            stale.unlink()
    done = _whole_lines(partial)
    scorer = load_scorer(config.scorer, device=default_device_and_dtype()[0],
                         **config.scorer_options())
    name = f"ai:{config.scorer}"
    folder, out_folder = source.parent.resolve(), config.out.parent.resolve()
    started, flipped, scored = time.perf_counter(), 0, 0

    def relative(path: str) -> str:
        return os.path.relpath(folder / path, out_folder)

    def read(batch: list[tuple[str, ManifestRow]]) -> list[Future]:
        """The batch's images, being read and decoded by the pool while the scorer works."""
        return [pool.submit(_image, folder, getattr(row, key), key, where)
                for where, row in batch for key in ("chosen", "rejected")]

    def batches() -> Iterator[list[tuple[str, ManifestRow]]]:
        batch = []
        for index, (where, row) in enumerate(_rows(source, {})):
            if index >= done:
                batch.append((where, row))
            if len(batch) == PAIRS_PER_WRITE:
                yield batch
                batch = []
        if batch:
            yield batch

    def write(batch: list[tuple[str, ManifestRow]], images: list[Future], out) -> None:
        nonlocal flipped, scored
        prompts = [row.prompt for _, row in batch for _ in range(2)]
        scores = checked_scores(scorer, config.scorer, prompts,
                                [image.result() for image in images],
                                config.score_batch or SCORE_BATCH)
        for (_, row), s_chosen, s_rejected in zip(batch, scores[::2], scores[1::2],
                                                  strict=True):
            turned = s_rejected > s_chosen
            if turned:
                s_chosen, s_rejected = s_rejected, s_chosen
            flipped += turned
            out.write(json.dumps({
                "prompt": row.prompt,
                "chosen": relative(row.rejected if turned else row.chosen),
                "rejected": relative(row.chosen if turned else row.rejected),
                "label": round(smoothed(s_chosen, s_rejected, config.scale), 6),
                "split": file_split, "annotator": name,
                "model_chosen": row.model_rejected if turned else row.model_chosen,
                "model_rejected": row.model_chosen if turned else row.model_rejected,
                "scores": [s_chosen, s_rejected], "turned": turned,
            }, ensure_ascii=False) + "\n")
        out.flush()
        scored += len(batch)
        bar.update(len(batch))

    from tqdm import tqdm

    try:
        with ThreadPoolExecutor(config.threads or os.cpu_count() or 1) as pool, \
                partial.open("a", encoding="utf-8") as out, \
                tqdm(total=total, initial=done, unit="pair", disable=config.no_progress) as bar:
            ahead = None  # the batch whose images are read while the one before is scored
            for batch in batches():
                loading = (batch, read(batch))
                if ahead:
                    write(*ahead, out)
                ahead = loading
            if ahead:
                write(*ahead, out)
            os.fsync(out.fileno())
    except OSError as error:
        if is_disk_full(error):
            raise disk_full_error(partial, "the pairs written so far are kept and the same "
                                  "command goes on after them") from None
        raise
    os.replace(partial, config.out)
    seconds = time.perf_counter() - started
    print(json.dumps({
        "out": str(config.out), "pairs": total, "scored_now": scored, "resumed_after": done,
        "turned_now": flipped, "scorer": config.scorer, "temperature": config.scale,
        "pairs_per_s": round(scored / seconds, 2) if scored else None}))
    return 0

