"""The toy world's CLIP: a reward-model backbone small enough to fine-tune on a CPU in
minutes (`python -m train judge toy`).

The real recipe fine-tunes a pretrained CLIP (PickScore: CLIP-H). Here the text tower is
the bundled toy model's own text encoder (it has learnt the toy's words) and the image
tower a small ViT on 32 px images with 4 px patches, initialised from a seed. It is an
ordinary `CLIPModel` with a `CLIPProcessor`: what is trained from it saves and loads with
`from_pretrained` like any CLIP checkpoint.
"""

from __future__ import annotations

from pathlib import Path

import torch

from models.toy.shapes import IMAGE_SIZE

TOY_BACKBONE = "toy"  # the name `--backbone` takes for it
_PIPELINE = Path(__file__).parent / "pipeline"


def toy_clip(seed: int = 0):
    """(CLIPModel, CLIPProcessor): the toy text encoder's weights, a fresh image tower."""
    from transformers import (
        CLIPConfig,
        CLIPImageProcessor,
        CLIPModel,
        CLIPProcessor,
        CLIPTextModel,
        CLIPTokenizer,
    )

    text = CLIPTextModel.from_pretrained(_PIPELINE / "text_encoder", local_files_only=True)

    vision = {"image_size": IMAGE_SIZE, "patch_size": 4, "hidden_size": 64,
              "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4}
    config = CLIPConfig(text_config=text.config.to_dict(), vision_config=vision,
                        projection_dim=32)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = CLIPModel(config)
    # transformers 5's CLIPTextModel is the text transformer itself; 4.x wraps it
    tower = getattr(text, "text_model", text)
    model.text_model.load_state_dict(tower.state_dict())
    processor = CLIPProcessor(
        image_processor=CLIPImageProcessor(size={"shortest_edge": IMAGE_SIZE},
                                           crop_size={"height": IMAGE_SIZE,
                                                      "width": IMAGE_SIZE}),
        tokenizer=CLIPTokenizer.from_pretrained(_PIPELINE / "tokenizer", local_files_only=True),
    )
    return model, processor
