"""The trainer on tiny SD1.5- and SDXL-style pipelines: what trains, what must not, resume.

Runs are in-process (`Run(config).train()`) so the trained networks can be inspected;
the command line and two-process runs go through subprocesses.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import logging.handlers
import math
import os
import shlex
import shutil
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from cli.errors import DataError, TrainError, UsageError
from data.store import Store
from models import load
from tests.helpers import config_for, record
from train.cache import Preprocessing, _encode_latents, cache_bytes, mirrored, prepare_pair
from train.config import TrainConfig, from_command_line, resolve
from train.plan import cache_folder, cache_line, training_pairs
from train.processes import PREDICTION_TYPES, DDPMProcess
from train.trainer import Run, batch_positions, forward_pairs

REPO = Path(__file__).resolve().parents[1]


def unet_state(pipeline_dir) -> dict[str, torch.Tensor]:
    return load_file(str(pipeline_dir / "unet" / "diffusion_pytorch_model.safetensors"))


@pytest.mark.parametrize("kind", ["sd", "sdxl"])
def test_full_training_changes_every_unet_weight_and_nothing_else(
        kind, tiny_sd_dir, tiny_sdxl_dir, store_path, tmp_path):
    base = tiny_sd_dir if kind == "sd" else tiny_sdxl_dir
    warnings = logging.handlers.BufferingHandler(capacity=10_000)
    logging.getLogger("diffusers").addHandler(warnings)  # diffusers' own root logger
    try:
        summary = Run(config_for(base, store_path, tmp_path / "run", eval_every=0)).train()
    finally:
        logging.getLogger("diffusers").removeHandler(warnings)
    said = [record.getMessage() for record in warnings.buffer]
    assert not [m for m in said if "kept in float32" in m], said  # its .to(dtype) warning
    assert summary["pairs"] == 12  # the tie and the both-bad vote are not pairs
    final = tmp_path / "run" / "final"
    before, after = unet_state(base), unet_state(final)
    assert before.keys() == after.keys()
    unchanged = [k for k in before if torch.equal(before[k].float(), after[k].float())]
    assert unchanged == []
    for part in ("vae", "text_encoder") + (("text_encoder_2",) if kind == "sdxl" else ()):
        [weights] = (base / part).glob("*.safetensors")
        original, saved = load_file(str(weights)), load_file(str(final / part / weights.name))
        assert all(torch.equal(original[k], saved[k]) for k in original), part
    assert load(str(final)).kind == kind  # the model layer opens the result by path


@pytest.mark.parametrize("kind", ["sd", "sdxl"])
def test_lora_training_changes_every_adapter_weight_and_no_base_weight(
        kind, tiny_sd_dir, tiny_sdxl_dir, store_path, tmp_path):
    base = tiny_sd_dir if kind == "sd" else tiny_sdxl_dir
    config = config_for(base, store_path, tmp_path / "run", lora_rank=4, max_steps=3,
                        eval_every=0)
    run = Run(config)
    run.train()
    original = unet_state(base)
    lora = {n: p for n, p in run.denoiser.named_parameters() if "lora_" in n}
    assert lora and all(p.requires_grad for p in lora.values())
    base_now = {n.replace(".base_layer", ""): p for n, p in run.denoiser.named_parameters()
                if "lora_" not in n}
    assert base_now.keys() == original.keys()
    assert all(torch.equal(original[n], p.detach()) for n, p in base_now.items())
    # B starts at zero and A at its gaussian init: after training both have moved
    assert all(p.abs().sum() > 0 for n, p in lora.items() if "lora_B" in n)
    saved = load_file(str(tmp_path / "run" / "final" / "pytorch_lora_weights.safetensors"))
    assert len(saved) == len(lora)
    assert all(not torch.equal(v, torch.zeros_like(v)) for v in saved.values())
    # the model layer loads it by path, on top of the base it names
    loaded = load(str(tmp_path / "run" / "final"))
    plain = load(str(base))
    prompt_args = {"prompt": "prompt 1", "num_inference_steps": 2, "height": 32, "width": 32,
                   "output_type": "np"}
    a = loaded.pipeline(**prompt_args, generator=torch.Generator().manual_seed(0)).images
    b = plain.pipeline(**prompt_args, generator=torch.Generator().manual_seed(0)).images
    assert not np.allclose(a, b)


def test_lora_reference_is_the_base_and_adapters_come_back_on(tiny_sd_dir, store_path,
                                                                tmp_path):
    config = config_for(tiny_sd_dir, store_path, tmp_path / "run", lora_rank=4, max_steps=1,
                        eval_every=0)
    run = Run(config)
    run.train()
    plain = load(str(tiny_sd_dir)).pipeline.unet
    sample = torch.randn(1, 4, 16, 16)
    text = torch.randn(1, 16, 8)
    with torch.no_grad():
        reference = run.reference(sample, torch.tensor([10]), {"encoder_hidden_states": text})
        expected = plain(sample, torch.tensor([10]), encoder_hidden_states=text).sample
        policy = run.denoiser(sample, torch.tensor([10]), encoder_hidden_states=text).sample
    assert torch.allclose(reference, expected, atol=1e-5)
    assert not torch.allclose(policy, expected, atol=1e-5)  # adapters back on
    with pytest.raises(AttributeError), torch.no_grad():
        run.reference(sample, torch.tensor([10]), {"encoder_hidden_states": "not a tensor"})
    after_error = run.denoiser(sample, torch.tensor([10]), encoder_hidden_states=text).sample
    assert torch.allclose(after_error, policy)


@pytest.mark.parametrize("kind", ["sd", "sdxl", "toy"])
@pytest.mark.parametrize("lora_rank", [0, 4])
@pytest.mark.parametrize("objective", ["ipo", "kto", "mapo"])
def test_each_objective_trains_full_and_lora_and_only_dpo_ipo_kto_use_a_reference(
        objective, lora_rank, kind, tiny_sd_dir, tiny_sdxl_dir, store_path, tmp_path):
    base = {"sd": tiny_sd_dir, "sdxl": tiny_sdxl_dir, "toy": "toy"}[kind]
    config = config_for(base, store_path, tmp_path / "run", objective=objective,
                        lora_rank=lora_rank, max_steps=3, eval_every=0)
    run = Run(config)
    reference_calls = []
    reference = run.reference
    run.reference = lambda *args, **kw: reference_calls.append(1) or reference(*args, **kw)
    before = {n: p.detach().clone() for n, p in run.denoiser.named_parameters() if p.requires_grad}
    run.train()
    after = dict(run.denoiser.named_parameters())
    unchanged = [n for n, p in before.items() if torch.equal(p, after[n].detach())]
    if lora_rank:  # lora_A may keep a row a step leaves alone; every B moves off zero
        unchanged = [n for n in unchanged if "lora_B" in n]
    assert before and unchanged == [], unchanged
    needs_reference = objective in ("ipo", "kto")
    assert bool(reference_calls) == needs_reference
    assert (run.nets.reference is not None) == (needs_reference and not lora_rank)
    logged = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").open()]
    assert all(math.isfinite(m["loss"]) and "accuracy" in m and "margin" in m for m in logged)
    card = (tmp_path / "run" / "final" / "README.md").read_text()
    assert f"objective: {objective} (" in card


def test_kto_trains_on_both_bad_votes_too_with_both_images_disliked(tiny_sd_dir, store_path,
                                                                   tmp_path):
    run = Run(config_for(tiny_sd_dir, store_path, tmp_path / "run", objective="kto",
                         max_steps=2, eval_every=0))
    summary = run.train()
    assert summary["pairs"] == 13  # the 12 decisive pairs and the both-bad vote, not the tie
    labels = {tuple(row) for row in run.data.liked.tolist()}
    assert labels == {(True, False), (False, False)}
    assert run.data.liked.tolist().count([False, False]) == 1
    logged = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").open()]
    assert all("reward_liked" in m and "reference_point" in m for m in logged)
    with pytest.raises(TrainError, match="include_ties does not apply to kto"):
        TrainConfig(objective="kto", include_ties=True)


@pytest.mark.parametrize("objective", ["dpo", "ipo"])
def test_the_winner_safe_switch_scales_the_losers_gradient_and_is_logged(
        objective, tiny_sd_dir, store_path, tmp_path):
    config = config_for(tiny_sd_dir, store_path, tmp_path / "run", objective=objective,
                        winner_safe=True, winner_safe_mu=0.9, max_steps=3, eval_every=0)
    run = Run(config)
    before = {n: p.detach().clone() for n, p in run.denoiser.named_parameters()}
    run.train()
    assert any(not torch.equal(before[n], p) for n, p in run.denoiser.named_parameters())
    logged = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").open()]
    assert logged and all(0 <= m["loser_scale"] <= 1 for m in logged)
    card = (tmp_path / "run" / "final" / "README.md").read_text()
    assert "winner_safe mu 0.9" in card
    with pytest.raises(TrainError, match="winner_safe applies to dpo and ipo, not mapo"):
        TrainConfig(objective="mapo", winner_safe=True)


@pytest.mark.parametrize(("objective", "lora_rank", "ema_decay"),
                         [("dpo", 0, 0.0), ("dpo", 4, 0.0), ("ipo", 4, 0.0), ("kto", 4, 0.0),
                          ("mapo", 0, 0.0), ("dpo", 0, 0.5), ("dpo", 4, 0.5)])
def test_resume_gives_the_same_weights_as_an_uninterrupted_run(
        objective, lora_rank, ema_decay, tiny_sd_dir, store_path, tmp_path):
    common = {"max_steps": 4, "checkpoint_every": 2, "checkpoints_kept": 5,
              "lora_rank": lora_rank, "eval_every": 0, "objective": objective,
              "ema_decay": ema_decay}
    whole = Run(config_for(tiny_sd_dir, store_path, tmp_path / "whole", **common))
    whole.train()
    # a second run that only has the first run's step-2 checkpoint, as after a crash
    (tmp_path / "resumed" / "checkpoints").mkdir(parents=True)
    shutil.copytree(tmp_path / "whole" / "checkpoints" / "checkpoint-000002",
                    tmp_path / "resumed" / "checkpoints" / "checkpoint-000002")
    resumed = Run(config_for(tiny_sd_dir, store_path, tmp_path / "resumed", resume="latest",
                             **common))
    summary = resumed.train()
    assert summary["trained_steps"] == 2
    for (name, a), (_, b) in zip(whole.denoiser.named_parameters(),
                                 resumed.denoiser.named_parameters(), strict=True):
        assert torch.allclose(a, b, atol=1e-6), name
    assert resumed.nets.lr_scheduler.last_epoch == whole.nets.lr_scheduler.last_epoch == 4
    if ema_decay:  # the moving average resumed too: the same final/
        assert resumed.nets.average.optimization_step == 4
        for a, b in zip(whole.nets.average.shadow_params, resumed.nets.average.shadow_params,
                        strict=True):
            assert torch.allclose(a, b, atol=1e-6)
        saved = [sorted((tmp_path / run / "final").rglob("*.safetensors"))
                 for run in ("whole", "resumed")]
        for a, b in zip(*saved, strict=True):
            first, second = load_file(a), load_file(b)
            assert all(torch.allclose(first[k], second[k], atol=1e-6) for k in first), a


def test_with_ema_decay_final_is_the_moving_average_of_the_steps_weights(
        store_path, tmp_path):
    """final/ holds the average (diffusers' EMA: decay min(ema_decay, k / (9 + k)) at
    step k >= 2, the weights themselves at step 1); training goes on from the weights."""
    from diffusers import UNet2DConditionModel

    run = Run(config_for("toy", store_path, tmp_path / "run", max_steps=4, eval_every=0,
                         ema_decay=0.3))
    steps: list[dict[str, torch.Tensor]] = []
    run.nets.optimizer.optimizer.register_step_post_hook(lambda *_: steps.append(
        {n: p.detach().clone() for n, p in run.denoiser.named_parameters()}))
    run.train()
    assert len(steps) == 4
    average = dict(steps[0])
    for k, weights in enumerate(steps[1:], start=2):
        decay = min(0.3, k / (9 + k))
        average = {n: decay * average[n] + (1 - decay) * weights[n] for n in weights}
    final = UNet2DConditionModel.from_pretrained(tmp_path / "run" / "final" / "unet")
    last = dict(run.denoiser.named_parameters())
    moved = 0
    for name, saved in final.named_parameters():
        assert torch.allclose(saved, average[name], atol=1e-6), name
        assert torch.equal(last[name], steps[-1][name]), name  # the weights are back
        moved += not torch.allclose(saved, steps[-1][name], atol=1e-7)
    assert moved  # the average is not the last step's weights


def test_a_run_does_not_silently_overwrite_an_earlier_one(tiny_sd_dir, store_path, tmp_path):
    config = config_for(tiny_sd_dir, store_path, tmp_path / "run", checkpoint_every=1,
                        checkpoints_kept=1, eval_every=0)
    Run(config).train()
    kept = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
    assert kept == ["checkpoint-000002"]
    with pytest.raises(TrainError, match="--resume latest"):
        Run(config).train()


@pytest.mark.parametrize("kind", ["sd", "sdxl"])
def test_samples_are_scored_logged_and_the_best_kept(kind, tiny_sd_dir, tiny_sdxl_dir,
                                                     tmp_path):
    scorer_file = tmp_path / "bright.py"
    scorer_file.write_text(
        "import numpy as np, torch\n"
        "def score(prompts, images):\n"
        "    return torch.tensor([float(np.asarray(i).mean()) for i in images])\n")
    sys.path.insert(0, str(tmp_path))
    try:
        base = tiny_sd_dir if kind == "sd" else tiny_sdxl_dir
        # 10 prompts of 2 pairs: one whole prompt is held out
        store = many_prompt_store(tmp_path / "prefs.duckdb", prompts=10, per_prompt=2)
        config = config_for(base, store, tmp_path / "run", eval_every=1,
                            sample_prompts=["prompt 0", "prompt 1"], sample_seeds=2,
                            sample_steps=2, scorer="bright:score", keep_best=True,
                            holdout_pairs=4)
        summary = Run(config).train()
    finally:
        sys.path.remove(str(tmp_path))
    run = tmp_path / "run"
    evals = [json.loads(line) for line in (run / "eval.jsonl").read_text().splitlines()]
    assert [e["step"] for e in evals] == [0, 1, 2]
    assert all(0 <= e["heldout_accuracy"] <= 1 and e["sample_score"] > 0 for e in evals)
    best = max(evals, key=lambda e: e["sample_score"])
    assert summary["best_step"] == best["step"]
    assert (run / "best" / "unet").is_dir()
    grid = Image.open(run / "samples" / "step-000002.png")
    assert grid.width > 2 * 96 and grid.height > 2 * 96
    logged = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in logged] == [1, 2]
    for key in ("loss", "accuracy", "reward_preferred", "reward_rejected", "margin",
                "model_mse_preferred", "ref_mse_rejected", "grad_norm", "lr", "skipped_steps"):
        assert key in logged[0], key
    assert list((run / "logs" / "dpo").glob("events.out.tfevents.*"))  # TensorBoard


def test_a_guard_scorer_is_logged_beside_the_score_and_bounds_the_best_checkpoint(
        store_path, tmp_path):
    scorer_file = tmp_path / "dark.py"  # a preference that ignores the prompt
    scorer_file.write_text(
        "import numpy as np, torch\n"
        "def score(prompts, images):\n"
        "    return torch.tensor([-float(np.asarray(i).mean()) for i in images])\n")
    sys.path.insert(0, str(tmp_path))
    try:
        config = config_for("toy", store_path, tmp_path / "run", eval_every=1, max_steps=4,
                            sample_prompts=["a red circle", "a blue square"], sample_seeds=2,
                            sample_steps=4, scorer="dark:score", keep_best=True,
                            guard_scorers=["toy_judge"], guard_max_drop=0.0,
                            learning_rate=3e-3)
        summary = Run(config).train()
    finally:
        sys.path.remove(str(tmp_path))
    run = tmp_path / "run"
    evals = [json.loads(line) for line in (run / "eval.jsonl").read_text().splitlines()]
    assert [e["step"] for e in evals] == [0, 1, 2, 3, 4]
    assert all(0 <= e["guard_toy_judge"] <= 1 for e in evals)
    start = evals[0]["guard_toy_judge"]
    allowed = [e for e in evals if e["guard_toy_judge"] >= start]  # max drop 0: no lower
    assert len(allowed) < len(evals)  # at this learning rate adherence falls: the guard binds
    best = max(allowed, key=lambda e: e["sample_score"])
    assert summary["best_step"] == best["step"]
    assert summary["best_guards"] == {"guard_toy_judge": best["guard_toy_judge"]}
    assert summary["guard_start"] == {"guard_toy_judge": start}
    # the summary says which steps scored better than the one kept but broke the guard
    held, best_so_far = [], None
    for e in evals:
        if best_so_far is None or e["sample_score"] > best_so_far:
            if e["guard_toy_judge"] >= start:
                best_so_far = e["sample_score"]
            else:
                held.append(e["step"])
    assert summary["held_back_steps"] == held
    chart = Image.open(run / "scores.png")
    assert chart.width >= 400  # the score and the guard, on one chart
    with pytest.raises(TrainError, match="guard_max_drop needs keep_best and guard_scorers"):
        TrainConfig(guard_max_drop=0.05)


def test_a_second_run_reuses_the_latent_cache(tiny_sd_dir, store_path, tmp_path):
    first = Run(config_for(tiny_sd_dir, store_path, tmp_path / "a", eval_every=0, max_steps=1))
    first.train()
    second = Run(config_for(tiny_sd_dir, store_path, tmp_path / "b", eval_every=0,
                            max_steps=1))
    second.train()
    assert not first.data.reused and second.data.reused
    freed = second.model.pipeline
    assert freed.text_encoder is None and freed.vae is None
    other = Run(config_for(tiny_sd_dir, store_path, tmp_path / "c", eval_every=0,
                           max_steps=1, random_flip=False, cache_workers=2))
    other.train()
    assert not other.data.reused  # different preprocessing, different cache


def test_both_images_of_a_pair_get_the_same_crop():
    preferred = Image.new("RGB", (48, 32), "white")
    preferred.paste((255, 0, 0), (0, 0, 20, 32))  # a red band on the left
    rejected = Image.new("RGB", (96, 64), "white")  # another size: resized to the first's
    rejected.paste((0, 0, 255), (0, 0, 40, 64))
    prep = Preprocessing(resolution=16, random_crop=True, random_flip=True, seed=0)
    lefts = set()
    for index in range(20):
        pixels, time_ids = prepare_pair(preferred, rejected, prep, index)
        assert pixels.shape == (2, 3, 16, 16)
        red = (pixels[0, 0] > 0.5) & (pixels[0, 2] < 0)
        blue = (pixels[1, 2] > 0.5) & (pixels[1, 0] < 0)  # where the first image is red
        assert red.any() and np.array_equal(red.any(axis=0), blue.any(axis=0)), index
        assert red[:, 0].any()  # never mirrored here: flips are drawn per step
        lefts.add(time_ids[3])
        assert time_ids[:2] == [32, 48] and time_ids[4:] == [16, 16]
    assert len(lefts) > 1  # the crop is random


def orientations(run: Run, config: TrainConfig, steps: int) -> dict[int, set[bool]]:
    """For each pair the loop read in `steps` steps, whether it came mirrored (True),
    plain (False) or both; every latent read is exactly one of the two cached copies."""
    cache, ways = run.data.cache, {}
    for step in range(steps):
        for micro in range(run.accumulation):
            batch, _ = run.micro_batch(step, micro)
            positions = batch_positions(config, step, micro, 0, 1)
            for index, latents in zip(run.data.order.at(positions), batch.latents,
                                      strict=True):
                plain = torch.from_numpy(cache.rows("latents", [index])[0])
                mirror = torch.from_numpy(cache.rows("flipped", [index])[0])
                assert torch.equal(latents, plain) != torch.equal(latents, mirror)
                ways.setdefault(index, set()).add(torch.equal(latents, mirror))
    return ways


def test_random_flip_is_drawn_per_step_from_both_cached_orientations(
        tiny_sd_dir, store_path, tmp_path):
    """A pair appears mirrored at some steps and not at others, both images together,
    the same for the same seed; the mirrored copy is the VAE's latent of the mirrored
    images (the VAE is not flip-equivariant, so a flipped latent would not be)."""
    config = config_for(tiny_sd_dir, store_path, tmp_path / "run", eval_every=0,
                        flip_per_pair=False)
    run = Run(config)
    cache = run.data.cache
    assert cache.rows("flipped", [0]).shape == cache.rows("latents", [0]).shape
    ways = orientations(run, config, steps=12)  # 4 epochs of the 12 pairs
    assert sum(len(w) == 2 for w in ways.values()) >= 6, ways  # most pairs, both ways
    again = Run(config_for(tiny_sd_dir, store_path, tmp_path / "again", eval_every=0,
                           flip_per_pair=False))
    for step, micro in [(0, 0), (5, 1), (11, 0)]:
        assert torch.equal(again.micro_batch(step, micro)[0].latents,
                           run.micro_batch(step, micro)[0].latents)
    assert again.data.reused
    pair = training_pairs(config)[3]
    prep = Preprocessing(config.resolution, config.random_crop, True, config.seed)
    pixels, _ = prepare_pair(pair.preferred, pair.rejected, prep, 3)
    vae = load(str(tiny_sd_dir)).pipeline.vae
    expected = torch.from_numpy(_encode_latents(vae, "sd", mirrored(pixels)[None], prep)[0])
    got = torch.from_numpy(cache.rows("flipped", [3])[0])
    assert torch.allclose(got, expected, atol=2e-3)
    plain = torch.from_numpy(cache.rows("latents", [3])[0])
    assert not torch.allclose(got, plain.flip(-1), atol=2e-3)


def test_flip_per_pair_keeps_each_pairs_orientation_for_the_whole_run(
        tiny_sd_dir, store_path, tmp_path):
    config = config_for(tiny_sd_dir, store_path, tmp_path / "run", eval_every=0,
                        flip_per_pair=True)
    run = Run(config)
    ways = orientations(run, config, steps=12)
    assert all(len(w) == 1 for w in ways.values())  # one orientation each, every epoch
    assert {next(iter(w)) for w in ways.values()} == {True, False}  # some of each
    assert run.data.pair_flips.tolist() == [ways[i] == {True} for i in range(len(ways))]


@pytest.fixture
def fresh_accelerator_state():
    """accelerate keeps one process-wide state: a bf16 run in this process needs it reset,
    and the next test needs it reset again."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


