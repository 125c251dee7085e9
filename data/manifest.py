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
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

IMAGES = "images"  # the folder beside the manifests that holds the images they name
_SAFE_NAME = re.compile(r"[A-Za-z0-9_.-]{1,100}")


def image_path(uid: str) -> str:
    """The image's path relative to the manifest: its uid, or a hash of a uid that is
    no safe file name."""
    name = uid if _SAFE_NAME.fullmatch(uid) and not uid.startswith(".") else \
        hashlib.sha256(uid.encode()).hexdigest()[:32]
    return f"{IMAGES}/{name}.jpg"


def manifest_row(row: dict) -> dict:
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
            out.write(json.dumps(manifest_row({**row, "split": split}), ensure_ascii=False)
                      + "\n")
            count += 1
    return count, files
