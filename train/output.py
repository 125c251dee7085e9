"""What a run leaves for the other commands: a model that `models.load` opens by path.

Full fine-tuning writes a complete diffusers pipeline folder (the base's other parts with
the trained UNet or transformer). LoRA writes `pytorch_lora_weights.safetensors`, which diffusers'
`pipeline.load_lora_weights` accepts, and `base_model.json` naming the base. Both get a
`README.md` card: how the model was trained and how plain diffusers loads it.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import torch
import yaml

from models.loading import (
    BUNDLED,
    FLOW_KINDS,
    LORA_BASE_FILE,
    LORA_WEIGHTS,
    denoiser_part,
    load,
    pipeline_class,
)
from train.config import objective_text

CARD = "README.md"
RUN_CONFIG = "config.yaml"  # the trainer writes the resolved config beside final/ and best/
TAGS = {"dpo": "diffusion-dpo", "ipo": "diffusion-ipo", "kto": "diffusion-kto", "mapo": "mapo",
        "sft": "sft"}


def base_name(model: str) -> str:
    """The base as a name that still resolves from another working directory."""
    path = Path(model).expanduser()
    return str(path.resolve()) if model not in BUNDLED and path.exists() else model


def base_location(model: str) -> str:
    """The base as plain diffusers names it: the bundled folder for `toy`, a local
    folder's absolute path, or the Hub id."""
    return str(BUNDLED[model][0]) if model in BUNDLED else base_name(model)


def save_model(net: torch.nn.Module | dict[str, torch.Tensor], model: str, kind: str,
               lora: bool, directory: Path) -> Path:
    """Write the trained denoiser `net` (of a `kind` model; or its full state dict, as a
    sharded run gathers it) to `directory` (replaced if present), with its card."""
    directory.mkdir(parents=True, exist_ok=True)
    if lora:
        from diffusers.utils import convert_state_dict_to_diffusers
        from peft.utils import get_peft_model_state_dict

        state = get_peft_model_state_dict(net)
        if kind not in FLOW_KINDS:  # diffusers' UNet LoRA scripts convert; transformers' not
            state = convert_state_dict_to_diffusers(state)
        part = denoiser_part(kind)
        pipeline_class(kind).save_lora_weights(directory, weight_name=LORA_WEIGHTS, **{
            f"{part}_lora_layers": {k: v.detach().float().cpu() for k, v in state.items()},
            f"{part}_lora_adapter_metadata": net.peft_config["default"].to_dict()})
        (directory / LORA_BASE_FILE).write_text(json.dumps({"base_model": base_name(model)}))
    else:
        if isinstance(net, dict):
            pipeline = load(model, device="cpu", dtype=torch.float32).pipeline
            getattr(pipeline, denoiser_part(kind)).load_state_dict(
                {name: tensor.float() for name, tensor in net.items()})
        else:
            trained = copy.deepcopy(net).cpu().float()  # not .to(dtype): diffusers warns
            pipeline = load(model, device="cpu", dtype=torch.float32, denoiser=trained).pipeline
        pipeline.save_pretrained(directory, safe_serialization=True)
    run_config = directory.parent / RUN_CONFIG
    trained_with = yaml.safe_load(run_config.read_text()) if run_config.exists() else None
    (directory / CARD).write_text(model_card(directory, model, lora, trained_with))
    return directory


def model_card(directory: Path, model: str, lora: bool, config: dict | None) -> str:
    """The folder's README.md: what it is, how it was trained, how plain diffusers loads it.

    `config` is the run's resolved config (its `config.yaml`), if known.
    """
    base = base_location(model)
    here = str(directory.resolve())
    on_hub = not Path(base).exists()
    objective = (config or {}).get("objective", "dpo")
    front = ["---", "library_name: diffusers",
             *([f"base_model: {base}"] if on_hub else []),
             "tags:", "- text-to-image", f"- {TAGS.get(objective, objective)}",
             *(["- lora"] if lora else []), "---"]
    what = "LoRA weights for" if lora else "A full fine-tune of"
    where = f" (`{base}`)" if base != model else ""
    lines = [*front, f"# {directory.parent.name}/{directory.name}", "",
             f"{what} `{model}`{where}, written by this project's trainer "
             "(`accelerate launch -m train`).", ""]
    lines += ["## How it was trained", "", *_training_lines(directory, lora, config), ""]
    load_lines = ([f"pipe = DiffusionPipeline.from_pretrained({json.dumps(base)})",
                   f"pipe.load_lora_weights({json.dumps(here)})"] if lora else
                  [f"pipe = DiffusionPipeline.from_pretrained({json.dumps(here)})"])
    prompt = ((config or {}).get("sample_prompts") or ["a red circle"])[0]
    lines += ["## Load it with diffusers", "", "```python",
              "from diffusers import DiffusionPipeline", "", *load_lines,
              f"image = pipe({json.dumps(prompt)}).images[0]", "```", "",
              "The paths are where the folders were when this card was written; use their new "
              "paths if they move."]
    if lora:
        lines += ["", f"`{LORA_BASE_FILE}` names the base as `{base_name(model)}`, which this "
                  "project's `models.load` resolves"
                  + (" (the bundled toy model); plain diffusers needs the path above."
                     if model in BUNDLED else ".")]
    lines += ["", f"Or, in this project: `models.load({json.dumps(here)})`."]
    return "\n".join(lines) + "\n"


def _training_lines(directory: Path, lora: bool, config: dict | None) -> list[str]:
    if config is None:
        return ["Not recorded (no run config beside this folder)."]
    steps = config.get("max_steps")
    lines = [f"- objective: {objective_text(config)}",
             f"- steps: {steps}" if directory.name != "best" else
             f"- steps: the best sample score's step of up to {steps} (`best_step` in "
             "../summary.json)",
             f"- learning rate {config.get('learning_rate')}, {config.get('effective_batch')} "
             f"pairs a step, resolution {config.get('resolution')}",
             "- " + (f"LoRA rank {config.get('lora_rank')} on "
                     f"{', '.join(config.get('lora_targets') or [])}" if lora
                     else "full fine-tune"),
             f"- data: {', '.join(str(d) for d in config.get('data') or [])}",
             f"- the full config: `../{RUN_CONFIG}`"]
    return lines