def test_bf16_reference_computes_what_the_policy_does_at_step_0(
        store_path, tmp_path, fresh_accelerator_state):
    """CPU bf16 autocast, beta 5000: model = reference at step 0, so the loss is ln 2.
    On the bundled toy model: a trained one, whose norm weights, unlike a fresh model's
    ones and zeros, are not exact in bf16."""
    from accelerate.state import AcceleratorState

    for lora_rank in (0, 4):
        AcceleratorState._reset_state(reset_partial_state=True)
        out = tmp_path / f"rank{lora_rank}"
        config = config_for("toy", store_path, out, mixed_precision="bf16",
                            beta=5000.0, max_steps=1, eval_every=0, lora_rank=lora_rank)
        run = Run(config)
        assert run.accelerator.mixed_precision == "bf16"
        run.train()
        [first] = [json.loads(line) for line in (out / "metrics.jsonl").open()]
        assert first["margin"] == 0.0 and first["accuracy"] == 0.5, (lora_rank, first)
        assert first["loss"] == pytest.approx(math.log(2), abs=1e-6), (lora_rank, first)
        assert first["ref_mse_preferred"] == first["model_mse_preferred"]


def perturbed_copy(pipeline_dir: Path, out: Path, scale: float = 0.05) -> Path:
    """`pipeline_dir` with a little noise in every UNet weight: another round's model."""
    from diffusers import UNet2DConditionModel

    shutil.copytree(pipeline_dir, out)
    unet = UNet2DConditionModel.from_pretrained(out / "unet")
    torch.manual_seed(1)
    with torch.no_grad():
        for parameter in unet.parameters():
            parameter.add_(scale * torch.randn_like(parameter) * parameter.std().nan_to_num(1))
    unet.save_pretrained(out / "unet")
    return out


