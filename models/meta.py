"""A model's denoiser built on the meta device: its shapes and sizes, with no weights.

`--dry_run` sizes a run from this before anything is downloaded or loaded: a model's
config files are read where they are on this machine (a folder, the bundled toys, the
Hub cache) and nothing is fetched.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from models.loading import BUNDLED, denoiser_part, kind_of, local_folder, looks_like_path


def local_file(model: str, relative: str) -> Path | None:
    """A model's file if it is on this machine (a folder, the bundled toys, the Hub cache)."""
    folder = local_folder(model)
    if model in BUNDLED or looks_like_path(model) or folder.exists():
        path = folder / relative
        return path if path.is_file() else None
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(model, relative)
    return Path(cached) if isinstance(cached, str) else None


def denoiser_on_meta(model: str) -> tuple[str, torch.nn.Module] | None:
    """(kind, the denoiser with meta tensors), or None when its config is not local."""
    index = local_file(model, "model_index.json")
    if index is None:
        return None
    kind = kind_of(json.loads(index.read_text()))
    config_file = local_file(model, f"{denoiser_part(kind)}/config.json")
    if config_file is None:
        return None
    import diffusers

    config = json.loads(config_file.read_text())
    cls = getattr(diffusers, config["_class_name"])
    with torch.device("meta"):
        return kind, cls.from_config(config)


TEXT_PARTS = ("text_encoder", "text_encoder_2", "text_encoder_3")


def encoders_on_meta(model: str) -> tuple[torch.nn.Module, list[torch.nn.Module]] | None:
    """(the VAE, the text encoders) with meta tensors, or None when a config is not local."""
    vae_file = local_file(model, "vae/config.json")
    if vae_file is None:
        return None
    import diffusers
    import transformers

    vae_config = json.loads(vae_file.read_text())
    texts = []
    with torch.device("meta"):
        vae = getattr(diffusers, vae_config["_class_name"]).from_config(vae_config)
        for part in TEXT_PARTS:
            found = local_file(model, f"{part}/config.json")
            if found is None:
                continue
            config = transformers.AutoConfig.from_pretrained(found.parent)
            texts.append(getattr(transformers, config.architectures[0])(config))
    return vae, texts
