"""The memory estimate --dry_run prints: counted on meta tensors, true to the real run."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from models import load
from tests.helpers import config_for
from train.memory import estimate, saved_activation_bytes
from train.trainer import Run


def test_the_estimate_counts_what_the_trainer_holds(tiny_sdxl_dir, store_path, tmp_path):
    full = config_for(tiny_sdxl_dir, store_path, tmp_path / "full", mixed_precision="no")
    lora = config_for(tiny_sdxl_dir, store_path, tmp_path / "lora", mixed_precision="no",
                      lora_rank=4)
    averaged = config_for(tiny_sdxl_dir, store_path, tmp_path / "ema", mixed_precision="no",
                          lora_rank=4, ema_decay=0.9)
    for config in (full, lora, averaged):
        run = Run(config)
        found = estimate(config)
        held = sum(p.numel() for p in run.denoiser.parameters())
        trained = sum(p.numel() for p in run.nets.trainable)
        assert found.trainable == trained and found.gradients == 4 * trained
        if config.ema_decay:  # and the moving average's fp32 copy
            average = run.nets.average.shadow_params
            assert sum(p.numel() * p.element_size() for p in average) == 4 * trained
            assert found.optimizer == 12 * trained
        else:
            assert found.optimizer == 8 * trained  # AdamW's two fp32 moments
        if config.lora_rank:
            assert run.nets.reference is None and found.reference == 0
            assert found.weights == 4 * held  # fp32 run: base and adapters in fp32
        else:
            assert found.reference == found.weights == 4 * held
            assert sum(p.numel() for p in run.nets.reference.parameters()) == held


def test_activations_counted_on_meta_equal_those_of_a_real_forward(tiny_sd_dir):
    unet = load(str(tiny_sd_dir), device="cpu", dtype=torch.float32).pipeline.unet.train()
    on_meta = saved_activation_bytes(unet.to("meta"), 4, 64)
    real_unet = load(str(tiny_sd_dir), device="cpu", dtype=torch.float32).pipeline.unet
    real_unet.train()
    saved = 0

    def pack(tensor):
        nonlocal saved
        if not isinstance(tensor, torch.nn.Parameter):
            saved += tensor.numel() * tensor.element_size()
        return tensor

    config = real_unet.config
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        real_unet(torch.randn(4, config.in_channels, 8, 8), torch.tensor([1, 2, 3, 4]),
                  encoder_hidden_states=torch.randn(4, 77, config.cross_attention_dim))
    assert on_meta == saved > 0


@pytest.mark.parametrize("kind", ["sd3", "flux", "flux2", "qwenimage", "zimage"])
def test_transformer_activations_counted_on_meta_equal_those_of_a_real_forward(
        kind, request, store_path, tmp_path):
    from train.memory import saved_bytes, transformer_inputs
    from train.processes import predict

    folder = request.getfixturevalue(f"tiny_{kind}_dir")
    config = config_for(folder, store_path, tmp_path / "run", mixed_precision="no",
                        max_sequence_length=8)
    counted = estimate(config).activations
    net = load(str(folder), device="cpu", dtype=torch.float32).denoiser.train()
    latents, inputs = transformer_inputs(str(folder), kind, config, 2 * config.batch_size)
    real = {name: torch.randn_like(value) if value.is_floating_point() else value
            for name, value in inputs.items()}
    saved = saved_bytes(lambda: predict(net, kind, torch.randn_like(latents),
                                        torch.full((len(latents),), 0.5), real))
    assert counted == saved > 0


def test_checkpointing_shrinks_the_counted_activations(tiny_sd_dir, store_path, tmp_path):
    plain = estimate(config_for(tiny_sd_dir, store_path, tmp_path / "a", mixed_precision="no"))
    checkpointed = estimate(config_for(tiny_sd_dir, store_path, tmp_path / "b",
                                       mixed_precision="no", gradient_checkpointing=True))
    assert checkpointed.activations < plain.activations / 2


def test_the_dry_run_prints_the_estimate_or_says_why_not(store_path):
    def dry_run(*args):
        return subprocess.run([sys.executable, "-m", "train", *args, "--data",
                               str(store_path), "--dry_run"],
                              capture_output=True, text=True, check=True).stdout

    toy = dry_run("toy")
    assert "memory: about " in toy and "4,192,900 denoiser parameters" in toy
    sd15 = dry_run("sd15")  # a Hub id that is not downloaded here (tests run offline)
    assert "memory: not estimated: stable-diffusion-v1-5/stable-diffusion-v1-5" in sd15