def first_metrics(out: Path) -> dict:
    return json.loads((out / "metrics.jsonl").read_text().splitlines()[0])


def test_a_reference_model_apart_from_the_trained_one(tiny_sd_dir, store_path, tmp_path):
    # trained from a later round's weights against the base: step 0's errors differ
    later = perturbed_copy(tiny_sd_dir, tmp_path / "later")
    before = unet_state(tiny_sd_dir)
    config = config_for(later, store_path, tmp_path / "apart", reference_model=str(tiny_sd_dir))
    Run(config).train()
    first = first_metrics(tmp_path / "apart")
    assert first["ref_mse_preferred"] != pytest.approx(first["model_mse_preferred"], rel=1e-3)
    assert first["loss"] != pytest.approx(math.log(2), abs=1e-4)
    after = unet_state(tmp_path / "apart" / "final")
    later_state = unet_state(later)
    assert all(not torch.equal(after[k], later_state[k]) for k in after)  # trained from later
    assert all(torch.equal(before[k], unet_state(tiny_sd_dir)[k]) for k in before)
    # the model itself named as its reference is the default's run, loss ln 2 at step 0
    same = config_for(tiny_sd_dir, store_path, tmp_path / "same", reference_model=str(tiny_sd_dir),
                      max_steps=1)
    Run(same).train()
    first = first_metrics(tmp_path / "same")
    assert first["loss"] == pytest.approx(math.log(2), abs=1e-7)
    assert first["ref_mse_preferred"] == first["model_mse_preferred"]


