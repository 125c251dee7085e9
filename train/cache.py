"""VAE latents and text embeddings, computed once per model and dataset, kept on disk.

The official code runs the VAE and the text encoder(s) on every step; their outputs never
change (only the UNet trains), so this computes them in one pass and memory-maps them.
Both images of a pair get the same resize and crop, decided once per pair from the seed.
With `random_flip` each pair is encoded twice, as it is and mirrored (the VAE is not
flip-equivariant, so mirroring a latent is not the latent of the mirrored image): the
trainer then draws each step's flips from (seed, step) and reads either copy, so a pair
appears both ways across epochs without a VAE call per step, at twice the cache's size.
The VAE posterior's mean is stored (SD's VAE posterior std is negligible next to
the latents), shifted and scaled as the pipeline's own VAE config says (SD3's and FLUX's
VAEs have a shift). FLUX's latents are stored unpacked, [C, H, W]: the trainer packs
them into 2x2 patches as it calls the transformer. Text embeddings are stored once per
distinct caption, plus the empty prompt's, which prompt dropout swaps in - the same
unconditional embedding that the pipeline uses at inference (zeros for SDXL's
`force_zeros_for_empty_prompt`; SD3's and FLUX's encoding of ""). SD3 and FLUX store
the whole text sequence (CLIP's tokens, then `text_tokens` T5 tokens; FLUX: T5's alone)
and the pooled CLIP embedding.

A cache folder is named by a hash of the model, the pairs (their ids, in order) and the
preprocessing settings, so a later run on the same data reuses it and any change makes a
new one. It is written to a temporary folder and renamed when complete.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import shutil
import socket
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from train.errors import TrainError

FORMAT = 2  # 2: the mirrored copy of every pair under random_flip
ENCODER_PARTS = ("vae", "text_encoder", "text_encoder_2", "text_encoder_3", "tokenizer",
                 "tokenizer_2", "tokenizer_3")
ENCODE_BATCH = 32  # pairs per VAE / text encoder call while caching


@dataclass(frozen=True)
class Preprocessing:
    resolution: int
    random_crop: bool
    random_flip: bool
    seed: int
    text_tokens: int | None = None  # sd3/flux: T5 tokens per caption (None: the pipeline's)

    def text_options(self) -> dict:
        """What `encode_prompt` is given besides the prompts."""
        return {} if self.text_tokens is None else {"max_sequence_length": self.text_tokens}


@dataclass
class CachedBatch:
    """A batch of pairs ready for the UNet. `latents` is [B, 2, C, H, W], winner first."""

    latents: torch.Tensor
    text: torch.Tensor  # [B, L, D]
    pooled: torch.Tensor | None = None  # SDXL, SD3, FLUX: [B, D2]
    time_ids: torch.Tensor | None = None  # SDXL: [B, 6]
    liked: torch.Tensor | None = None  # KTO: [B, 2], each image liked (True) or disliked


# the T5 tokens per caption SD3's and FLUX's pipelines encode when not told
# (`max_sequence_length` of their `encode_prompt`)
DEFAULT_T5_TOKENS = {"sd3": 256, "flux": 512}
_NPY_HEADER = 128  # numpy's .npy header for these arrays


def _config(model: str, part: str) -> dict | None:
    from models.meta import local_file

    found = local_file(model, f"{part}/config.json") or \
        local_file(model, f"{part}/tokenizer_config.json")
    return json.loads(found.read_text()) if found else None


def text_shape(model: str, kind: str, prep: Preprocessing) -> tuple[tuple, tuple | None] | None:
    """(the cached text embedding's shape per caption, the pooled one's or None), read from
    the model's config files as `encode_prompts` will produce them; None when they are
    not on this machine."""
    from models.loading import denoiser_part

    denoiser = _config(model, denoiser_part(kind))
    clip = _config(model, "tokenizer")
    if denoiser is None or clip is None:
        return None
    if kind in ("sd", "sdxl"):
        pooled = _config(model, "text_encoder_2") if kind == "sdxl" else None
        if kind == "sdxl" and pooled is None:
            return None
        return ((clip["model_max_length"], denoiser["cross_attention_dim"]),
                None if pooled is None else (pooled["projection_dim"],))
    t5 = prep.text_tokens or DEFAULT_T5_TOKENS[kind]
    tokens = t5 if kind == "flux" else clip["model_max_length"] + t5
    return ((tokens, denoiser["joint_attention_dim"]), (denoiser["pooled_projection_dim"],))


def cache_bytes(model: str, kind: str, pairs: int, captions: int,
                prep: Preprocessing) -> int | None:
    """The bytes a cache of `pairs` pairs over `captions` distinct captions takes on disk
    (as `build` writes it: 16-bit latents of both images, their mirrored copy under
    random_flip, a text row per caption plus the empty caption); None where the model's
    config files are not on this machine."""
    vae, shapes = _config(model, "vae"), text_shape(model, kind, prep)
    if vae is None or shapes is None:
        return None
    side = prep.resolution // 2 ** (len(vae["block_out_channels"]) - 1)
    latents = pairs * 2 * vae["latent_channels"] * side * side * 2
    text, pooled = shapes
    total = latents * (2 if prep.random_flip else 1) + pairs * 8  # + caption_index
    total += (captions + 1) * 2 * math.prod(text)
    if pooled is not None:
        total += (captions + 1) * 2 * math.prod(pooled)
    if kind == "sdxl":
        total += pairs * 6 * 4  # time_ids, fp32
    files = 3 + bool(prep.random_flip) + (pooled is not None) + (kind == "sdxl")
    return total + files * _NPY_HEADER


def prepare_pair(
    preferred: Image.Image, rejected: Image.Image, prep: Preprocessing, index: int
) -> tuple[np.ndarray, list[float]]:
    """Both images as one [2, 3, R, R] array in [-1, 1], and SDXL's time ids for the pair.

    The rejected image is first resized to the preferred one's size; then both get the same
    resize (shortest side to R) and crop, drawn from the seed and the pair's index. Flips
    are the trainer's, per step (`mirrored`).
    """
    rng = random.Random(prep.seed * 1_000_003 + index)
    if rejected.size != preferred.size:
        rejected = rejected.resize(preferred.size, Image.BICUBIC)
    width, height = preferred.size
    r = prep.resolution
    scale = r / min(width, height)
    size = (max(r, round(width * scale)), max(r, round(height * scale)))
    images = [im if im.size == size else im.resize(size, Image.BICUBIC)
              for im in (preferred, rejected)]
    if prep.random_crop:
        top, left = rng.randint(0, size[1] - r), rng.randint(0, size[0] - r)
    else:
        top, left = (size[1] - r) // 2, (size[0] - r) // 2
    arrays = []
    for image in images:
        image = image.crop((left, top, left + r, top + r))
        arrays.append(np.asarray(image, dtype=np.float32).transpose(2, 0, 1) / 127.5 - 1.0)
    return np.stack(arrays), [height, width, top, left, r, r]


def mirrored(pixels: np.ndarray) -> np.ndarray:
    """Pixels [..., H, W] flipped left to right (both images of a pair together)."""
    return np.ascontiguousarray(pixels[..., ::-1])


def data_fingerprint(pairs) -> str:
    """A hash of the pairs in order: their captions, sources and image ids."""
    digest = hashlib.sha256()
    for index in range(len(pairs)):
        caption, prov = pairs.describe(index)
        digest.update(json.dumps([caption, prov.source, prov.ranking_id, prov.preferred_uid,
                                  prov.rejected_uid]).encode())
    return digest.hexdigest()


def cache_key(model: dict, data: str, prep: Preprocessing) -> str:
    settings = {k: v for k, v in prep.__dict__.items() if v is not None}  # keys as before
    text = json.dumps({"format": FORMAT, "model": model, "data": data, "prep": settings},
                      sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@torch.no_grad()
def encode_prompts(pipeline, kind: str, prompts: list[str],
                   options: dict | None = None) -> tuple[torch.Tensor, ...]:
    """(embeddings, pooled or None) as the pipeline itself conditions on `prompts`;
    `options`: `Preprocessing.text_options`."""
    device, options = pipeline.device, options or {}
    if kind == "flux":
        embeds, pooled, _ = pipeline.encode_prompt(prompts, None, device=device, **options)
        return embeds.float().cpu(), pooled.float().cpu()
    if kind in ("sdxl", "sd3"):
        more = (None, None) if kind == "sd3" else ()  # prompt_2, prompt_3 as `prompts`
        embeds, _, pooled, _ = pipeline.encode_prompt(
            prompts, *more, device=device, num_images_per_prompt=1,
            do_classifier_free_guidance=False, **options)
        return embeds.float().cpu(), pooled.float().cpu()
    embeds, _ = pipeline.encode_prompt(prompts, device, 1, False)
    return embeds.float().cpu(), None


@torch.no_grad()
def encode_empty(pipeline, kind: str,
                 options: dict | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The unconditional embedding the pipeline uses for classifier-free guidance (FLUX,
    which has none: the empty prompt's)."""
    device, options = pipeline.device, options or {}
    if kind == "flux":
        embeds, pooled = encode_prompts(pipeline, kind, [""], options)
        return embeds[0], pooled[0]
    if kind in ("sdxl", "sd3"):
        more = (None, None) if kind == "sd3" else ()
        _, negative, _, negative_pooled = pipeline.encode_prompt(
            "x", *more, device=device, num_images_per_prompt=1,
            do_classifier_free_guidance=True, **options)
        return negative[0].float().cpu(), negative_pooled[0].float().cpu()
    _, negative = pipeline.encode_prompt("x", device, 1, True)
    return negative[0].float().cpu(), None


