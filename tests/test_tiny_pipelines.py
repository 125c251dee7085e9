"""The conftest's tiny pipelines are real diffusers pipelines that load offline."""

import os
import time

import numpy as np
import pytest
import torch


def test_environment_is_offline():
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    assert "dpo-tests-" in os.environ["HF_HOME"]
    assert "dpo-tests-" in os.environ["GRADIO_TEMP_DIR"]


def test_hub_id_fails_fast_offline():
    from diffusers import StableDiffusionPipeline

    start = time.monotonic()
    with pytest.raises(OSError):
        StableDiffusionPipeline.from_pretrained("stable-diffusion-v1-5/stable-diffusion-v1-5")
    assert time.monotonic() - start < 10


def test_tiny_sd_loads_and_generates(tiny_sd_dir):
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(tiny_sd_dir, local_files_only=True)
    generator = torch.Generator().manual_seed(0)
    out = pipe(
        ["a red circle"] * 2, num_inference_steps=2, height=32, width=32,
        generator=generator, output_type="np",
    )
    assert out.images.shape == (2, 32, 32, 3)
    assert np.isfinite(out.images).all()
    again = pipe(
        ["a red circle"] * 2, num_inference_steps=2, height=32, width=32,
        generator=torch.Generator().manual_seed(0), output_type="np",
    )
    np.testing.assert_array_equal(out.images, again.images)


def test_tiny_sdxl_loads_and_generates(tiny_sdxl_dir):
    from diffusers import StableDiffusionXLPipeline

    pipe = StableDiffusionXLPipeline.from_pretrained(tiny_sdxl_dir, local_files_only=True)
    out = pipe(
        "a blue square", num_inference_steps=2, height=32, width=32,
        generator=torch.Generator().manual_seed(0), output_type="np",
    )
    assert out.images.shape == (1, 32, 32, 3)
    assert np.isfinite(out.images).all()
    assert "text_encoder_2" in os.listdir(tiny_sdxl_dir)