def test_a_reference_model_must_fit_the_trained_one(tiny_sd_dir, tiny_sdxl_dir, store_path,
                                                    tmp_path):
    with pytest.raises(TrainError, match="not the same architecture"):
        Run(config_for(tiny_sd_dir, store_path, tmp_path / "a",
                       reference_model=str(tiny_sdxl_dir)))
    for values, message in [({"objective": "mapo"}, "mapo trains without a reference"),
                            ({"lora_rank": 4}, "needs full fine-tuning")]:
        with pytest.raises(TrainError, match=message):
            TrainConfig(reference_model="toy", **values)


@pytest.fixture(scope="module")
def predicting_sample_dir(tiny_sd_dir, tmp_path_factory):
    """The tiny SD pipeline with a scheduler that says it predicts the clean sample."""
    folder = tmp_path_factory.mktemp("sample-model") / "pipeline"
    shutil.copytree(tiny_sd_dir, folder)
    config_file = folder / "scheduler" / "scheduler_config.json"
    config = json.loads(config_file.read_text())
    config_file.write_text(json.dumps({**config, "prediction_type": "sample"}))
    return folder


def test_a_sample_predicting_model_is_trained_against_the_clean_latents(
        predicting_sample_dir, store_path, tmp_path):
    config = config_for(predicting_sample_dir, store_path, tmp_path / "run", eval_every=0,
                        objective="sft", prompt_dropout=0.0, max_steps=1)
    run = Run(config)
    assert run.process.prediction_type == "sample"
    batch, generator = run.micro_batch(0, 0)
    replay = torch.Generator().set_state(generator.get_state())
    with torch.no_grad():
        _, metrics = forward_pairs(run.denoiser, run.reference, run.process, "sd", batch,
                                   run.data.cache, generator, config)
        clean = batch.latents[:, 0]
        noise = torch.randn(clean.shape, generator=replay)
        timesteps = torch.randint(0, 1000, (len(clean),), generator=replay)
        noisy = run.process.noisy(clean, noise, timesteps)
        predicted = run.denoiser(noisy, timesteps, encoder_hidden_states=batch.text).sample
    against_clean = float((predicted - clean).pow(2).mean())
    against_noise = float((predicted - noise).pow(2).mean())
    assert float(metrics["model_mse_preferred"]) == pytest.approx(against_clean, rel=1e-5)
    assert abs(against_clean - against_noise) > 1e-3
    assert run.train()["trained_steps"] == 1


def test_each_prediction_type_has_its_target_and_others_are_refused(tiny_sd_dir, store_path,
                                                                     tmp_path):
    from diffusers import DDPMScheduler

    clean, noise = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    timesteps = torch.tensor([10, 900])
    targets = {}
    for kind in PREDICTION_TYPES:
        process = DDPMProcess(DDPMScheduler(prediction_type=kind).config)
        targets[kind] = process.target(clean, noise, timesteps)
    assert torch.equal(targets["epsilon"], noise) and torch.equal(targets["sample"], clean)
    velocity = DDPMScheduler().get_velocity(clean, noise, timesteps)
    assert torch.equal(targets["v_prediction"], velocity)
    assert not torch.allclose(velocity, noise) and not torch.allclose(velocity, clean)
    folder = tmp_path / "flow"
    shutil.copytree(tiny_sd_dir, folder)
    config_file = folder / "scheduler" / "scheduler_config.json"
    config_file.write_text(json.dumps({**json.loads(config_file.read_text()),
                                       "prediction_type": "flow_prediction"}))
    with pytest.raises(TrainError, match="predicts 'flow_prediction'"):
        Run(config_for(folder, store_path, tmp_path / "run", eval_every=0))
    assert not (tmp_path / "cache").exists()  # refused before any caching


def test_a_run_is_ready_when_made_and_its_methods_add_no_state(tiny_sd_dir, tmp_path):
    store = many_prompt_store(tmp_path / "prefs.duckdb", prompts=10, per_prompt=4)
    many_prompt_store(store, prompts=6, per_prompt=2, split="validation", start=8)
    run = Run(config_for(tiny_sd_dir, store, tmp_path / "run", eval_every=0,
                         holdout_pairs=64))
    assert len(run.data.cache) == 52 and len(run.data.heldout) == 8  # validation pairs cached
    made = set(vars(run))
    assert run.train_step(0)["lr"] > 0  # no other method has to run first
    accuracy = run.heldout_accuracy()
    assert accuracy is not None and run.evaluate(0) == {"heldout_accuracy": accuracy}
    run.train()
    assert set(vars(run)) == made


def test_a_config_made_in_code_is_checked_as_the_command_line_is(tmp_path):
    assert TrainConfig(data="one.duckdb").data == ["one.duckdb"]
    assert TrainConfig(beta=2500).beta == 2500
    with pytest.raises(TrainError, match="max_steps: expected int, got 'many'"):
        TrainConfig(max_steps="many")
    with pytest.raises(TrainError, match="lora_targets: expected a list of str"):
        TrainConfig(lora_targets=[1])
    with pytest.raises(dataclasses.FrozenInstanceError):  # checked once: it cannot change
        TrainConfig().max_steps = 0
    for values, message in [
                            ({"objective": "ppo"}, "objective must be one of dpo, ipo, kto"),
                            ({"beta_mapo": 0}, "beta_mapo must be above 0"),
                            ({"batch_size": 0}, "batch_size must be at least 1"),
                            ({"holdout_pairs": -1}, "holdout_pairs must be 0 or more"),
                            ({"prompt_dropout": 2}, "prompt_dropout must be between")]:
        with pytest.raises(TrainError, match=message):
            TrainConfig(**values)
        key, value = next(iter(values.items()))
        out = run_command("toy", f"--{key}", str(value))
        assert out.returncode == 1 and out.stderr.count("\n") == 1, out.stderr
        assert message in out.stderr  # the same line as the command line's


def test_the_held_out_set_scales_with_the_collection(store_path, tmp_path):
    config = TrainConfig(holdout_pairs=64)
    assert [config.heldout(n) for n in (9, 12, 40, 640, 5000)] == [0, 1, 4, 64, 64]
    out = run_command("toy", "--data", str(store_path), "--dry_run")
    assert out.returncode == 0, out.stderr
    # four prompts of three pairs: a held-out prompt would take three pairs, one in ten is 1
    assert ("12 pairs); 0 held out (every prompt has more than 1 pair, the most held out), "
            "12 to train on") in out.stdout, out.stdout


def many_prompt_store(path: Path, prompts: int, per_prompt: int, split: str = "train",
                      start: int = 0) -> Path:
    """A store of `prompts` x `per_prompt` decisive votes ("prompt N" in upper or lower case,
    spaced oddly now and then: the same prompt to a person)."""
    with Store(path) as store:
        for p in range(start, start + prompts):
            for k in range(per_prompt):
                caption = f"Prompt  {p}" if k % 2 else f"prompt {p}"
                record(store, caption, "left" if k % 3 else "right", split=split)
    return path