@torch.no_grad()
def _encode_latents(vae, pixels: np.ndarray) -> np.ndarray:
    """[N, 3, R, R] pixels -> scaled latents, as the pipeline's VAE expects them."""
    images = torch.from_numpy(pixels).to(vae.device, vae.dtype)
    latents = vae.encode(images).latent_dist.mean
    shift = getattr(vae.config, "shift_factor", None) or 0.0
    return ((latents.float() - shift) * vae.config.scaling_factor).cpu().numpy()


class DamagedCache(TrainError):
    """A cache folder that cannot be read as it was written (a truncated or missing file):
    the trainer rebuilds it; its message, for anyone else, says how."""

    def __init__(self, directory: Path, reason: str):
        super().__init__(f"cache {directory} is damaged ({reason}): delete that folder and "
                         "the next run rebuilds it")
        self.reason = reason


def _damage(error: Exception) -> str:
    """What is wrong with a cache file, in a few words."""
    if isinstance(error, FileNotFoundError):
        return f"{Path(error.filename).name} is missing"
    if isinstance(error, json.JSONDecodeError):
        return "meta.json is not valid JSON"
    return str(error).splitlines()[0] if str(error) else type(error).__name__


class PairCache:
    """A cache folder, memory-mapped: fetch any batch of pairs by index."""

    def __init__(self, directory: Path):
        try:
            self._open(directory)
        except (OSError, ValueError, KeyError, EOFError) as error:
            raise DamagedCache(directory, _damage(error)) from None

    def _open(self, directory: Path) -> None:
        """Open every file and check their sizes agree with meta.json (a ValueError if not)."""
        self.directory = directory
        self.meta = json.loads((directory / "meta.json").read_text())
        self.latents = np.load(directory / "latents.npy", mmap_mode="r")
        self.caption_index = np.load(directory / "caption_index.npy", mmap_mode="r")
        self.text = np.load(directory / "text.npy", mmap_mode="r")  # 16-bit, on disk
        pooled = directory / "pooled.npy"
        self.pooled = np.load(pooled, mmap_mode="r") if pooled.exists() else None
        time_ids = directory / "time_ids.npy"
        self.time_ids = np.load(time_ids, mmap_mode="r") if time_ids.exists() else None
        self.empty_text = _rows(self.text, [0])[0]  # the unconditional caption, row 0
        self.empty_pooled = None if self.pooled is None else _rows(self.pooled, [0])[0]
        flipped = directory / "flipped.npy"
        self.flipped = np.load(flipped, mmap_mode="r") if flipped.exists() else None
        pairs = self.meta["pairs"]
        if not len(self.latents) == len(self.caption_index) == pairs:
            raise ValueError(f"{len(self.latents)} latents for {pairs} pairs")
        if self.flipped is not None and self.flipped.shape != self.latents.shape:
            raise ValueError("flipped.npy and latents.npy differ in shape")

    def __len__(self) -> int:
        return len(self.caption_index)

    def batch(self, indices: list[int], device: torch.device | str,
              flips: np.ndarray | None = None) -> CachedBatch:
        """Pairs `indices`; where `flips` is true, both of that pair's images mirrored."""
        order = np.asarray(indices)
        captions = self.caption_index[order]
        latents = self.latents[order].astype(np.float32)
        if flips is not None and flips.any():
            if self.flipped is None:
                raise ValueError(f"{self.directory} was built without random_flip")
            latents[flips] = self.flipped[order[flips]]
        return CachedBatch(
            latents=torch.from_numpy(latents).to(device),
            text=_rows(self.text, captions).to(device),
            pooled=None if self.pooled is None else _rows(self.pooled, captions).to(device),
            time_ids=None if self.time_ids is None else _rows(self.time_ids, order).to(device),
        )


