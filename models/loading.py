"""Load a text-to-image pipeline by one name, as every command does (docs/ARCHITECTURE.md).

A name is `toy` (the bundled model), a local diffusers pipeline folder, a Hub id, a
LoRA folder written by `train` (its weights plus `base_model.json` naming the base), or
the run folder of `python -m rounds`, which stands for its newest finished round's model.
Its kind is read from the model's own files: `sd` (SD 1.x/2.x), `sdxl`, `sd3` (SD3 and
SD3.5), `flux` (FLUX.1), `flux2` (FLUX.2 [klein] and FLUX.2), `qwenimage` (Qwen-Image) or
`zimage` (Z-Image). The first two denoise with a UNet that predicts noise; the others are
rectified-flow transformers that predict a velocity (`FLOW_KINDS`).

`check(name)` answers, in a second and without loading weights, whether a name can be
loaded at all, so a command can refuse a wrong name before it does any work: a name that
looks like a path and is not there is a missing folder (never a Hub problem), and a Hub
id that is neither in the local Hugging Face cache nor reachable fails at once, with no
retries.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path

import torch

from cli.errors import ModelError
from models.toy import TOY_FLOW_NAME, TOY_NAME

TOY_DIR = Path(__file__).resolve().parent / "toy" / "pipeline"
TOY_FLOW_DIR = Path(__file__).resolve().parent / "toy" / "flow_pipeline"
BUNDLED = {TOY_NAME: (TOY_DIR, "python -m models.toy.train"),
           TOY_FLOW_NAME: (TOY_FLOW_DIR, "python -m models.toy.train_flow")}
LORA_WEIGHTS = "pytorch_lora_weights.safetensors"  # diffusers' save_lora_weights name
LORA_BASE_FILE = "base_model.json"  # {"base_model": "<name>"}, written beside it
# A model trained by `python -m rounds` holds ROUND_FILE, {"round": k, "run": "<run folder>"}
# (diffusers ignores the extra file); the run folder holds NEWEST_ROUND_FILE,
# {"model": "<folder>", "round": k}, naming the newest round whose training finished.
ROUND_FILE = "round.json"
NEWEST_ROUND_FILE = "newest-round.json"


KINDS = ("sd", "sdxl", "sd3", "flux", "flux2", "qwenimage", "zimage")
# rectified flow: x_t = (1 - t) x0 + t noise, velocity target
FLOW_KINDS = ("sd3", "flux", "flux2", "qwenimage", "zimage")
# The text-to-image pipeline classes of the transformer kinds; FLUX.2 [klein] and FLUX.2
# (dev) share one kind: the same transformer and latents, other text encoders.
TRANSFORMER_PIPELINES = {
    "StableDiffusion3Pipeline": "sd3", "FluxPipeline": "flux", "Flux2KleinPipeline": "flux2",
    "Flux2Pipeline": "flux2", "QwenImagePipeline": "qwenimage", "ZImagePipeline": "zimage",
}
FAMILIES = {"StableDiffusion3": "SD3", "Flux2": "FLUX.2", "Flux": "FLUX",
            "QwenImage": "Qwen-Image", "ZImage": "Z-Image"}  # class-name prefix: family


def denoiser_part(kind: str) -> str:
    """The pipeline component that denoises, and that training changes."""
    return "transformer" if kind in FLOW_KINDS else "unet"


@dataclass
class LoadedModel:
    """A ready pipeline and what it is. Hold `lock` while calling `pipeline`."""

    name: str
    pipeline: object  # a diffusers pipeline of `kind`'s class (`pipeline_class`)
    kind: str  # one of KINDS
    device: str
    dtype: torch.dtype
    round: int | None = None  # the round of `python -m rounds` that trained it, if one did
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def scheduler_name(self) -> str:
        """The sampler's class, and for flow-matching samplers the shift that places their
        steps (static, or computed from the image size at each call), as the store
        records it: what an image needs, beside seed, steps and guidance, to be made again."""
        scheduler = self.pipeline.scheduler
        name, config = type(scheduler).__name__, scheduler.config
        if "shift" not in config:
            return name
        if config.get("use_dynamic_shifting"):
            return f"{name} (shift from the image size)"
        return f"{name} (shift {config['shift']:g})"

    @property
    def denoiser(self) -> torch.nn.Module:
        """The UNet (sd, sdxl) or the transformer (the flow kinds)."""
        return getattr(self.pipeline, denoiser_part(self.kind))


def default_device_and_dtype() -> tuple[str, torch.dtype]:
    """CUDA in bf16 (fp16 where bf16 is not supported), else the CPU in fp32."""
    if torch.cuda.is_available():
        return "cuda", torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return "cpu", torch.float32


def kind_of(model_index: dict) -> str:
    """One of KINDS, from a pipeline's model_index.json."""
    class_name = model_index.get("_class_name", "")
    if class_name in TRANSFORMER_PIPELINES:
        return TRANSFORMER_PIPELINES[class_name]
    for prefix, family in FAMILIES.items():
        if class_name.startswith(prefix):
            if class_name.startswith("QwenImage2"):
                raise ModelError(f"{class_name} (Qwen-Image 2.x) is not supported yet: use "
                                 "Qwen-Image (QwenImagePipeline)")
            known = [c for c, kind in TRANSFORMER_PIPELINES.items() if c.startswith(prefix)]
            raise ModelError(f"{class_name} is a {family} pipeline for another task: use a "
                             f"text-to-image {family} model ({' or '.join(known)})")
    if "XL" in class_name or ("text_encoder_2" in model_index and "unet" in model_index):
        return "sdxl"
    if "StableDiffusion" in class_name or "unet" in model_index:
        return "sd"
    raise ModelError(f"{class_name or 'this model'} is not a Stable Diffusion (1.x, 2.x, XL, "
                     "3), FLUX (.1 or .2), Qwen-Image or Z-Image pipeline")


