"""What a run leaves for the other commands: a model that `models.load` opens by path.

Full fine-tuning writes a complete diffusers pipeline folder (the base's other parts with
the trained UNet). LoRA writes `pytorch_lora_weights.safetensors`, which diffusers'
`pipeline.load_lora_weights` accepts, and `base_model.json` naming the base.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import torch

from models.loading import LORA_BASE_FILE, LORA_WEIGHTS, TOY_NAME, load


def base_name(model: str) -> str:
    """The base as a name that still resolves from another working directory."""
    path = Path(model).expanduser()
    return str(path.resolve()) if model != TOY_NAME and path.exists() else model


def save_model(unet: torch.nn.Module, model: str, kind: str, lora: bool, directory: Path) -> Path:
    """Write the trained model to `directory` (replaced if present)."""
    directory.mkdir(parents=True, exist_ok=True)
    if lora:
        from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline
        from diffusers.utils import convert_state_dict_to_diffusers
        from peft.utils import get_peft_model_state_dict

        pipeline_class = StableDiffusionXLPipeline if kind == "sdxl" else StableDiffusionPipeline
        layers = {k: v.detach().float().cpu() for k, v in
                  convert_state_dict_to_diffusers(get_peft_model_state_dict(unet)).items()}
        pipeline_class.save_lora_weights(
            directory, unet_lora_layers=layers, weight_name=LORA_WEIGHTS,
            unet_lora_adapter_metadata=unet.peft_config["default"].to_dict(),
        )
        (directory / LORA_BASE_FILE).write_text(json.dumps({"base_model": base_name(model)}))
        return directory
    trained = copy.deepcopy(unet).cpu().float()  # not .to(dtype): diffusers warns on it
    pipeline = load(model, device="cpu", dtype=torch.float32, unet=trained).pipeline
    pipeline.save_pretrained(directory, safe_serialization=True)
    return directory