def _rows(array: np.ndarray, rows) -> torch.Tensor:
    """Rows of a memory-mapped array, read from disk now, as fp32. The cache's text
    embeddings grow with the prompts (FLUX: 4 MB a caption in 16-bit) and every process
    of a launch opens them, so only a batch's rows are ever in memory."""
    return torch.from_numpy(np.asarray(array[np.asarray(rows)], dtype=np.float32))


def build(pairs, pipeline, kind: str, prep: Preprocessing, directory: Path,
          workers: int = 0) -> PairCache:
    """Encode every pair of `pairs` once into `directory` (atomically) and open it."""
    _remove_killed_builds(directory)
    temp = directory.with_name(f"{directory.name}.tmp-{socket.gethostname()}-{os.getpid()}")
    shutil.rmtree(temp, ignore_errors=True)
    temp.mkdir(parents=True)
    captions = sorted({pairs.describe(i)[0] for i in range(len(pairs))})
    row_of = {caption: row + 1 for row, caption in enumerate(captions)}  # row 0: empty
    empty, empty_pooled = encode_empty(pipeline, kind, prep.text_options())
    # written a chunk at a time into 16-bit files: the whole text cache never sits in RAM
    text = _open_rows(temp / "text.npy", len(captions) + 1, empty)
    pooled = None if empty_pooled is None else \
        _open_rows(temp / "pooled.npy", len(captions) + 1, empty_pooled)
    text[0] = empty.numpy()
    if pooled is not None:
        pooled[0] = empty_pooled.numpy()
    for start in range(0, len(captions), ENCODE_BATCH):
        embeds, pool = encode_prompts(pipeline, kind, captions[start:start + ENCODE_BATCH],
                                      prep.text_options())
        text[1 + start:1 + start + len(embeds)] = embeds.numpy()
        if pooled is not None:
            pooled[1 + start:1 + start + len(pool)] = pool.numpy()
    for array in (text, pooled):
        if array is not None:
            array.flush()
    del text, pooled

    loader = torch.utils.data.DataLoader(
        _Prepared(pairs, prep), batch_size=ENCODE_BATCH, num_workers=workers,
        collate_fn=_collate,
    )
    latents = flipped = time_ids = None
    caption_index = np.zeros(len(pairs), dtype=np.int64)
    done = 0
    for pixels, ids, batch_captions in tqdm(loader, desc="caching latents", unit="batch"):
        n = len(ids)
        encoded = _encode_latents(pipeline.vae, pixels.reshape(-1, *pixels.shape[2:]))
        encoded = encoded.reshape(n, 2, *encoded.shape[1:])
        if latents is None:
            shape = (len(pairs), *encoded.shape[1:])
            latents = np.lib.format.open_memmap(temp / "latents.npy", mode="w+",
                                                dtype=np.float16, shape=shape)
            if prep.random_flip:
                flipped = np.lib.format.open_memmap(temp / "flipped.npy", mode="w+",
                                                    dtype=np.float16, shape=shape)
            time_ids = np.zeros((len(pairs), 6), dtype=np.float32)
        latents[done:done + n] = encoded
        if flipped is not None:
            mirror = _encode_latents(pipeline.vae, mirrored(pixels).reshape(-1, *pixels.shape[2:]))
            flipped[done:done + n] = mirror.reshape(n, 2, *mirror.shape[1:])
        time_ids[done:done + n] = ids
        caption_index[done:done + n] = [row_of[c] for c in batch_captions]
        done += n
    for array in (latents, flipped):
        if array is not None:
            array.flush()
    del latents, flipped
    np.save(temp / "caption_index.npy", caption_index)
    if kind == "sdxl":
        np.save(temp / "time_ids.npy", time_ids)
    meta = {"format": FORMAT, "pairs": len(pairs), "captions": len(captions), "kind": kind,
            "prep": prep.__dict__}
    (temp / "meta.json").write_text(json.dumps(meta, indent=1))
    shutil.rmtree(directory, ignore_errors=True)
    temp.rename(directory)
    return PairCache(directory)