def test_held_out_pairs_are_whole_prompts_none_of_them_trained_on(tmp_path):
    from data.heldout import prompt_key
    from train.plan import run_pairs

    store = many_prompt_store(tmp_path / "prefs.duckdb", prompts=40, per_prompt=5)
    config = TrainConfig(data=[str(store)], holdout_pairs=64)
    run = run_pairs(config)
    prompt = [prompt_key(run.pairs.describe(i)[0]) for i in range(len(run.pairs))]
    held, trained = {prompt[i] for i in run.heldout}, {prompt[i] for i in run.train}
    assert len(run.heldout) == 20 and len(held) == 4  # one in ten of 200: four whole prompts
    assert not held & trained
    assert sorted([*run.heldout, *run.train]) == list(range(200))
    assert run.rule.startswith("4 whole prompts, none trained on")
    # the same split on every process and every launch; another seed draws other prompts
    assert list(run_pairs(config).heldout) == list(run.heldout)
    other = run_pairs(TrainConfig(data=[str(store)], holdout_pairs=64, seed=1))
    assert {prompt[i] for i in other.heldout} != held


def test_the_data_s_own_validation_split_is_what_is_held_out(tmp_path):
    from data.heldout import prompt_key
    from train.plan import run_pairs

    store = many_prompt_store(tmp_path / "prefs.duckdb", prompts=10, per_prompt=4)
    many_prompt_store(store, prompts=6, per_prompt=2, split="validation", start=8)
    run = run_pairs(TrainConfig(data=[str(store)], holdout_pairs=64))
    assert (len(run.pairs), len(run.train), len(run.heldout)) == (52, 40, 8)
    splits = {run.pairs.describe(i)[1].split for i in run.heldout}
    assert splits == {"validation"}
    prompt = [prompt_key(run.pairs.describe(i)[0]) for i in range(len(run.pairs))]
    assert {prompt[i] for i in run.heldout} == {f"prompt {p}" for p in range(10, 14)}
    assert run.rule == ("the data's validation split, whole prompts, at most holdout_pairs "
                        "64; 4 of its pairs left out: their prompt is trained on")
    from train.plan import plan

    assert "; 8 held out (the data's validation split" in plan(
        resolve("toy", {"data": [str(store)]}), 1)


def test_config_from_preset_file_and_flags(tmp_path):
    config = resolve("toy", {"learning_rate": "3e-5", "lora_rank": "4",
                             "sample_prompts": ["a red circle"]})
    assert (config.model, config.learning_rate, config.lora_rank) == ("toy", 3e-5, 4)
    assert config.output_dir == "runs/train/toy"
    path = tmp_path / "mine.yaml"
    path.write_text("model: toy\nbeta: 2500\nmax_steps: 10\nrandom_flip: false\n")
    from_file = resolve(str(path), {"max_steps": "20"})
    assert (from_file.beta, from_file.max_steps, from_file.random_flip) == (2500.0, 20, False)
    assert from_file.output_dir == "runs/train/mine"
    with pytest.raises(UsageError, match="unknown key 'betta': use beta, the nearest"):
        resolve("toy", {"betta": 1})
    with pytest.raises(UsageError, match="unknown flag --betta: use --beta, the nearest"):
        from_command_line(["toy", "--betta", "1"])
    with pytest.raises(UsageError, match="unknown flag --lr: another trainer's name for "
                                         "--learning_rate: use --learning_rate"):
        from_command_line(["toy", "--lr", "1"])  # not --lr_scheduler by abbreviation
    with pytest.raises(UsageError, match="neither a preset"):
        resolve("sd2")
    with pytest.raises(TrainError, match="not a multiple"):
        TrainConfig(effective_batch=10, batch_size=4).accumulation(1)
    assert TrainConfig(effective_batch=2048, batch_size=8).accumulation(16) == 16


def run_command(*args, env=None):
    return subprocess.run([sys.executable, "-m", "train", *args], capture_output=True,
                          text=True, env=env)


def test_help_lists_every_key_and_the_presets(capsys):
    from train.__main__ import main

    with pytest.raises(SystemExit) as stopped:
        main(["--help"])
    assert stopped.value.code == 0
    text = capsys.readouterr().out
    for key in ("--beta", "--lora_rank", "--effective_batch", "--resume", "--scorer"):
        assert key in text
    flat = " ".join(text.split())
    assert "(default: by size)" in flat
    assert all(f"--{f.name} " in flat for f in fields(TrainConfig)), flat
    for preset in ("sd15", "sdxl", "lora", "toy"):
        assert preset in text


