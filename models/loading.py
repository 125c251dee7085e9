"""Load a text-to-image pipeline by one name, as every command does (DESIGN.md section 4).

A name is `toy` (the bundled model), a local diffusers pipeline folder, a Hub id, or a
LoRA folder written by `train` (its weights plus `base_model.json` naming the base).
Whether it is an SD-family or an SDXL pipeline is read from the model's own files.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from pathlib import Path

import torch

from models.errors import ModelError
from models.toy import TOY_NAME

TOY_DIR = Path(__file__).resolve().parent / "toy" / "pipeline"
LORA_WEIGHTS = "pytorch_lora_weights.safetensors"  # diffusers' save_lora_weights name
LORA_BASE_FILE = "base_model.json"  # {"base_model": "<name>"}, written beside it


@dataclass
class LoadedModel:
    """A ready pipeline and what it is. Hold `lock` while calling `pipeline`."""

    name: str
    pipeline: object  # a diffusers StableDiffusionPipeline or StableDiffusionXLPipeline
    kind: str  # "sd" or "sdxl"
    device: str
    dtype: torch.dtype
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def scheduler_name(self) -> str:
        return type(self.pipeline.scheduler).__name__


def default_device_and_dtype() -> tuple[str, torch.dtype]:
    """CUDA in bf16 (fp16 where bf16 is not supported), else the CPU in fp32."""
    if torch.cuda.is_available():
        return "cuda", torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return "cpu", torch.float32


def kind_of(model_index: dict) -> str:
    """'sdxl' or 'sd', from a pipeline's model_index.json."""
    class_name = model_index.get("_class_name", "")
    if "XL" in class_name or "text_encoder_2" in model_index:
        return "sdxl"
    if "StableDiffusion" in class_name or "unet" in model_index:
        return "sd"
    raise ModelError(f"{class_name or 'this model'} is not a Stable Diffusion or SDXL pipeline")


def _pipeline_class(kind: str):
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    return StableDiffusionXLPipeline if kind == "sdxl" else StableDiffusionPipeline


def _model_index(name: str) -> tuple[str, dict]:
    """(path or Hub id to load, its model_index.json), or a one-line error."""
    if name == TOY_NAME:
        if not (TOY_DIR / "model_index.json").exists():
            raise ModelError(
                f"the toy model is missing from {TOY_DIR}: rebuild it with "
                "`python -m models.toy.train`"
            )
        return str(TOY_DIR), json.loads((TOY_DIR / "model_index.json").read_text())
    path = Path(name).expanduser()
    if path.exists():
        index = path / "model_index.json"
        if not index.exists():
            raise ModelError(
                f"{path} is not a diffusers pipeline folder (no model_index.json) "
                f"nor a LoRA folder (no {LORA_WEIGHTS} with {LORA_BASE_FILE})"
            )
        return str(path), json.loads(index.read_text())
    from diffusers import DiffusionPipeline

    try:
        return name, dict(DiffusionPipeline.load_config(name))
    except Exception as error:
        from huggingface_hub import constants

        if constants.HF_HUB_OFFLINE:
            raise ModelError(
                f"{name} is not available offline (not in the local Hugging Face cache): "
                "use `toy`, a local pipeline folder, or go online"
            ) from None
        raise ModelError(
            f"cannot load {name}: {str(error).splitlines()[0]} "
            "(offline? use `toy` or a local pipeline folder)"
        ) from None


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
    unet: torch.nn.Module | None = None,
) -> LoadedModel:
    """Load `name` on `device` in `dtype` (defaults: `default_device_and_dtype`).

    `scheduler` names a diffusers scheduler class (e.g. "EulerDiscreteScheduler") to use
    instead of the model's own, configured from the model's scheduler config. `unet`
    replaces the model's own UNet (the trainer saves its result this way).
    """
    default_device, default_dtype = default_device_and_dtype()
    device, dtype = device or default_device, dtype or default_dtype
    lora_dir = Path(name).expanduser()
    base = lora_base(lora_dir) if lora_dir.is_dir() else None
    source, index = _model_index(base or name)
    kind = kind_of(index)
    local = Path(source).exists()
    try:
        pipeline = _pipeline_class(kind).from_pretrained(
            source, dtype=dtype, local_files_only=local,
            **({"unet": unet} if unet is not None else {}),
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
    return LoadedModel(name=name, pipeline=pipeline, kind=kind, device=device, dtype=dtype)


def scheduler_from_name(name: str, config) -> object:
    import diffusers

    cls = getattr(diffusers, name, None)
    if cls is None or not name.endswith("Scheduler"):
        raise ModelError(f"unknown scheduler {name!r}: name a diffusers class, e.g. DDIMScheduler")
    return cls.from_config(config)


def fingerprint(name: str, parts: tuple[str, ...] | None = None) -> dict:
    """What identifies a model's weights: for a local folder (the toy model included), the
    sizes and modification times of its files (of `parts` subfolders only, if given); for
    a Hub id, the id. Caches key on it, so retraining a folder in place invalidates them.
    """
    folder = TOY_DIR if name == TOY_NAME else Path(name).expanduser()
    if not folder.is_dir():
        return {"model": name}
    roots = [folder / p for p in parts if (folder / p).is_dir()] if parts else [folder]
    files = sorted(
        (str(f.relative_to(folder)), f.stat().st_size, int(f.stat().st_mtime))
        for root in roots for f in root.rglob("*") if f.is_file()
    )
    return {"model": str(folder.resolve()), "files": files}