def _remove_killed_builds(directory: Path) -> None:
    """Delete the temporary folders of builds of `directory` that were killed on this
    machine (their process is gone): each can hold the whole text cache. A build on
    another machine of a shared file system is left alone."""
    prefix = f"{directory.name}.tmp-{socket.gethostname()}-"
    for temp in directory.parent.glob(f"{directory.name}.tmp-*"):
        pid = temp.name.removeprefix(prefix)
        if temp.name.startswith(prefix) and pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(temp, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _open_rows(path: Path, rows: int, first: torch.Tensor) -> np.ndarray:
    """A new 16-bit .npy of `rows` rows shaped like `first`, memory-mapped to fill."""
    return np.lib.format.open_memmap(path, mode="w+", dtype=np.float16,
                                     shape=(rows, *first.shape))


class _Prepared(torch.utils.data.Dataset):
    """Decoded, preprocessed pairs (in DataLoader workers when asked)."""

    def __init__(self, pairs, prep: Preprocessing):
        self.pairs, self.prep = pairs, prep

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int):
        pair = self.pairs[index]
        pixels, time_ids = prepare_pair(pair.preferred, pair.rejected, self.prep, index)
        return pixels, time_ids, pair.caption


def _collate(items):
    pixels, time_ids, captions = zip(*items, strict=True)
    return np.stack(pixels), np.asarray(time_ids, dtype=np.float32), list(captions)