def pipeline_class(kind: str, class_name: str | None = None):
    """The diffusers pipeline class of a kind (of `class_name`, the model's own, where
    one kind has two: FLUX.2 [klein] and FLUX.2)."""
    import diffusers

    if class_name in TRANSFORMER_PIPELINES:
        return getattr(diffusers, class_name)
    return getattr(diffusers, {"sd": "StableDiffusionPipeline",
                               "sdxl": "StableDiffusionXLPipeline",
                               "sd3": "StableDiffusion3Pipeline", "flux": "FluxPipeline",
                               "flux2": "Flux2KleinPipeline", "qwenimage": "QwenImagePipeline",
                               "zimage": "ZImagePipeline"}[kind])


HUB_PROBE_TIMEOUT = 5.0  # seconds: one quick look at the Hub instead of minutes of retries
_HUB_ID = re.compile(r"[\w.-]+(/[\w.-]+)?")
NO_HUB = "use `toy` or a local pipeline folder"


def looks_like_path(name: str) -> bool:
    """Whether `name` can only mean a local folder: it starts with `.`, `/` or `~`, names
    runs/..., holds a backslash or more than one `/`, or is no valid Hub id."""
    return (name.startswith((".", "/", "~", "runs/")) or "\\" in name
            or name.count("/") > 1 or not _HUB_ID.fullmatch(name))


@functools.cache
def _hub_reachable(endpoint: str) -> bool:
    """One request with a short timeout: does anything answer at the Hub's address?"""
    from urllib.error import HTTPError
    from urllib.request import Request, urlopen

    try:
        urlopen(Request(endpoint, method="HEAD"), timeout=HUB_PROBE_TIMEOUT).close()
    except HTTPError:
        return True  # an answer, if not a welcome one
    except (OSError, ValueError):
        return False
    return True


