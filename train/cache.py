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
and the pooled CLIP embedding. The LLM-encoded kinds store what their pipelines pass the
transformer: FLUX.2's Qwen3 (or Mistral) hidden states of three layers, padded to
`text_tokens` as the pipeline pads them; Qwen-Image's and Z-Image's captions vary in
length (the transformer sees only a caption's own tokens), so each row is stored with its
length, zero-padded to the longest caption of its chunk. Latents are stored as each
transformer reads them before packing: FLUX.2's 2x2-patchified and normalised by the
VAE's batch-norm statistics, Qwen-Image's normalised by its VAE's per-channel mean and
std (the frame axis of its video VAE dropped).

A cache folder is named by a hash of the encoders' files (their contents, not their
path) and the preprocessing settings that change a pixel or an embedding. It holds chunks
of `CHUNK` pairs (`pairs/`) and of `CHUNK` captions (`text/`), each named by a hash of
the pairs or captions it holds, written to a temporary folder and renamed when complete.
A run encodes only what no complete chunk holds yet: a killed build resumes at its first
unfinished chunk, ten new votes encode ten pairs, and the processes of a launch each
encode their `Share` of the chunks. On a file system the processes share, they share
all the work; where each machine has its own disk, each machine builds its own copy.
"""

from __future__ import annotations

import functools
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

from cli.errors import DamagedCache

FORMAT = 3  # 3: chunks keyed by content; 2: the mirrored copy under random_flip
ENCODER_PARTS = ("vae", "text_encoder", "text_encoder_2", "text_encoder_3", "tokenizer",
                 "tokenizer_2", "tokenizer_3")
ENCODE_BATCH = 32  # pairs per VAE / text encoder call while caching
CHUNK = 256  # pairs (or captions) written together: the unit of sharing and of resuming


@dataclass(frozen=True)
class Preprocessing:
    resolution: int
    random_crop: bool
    random_flip: bool
    seed: int
    text_tokens: int | None = None  # flow kinds: T5/LLM tokens per caption (None: pipeline's)

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
    text_lengths: torch.Tensor | None = None  # Qwen-Image, Z-Image: [B] tokens of each row
    shares: torch.Tensor | None = None  # DPO: [B], the chance each preferred image is better


@dataclass
class Texts:
    """Captions as a pipeline conditions on them: `embeds` [N, L, D], zero-padded past each
    caption's `lengths` for the kinds whose captions vary in length
    (`VARIABLE_TEXT_KINDS`), and the pooled embeddings [N, D2] of the kinds with one."""

    embeds: torch.Tensor
    pooled: torch.Tensor | None = None
    lengths: torch.Tensor | None = None


# the T5 or LLM tokens per caption the flow kinds' pipelines encode when not told
# (`max_sequence_length` of their `encode_prompt`; Qwen-Image and Z-Image: at most)
DEFAULT_TEXT_TOKENS = {"sd3": 256, "flux": 512, "flux2": 512, "qwenimage": 512,
                       "zimage": 512}
VARIABLE_TEXT_KINDS = ("qwenimage", "zimage")
# The unconditional caption prompt dropout swaps in: the one each pipeline guides against
# (Qwen-Image's model card uses the negative prompt " "; the others "").
EMPTY_CAPTION = {"qwenimage": " "}
_NPY_HEADER = 128  # numpy's .npy header for these arrays


def _config(model: str, part: str) -> dict | None:
    from models.meta import local_file

    found = local_file(model, f"{part}/config.json") or \
        local_file(model, f"{part}/tokenizer_config.json")
    return json.loads(found.read_text()) if found else None


def text_shape(model: str, kind: str, prep: Preprocessing) -> tuple[tuple, tuple | None] | None:
    """(the cached text embedding's shape per caption, the pooled one's or None), read from
    the model's config files as `encode_prompts` will produce them (Qwen-Image, Z-Image:
    their longest); None when they are not on this machine."""
    from models.loading import denoiser_part

    denoiser = _config(model, denoiser_part(kind))
    clip = _config(model, "tokenizer")
    if denoiser is None or clip is None:
        return None  # (for the LLM-encoded kinds, "clip" is their tokenizer's config)
    if kind in ("sd", "sdxl"):
        pooled = _config(model, "text_encoder_2") if kind == "sdxl" else None
        if kind == "sdxl" and pooled is None:
            return None
        return ((clip["model_max_length"], denoiser["cross_attention_dim"]),
                None if pooled is None else (pooled["projection_dim"],))
    t5 = prep.text_tokens or DEFAULT_TEXT_TOKENS[kind]
    if kind == "zimage":
        return (t5, denoiser["cap_feat_dim"]), None
    if kind in ("flux2", "qwenimage"):
        return (t5, denoiser["joint_attention_dim"]), None
    tokens = t5 if kind == "flux" else clip["model_max_length"] + t5
    return ((tokens, denoiser["joint_attention_dim"]), (denoiser["pooled_projection_dim"],))


def cache_bytes(model: str, kind: str, pairs: int, captions: int,
                prep: Preprocessing) -> int | None:
    """The bytes a cache of `pairs` pairs over `captions` distinct captions takes on disk
    (as `encode` writes it: 16-bit latents of both images, their mirrored copy under
    random_flip, a 16-bit text row per caption plus the empty caption's, in chunks; the
    captions' own text, in each text chunk's keys.json, is not counted); None where the
    model's config files are not on this machine."""
    vae, shapes = _config(model, "vae"), text_shape(model, kind, prep)
    if vae is None or shapes is None:
        return None
    latents = pairs * 2 * math.prod(latent_shape(vae, kind, prep.resolution)) * 2
    text, pooled = shapes
    total = latents * (2 if prep.random_flip else 1) + pairs * 36  # + keys.json
    total += (captions + 1) * 2 * math.prod(text)
    if kind in VARIABLE_TEXT_KINDS:
        total += (captions + 1) * 4  # lengths, int32
    if pooled is not None:
        total += (captions + 1) * 2 * math.prod(pooled)
    if kind == "sdxl":
        total += pairs * 6 * 4  # time_ids, fp32
    pair_files = 1 + bool(prep.random_flip) + (kind == "sdxl")
    text_files = 1 + (pooled is not None) + (kind in VARIABLE_TEXT_KINDS)
    files = (math.ceil(pairs / CHUNK) * pair_files
             + (math.ceil(captions / CHUNK) + 1) * text_files)
    return total + files * _NPY_HEADER


