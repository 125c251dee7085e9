"""SD3- and FLUX-style models (tiny, built from configs offline) through the model layer
and the trainer: pairs with their guidance, Flow-DPO, and outputs plain diffusers loads."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from models.generate import generate
from models.loading import check, load
from tests.conftest import build_tiny_flux
from tests.helpers import config_for, flow_images
from train.config import TrainConfig
from train.processes import FlowProcess, predict, process_for
from train.trainer import Run

RED = "a red circle"


CLASSES = {"sd3": "StableDiffusion3Pipeline", "flux": "FluxPipeline",
           "flux2": "Flux2KleinPipeline", "qwenimage": "QwenImagePipeline",
           "zimage": "ZImagePipeline"}


@pytest.fixture(params=list(CLASSES))
def flow_model(request):
    """(kind, the tiny pipeline folder of that kind)."""
    return request.param, request.getfixturevalue(f"tiny_{request.param}_dir")


def unreachable(kind: str, name: str) -> bool:
    """Parameters no loss can move: Qwen-Image's last block's text stream (its output is
    discarded: only image tokens are predicted); Z-Image's padding tokens (the tiny
    captions and images fill whole blocks of 32 tokens, so none is padded)."""
    if kind == "qwenimage":
        return name.startswith("transformer_blocks.1.") and ("txt" in name
                                                             or "add_out" in name)
    return kind == "zimage" and name in ("x_pad_token", "cap_pad_token")


def transformer_state(folder) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "transformer" / "diffusion_pytorch_model.safetensors"))


# -- the model layer -------------------------------------------------------------------


def test_each_loads_by_its_folder_and_says_its_kind(flow_model):
    kind, folder = flow_model
    assert check(str(folder)) == kind
    model = load(str(folder))
    assert model.kind == kind and model.denoiser is model.pipeline.transformer


def test_sd3_gives_each_image_of_a_pair_its_own_guidance(tiny_sd3_dir):
    model = load(str(tiny_sd3_dir))
    pair = generate(model, RED, [1, 2], [3.0, 6.0], steps=2)
    assert [image.guidance_scale for image in pair] == [3.0, 6.0]
    for image, seed, scale in zip(pair, [1, 2], [3.0, 6.0], strict=True):
        [alone] = generate(model, RED, [seed], [scale], steps=2)
        difference = np.abs(np.asarray(image.image, float) - np.asarray(alone.image, float))
        assert difference.max() <= 2  # batched against alone: float rounding, no more


def test_flux_dev_takes_guidance_as_an_input_and_schnell_takes_none(tiny_flux_dir, tmp_path):
    dev = load(str(tiny_flux_dir))
    low, high = generate(dev, RED, [1, 1], [2.0, 5.0], steps=2, height=32, width=32)
    assert (low.guidance_scale, high.guidance_scale) == (2.0, 5.0)
    [again] = generate(dev, RED, [1], [2.0], steps=2, height=32, width=32)
    assert np.array_equal(np.asarray(low.image), np.asarray(again.image))
    assert not np.array_equal(np.asarray(low.image), np.asarray(high.image))  # it acts
    schnell = load(str(build_tiny_flux(tmp_path, guidance_embeds=False)))
    pair = generate(schnell, RED, [1, 2], [2.0, 5.0], steps=2, height=32, width=32)
    assert [image.guidance_scale for image in pair] == [0.0, 0.0]  # as it was made


# -- the forward process ---------------------------------------------------------------


def test_flow_noising_is_a_straight_line_to_noise_with_the_velocity_as_target():
    process = FlowProcess(shift=1.0)
    clean, noise = torch.randn(3, 4, 8, 8), torch.randn(3, 4, 8, 8)
    sigma = torch.tensor([0.0, 0.25, 1.0])
    noisy = process.noisy(clean, noise, sigma)
    assert torch.allclose(noisy[0], clean[0]) and torch.allclose(noisy[2], noise[2])
    assert torch.allclose(noisy[1], 0.75 * clean[1] + 0.25 * noise[1])
    assert torch.equal(process.target(clean, noise, sigma), noise - clean)
    # one Euler step along the target from any point lands on the clean latents
    assert torch.allclose(noisy - sigma.view(-1, 1, 1, 1) * (noise - clean), clean, atol=1e-6)


def test_noise_levels_follow_the_logit_normal_and_the_schedulers_shift(tiny_sd3_dir,
                                                                      tiny_flux_dir):
    draws = FlowProcess(shift=1.0).draw(20_000, torch.Generator().manual_seed(0))
    assert draws.min() > 0 and draws.max() < 1
    assert abs(float(draws.median()) - 0.5) < 0.01  # logit-normal(0, 1): median 1/2
    assert abs(float(torch.logit(draws).std()) - 1.0) < 0.02
    again = FlowProcess(shift=1.0).draw(20_000, torch.Generator().manual_seed(0))
    assert torch.equal(draws, again)  # from the step's generator alone: resumable
    shifted = FlowProcess(shift=3.0).draw(20_000, torch.Generator().manual_seed(0))
    assert torch.allclose(shifted, 3 * draws / (1 + 2 * draws))
    config = TrainConfig()  # flow_shift unset: the scheduler's
    assert process_for(load(str(tiny_sd3_dir)), config).shift == 3.0  # SD3's scheduler
    assert process_for(load(str(tiny_flux_dir)), config).shift == 1.0  # dynamic: unshifted
    weighted = FlowProcess(shift=1.0, weighting="cosmap").weights(torch.tensor([0.5]))
    assert torch.allclose(weighted, torch.tensor([2 / (math.pi * 0.5)]))


@pytest.mark.parametrize("mean", [1.0, -0.5, 0.0])
def test_logit_normal_noise_levels_have_diffusers_scripts_quantiles(mean):
    # diffusers' SD3 and FLUX scripts: u = sigmoid(m + d z), indices = (u * 1000).long(),
    # sigma = the shifted scheduler's sigmas[indices] (a descending schedule); the same
    # distribution here, quantile by quantile (m = +1 with SD3's shift: median 0.525)
    from diffusers import FlowMatchEulerDiscreteScheduler
    from diffusers.training_utils import compute_density_for_timestep_sampling

    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0)
    u = compute_density_for_timestep_sampling(
        "logit_normal", 50_000, logit_mean=mean, logit_std=1.0,
        generator=torch.Generator().manual_seed(1))
    theirs = scheduler.sigmas[(u * 1000).long()]
    ours = FlowProcess(3.0, "logit_normal", mean, 1.0).draw(
        50_000, torch.Generator().manual_seed(2))
    q = torch.tensor([0.05, 0.25, 0.5, 0.75, 0.95])
    assert torch.allclose(torch.quantile(ours, q), torch.quantile(theirs.float(), q), atol=0.01)
    if mean == 1.0:
        assert abs(float(ours.median()) - 0.525) < 0.01


def test_sigma_sqrt_on_the_velocity_is_diffusers_sd3_lora_loss_without_preconditioning():
    # diffusers' SD3 LoRA script, --precondition_outputs 1 (its default): the prediction
    # becomes x_s - s v_pred and is compared with x0, weighted 1/s^2 by sigma_sqrt; that is
    # the plain velocity error. Ours weights the velocity error itself by 1/s^2, which is
    # that script with --precondition_outputs 0 (docs/TRAINING.md says both)
    process = FlowProcess(1.0, weighting="sigma_sqrt")
    clean, noise, v_pred = torch.randn(3, 2, 4, 4), torch.randn(3, 2, 4, 4), torch.randn(3, 2, 4, 4)
    sigma = torch.tensor([0.2, 0.5, 0.9])
    s = sigma.view(-1, 1, 1, 1)
    noisy = process.noisy(clean, noise, sigma)
    weight = process.weights(sigma)
    preconditioned = weight * (((noisy - s * v_pred) - clean) ** 2).flatten(1).mean(1)
    plain = ((v_pred - process.target(clean, noise, sigma)) ** 2).flatten(1).mean(1)
    assert torch.allclose(preconditioned, plain, rtol=1e-4)
    ours = weight * plain
    assert not torch.allclose(ours, plain)  # ours: 1/s^2 times the plain error


def test_flux_latents_are_packed_and_positioned_as_the_pipeline_does(tiny_flux_dir):
    from diffusers import FluxPipeline

    pipe = FluxPipeline.from_pretrained(tiny_flux_dir)
    net = pipe.transformer
    latents, sigma = torch.randn(2, 1, 16, 16), torch.tensor([0.3, 0.8])
    text, pooled = torch.randn(2, 5, 32), torch.randn(2, 32)
    with torch.no_grad():
        ours = predict(net, "flux", latents, sigma,
                       {"encoder_hidden_states": text, "pooled_projections": pooled}, 3.5)
        packed = FluxPipeline._pack_latents(latents, 2, 1, 16, 16)
        theirs = net(hidden_states=packed, timestep=sigma, guidance=torch.full((2,), 3.5),
                     pooled_projections=pooled, encoder_hidden_states=text,
                     txt_ids=torch.zeros(5, 3),
                     img_ids=FluxPipeline._prepare_latent_image_ids(2, 8, 8, "cpu",
                                                                    torch.float32)).sample
        theirs = FluxPipeline._unpack_latents(theirs, 32, 32, pipe.vae_scale_factor)
    assert ours.shape == latents.shape
    assert torch.allclose(ours, theirs, atol=1e-6)


# -- Flow-DPO --------------------------------------------------------------------------


def test_full_flow_dpo_starts_at_ln2_changes_every_transformer_weight_and_nothing_else(
        flow_model, store_path, tmp_path):
    kind, base = flow_model
    config = config_for(base, store_path, tmp_path / "run", max_steps=2, eval_every=2,
                        sample_prompts=["prompt 0"], sample_seeds=1, sample_steps=2,
                        max_sequence_length=8)
    summary = Run(config).train()
    logged = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").open()]
    assert logged[0]["loss"] == pytest.approx(math.log(2), abs=1e-6)  # policy = reference
    assert summary["pairs"] == 12
    final = tmp_path / "run" / "final"
    before, after = transformer_state(base), transformer_state(final)
    assert before.keys() == after.keys()
    weights = {name for name, _ in load(str(base)).denoiser.named_parameters()}
    unchanged = [k for k in weights if torch.equal(before[k], after[k])]
    assert all(unreachable(kind, k) for k in unchanged), unchanged
    assert all(torch.equal(before[k], after[k]) for k in before.keys() - weights)  # pos_embed
    for part in [p.name for p in base.iterdir() if p.name.startswith(("vae", "text_encoder"))]:
        [weights] = (base / part).glob("*.safetensors")
        original, saved = load_file(str(weights)), load_file(str(final / part / weights.name))
        assert all(torch.equal(original[k], saved[k]) for k in original), part
    assert (tmp_path / "run" / "samples" / "step-000002.png").is_file()  # the grid
    from diffusers import DiffusionPipeline  # plain diffusers, no project code

    trained = DiffusionPipeline.from_pretrained(final)
    assert type(trained).__name__ == CLASSES[kind]
    assert not np.allclose(flow_images(trained, kind),
                           flow_images(DiffusionPipeline.from_pretrained(base), kind))


def test_lora_flow_dpo_changes_every_adapter_weight_and_loads_with_load_lora_weights(
        flow_model, store_path, tmp_path):
    kind, base = flow_model
    run = Run(config_for(base, store_path, tmp_path / "run", lora_rank=4, max_steps=3,
                         eval_every=0, max_sequence_length=8, gradient_checkpointing=True))
    assert run.denoiser.is_gradient_checkpointing
    lora_before = {n: p.detach().clone() for n, p in run.denoiser.named_parameters()
                   if "lora_" in n}
    run.train()
    lora_after = {n: p for n, p in run.denoiser.named_parameters() if "lora_" in n}
    assert lora_before and all(not torch.equal(lora_before[n], lora_after[n])
                               for n in lora_before)
    base_now = {n.replace(".base_layer", ""): p for n, p in run.denoiser.named_parameters()
                if "lora_" not in n}
    original = transformer_state(base)
    assert base_now.keys() <= original.keys()
    assert all(torch.equal(original[n], base_now[n]) for n in base_now)
    logged = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").open()]
    assert logged[0]["loss"] == pytest.approx(math.log(2), abs=1e-6)  # adapters start at 0
    from diffusers import DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(base)
    plain = flow_images(pipe, kind)
    pipe.load_lora_weights(str(tmp_path / "run" / "final"))
    assert not np.allclose(flow_images(pipe, kind), plain)
    assert load(str(tmp_path / "run" / "final")).kind == kind  # and by the project's name


def test_flow_dpo_resumes_to_the_weights_of_an_uninterrupted_run(flow_model, store_path,
                                                                 tmp_path):
    kind, base = flow_model
    common = {"max_steps": 4, "checkpoint_every": 2, "checkpoints_kept": 5, "lora_rank": 4,
              "eval_every": 0, "max_sequence_length": 8, "prompt_dropout": 0.5}
    whole = Run(config_for(base, store_path, tmp_path / "whole", **common))
    whole.train()
    (tmp_path / "resumed" / "checkpoints").mkdir(parents=True)
    shutil.copytree(tmp_path / "whole" / "checkpoints" / "checkpoint-000002",
                    tmp_path / "resumed" / "checkpoints" / "checkpoint-000002")
    resumed = Run(config_for(base, store_path, tmp_path / "resumed", resume="latest",
                             **common))
    assert resumed.train()["trained_steps"] == 2
    for (name, a), (_, b) in zip(whole.denoiser.named_parameters(),
                                 resumed.denoiser.named_parameters(), strict=True):
        assert torch.allclose(a, b, atol=1e-6), name


def test_two_processes_train_sd3_with_lora(tiny_sd3_dir, store_path, tmp_path):
    from cli.parser import save_config as save

    config = config_for(tiny_sd3_dir, store_path, tmp_path / "run", max_steps=2,
                        checkpoint_every=2, eval_every=0, batch_size=1, effective_batch=4,
                        lora_rank=4, max_sequence_length=8)
    save(config, tmp_path / "two.yaml")
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "GLOO_SOCKET_IFNAME": "lo"}
    out = subprocess.run(
        [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu",
         "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
         "--dynamo_backend", "no", "--main_process_port", "29541", "-m", "train",
         str(tmp_path / "two.yaml")],
        capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    summaries = [line for line in out.stdout.splitlines() if line.startswith("{")]
    assert len(summaries) == 1 and json.loads(summaries[0])["trained_steps"] == 2
    logged = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in logged] == [1, 2]  # one writer
    assert (tmp_path / "run" / "final" / "pytorch_lora_weights.safetensors").is_file()


def test_eval_auto_compares_an_sd3_base_with_its_flow_dpo_lora(tiny_sd3_dir, store_path,
                                                                tmp_path):
    Run(config_for(tiny_sd3_dir, store_path, tmp_path / "run", lora_rank=4, max_steps=1,
                   eval_every=0, max_sequence_length=8)).train()
    (tmp_path / "prompts.txt").write_text("prompt 0\nprompt 1\n")
    out = subprocess.run(
        [sys.executable, "-m", "eval", "auto", "--base", str(tiny_sd3_dir), "--aligned",
         str(tmp_path / "run" / "final"), "--prompts", str(tmp_path / "prompts.txt"),
         "--seeds", "2", "--steps", "2", "--images", str(tmp_path / "images"),
         "--out", str(tmp_path / "eval")],
        capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout[out.stdout.index("{"):])
    assert result["pairs"] == 4 and result["aligned"] == str(tmp_path / "run" / "final")
    assert (tmp_path / "eval" / "report.md").is_file()
