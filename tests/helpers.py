"""Builders for test data: real JPEGs, stored votes, and Pick-a-Pic shards."""

from __future__ import annotations

import io
import struct
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from data.pickapic import PICKAPIC_SCHEMA
from data.store import ImageRecord, Store, Vote, new_uid


def jpeg_bytes(color: tuple[int, int, int], size: int = 32, quality: int = 90) -> bytes:
    """A small real JPEG of one colour, with a corner mark so no two colours decode alike."""
    image = Image.new("RGB", (size, size), color)
    image.putpixel((0, 0), (255 - color[0], 255 - color[1], 255 - color[2]))
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


def color_of(image: Image.Image) -> tuple[int, int, int]:
    """The colour at the centre of a decoded test image."""
    return image.convert("RGB").getpixel((image.width // 2, image.height // 2))


def image_pair(prompt: str, colors, models=("toy-a", "toy-b")) -> list[ImageRecord]:
    return [
        ImageRecord(
            image_uid=new_uid(), jpg=jpeg_bytes(color), prompt=prompt, model=model, seed=k,
            guidance_scale=7.5, steps=20, scheduler="DDIM", width=32, height=32, gen_ms=1.0,
        )
        for k, (color, model) in enumerate(zip(colors, models, strict=True))
    ]


def record(store: Store, prompt: str, outcome: str, shown_left: int = 0, user: str = "ann",
           colors=((200, 0, 0), (0, 0, 200)), vote_id: str | None = None, **extra):
    """Store a generated pair and one vote on it; returns (ranking, images)."""
    images = image_pair(prompt, colors)
    vote = Vote(
        vote_id=vote_id or new_uid(), caption=prompt, image_0_uid=images[0].image_uid,
        image_1_uid=images[1].image_uid, outcome=outcome, shown_left=shown_left,
        user_id=store.user_id(user), **extra,
    )
    return store.record_vote(vote, images=images), images


# Rows of a public-style shard: (caption, label_0, label_1); colours follow the labels so a
# test can tell the winner from the pixels: the winner is red, the loser blue, ties green.
PUBLIC_ROWS = [
    ("a photo of a cat", 1.0, 0.0),
    ("a photo of a cat", 0.0, 1.0),
    ("a watercolor fox", 0.5, 0.5),
    ("a watercolor fox", 1.0, 0.0),
    ("", 0.0, 1.0),  # Pick-a-Pic has empty captions
    ("a castle at dusk", 0.5, 0.5),
]
RED, BLUE, GREEN = (220, 10, 10), (10, 10, 220), (10, 200, 10)


def public_shard_table(rows=PUBLIC_ROWS, start_id: int = 1000, image_size: int = 32):
    """A table in the exact pickapic_v2 schema, including its leftover pandas index."""
    columns: dict[str, list] = {f.name: [] for f in PICKAPIC_SCHEMA}
    columns["__index_level_0__"] = []
    created = datetime(2023, 3, 1, 12, 0, 0)
    for i, (caption, label_0, label_1) in enumerate(rows):
        uids = [f"{start_id + i:08d}-0000-4000-8000-00000000000{k}" for k in (0, 1)]
        if label_0 == 0.5:
            colors, best = (GREEN, GREEN), "none"
        else:
            colors = (RED, BLUE) if label_0 == 1.0 else (BLUE, RED)
            best = uids[0] if label_0 == 1.0 else uids[1]
        models = ("stabilityai/stable-diffusion-2-1", "yuvalkirstain/dreamlike-photoreal-2-flax")
        values = {
            "are_different": True, "best_image_uid": best, "caption": caption,
            "created_at": created + timedelta(seconds=i, microseconds=123),
            "has_label": True, "image_0_uid": uids[0],
            "image_0_url": f"https://example.invalid/{uids[0]}.png", "image_1_uid": uids[1],
            "image_1_url": f"https://example.invalid/{uids[1]}.png",
            "jpg_0": jpeg_bytes(colors[0], image_size), "jpg_1": jpeg_bytes(colors[1], image_size),
            "label_0": label_0, "label_1": label_1, "model_0": models[0], "model_1": models[1],
            "ranking_id": start_id + i, "user_id": 7 + i % 3, "num_example_per_prompt": 2,
            "__index_level_0__": i,
        }
        for name, value in values.items():
            columns[name].append(value)
    schema = PICKAPIC_SCHEMA.append(pa.field("__index_level_0__", pa.int64()))
    return pa.table(columns, schema=schema)


def huge_header_jpeg(width: int = 12000, height: int = 12000) -> bytes:
    """A real 1x1 JPEG whose frame header (SOF0) is patched to declare width x height."""
    buffer = io.BytesIO()
    Image.new("RGB", (1, 1), (200, 0, 0)).save(buffer, "JPEG")
    data = buffer.getvalue()
    sof = data.index(b"\xff\xc0")  # marker, length (2), precision (1), height, width
    return data[: sof + 5] + struct.pack(">HH", height, width) + data[sof + 9:]


def write_shard(path: Path, table: pa.Table) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)
    return path


@contextmanager
def serving(demo, **launch_options) -> Iterator[str]:
    """Serve a Gradio app on 127.0.0.1 for the test's duration; yields its URL."""
    demo.launch(server_name="127.0.0.1", prevent_thread_lock=True, quiet=True,
                **launch_options)
    try:
        yield demo.local_url
    finally:
        demo.close()


@contextmanager
def small_filesystem(folder: Path, size: str = "4m") -> Iterator[Path]:
    """A tmpfs of `size` mounted on `folder`, to fill for real; the test is skipped where
    mounting is not allowed (not root)."""
    import subprocess

    import pytest

    folder.mkdir(parents=True, exist_ok=True)
    try:
        mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs",
                                  str(folder)], capture_output=True, text=True)
    except FileNotFoundError:
        pytest.skip("cannot mount a small tmpfs here: no mount command")
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {mounted.stderr.strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def fill_disk(folder: Path) -> Path:
    """Fill the file system of `folder` to the last byte; the filler file's path."""
    filler = folder / "filler"
    with open(filler, "wb", buffering=0) as out:
        for chunk in (65536, 4096, 1):
            try:
                while True:
                    out.write(b"\0" * chunk)
            except OSError:
                pass
    return filler


def judged_store(path: Path) -> Path:
    """A store of twelve judged pairs of distinct colours (four prompts), plus a tie and a
    both-bad vote, at `path`."""
    rng = np.random.default_rng(0)
    with Store(path) as store:
        for i in range(12):
            colors = [tuple(int(c) for c in rng.integers(0, 256, 3)) for _ in range(2)]
            record(store, f"prompt {i % 4}", "left" if i % 3 else "right", colors=colors)
        record(store, "a tie", "tie")
        record(store, "both bad", "both_bad")
    return path


def flow_images(pipe, kind: str, seed: int = 0) -> np.ndarray:
    """Two steps of 32 px images of one prompt by a tiny flow pipeline, in its own
    guidance convention (Qwen-Image: true CFG against " ")."""
    import torch

    guidance = ({"true_cfg_scale": 4.0, "negative_prompt": " "} if kind == "qwenimage"
                else {"guidance_scale": 4.0})
    return pipe(prompt="a red circle", num_inference_steps=2, height=32, width=32,
                output_type="np", generator=torch.Generator().manual_seed(seed),
                **guidance).images


def config_for(model_dir, store_path, out, **overrides):
    """A tiny training config (32 px, 2 steps of 4 pairs, fp32) on `model_dir`."""
    from train.config import resolve

    values = {
        "model": str(model_dir), "data": [str(store_path)], "output_dir": str(out),
        "cache_dir": str(out.parent / "cache"), "resolution": 32, "batch_size": 2,
        "effective_batch": 4, "max_steps": 2, "learning_rate": 1e-3, "beta": 500.0,
        "checkpoint_every": 0, "log_every": 1, "mixed_precision": "no", "holdout_pairs": 0,
        "ema_decay": 0.0,  # final/ is the trained weights themselves
    }
    values.update(overrides)
    return resolve("toy", values)


@contextmanager
def small_disk(path: Path, size: str, read_only: bool = False) -> Iterator[Path]:
    """A tmpfs of `size` mounted at `path` for the block (mounting needs root); chmod
    cannot make a read-only folder for root, a read-only mount can."""
    path.mkdir()
    options = f"size={size}" + (",ro" if read_only else "")
    mount = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)],
                           capture_output=True, text=True)
    if mount.returncode != 0:
        pytest.skip(f"cannot mount a {size} tmpfs here (needs root): {mount.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=True)


def saved_config_gives(path: Path, config_class: type, argv: list[str]) -> bool:
    """A command's saved resolved config is a file `--config` reads back to the config
    that `argv` gave it."""
    from cli.parser import parse

    assert path.is_file(), f"no config saved at {path}"
    return parse(config_class, ["--config", str(path)], "test") == parse(config_class, argv,
                                                                         "test")