def _hub_index(name: str) -> tuple[dict, bool]:
    """(model_index.json of Hub id `name`, whether to load it from the local cache only)."""
    from huggingface_hub import constants, try_to_load_from_cache

    cached = try_to_load_from_cache(name, "model_index.json")
    if isinstance(cached, str):
        local_only = constants.HF_HUB_OFFLINE or not _hub_reachable(constants.ENDPOINT)
        return json.loads(Path(cached).read_text()), local_only
    if constants.HF_HUB_OFFLINE:
        raise ModelError(f"{name} is not in the local Hugging Face cache and HF_HUB_OFFLINE "
                         f"is set: {NO_HUB}, or unset HF_HUB_OFFLINE to download it")
    if not _hub_reachable(constants.ENDPOINT):
        raise ModelError(f"cannot reach the Hugging Face Hub ({constants.ENDPOINT}) to fetch "
                         f"{name}, and it is not in the local cache: {NO_HUB}, or connect "
                         "and try again")
    from diffusers import DiffusionPipeline

    try:
        return dict(DiffusionPipeline.load_config(name)), False
    except Exception as error:
        raise ModelError(f"cannot load {name} from the Hub: {str(error).splitlines()[0]} "
                         f"({NO_HUB})") from None


def _model_index(name: str) -> tuple[str, dict, bool]:
    """(path or Hub id to load, its model_index.json, local files only), or one line."""
    if name in BUNDLED:
        folder, command = BUNDLED[name]
        if not (folder / "model_index.json").exists():
            raise ModelError(f"the {name} model is missing from {folder}: rebuild it with "
                             f"`{command}`")
        return str(folder), json.loads((folder / "model_index.json").read_text()), True
    path = Path(name).expanduser()
    if path.exists():
        index = path / "model_index.json"
        if not index.exists():
            raise ModelError(
                f"{path} is not a diffusers pipeline folder (no model_index.json), "
                f"a LoRA folder (no {LORA_WEIGHTS} with {LORA_BASE_FILE}) nor a rounds "
                f"run folder with a finished round (no {NEWEST_ROUND_FILE})"
            )
        return str(path), json.loads(index.read_text()), True
    if looks_like_path(name):
        raise ModelError(f"no such model folder: {name} (check the path: a trained model is "
                         "runs/train/<run>/final; or name `toy` or a Hub id)")
    index, local_only = _hub_index(name)
    return name, index, local_only


def resolve(name: str) -> str:
    """The model a name stands for: a rounds run folder's newest round, else the name."""
    newest = Path(name).expanduser() / NEWEST_ROUND_FILE
    if not newest.is_file():
        return name
    return json.loads(newest.read_text())["model"]


def local_folder(name: str) -> Path:
    """Where a model's files would be if it is local: the toy's folder for `toy`."""
    return BUNDLED[name][0] if name in BUNDLED else Path(name).expanduser()


def same_model(a: str, b: str) -> bool:
    """Whether two names stand for one model (the same name, or the same folder)."""
    a, b = resolve(a), resolve(b)
    if a == b:
        return True
    folders = [local_folder(n) for n in (a, b)]
    return all(f.is_dir() for f in folders) and folders[0].resolve() == folders[1].resolve()


def round_of(name: str) -> int | None:
    """The round of `python -m rounds` that trained the model `name`, or None."""
    marker = Path(resolve(name)).expanduser() / ROUND_FILE
    return json.loads(marker.read_text())["round"] if marker.is_file() else None


def check(name: str) -> str:
    """Refuse, with one line and without loading weights, a name `load` cannot open.

    Reads the model's (or a LoRA folder's base's) model_index.json; returns its kind
    (one of KINDS). A command calls this for every model it names before any work.
    """
    name = resolve(name)
    folder = Path(name).expanduser()
    base = lora_base(folder) if folder.is_dir() else None
    return kind_of(_model_index(base or name)[1])


