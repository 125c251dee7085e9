"""Gold (control) pairs: pairs whose better image is known, mixed into what the page shows.

They score annotators (Prolific's advice: use them to score raters, not to reject them).
A gold file is JSON Lines, one pair a line, image paths relative to the file:

    {"prompt": "a red circle", "better": "gold/01-good.png", "worse": "gold/01-bad.png"}

Gold votes are stored with `is_gold` and split 'gold', so the trainer (which reads the
'train' split) never learns from them; `python -m data stats` shows each annotator's
gold accuracy.
"""

from __future__ import annotations

import hashlib
import io
import json
import uuid
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from annotate.screening import MAX_PROMPT_CHARS
from cli.errors import UsageError
from data.pairs import encode_jpeg
from data.store import ImageRecord

GOLD_MODEL = "gold"
_UID_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "diffusion-dpo-loop/annotate/gold")


@dataclass(frozen=True)
class GoldPair:
    prompt: str
    better: ImageRecord
    worse: ImageRecord


def _image(folder: Path, name: object, prompt: str, where: str) -> ImageRecord:
    if not isinstance(name, str) or not name:
        raise UsageError(f"{where}: 'better' and 'worse' must be image paths")
    path = folder / name
    try:
        raw = path.read_bytes()
        image = Image.open(io.BytesIO(raw)).convert("RGB")
    except FileNotFoundError:
        raise UsageError(f"{where}: {path} does not exist") from None
    except UnidentifiedImageError:
        raise UsageError(f"{where}: {path} is not an image") from None
    # The same file always gets the same uid, so restarting a server stores it once.
    uid = str(uuid.uuid5(_UID_NAMESPACE, hashlib.sha256(raw).hexdigest()))
    return ImageRecord(image_uid=uid, jpg=encode_jpeg(image), prompt=prompt, model=GOLD_MODEL,
                       width=image.width, height=image.height)


def read_gold(path: str | Path) -> list[GoldPair]:
    """Every pair of a gold file, or a `UsageError` naming the first bad line."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"{path} does not exist: give a JSON Lines gold file")
    pairs = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            raise UsageError(f"{where}: not JSON; write one object per line") from None
        if not isinstance(row, dict) or not str(row.get("prompt", "")).strip():
            raise UsageError(f"{where}: needs a non-empty 'prompt'")
        prompt = str(row["prompt"])
        if len(prompt) > MAX_PROMPT_CHARS:
            raise UsageError(f"{where}: the prompt is {len(prompt):,} characters long: "
                                f"shorten it to at most {MAX_PROMPT_CHARS:,}")
        better = _image(path.parent, row.get("better"), prompt, where)
        worse = _image(path.parent, row.get("worse"), prompt, where)
        pairs.append(GoldPair(prompt, better, worse))
    if not pairs:
        raise UsageError(f"{path} has no pairs")
    return pairs