def test_bad_input_gets_one_line(tmp_path, capsys):
    from train.__main__ import main

    code = main(["toy", "--data", str(tmp_path / "missing.duckdb"), "--output_dir",
                 str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 1 and err.startswith("error: ") and err.count("\n") == 1, err
    assert main(["toy", "--max_steps", "many"]) == 1
    err = capsys.readouterr().err
    assert "max_steps" in err and err.count("\n") == 1


def test_an_error_under_readmes_accelerate_launch_is_its_one_line(tmp_path):
    """README's launch flags: accelerate adds no traceback and no list of defaults."""
    from benchmarks.toy_loop import readme_stages

    toy = readme_stages("toy")["train"]
    argv = shlex.split(toy)
    launcher = Path(sys.executable).parent / "accelerate"
    missing = tmp_path / "missing.duckdb"
    out = subprocess.run(
        [str(launcher), *argv[1:argv.index("-m")], "-m", "train", "toy", "--data",
         str(missing), "--output_dir", str(tmp_path / "run")],
        capture_output=True, text=True, cwd=REPO, timeout=300)
    assert out.returncode == 1
    assert out.stderr.startswith("error: ") and out.stderr.count("\n") == 1, out.stderr
    assert str(missing) in out.stderr and out.stdout == ""
    assert not (tmp_path / "run").exists()  # nothing written for a run that cannot start


def test_an_error_under_a_two_process_launch_is_said_once_and_first(tmp_path):
    """torch's launcher adds its failure report after it; the answer is the first line."""
    missing = tmp_path / "missing.duckdb"
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "GLOO_SOCKET_IFNAME": "lo"}
    out = subprocess.run(
        [sys.executable, "-m", "accelerate.commands.launch", "-q", "--multi_gpu",
         "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
         "--dynamo_backend", "no", "--main_process_port", "29534", "-m", "train", "toy",
         "--data", str(missing), "--batch_size", "1", "--effective_batch", "2",
         "--output_dir", str(tmp_path / "run")],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert out.returncode != 0
    first = out.stderr.splitlines()[0]
    assert first.startswith("error: ") and str(missing) in first, out.stderr
    assert out.stderr.count("error: ") == 1, out.stderr  # not once per process
    assert "Traceback" not in out.stderr


# DPO with its reference copy, KTO with its batch-level reference point, MaPO with no
# reference at all (IPO and SFT share DPO's and MaPO's paths; test_train_loss has their math)
@pytest.mark.parametrize("objective", ["dpo", "kto", "mapo"])
def test_two_processes_train_and_write_one_checkpoint_once(objective, tiny_sd_dir, store_path,
                                                            tmp_path):
    config = config_for(tiny_sd_dir, store_path, tmp_path / "run", max_steps=2,
                        checkpoint_every=2, eval_every=0, batch_size=1, effective_batch=4,
                        objective=objective)
    config_file = tmp_path / "two.yaml"
    from cli.parser import save_config as save

    save(config, config_file)
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "GLOO_SOCKET_IFNAME": "lo"}
    out = subprocess.run(
        [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu",
         "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
         "--dynamo_backend", "no", "--main_process_port", "29533", "-m", "train",
         str(config_file)],
        capture_output=True, text=True, env=env, timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    checkpoints = sorted((tmp_path / "run" / "checkpoints").iterdir())
    assert [p.name for p in checkpoints] == ["checkpoint-000002"]
    files = sorted(p.name for p in checkpoints[0].iterdir())
    assert files.count("model.safetensors") == 1
    assert "random_states_0.pkl" in files and "random_states_1.pkl" in files
    summaries = [line for line in out.stdout.splitlines() if line.startswith("{")]
    assert len(summaries) == 1 and json.loads(summaries[0])["trained_steps"] == 2
    logged = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in logged] == [1, 2]  # one writer
    assert (tmp_path / "run" / "final" / "unet").is_dir()


def test_sft_with_adafactor_and_checkpointing_trains_without_a_reference(
        tiny_sd_dir, store_path, tmp_path):
    config = config_for(tiny_sd_dir, store_path, tmp_path / "run", objective="sft",
                        optimizer="adafactor", gradient_checkpointing=True, eval_every=0)
    run = Run(config)
    run.train()
    assert run.nets.reference is None  # SFT needs no second UNet
    assert run.denoiser.is_gradient_checkpointing
    logged = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").open()]
    assert all(m["loss"] > 0 and "accuracy" not in m for m in logged)
    before, after = unet_state(tiny_sd_dir), unet_state(tmp_path / "run" / "final")
    assert any(not torch.equal(before[k], after[k]) for k in before)


def test_store_and_parquet_shards_train_together_by_ratio(tiny_sd_dir, store_path, tmp_path):
    from data.pickapic import export_pairs

    with Store(store_path, read_only=True) as store:
        export_pairs(store, tmp_path / "export")
    config = config_for(tiny_sd_dir, store_path, tmp_path / "run", eval_every=0, max_steps=1,
                        data=[str(store_path), str(tmp_path / "export")],
                        data_ratios=[1, 3], num_samples=40)
    summary = Run(config).train()
    assert summary["pairs"] == 40  # 10 from the store, 30 from the shards (oversampled)


# --- reliability: a run that fails says why in one line and loses nothing -------------
def poison(cache, pairs: slice) -> None:
    """Write NaN into both cached orientations of `pairs`, as a damaged encode would."""
    folders, chunk, row = cache.parts["pairs"]
    for index in range(len(cache))[pairs]:
        for name in ("latents.npy", "flipped.npy"):
            path = folders[chunk[index]] / name
            if path.exists():
                array = np.load(path, mmap_mode="r+")
                array[row[index]] = np.nan
                array.flush()
                del array


def test_a_run_whose_steps_are_mostly_skipped_fails_and_names_the_cause(store_path, tmp_path):
    """One NaN pair of twelve skips one step of three, counted; NaN latents everywhere
    fail the run with one line naming the cache, and no final/ is written."""
    run = Run(config_for("toy", store_path, tmp_path / "few", eval_every=0, max_steps=3))
    poison(run.data.cache, slice(0, 1))
    summary = run.train()
    assert summary["skipped_steps"] == 1 and (tmp_path / "few" / "final").is_dir()
    poison(run.data.cache, slice(None))
    all_nan = Run(config_for("toy", store_path, tmp_path / "nan", eval_every=0, max_steps=3))
    assert all_nan.data.reused
    with pytest.raises(TrainError) as failed:
        all_nan.train()
    message = str(failed.value)
    assert "3 of 3 steps were skipped" in message, message
    assert f"delete {all_nan.data.cache.directory}" in message, message
    assert not (tmp_path / "nan" / "final").exists()
    # beta = inf makes inside = inf * 0 = nan while the model equals its reference: a loss
    # that is not finite with finite latents; the run says to lower the rate
    diverged = Run(config_for("toy", store_path, tmp_path / "inf", eval_every=0, max_steps=2,
                              beta=float("inf"), cache_dir=str(tmp_path / "fresh-cache")))
    before = {n: p.detach().clone() for n, p in diverged.denoiser.named_parameters()}
    with pytest.raises(TrainError, match=r"2 of 2 steps were skipped.*--learning_rate"):
        diverged.train()
    assert all(torch.equal(before[n], p) for n, p in diverged.denoiser.named_parameters())


def damage_cache(chunk: Path, damage: str) -> None:
    if damage == "truncated latents":
        data = (chunk / "latents.npy").read_bytes()
        (chunk / "latents.npy").write_bytes(data[:len(data) // 2])
    elif damage == "empty keys.json":
        (chunk / "keys.json").write_text("")
    else:
        (chunk / "latents.npy").unlink()


@pytest.mark.parametrize("damage", ["truncated latents", "empty keys.json", "missing latents"])
def test_a_damaged_cache_chunk_is_named_and_encoded_again(damage, store_path, tmp_path,
                                                          capsys):
    from train.cache import PairCache

    first = Run(config_for("toy", store_path, tmp_path / "first", eval_every=0, max_steps=1))
    cache = first.data.cache
    chunk = cache.parts["pairs"][0][0]
    del first
    damage_cache(chunk, damage)
    with pytest.raises(TrainError, match="is damaged"):
        PairCache(cache.directory, cache.keys, cache.captions)
    capsys.readouterr()
    run = Run(config_for("toy", store_path, tmp_path / "run", eval_every=0, max_steps=1))
    said = capsys.readouterr().out
    if damage != "empty keys.json":  # else its pairs count as never encoded, and are
        assert f"cache {chunk} is damaged" in said and "encoding it again" in said, said
    assert not run.data.reused and run.train()["trained_steps"] == 1
    assert len(PairCache(cache.directory, cache.keys, cache.captions)) == 12


def test_a_build_removes_what_killed_builds_on_this_machine_left(store_path, tmp_path):
    """A killed build leaves its temporary chunk folder; the next build removes those of
    dead processes on this machine, and no other's."""
    import socket

    first = Run(config_for("toy", store_path, tmp_path / "first", eval_every=0, max_steps=1))
    chunk = first.data.cache.parts["pairs"][0][0]
    del first
    shutil.rmtree(chunk)
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    here = socket.gethostname()
    killed = chunk.with_name(f"{chunk.name}.tmp-{here}-{gone.stdout.strip()}")
    running = chunk.with_name(f"{chunk.name}.tmp-{here}-{os.getppid()}")
    elsewhere = chunk.with_name(f"{chunk.name}.tmp-other-node-{gone.stdout.strip()}")
    for folder in (killed, running, elsewhere):
        (folder).mkdir()
        (folder / "latents.npy").write_bytes(b"half a chunk")
    Run(config_for("toy", store_path, tmp_path / "run", eval_every=0, max_steps=1))
    assert (chunk / "keys.json").exists() and not killed.exists()
    assert running.exists() and elsewhere.exists()


def test_a_store_without_decisive_pairs_is_named_with_the_reason(tmp_path):
    from tests.helpers import record

    store = tmp_path / "undecided.duckdb"
    with Store(store) as opened:
        record(opened, "a red circle", "tie")
        record(opened, "a blue square", "both_bad")
        record(opened, "a green triangle", "skip")
    out = run_command("toy", "--data", str(store), "--output_dir", str(tmp_path / "run"))
    assert out.returncode == 1 and out.stderr.count("\n") == 1, out.stderr
    assert str(store) in out.stderr and "no decisive pair" in out.stderr, out.stderr
    assert "--objective kto" in out.stderr, out.stderr  # it holds a both-bad vote
    empty = tmp_path / "empty.duckdb"
    Store(empty).close()
    with pytest.raises(DataError, match=f"{empty} holds no decisive pair in split 'train':"):
        training_pairs(TrainConfig(data=[str(empty)]))


KILL_AT_FIRST_FILE = """
import os, runpy, signal, sys

def hook(event, args):
    # shutil.rmtree of the pruned folder is armed; its first file removal is a real kill
    global armed
    if event == "shutil.rmtree" and str(args[0]).endswith("checkpoint-000001"):
        armed = True
    elif event == "os.remove" and armed:
        os.kill(os.getpid(), signal.SIGKILL)

armed = False
sys.addaudithook(hook)
sys.argv = ["train", *sys.argv[1:]]
runpy.run_module("train", run_name="__main__")
"""


def test_a_kill_while_pruning_leaves_no_checkpoint_that_looks_complete(store_path, tmp_path):
    from train import checkpoints

    out = tmp_path / "run"
    Run(config_for("toy", store_path, out, eval_every=0, max_steps=2, checkpoint_every=1,
                   checkpoints_kept=5)).train()
    killed = subprocess.run(
        [sys.executable, "-c", KILL_AT_FIRST_FILE, "toy", "--data", str(store_path),
         "--output_dir", str(out), "--cache_dir", str(tmp_path / "cache"), "--resolution",
         "32", "--batch_size", "2", "--effective_batch", "4", "--max_steps", "3",
         "--checkpoint_every", "1", "--checkpoints_kept", "2", "--eval_every", "0",
         "--ema_decay", "0", "--resume", "latest"], capture_output=True, text=True, cwd=REPO,
        timeout=300)
    assert killed.returncode == -9, killed.stderr[-2000:]
    half = out / "checkpoints" / "checkpoint-000001"
    assert half.is_dir() and list(half.iterdir())  # killed part-way through the deletion
    assert [p.name for p in checkpoints.completed(out)] == ["checkpoint-000002",
                                                            "checkpoint-000003"]
    with pytest.raises(TrainError, match="not a complete checkpoint"):
        checkpoints.find(out, str(half))


def test_resuming_another_kind_of_run_changes_nothing_and_says_so(store_path, tmp_path):
    out = tmp_path / "run"
    Run(config_for("toy", store_path, out, eval_every=0, max_steps=1,
                   checkpoint_every=1)).train()
    before = {p: p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}
    tried = run_command("toy", "--data", str(store_path), "--output_dir", str(out),
                        "--cache_dir", str(tmp_path / "cache"), "--lora_rank", "8",
                        "--max_steps", "20", "--resume", "latest")
    assert tried.returncode == 1 and tried.stderr.count("\n") == 1, tried.stderr[-3000:]
    assert "full fine-tune" in tried.stderr and "LoRA rank 8" in tried.stderr, tried.stderr
    assert "--lora_rank 0" in tried.stderr and "--output_dir" in tried.stderr, tried.stderr
    after = {p: p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}
    assert after == before  # config.yaml, logs and checkpoints as they were
    # a checkpoint from before the marker recorded the run's kind: refused as it loads
    [marker] = out.glob("checkpoints/*/trainer_state.json")
    marker.write_text(json.dumps({k: v for k, v in json.loads(marker.read_text()).items()
                                  if k != "run_kind"}))
    config_yaml = (out / "config.yaml").read_bytes()
    with pytest.raises(TrainError, match="does not fit this run's network"):
        Run(config_for("toy", store_path, out, eval_every=0, max_steps=2, lora_rank=8,
                       resume="latest")).train()
    assert (out / "config.yaml").read_bytes() == config_yaml
    lora = tmp_path / "lora"
    Run(config_for("toy", store_path, lora, eval_every=0, max_steps=1, checkpoint_every=1,
                   lora_rank=4)).train()
    with pytest.raises(TrainError, match="LoRA rank 4.*--lora_rank 4"):
        Run(config_for("toy", store_path, lora, eval_every=0, max_steps=2, lora_rank=8,
                       resume="latest"))
    with pytest.raises(TrainError, match="this run is LoRA rank 4 .* and ema_decay 0.9: "
                                          "resume with its settings \\(--ema_decay 0.0\\)"):
        Run(config_for("toy", store_path, lora, eval_every=0, max_steps=2, lora_rank=4,
                       ema_decay=0.9, resume="latest"))


def logged_steps(path: Path) -> list[int]:
    return [json.loads(line)["step"] for line in path.read_text().splitlines()]


def test_logs_read_as_one_run_after_a_resume_and_after_a_restart(tmp_path):
    out = tmp_path / "run"
    store_path = many_prompt_store(tmp_path / "prefs.duckdb", prompts=10, per_prompt=2)
    common = {"eval_every": 1, "holdout_pairs": 64, "sample_prompts": [],
              "checkpoint_every": 2, "checkpoints_kept": 5}
    Run(config_for("toy", store_path, out, max_steps=3, **common)).train()  # stopped at 3
    Run(config_for("toy", store_path, out, max_steps=4, resume="latest", **common)).train()
    assert logged_steps(out / "metrics.jsonl") == [1, 2, 3, 4]
    assert logged_steps(out / "eval.jsonl") == [0, 1, 2, 3, 4]
    shutil.rmtree(out / "checkpoints")  # a new start in the folder: the logs start anew
    Run(config_for("toy", store_path, out, max_steps=2, **common)).train()
    assert logged_steps(out / "metrics.jsonl") == [1, 2]
    assert logged_steps(out / "eval.jsonl") == [0, 1, 2]
    [old] = out.glob("metrics.jsonl.old-*")
    assert logged_steps(old) == [1, 2, 3, 4]


def wait_for(predicate, seconds: float, process: subprocess.Popen) -> None:
    import time

    deadline = time.monotonic() + seconds
    while not predicate():
        assert process.poll() is None and time.monotonic() < deadline, "never got there"
        time.sleep(0.2)


@pytest.mark.parametrize("checkpoint_every", [1, 0])
def test_ctrl_c_says_the_last_checkpoint_and_how_to_continue(checkpoint_every, store_path,
                                                             tmp_path):
    """A real SIGINT to the process group, as Ctrl+C in a terminal sends, under
    `accelerate launch`, which then stops its child itself. The launcher tees the child's
    stderr, and drops the chunk it holds when its own SIGINT lands: on a busy machine
    (here: launcher and child on one core, the launcher run only when the core is idle)
    the last words were lost half the time, or glued to the progress bar."""
    import signal

    from train import checkpoints

    out = tmp_path / "run"
    args = ["toy", "--data", str(store_path), "--output_dir", str(out), "--cache_dir",
            str(tmp_path / "cache"), "--max_steps", "100000", "--eval_every", "0",
            "--batch_size", "4", "--effective_batch", "4",
            "--checkpoint_every", str(checkpoint_every)]
    launcher = Path(sys.executable).parent / "accelerate"
    core = min(os.sched_getaffinity(0))
    process = subprocess.Popen(
        [str(launcher), "launch", "-q", "--num_processes", "1", "--num_machines", "1",
         "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "train", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
        start_new_session=True, preexec_fn=lambda: os.sched_setaffinity(0, {core}))
    try:
        if checkpoint_every:
            wait_for(lambda: checkpoints.completed(out), 240, process)
        else:
            wait_for(lambda: (out / "metrics.jsonl").exists(), 240, process)
        os.sched_setscheduler(process.pid, os.SCHED_IDLE, os.sched_param(0))
        os.killpg(process.pid, signal.SIGINT)
        _, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    said = [line for line in stderr.splitlines() if line.startswith("interrupted")]
    assert len(said) == 1, stderr[-3000:]
    if checkpoint_every:
        last = checkpoints.completed(out)[-1]
        step = int(last.name.split("-")[1])
        assert f"last checkpoint: step {step} ({last})" in said[0], said
        command = said[0].split("continue with: ")[1]
        assert shlex.split(command) == ["accelerate", "launch", "-m", "train", *args,
                                        "--resume", "latest"]
    else:
        assert "no checkpoint yet" in said[0] and "--resume" not in said[0], said


def test_a_misspelt_flag_gets_the_nearest_real_one_in_one_line():
    for flag, nearest in [("--max_train_steps", "--max_steps"),
                          ("--train_batch_size", "--batch_size"),
                          ("--lerning-rate", "--learning-rate"),
                          ("--lora_rnak", "--lora_rank")]:
        with pytest.raises(UsageError) as refused:
            from_command_line(["toy", flag, "3"])
        line = str(refused.value)
        assert "\n" not in line and flag in line and f"use {nearest}" in line, line
    assert from_command_line(["toy", "--learning-rate", "3e-5"]).learning_rate == 3e-5


_OPEN_CACHE = """
import json, sys
import psutil
from train.cache import PairCache
before = psutil.Process().memory_info().rss
n = int(sys.argv[2])
cache = PairCache(__import__("pathlib").Path(sys.argv[1]), [f"p{i}" for i in range(n)],
                  [f"c{i}" for i in range(n)])
batch = cache.batch([0, n - 1], "cpu")  # a batch of two pairs is in memory too
print(json.dumps({"grew_mb": (psutil.Process().memory_info().rss - before) / 2**20,
                  "text": list(batch.text.shape), "dtype": str(batch.text.dtype)}))
"""


@pytest.mark.parametrize(("model", "tokens", "width", "pooled"),
                         [("sd15", 77, 768, None), ("flux", 512, 4096, 768)])
def test_a_process_opening_a_cache_of_20000_captions_holds_none_of_their_text(
        tmp_path, model, tokens, width, pooled):
    """Every process of a launch opens the cache: its text embeddings (SD1.5: 2.4 GB,
    FLUX: 84 GB at 20,000 captions in 16-bit) must stay on disk, only a batch's rows read.
    The arrays are sparse files, written by shape alone, in the build's chunks."""
    from benchmarks.run_index import fake_cache

    captions, folder = 20_000, tmp_path / "cache"
    text = {"text": (tokens, width), **({"pooled": (pooled,)} if pooled else {})}
    fake_cache(folder, [f"p{i}" for i in range(captions)], [f"c{i}" for i in range(captions)],
               text, latents=(2, 4, 8, 8))
    out = subprocess.run([sys.executable, "-c", _OPEN_CACHE, str(folder), str(captions)],
                         capture_output=True, text=True, timeout=300,
                         cwd=Path(__file__).parents[1])
    assert out.returncode == 0, out.stderr[-2000:]
    opened = json.loads(out.stdout.splitlines()[-1])
    assert opened["text"] == [2, tokens, width] and opened["dtype"] == "torch.float32"
    assert opened["grew_mb"] < 200, opened


@pytest.mark.parametrize("kind", ["sd", "sdxl", "sd3", "flux"])
def test_the_dry_run_s_cache_size_is_the_size_the_build_writes(kind, request, store_path,
                                                               tmp_path):
    """`--dry_run` sizes the cache from the model's config files alone; here it is held to
    the bytes a real build of the same pairs writes, for each model family."""
    model = request.getfixturevalue(f"tiny_{kind}_dir")
    config = config_for(model, store_path, tmp_path / "run", random_flip=kind == "sd",
                        eval_every=0, max_steps=1)
    pairs = training_pairs(config)
    before = cache_line(config, pairs)
    assert before.startswith("cache:  ") and f"{len(pairs)} pairs and" in before, before
    directory = Run(config).data.cache.directory
    written = sum(f.stat().st_size for f in [*directory.rglob("*.npy"),
                                             *directory.glob("pairs/*/keys.json")])
    after = cache_line(config, pairs)
    assert f"built, in {directory}" in after, after
    prep = cache_folder(config, kind)[1]
    captions = len({pairs.describe(i)[0] for i in range(len(pairs))})
    assert cache_bytes(str(model), kind, len(pairs), captions, prep) == written


def test_the_dry_run_s_encode_flops_are_what_the_encoders_compute(store_path, tmp_path):
    """The encode line counts the VAE and text encoders on the meta device, from config
    files alone; the toy's loaded encoders, counted on real tensors, agree within 2%."""
    from train.memory import counted_flops
    from train.plan import encode_flops

    prep = Preprocessing(resolution=32, random_crop=False, random_flip=True, seed=0)
    pair, caption = encode_flops("toy", "sd", prep)
    pipeline = load("toy").pipeline
    real_pair = 2 * counted_flops(lambda: pipeline.vae.encode(torch.zeros(2, 3, 32, 32)))
    tokens = torch.zeros(1, pipeline.text_encoder.config.max_position_embeddings,
                         dtype=torch.long)
    real_caption = counted_flops(lambda: pipeline.text_encoder(tokens))
    assert abs(pair / real_pair - 1) < 0.02 and abs(caption / real_caption - 1) < 0.04
    out = run_command("toy", "--data", str(store_path), "--output_dir", str(tmp_path / "r"),
                      "--cache_dir", str(tmp_path / "cache"), "--dry_run")
    line = [x for x in out.stdout.splitlines() if x.startswith("encode: ")]
    assert out.returncode == 0 and len(line) == 1, out.stdout[-2000:]
    assert "for 12 pairs and 4 captions" in line[0] and "on H100 SXM" in line[0], line


def test_a_dry_run_whose_cache_cannot_fit_its_disk_is_refused_in_one_line(store_path,
                                                                           tmp_path):
    from helpers import small_disk

    with small_disk(tmp_path / "disk", "1m") as disk:
        out = run_command("toy", "--data", str(store_path), "--output_dir",
                          str(tmp_path / "run"), "--cache_dir", str(disk / "cache"),
                          "--resolution", "2048", "--dry_run")
    assert out.returncode == 1 and out.stderr.count("\n") == 1, out.stderr
    assert f"in {disk / 'cache'}, whose disk has" in out.stderr, out.stderr
    assert "give --cache_dir on a disk with room" in out.stderr, out.stderr
    assert "\ncache:  " in out.stdout and "\nmemory: " in out.stdout  # the figures first


def test_the_dry_run_says_a_process_s_ram_and_the_memory_fsdp_leaves_it(store_path,
                                                                         monkeypatch):
    """The RAM line counts the pipeline in fp32 while it loads (read from the configs on the
    meta device) and the index of the pairs; under an FSDP launch the memory line divides
    weights, reference, gradients and optimizer over the processes."""
    from models.meta import denoiser_on_meta, encoders_on_meta
    from train.memory import estimate

    out = run_command("toy", "--data", str(store_path), "--dry_run")
    ram = [line for line in out.stdout.splitlines() if line.startswith("ram:")]
    assert out.returncode == 0 and len(ram) == 1, out.stdout[-2000:]
    vae, texts = encoders_on_meta("toy")
    parts = (denoiser_on_meta("toy")[1], vae, *texts)
    fp32 = 4 * sum(p.numel() for part in parts for p in part.parameters())
    assert f"about {fp32 / 2**20 + 12 * 1900 / 2**20:.1f} MiB per process while" in ram[0]
    assert "the index of 12 pairs" in ram[0], ram

    config = TrainConfig(model="toy", mixed_precision="no")
    whole, sharded = estimate(config), estimate(config, shards=4)
    assert sharded.weights == -(-whole.weights // 4) and sharded.optimizer * 4 >= whole.optimizer
    assert 0 < sharded.gathered < whole.weights and sharded.activations == whole.activations
    from train.plan import plan

    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")  # as an FSDP launch sets it
    printed = plan(resolve("toy", {"data": [str(store_path)], "effective_batch": "64"}), 4)
    assert "FSDP over 4 processes" in printed and "4 processes x 16 pairs" in printed


def test_label_smoothing_and_ties_give_dpo_each_pairs_preferred_share(store_path, tmp_path):
    """With --include_ties a tie trains as one half each way; --label_smoothing eps makes
    every decisive vote 1 - eps; both refused where they do not apply, in one line."""
    from train.trainer import Run

    run = Run(config_for(store_path=store_path, model_dir="toy", out=tmp_path / "run",
                         include_ties=True, label_smoothing=0.1, max_steps=1))
    shares = run.data.shares
    ties = [run.data.cache.captions[i] == "a tie" for i in range(len(shares))]
    assert sorted(set(shares[np.array(ties)].tolist())) == [0.5]
    assert np.allclose(shares[~np.array(ties)], 0.9)
    assert run.train()["trained_steps"] == 1
    for bad, says in (({"label_smoothing": 0.5}, "below 0.5"),
                      ({"label_smoothing": 0.1, "objective": "ipo"}, "applies to dpo")):
        with pytest.raises(TrainError, match=says):
            config_for("toy", store_path, tmp_path / "bad", **bad)


def test_votes_on_one_pair_train_dpo_as_one_pair_with_their_share(tmp_path):
    """--pair_votes share: three annotators on one pair, two for image 0, make one pair whose
    preferred share is 2/3 (times label smoothing's 1 - eps, plus eps for the rest)."""
    from data.store import Store, Vote, new_uid
    from tests.helpers import judged_store
    from train.trainer import Run

    path = judged_store(tmp_path / "prefs.duckdb")
    with Store(path) as store:
        caption, uid0, uid1 = store.cursor().execute(  # one decisive vote for image 0
            "SELECT caption, image_0_uid, image_1_uid FROM rankings WHERE label_0 = 1 "
            "ORDER BY created_at LIMIT 1").fetchone()
        for user, outcome in (("second", "right"), ("third", "left")):
            store.record_vote(Vote(vote_id=new_uid(), caption=caption, image_0_uid=uid0,
                                   image_1_uid=uid1, outcome=outcome, shown_left=0,
                                   user_id=store.user_id(user)))
    each = Run(config_for(store_path=path, model_dir="toy", out=tmp_path / "each",
                          pair_votes="each", max_steps=1))
    run = Run(config_for(store_path=path, model_dir="toy", out=tmp_path / "share",
                         pair_votes="share", label_smoothing=0.1, max_steps=1))
    assert len(run.data.cache) == len(each.data.cache) - 2  # three votes, one pair
    shares = sorted(run.data.shares.tolist())
    assert shares[0] == pytest.approx(2 / 3 * 0.9 + 1 / 3 * 0.1)
    assert shares[1:] == pytest.approx([0.9] * (len(shares) - 1))
    assert run.train()["trained_steps"] == 1
    with pytest.raises(TrainError, match="soft label of dpo"):
        config_for("toy", path, tmp_path / "bad", pair_votes="share", objective="ipo")
    # by default one pair on the majority's side (it trained best on a crowd), kto each vote
    assert config_for("toy", path, tmp_path / "default").pair_votes == "majority"
    assert config_for("toy", path, tmp_path / "kto", objective="kto").pair_votes == "each"
    with pytest.raises(TrainError, match="use --pair_votes each"):
        config_for("toy", path, tmp_path / "bad", pair_votes="majority", objective="kto")
    with pytest.raises(TrainError, match="share_loss smpo scales"):
        config_for("toy", path, tmp_path / "bad", share_loss="smpo")