def lora_base(path: Path) -> str | None:
    """The base model a LoRA folder names, or None if `path` is not a LoRA folder."""
    if not (path / LORA_WEIGHTS).exists():
        return None
    base_file = path / LORA_BASE_FILE
    if not base_file.exists():
        raise ModelError(f"{path} holds LoRA weights but no {LORA_BASE_FILE} naming its base")
    return json.loads(base_file.read_text())["base_model"]


def load(
    name: str = TOY_NAME,
    device: str | None = None,
    dtype: torch.dtype | None = None,
    scheduler: str | None = None,
    denoiser: torch.nn.Module | None = None,
) -> LoadedModel:
    """Load `name` on `device` in `dtype` (defaults: `default_device_and_dtype`).

    `scheduler` names a diffusers scheduler class (e.g. "EulerDiscreteScheduler") to use
    instead of the model's own, configured from the model's scheduler config. `denoiser`
    replaces the model's own UNet or transformer (the trainer saves its result this way).
    """
    default_device, default_dtype = default_device_and_dtype()
    device, dtype = device or default_device, dtype or default_dtype
    name = resolve(name)
    lora_dir = Path(name).expanduser()
    base = lora_base(lora_dir) if lora_dir.is_dir() else None
    source, index, local = _model_index(base or name)
    kind = kind_of(index)
    try:
        pipeline = pipeline_class(kind, index.get("_class_name")).from_pretrained(
            source, dtype=dtype, local_files_only=local,
            **({denoiser_part(kind): denoiser} if denoiser is not None else {}),
            **({"safety_checker": None, "requires_safety_checker": False} if kind == "sd"
               else {}),
        )
    except OSError as error:
        raise ModelError(f"cannot load {name}: {str(error).splitlines()[0]}") from None
    if base is not None:
        pipeline.load_lora_weights(str(lora_dir), weight_name=LORA_WEIGHTS)
    if scheduler:
        pipeline.scheduler = scheduler_from_name(scheduler, pipeline.scheduler.config)
    pipeline.to(device)
    pipeline.set_progress_bar_config(disable=True)
    return LoadedModel(name=name, pipeline=pipeline, kind=kind, device=device, dtype=dtype,
                       round=round_of(name))


def scheduler_from_name(name: str, config) -> object:
    import diffusers

    cls = getattr(diffusers, name, None)
    if cls is None or not name.endswith("Scheduler"):
        raise ModelError(f"unknown scheduler {name!r}: name a diffusers class, e.g. DDIMScheduler")
    return cls.from_config(config)


def fingerprint(name: str, parts: tuple[str, ...] | None = None) -> dict:
    """What identifies a model's weights: for a local folder (the toy model included), its
    files' names, sizes and contents (of `parts` subfolders only, if given), not its path or
    modification times, so a copy elsewhere or on another node has the same one; for a Hub
    id, the id. Caches key on it, so retraining a folder in place invalidates them.
    """
    name = resolve(name)
    folder = local_folder(name)
    if not folder.is_dir():
        return {"model": name}
    roots = [folder / p for p in parts if (folder / p).is_dir()] if parts else [folder]
    files = sorted(
        (str(f.relative_to(folder)), f.stat().st_size, content_digest(f))
        for root in roots for f in root.rglob("*") if f.is_file()
    )
    return {"files": files}


SAMPLED_ABOVE = 64 * 2**20  # files larger than this are hashed from samples


def content_digest(path: Path, samples: int = 16, block: int = 2**16) -> str:
    """A hash of a file's bytes: all of them for a small file; for a large one (weights of
    many GB, read on every launch by every process) its first MB, where a safetensors
    header lists every tensor, and `samples` blocks spread over the rest, which a
    retrained model changes."""
    digest = hashlib.sha256()
    size = path.stat().st_size
    with open(path, "rb") as f:
        if size <= SAMPLED_ABOVE:
            digest.update(f.read())
        else:
            digest.update(f.read(2**20))
            for i in range(samples):
                f.seek((size - block) * (i + 1) // samples)
                digest.update(f.read(block))
    return digest.hexdigest()[:32]