def latent_shape(vae: dict, kind: str, resolution: int) -> tuple[int, int, int]:
    """[C, H, W] of one image's cached latents at `resolution`, from the VAE's config."""
    if kind == "qwenimage":  # a video VAE: 2**len(temperal_downsample) smaller
        side = resolution // 2 ** len(vae["temperal_downsample"])
        return vae["z_dim"], side, side
    side = resolution // 2 ** (len(vae["block_out_channels"]) - 1)
    if kind == "flux2":  # 2x2 patches as channels
        return 4 * vae["latent_channels"], side // 2, side // 2
    return vae["latent_channels"], side, side


def prepare_pair(
    preferred: Image.Image, rejected: Image.Image, prep: Preprocessing, key: int | str
) -> tuple[np.ndarray, list[float]]:
    """Both images as one [2, 3, R, R] array in [-1, 1], and SDXL's time ids for the pair.

    The rejected image is first resized to the preferred one's size; then both get the same
    resize (shortest side to R) and crop, drawn from the seed and the pair's `key` (its
    `pair_key`: the same pair gets the same crop in any data set). Flips are the
    trainer's, per step (`mirrored`).
    """
    rng = random.Random(f"{prep.seed}:{key}")
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


def pair_key(pairs, index: int) -> str:
    """What identifies a pair's cached latents: its caption, source and image ids."""
    caption, prov = pairs.describe(index)
    text = json.dumps([caption, prov.source, prov.ranking_id, prov.preferred_uid,
                       prov.rejected_uid])
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def cache_key(model: dict, prep: Preprocessing) -> str:
    """The cache folder's name: the encoders' fingerprint and the preprocessing that changes
    a latent or an embedding (the seed only draws random crops)."""
    settings = {k: v for k, v in prep.__dict__.items()
                if v is not None and (k != "seed" or prep.random_crop)}
    text = json.dumps({"format": FORMAT, "model": model, "prep": settings}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _padded(rows: list[torch.Tensor], length: int) -> torch.Tensor:
    """[L_i, D] rows zero-padded to [N, length, D]."""
    out = rows[0].new_zeros(len(rows), length, rows[0].shape[-1])
    for i, row in enumerate(rows):
        out[i, :len(row)] = row
    return out


@torch.no_grad()
def encode_prompts(pipeline, kind: str, prompts: list[str],
                   options: dict | None = None) -> Texts:
    """`prompts` as the pipeline itself conditions on them; `options`:
    `Preprocessing.text_options`."""
    device, options = pipeline.device, options or {}
    if kind == "flux":
        embeds, pooled, _ = pipeline.encode_prompt(prompts, None, device=device, **options)
        return Texts(embeds.float().cpu(), pooled.float().cpu())
    if kind == "flux2":
        embeds, _ = pipeline.encode_prompt(prompt=prompts, device=device, **options)
        return Texts(embeds.float().cpu())
    if kind == "qwenimage":
        embeds, mask = pipeline.encode_prompt(prompt=prompts, device=device, **options)
        lengths = (mask.sum(1) if mask is not None
                   else torch.full((len(prompts),), embeds.shape[1]))
        return Texts(embeds.float().cpu(), lengths=lengths.long().cpu())
    if kind == "zimage":
        rows, _ = pipeline.encode_prompt(prompt=prompts, device=device,
                                         do_classifier_free_guidance=False, **options)
        lengths = torch.tensor([len(row) for row in rows])
        return Texts(_padded([r.float().cpu() for r in rows], int(lengths.max())),
                     lengths=lengths)
    if kind in ("sdxl", "sd3"):
        more = (None, None) if kind == "sd3" else ()  # prompt_2, prompt_3 as `prompts`
        embeds, _, pooled, _ = pipeline.encode_prompt(
            prompts, *more, device=device, num_images_per_prompt=1,
            do_classifier_free_guidance=False, **options)
        return Texts(embeds.float().cpu(), pooled.float().cpu())
    embeds, _ = pipeline.encode_prompt(prompts, device, 1, False)
    return Texts(embeds.float().cpu())


@torch.no_grad()
def encode_empty(pipeline, kind: str, options: dict | None = None) -> Texts:
    """The unconditional embedding (one row) the pipeline uses for classifier-free
    guidance; for the transformers that guide against a caption, or not at all (FLUX.1),
    that caption's (`EMPTY_CAPTION`)."""
    device, options = pipeline.device, options or {}
    if kind in ("sdxl", "sd3"):
        more = (None, None) if kind == "sd3" else ()
        _, negative, _, negative_pooled = pipeline.encode_prompt(
            "x", *more, device=device, num_images_per_prompt=1,
            do_classifier_free_guidance=True, **options)
        return Texts(negative[:1].float().cpu(), negative_pooled[:1].float().cpu())
    if kind == "sd":
        _, negative = pipeline.encode_prompt("x", device, 1, True)
        return Texts(negative[:1].float().cpu())
    return encode_prompts(pipeline, kind, [EMPTY_CAPTION.get(kind, "")], options)


def concat(parts: list[Texts]) -> Texts:
    """Texts of several encoder calls as one (rows of varying length padded alike)."""
    length = max(part.embeds.shape[1] for part in parts)
    embeds = [torch.nn.functional.pad(p.embeds, (0, 0, 0, length - p.embeds.shape[1]))
              for p in parts]
    return Texts(torch.cat(embeds),
                 None if parts[0].pooled is None else torch.cat([p.pooled for p in parts]),
                 None if parts[0].lengths is None else torch.cat([p.lengths for p in parts]))


@torch.no_grad()
def _encode_latents(vae, kind: str, pixels: np.ndarray, prep: Preprocessing) -> np.ndarray:
    """[N, 2, 3, R, R] pixels of N pairs -> their latents [N, 2, C, h, w] (or N single
    images [N, 1, ...] -> [N, 1, ...]), normalised as the
    kind's pipeline and training script normalise them, `vae_batch` images per call."""
    images = torch.from_numpy(pixels.reshape(-1, *pixels.shape[2:]))
    step = vae_batch(prep.resolution)
    latents = []
    for i in range(0, len(images), step):
        batch = images[i:i + step].to(vae.device, vae.dtype)
        if kind == "qwenimage":  # a video VAE: one frame
            batch = batch[:, :, None]
        latents.append(vae.encode(batch).latent_dist.mean.float())
    latents = torch.cat(latents)
    if kind == "flux2":  # 2x2 patches as channels, as its pipeline's _patchify_latents
        n, c, h, w = latents.shape
        latents = latents.view(n, c, h // 2, 2, w // 2, 2).permute(0, 1, 3, 5, 2, 4).reshape(
            n, c * 4, h // 2, w // 2)
        mean = vae.bn.running_mean.view(1, -1, 1, 1).float()
        std = torch.sqrt(vae.bn.running_var.view(1, -1, 1, 1).float()
                         + vae.config.batch_norm_eps)
        latents = (latents - mean) / std
    elif kind == "qwenimage":
        shape = (1, vae.config.z_dim, 1, 1, 1)
        mean = torch.tensor(vae.config.latents_mean).view(shape).to(latents.device)
        std = torch.tensor(vae.config.latents_std).view(shape).to(latents.device)
        latents = ((latents - mean) / std)[:, :, 0]
    else:
        shift = getattr(vae.config, "shift_factor", None) or 0.0
        latents = (latents - shift) * vae.config.scaling_factor
    latents = latents.cpu().numpy()
    return latents.reshape(len(pixels), pixels.shape[1], *latents.shape[1:])


def image_latents(vae, kind: str, images: list[Image.Image]) -> torch.Tensor:
    """Generated images, square at the training resolution, as the latents [N, C, h, w]
    training reads (normalised as `_encode_latents` normalises a pair's)."""
    pixels = np.stack([np.asarray(image.convert("RGB"), dtype=np.float32).transpose(2, 0, 1)
                       / 127.5 - 1.0 for image in images])[:, None]
    prep = Preprocessing(resolution=images[0].width, random_crop=False, random_flip=False,
                         seed=0)
    return torch.from_numpy(_encode_latents(vae, kind, pixels, prep)[:, 0])


def _damage(error: Exception) -> str:
    """What is wrong with a cache file, in a few words."""
    if isinstance(error, FileNotFoundError):
        return f"{Path(error.filename).name} is missing"
    if isinstance(error, json.JSONDecodeError):
        return "meta.json is not valid JSON"
    return str(error).splitlines()[0] if str(error) else type(error).__name__


def _chunks(root: Path, part: str) -> dict[str, tuple[str, int]]:
    """key -> (chunk name, row) over the complete chunks of `part` ("pairs" or "text")."""
    found: dict[str, tuple[str, int]] = {}
    folder = root / part
    for chunk in sorted(folder.iterdir()) if folder.is_dir() else []:
        if "." in chunk.name:  # a build's temporary folder
            continue
        try:
            keys = json.loads((chunk / "keys.json").read_text())
        except (OSError, ValueError):
            continue  # damaged: its keys count as missing, and are encoded again
        for row, key in enumerate(keys):
            found.setdefault(key, (chunk.name, row))
    return found


def _open_chunk(folder: Path) -> dict[str, np.ndarray]:
    """A chunk's arrays, memory-mapped (on the training loop's path: no checks)."""
    return {path.stem: np.load(path, mmap_mode="r") for path in folder.glob("*.npy")}


def _check_chunk(folder: Path) -> None:
    """Refuse (`DamagedCache`, naming the chunk) a chunk whose arrays are missing or do not
    hold a row per key."""
    try:
        rows = len(json.loads((folder / "keys.json").read_text()))
        arrays = _open_chunk(folder)
        needed = "latents" if folder.parent.name == "pairs" else "text"
        if needed not in arrays:
            raise FileNotFoundError(2, "missing", str(folder / f"{needed}.npy"))
        for name, array in arrays.items():
            if len(array) != rows:
                raise ValueError(f"{folder.name}/{name}.npy has {len(array)} rows for "
                                 f"{rows} keys")
    except (OSError, ValueError, EOFError) as error:
        raise DamagedCache(folder, _damage(error)) from None


class PairCache:
    """The cached pairs of one run, memory-mapped: fetch any batch of pairs by index.

    `keys` are the run's pairs' `pair_key`s and `captions` their captions, in the run's
    order; the chunks holding them are opened as batches need them (a few at a time)."""

    def __init__(self, directory: Path, keys: list[str], captions: list[str]):
        self.directory, self.keys, self.captions = directory, keys, captions
        self.parts = {}
        for part, wanted in (("pairs", keys), ("text", captions)):
            at = _chunks(directory, part)
            lacking = sum(key not in at for key in wanted)
            if lacking:
                raise DamagedCache(directory, f"{lacking} of its {part} are not cached")
            names = sorted({at[key][0] for key in wanted})
            number = {name: i for i, name in enumerate(names)}
            chunk = np.array([number[at[key][0]] for key in wanted], dtype=np.int32)
            row = np.array([at[key][1] for key in wanted], dtype=np.int32)
            folders = [directory / part / name for name in names]
            for folder in folders:
                _check_chunk(folder)
            self.parts[part] = (folders, chunk, row)
        _check_chunk(directory / "empty")
        empty = _open_chunk(directory / "empty")
        self.empty_text = torch.from_numpy(np.asarray(empty["text"][0], dtype=np.float32))
        self.empty_pooled = (torch.from_numpy(np.asarray(empty["pooled"][0], dtype=np.float32))
                             if "pooled" in empty else None)
        self.empty_length = int(empty["lengths"][0]) if "lengths" in empty else None
        self._opened = functools.lru_cache(maxsize=64)(_open_chunk)

    def __len__(self) -> int:
        return len(self.parts["pairs"][1])

    def rows(self, name: str, indices) -> np.ndarray | None:
        """Array `name` ("latents", "flipped", "time_ids"; the captions' "text", "pooled",
        "lengths") of pairs `indices`, read from their chunks now, as fp32 (lengths as
        int64; variable-length text padded to the longest of these); None if not cached."""
        order = np.asarray(indices)
        text = name in ("text", "pooled", "lengths")
        folders, chunk, row = self.parts["text" if text else "pairs"]
        arrays = [self._opened(folders[c]) for c in chunk[order]]
        if name not in arrays[0]:
            return None
        rows = [a[name][r] for a, r in zip(arrays, row[order], strict=True)]
        if name == "lengths":
            return np.asarray(rows, dtype=np.int64)
        if name == "text" and "lengths" in arrays[0]:  # chunks padded to their own longest
            length = max(int(a["lengths"][r]) for a, r in zip(arrays, row[order],
                                                               strict=True))
            out = np.zeros((len(rows), length, rows[0].shape[-1]), dtype=np.float32)
            for i, embeds in enumerate(rows):
                used = min(length, len(embeds))
                out[i, :used] = embeds[:used]
            return out
        return np.stack(rows).astype(np.float32)

    def batch(self, indices: list[int], device: torch.device | str,
              flips: np.ndarray | None = None) -> CachedBatch:
        """Pairs `indices`; where `flips` is true, both of that pair's images mirrored."""
        order = np.asarray(indices)
        latents = self.rows("latents", order)
        if flips is not None and flips.any():
            mirror = self.rows("flipped", order[flips])
            if mirror is None:
                raise ValueError(f"{self.directory} was built without random_flip")
            latents[flips] = mirror
        pooled, time_ids = self.rows("pooled", order), self.rows("time_ids", order)
        lengths = self.rows("lengths", order)
        return CachedBatch(
            latents=torch.from_numpy(latents).to(device),
            text=torch.from_numpy(self.rows("text", order)).to(device),
            pooled=None if pooled is None else torch.from_numpy(pooled).to(device),
            time_ids=None if time_ids is None else torch.from_numpy(time_ids).to(device),
            text_lengths=None if lengths is None else torch.from_numpy(lengths).to(device),
        )


# --- building ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Share:
    """The part of a build this process does: every `count`-th chunk from the `rank`-th.
    `count` is the processes that see one cache folder: all of a launch's on a shared
    file system, one machine's where each has its own disk."""

    rank: int = 0
    count: int = 1

    def mine(self, chunks: list) -> list:
        return chunks[self.rank::self.count]


@dataclass
class Todo:
    """What a cache folder lacks for a run: captions and pairs (indices), in chunks."""

    empty: bool  # the unconditional embedding
    text: list[list[str]]
    pairs: list[list[int]]

    def __len__(self) -> int:
        return sum(len(chunk) for chunk in self.pairs)


def _split(items: list) -> list[list]:
    return [items[start:start + CHUNK] for start in range(0, len(items), CHUNK)]


def missing(directory: Path, keys: list[str], captions: list[str]) -> Todo:
    """What `directory` lacks for pairs `keys` with `captions`. Every process of a launch
    computes it before any of them writes, so all split the work the same way."""
    text_at, pairs_at = _chunks(directory, "text"), _chunks(directory, "pairs")
    seen: set[str] = set()
    todo = []
    for index, key in enumerate(keys):
        if key not in pairs_at and key not in seen:
            seen.add(key)
            todo.append(index)
    return Todo(empty=not (directory / "empty").is_dir(),
                text=_split(sorted({c for c in captions if c not in text_at})),
                pairs=_split(todo))


def _chunk_name(keys: list[str]) -> str:
    return hashlib.sha256("\n".join(keys).encode()).hexdigest()[:16]


def _temp_of(final: Path) -> Path:
    return final.with_name(f"{final.name}.tmp-{socket.gethostname()}-{os.getpid()}")


def _finish(temp: Path, final: Path, keys: list[str]) -> None:
    """Make a written chunk complete: its keys last, then one rename."""
    (temp / "keys.json").write_text(json.dumps(keys))
    shutil.rmtree(final, ignore_errors=True)  # a damaged copy: complete ones are not redone
    try:
        temp.rename(final)
    except OSError:  # another process completed the same chunk in between: same content
        shutil.rmtree(temp, ignore_errors=True)


def _new_chunk(final: Path) -> Path:
    temp = _temp_of(final)
    shutil.rmtree(temp, ignore_errors=True)
    temp.mkdir(parents=True)
    return temp


def _write_text(directory: Path, name: str, captions: list[str], texts: Texts) -> None:
    final = directory / "text" / name if name != "empty" else directory / "empty"
    temp = _new_chunk(final)
    np.save(temp / "text.npy", texts.embeds.numpy().astype(np.float16))
    if texts.pooled is not None:
        np.save(temp / "pooled.npy", texts.pooled.numpy().astype(np.float16))
    if texts.lengths is not None:
        np.save(temp / "lengths.npy", texts.lengths.numpy().astype(np.int32))
    _finish(temp, final, captions)


def encode(todo: Todo, pairs, keys: list[str], pipeline, kind: str, prep: Preprocessing,
           directory: Path, share: Share = Share(), workers: int = 0,
           show_progress: bool = True) -> int:
    """Encode this process's share of `todo` into `directory`; the pairs it encoded."""
    _remove_killed_builds(directory)
    options = prep.text_options()
    if todo.empty and share.rank == 0:
        _write_text(directory, "empty", [""], encode_empty(pipeline, kind, options))
    for captions in share.mine(todo.text):
        parts = [encode_prompts(pipeline, kind, captions[i:i + ENCODE_BATCH], options)
                 for i in range(0, len(captions), ENCODE_BATCH)]
        _write_text(directory, _chunk_name(captions), captions, concat(parts))
    mine = share.mine(todo.pairs)
    batches = [chunk[i:i + ENCODE_BATCH] for chunk in mine
               for i in range(0, len(chunk), ENCODE_BATCH)]
    loader = torch.utils.data.DataLoader(
        _Prepared(pairs, keys, prep), batch_sampler=batches, num_workers=workers,
        collate_fn=_collate)
    finals = [directory / "pairs" / _chunk_name([keys[i] for i in chunk])
              for chunk in todo.pairs]
    bar = tqdm(total=len(todo), desc="caching latents", unit="pair", disable=not show_progress)
    chunks, writer = iter(zip(share.mine(finals), mine, strict=True)), None
    for pixels, time_ids in loader:
        if writer is None:
            writer = _PairWriter(*next(chunks), keys, kind, prep)
        writer.add(_encode_latents(pipeline.vae, kind, pixels, prep),
                   _encode_latents(pipeline.vae, kind, mirrored(pixels), prep)
                   if prep.random_flip else None, time_ids)
        if writer.full():
            writer.finish()
            writer = None
            bar.n = sum(len(c) for c, f in zip(todo.pairs, finals, strict=True) if f.is_dir())
            bar.refresh()
    bar.close()
    return sum(len(chunk) for chunk in mine)


class _PairWriter:
    """One chunk of pairs being written, straight into its memory-mapped files."""

    def __init__(self, final: Path, chunk: list[int], keys: list[str], kind: str,
                 prep: Preprocessing):
        self.final, self.keys = final, [keys[i] for i in chunk]
        self.temp = _new_chunk(final)
        self.kind, self.prep, self.done, self.arrays = kind, prep, 0, {}

    def _array(self, name: str, row_shape: tuple, dtype) -> np.ndarray:
        if name not in self.arrays:
            self.arrays[name] = np.lib.format.open_memmap(
                self.temp / f"{name}.npy", mode="w+", dtype=dtype,
                shape=(len(self.keys), *row_shape))
        return self.arrays[name]

    def add(self, latents: np.ndarray, flipped: np.ndarray | None, time_ids: np.ndarray):
        n, rows = len(time_ids), slice(self.done, self.done + len(time_ids))
        self._array("latents", latents.shape[1:], np.float16)[rows] = latents
        if flipped is not None:
            self._array("flipped", flipped.shape[1:], np.float16)[rows] = flipped
        if self.kind == "sdxl":
            self._array("time_ids", (6,), np.float32)[rows] = time_ids
        self.done += n

    def full(self) -> bool:
        return self.done == len(self.keys)

    def finish(self) -> None:
        for array in self.arrays.values():
            array.flush()
        self.arrays = {}
        _finish(self.temp, self.final, self.keys)


def vae_batch(resolution: int) -> int:
    """Images per VAE call while caching: 8 at 512 px (about 5 GB of activations in fp32),
    fewer as the pixels grow (2 at 1024 px), more below."""
    return max(1, 8 * 512**2 // resolution**2)


def _remove_killed_builds(directory: Path) -> None:
    """Delete the temporary chunk folders of builds that were killed on this machine (their
    process is gone). A build on another machine of a shared file system is left alone."""
    prefix = f".tmp-{socket.gethostname()}-"
    for temp in [*directory.glob("*/*.tmp-*"), *directory.glob("*.tmp-*")]:
        pid = temp.name.partition(prefix)[2]
        if prefix in temp.name and pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(temp, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


class _Prepared(torch.utils.data.Dataset):
    """Decoded, preprocessed pairs (in DataLoader workers when asked)."""

    def __init__(self, pairs, keys: list[str], prep: Preprocessing):
        self.pairs, self.keys, self.prep = pairs, keys, prep

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int):
        pair = self.pairs[index]
        return prepare_pair(pair.preferred, pair.rejected, self.prep, self.keys[index])


def _collate(items):
    pixels, time_ids = zip(*items, strict=True)
    return np.stack(pixels), np.asarray(time_ids, dtype=np.float32)
