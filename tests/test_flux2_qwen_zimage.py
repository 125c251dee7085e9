"""FLUX.2 [klein], Qwen-Image and Z-Image (tiny, built from configs offline) through the
whole loop: loaded by name, pairs in each model's guidance convention on the annotate page
and in AI feedback, each transformer called as its pipeline calls it, FSDP2 full
fine-tuning, and eval auto of base against aligned. Flow-DPO in full and with LoRA, exact
resume and plain-diffusers loads of both outputs are tests/test_flow.py's, run on all five
flow kinds."""

from __future__ import annotations

import json
import math
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from models.generate import generate, generate_pair
from models.loading import check, load
from models.variety import PairVariety
from tests.helpers import config_for, flow_images
from train.processes import predict
from train.trainer import Run

REPO = Path(__file__).resolve().parents[1]
RED = "a red circle"
KINDS = ["flux2", "qwenimage", "zimage"]
CLASSES = {"flux2": "Flux2KleinPipeline", "qwenimage": "QwenImagePipeline",
           "zimage": "ZImagePipeline"}


@pytest.fixture(params=KINDS)
def model_2026(request) -> tuple[str, object]:
    """(kind, the tiny pipeline folder of that kind)."""
    return request.param, request.getfixturevalue(f"tiny_{request.param}_dir")


def brightness(prompts, images) -> list[float]:
    """A scorer for AI feedback and eval auto: the mean pixel value."""
    return [float(np.asarray(image, dtype=np.float32).mean()) for image in images]


# -- the model layer -------------------------------------------------------------------


def test_each_loads_by_name_and_makes_reproducible_pairs_with_per_image_guidance(model_2026):
    kind, folder = model_2026
    assert check(str(folder)) == kind
    model = load(str(folder))
    assert model.kind == kind and type(model.pipeline).__name__ == CLASSES[kind]
    import random

    pair = generate_pair(model, RED, PairVariety(guidance_range=[3.0, 7.0], steps=2, size=32),
                         random.Random(0))
    assert [image.width for image in pair] == [32, 32]
    assert pair[0].guidance_scale != pair[1].guidance_scale  # each image its own
    assert "shift" in pair[0].scheduler  # the sampler's shift is recorded with the image
    for image in pair:  # the recorded settings make the same image again
        [again] = generate(model, RED, [image.seed], [image.guidance_scale], image.steps,
                           32, 32)
        assert np.array_equal(np.asarray(again.image), np.asarray(image.image))


def test_flux2_klein_distilled_takes_no_guidance_and_records_zero(tiny_flux2_dir, tmp_path):
    folder = tmp_path / "distilled"
    shutil.copytree(tiny_flux2_dir, folder)
    index = json.loads((folder / "model_index.json").read_text())
    (folder / "model_index.json").write_text(json.dumps({**index, "is_distilled": True}))
    pair = generate(load(str(folder)), RED, [1, 2], [3.0, 6.0], steps=2, height=32, width=32)
    assert [image.guidance_scale for image in pair] == [0.0, 0.0]


# -- the transformers called as their pipelines call them ------------------------------


def test_flux2_latents_and_ids_are_the_pipelines(tiny_flux2_dir):
    from diffusers import Flux2KleinPipeline

    pipe = Flux2KleinPipeline.from_pretrained(tiny_flux2_dir)
    net = pipe.transformer
    latents, sigma, text = torch.randn(2, 4, 8, 8), torch.tensor([0.3, 0.8]), torch.randn(2, 5, 48)
    with torch.no_grad():
        ours = predict(net, "flux2", latents, sigma, {"encoder_hidden_states": text})
        ids = Flux2KleinPipeline._prepare_latent_ids(latents)
        theirs = net(hidden_states=Flux2KleinPipeline._pack_latents(latents), timestep=sigma,
                     encoder_hidden_states=text, img_ids=ids,
                     txt_ids=Flux2KleinPipeline._prepare_text_ids(text)).sample
        theirs = Flux2KleinPipeline._unpack_latents_with_ids(theirs, ids)
    assert torch.allclose(ours, theirs, atol=1e-6)


def test_flux2_dev_takes_the_guidance_value_as_its_pipeline_gives_it():
    """FLUX.2 (dev) is FLUX.2 [klein]'s transformer with a guidance embedding: the trainer
    feeds `flux_guidance` as Flux2Pipeline feeds its guidance scale (the raw value)."""
    from diffusers import Flux2Pipeline, Flux2Transformer2DModel

    torch.manual_seed(0)
    net = Flux2Transformer2DModel(
        patch_size=1, in_channels=4, num_layers=1, num_single_layers=1,
        attention_head_dim=16, num_attention_heads=2, joint_attention_dim=48,
        axes_dims_rope=[4, 4, 4, 4], guidance_embeds=True)
    latents, sigma, text = torch.randn(2, 4, 8, 8), torch.tensor([0.3, 0.8]), torch.randn(2, 5, 48)
    with torch.no_grad():
        ours = predict(net, "flux2", latents, sigma, {"encoder_hidden_states": text}, 4.0)
        other = predict(net, "flux2", latents, sigma, {"encoder_hidden_states": text}, 1.0)
        ids = Flux2Pipeline._prepare_latent_ids(latents)
        theirs = net(hidden_states=Flux2Pipeline._pack_latents(latents), timestep=sigma,
                     guidance=torch.full([1], 4.0).expand(2), encoder_hidden_states=text,
                     img_ids=ids, txt_ids=Flux2Pipeline._prepare_text_ids(text)).sample
        theirs = Flux2Pipeline._unpack_latents_with_ids(theirs, ids)
    assert torch.allclose(ours, theirs, atol=1e-6) and not torch.allclose(ours, other)


def test_flux2_cached_latents_are_patchified_and_normalised_as_the_pipeline_undoes(
        tiny_flux2_dir):
    from diffusers import Flux2KleinPipeline

    from train.cache import Preprocessing, _encode_latents

    pipe = Flux2KleinPipeline.from_pretrained(tiny_flux2_dir)
    pixels = np.random.default_rng(0).uniform(-1, 1, (1, 2, 3, 32, 32)).astype(np.float32)
    cached = torch.from_numpy(_encode_latents(pipe.vae, "flux2", pixels,
                                              Preprocessing(32, False, False, 0))[0])
    # the pipeline's decode path: de-normalise with the batch-norm statistics, un-patchify
    bn = pipe.vae.bn
    std = torch.sqrt(bn.running_var.view(1, -1, 1, 1) + pipe.vae.config.batch_norm_eps)
    raw = Flux2KleinPipeline._unpatchify_latents(cached * std + bn.running_mean.view(1, -1, 1, 1))
    with torch.no_grad():
        vae = pipe.vae.encode(torch.from_numpy(pixels[0])).latent_dist.mode()
    assert cached.shape == (2, 4, 8, 8) and torch.allclose(raw, vae, atol=1e-5)


def test_qwenimage_latents_are_packed_and_masked_as_the_pipeline_does(tiny_qwenimage_dir):
    from diffusers import QwenImagePipeline

    pipe = QwenImagePipeline.from_pretrained(tiny_qwenimage_dir)
    net = pipe.transformer
    latents, sigma = torch.randn(2, 4, 8, 8), torch.tensor([0.3, 0.8])
    text, lengths = torch.randn(2, 6, 16), torch.tensor([6, 4])
    with torch.no_grad():
        ours = predict(net, "qwenimage", latents, sigma,
                       {"encoder_hidden_states": text, "text_lengths": lengths})
        alone = predict(net, "qwenimage", latents[1:], sigma[1:],  # padding changes nothing
                        {"encoder_hidden_states": text[1:, :4], "text_lengths": lengths[1:]})
        packed = QwenImagePipeline._pack_latents(latents[:, None], 2, 4, 8, 8)
        mask = (torch.arange(6) < lengths[:, None]).long()
        theirs = net(hidden_states=packed, timestep=sigma, encoder_hidden_states=text,
                     encoder_hidden_states_mask=mask, img_shapes=[[(1, 4, 4)]] * 2).sample
        theirs = QwenImagePipeline._unpack_latents(theirs, 32, 32, pipe.vae_scale_factor)
    assert torch.allclose(ours, theirs[:, :, 0], atol=1e-6)
    assert torch.allclose(ours[1:], alone, atol=1e-5)


def test_zimage_predicts_the_velocity_from_its_reversed_time_and_negated_output(
        tiny_zimage_dir):
    from diffusers import ZImagePipeline

    net = ZImagePipeline.from_pretrained(tiny_zimage_dir).transformer
    latents, sigma = torch.randn(2, 4, 8, 8), torch.tensor([0.3, 0.8])
    text, lengths = torch.randn(2, 7, 16), torch.tensor([7, 3])
    with torch.no_grad():
        ours = predict(net, "zimage", latents, sigma,
                       {"encoder_hidden_states": text, "text_lengths": lengths})
        # the pipeline's loop: timestep (1000 - t) / 1000 with t = 1000 sigma, one-frame
        # latents and captions as lists, the output negated before the scheduler's step
        out = net([x[:, None] for x in latents], (1000 - 1000 * sigma) / 1000,
                  [text[0], text[1, :3]]).sample
    assert torch.allclose(ours, -torch.stack(out)[:, :, 0], atol=1e-5)


# -- the loop's other commands ----------------------------------------------------------


@pytest.mark.parametrize("kind", ["sd3", *KINDS])
def test_the_annotate_page_and_ai_feedback_collect_pairs_unchanged(kind, request, tmp_path,
                                                                   capsys):
    from gradio_client import Client

    from annotate.__main__ import main as annotate_main
    from annotate.config import PageConfig
    from annotate.serve import open_app
    from annotate.showings import MIN_DISPLAY_MS
    from tests.helpers import serving

    folder = request.getfixturevalue(f"tiny_{kind}_dir")
    server = open_app(PageConfig(model=[str(folder)], db=tmp_path / "prefs.duckdb", steps=2,
                                 guidance_range=[3.0, 7.0], size=32, buffer=0))
    try:
        with serving(server.demo) as url:
            client = Client(url, verbose=False)
            shown = client.predict("ann", RED, "new", api_name="/generate")
            time.sleep(MIN_DISPLAY_MS / 1000 + 0.05)
            client.predict("ann", "new", shown[3], api_name="/vote_left")
        [ranking] = server.store.rankings()
        made = server.store.cursor().execute(
            "SELECT model, width, guidance_scale FROM images ORDER BY image_uid").fetchall()
    finally:
        server.close()
    assert ranking.caption == RED and len(made) == 2
    assert {(m, w) for m, w, _ in made} == {(str(folder), 32)}
    assert all(3.0 <= g <= 7.0 for *_, g in made)  # drawn per image
    (tmp_path / "prompts.txt").write_text("a red circle\na blue square\n")
    code = annotate_main(["feedback", "--model", str(folder), "--db",
                          str(tmp_path / "ai.duckdb"), "--pairs", "2", "--steps", "2",
                          "--size", "32", "--prompts", str(tmp_path / "prompts.txt"),
                          "--scorer", f"{__name__}:brightness", "--no-progress"])
    out = capsys.readouterr()
    assert code == 0, out.err
    assert json.loads(out.out.strip().splitlines()[-1])["pairs"] == 2


def test_eval_auto_compares_the_base_with_its_flow_dpo_lora(model_2026, store_path,
                                                            tmp_path, capsys):
    from eval.__main__ import main as eval_main

    kind, base = model_2026
    Run(config_for(base, store_path, tmp_path / "run", lora_rank=4, max_steps=1,
                   eval_every=0, max_sequence_length=64)).train()
    (tmp_path / "prompts.txt").write_text("prompt 0\nprompt 1\n")
    code = eval_main(["auto", "--base", str(base), "--aligned", str(tmp_path / "run" / "final"),
                      "--prompts", str(tmp_path / "prompts.txt"), "--seeds", "2", "--steps",
                      "2", "--size", "32", "--scorer", f"{__name__}:brightness",
                      "--images", str(tmp_path / "images"), "--out", str(tmp_path / "eval")])
    out = capsys.readouterr()
    assert code == 0, out.err
    result = json.loads(out.out[out.out.index("{"):])
    assert result["pairs"] == 4 and (tmp_path / "eval" / "report.md").is_file()


@pytest.mark.parametrize("kind", KINDS)
def test_fsdp2_full_flow_dpo_on_two_processes_writes_a_pipeline_plain_diffusers_loads(
        kind, request, store_path, tmp_path):
    """docs/accelerate/fsdp.yaml (FSDP2: the policy and the reference sharded block by block
    by the transformer's own `_no_split_modules`), 2 processes: the run starts at ln 2 and
    its gathered weights load with from_pretrained and change the images."""
    import os
    import subprocess
    import sys

    from cli.parser import save_config

    base = request.getfixturevalue(f"tiny_{kind}_dir")
    config = config_for(base, store_path, tmp_path / "run", max_steps=2, eval_every=0,
                        batch_size=1, effective_batch=2, max_sequence_length=64)
    save_config(config, tmp_path / "fsdp.yaml")
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "GLOO_SOCKET_IFNAME": "lo"}
    out = subprocess.run(
        [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
         str(REPO / "docs" / "accelerate" / "fsdp.yaml"), "--num_processes", "2",
         "--main_process_port", str(29571 + KINDS.index(kind)), "-m", "train",
         str(tmp_path / "fsdp.yaml")],
        capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    logged = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").open()]
    assert [row["step"] for row in logged] == [1, 2]
    assert logged[0]["loss"] == pytest.approx(math.log(2), abs=1e-5)
    from diffusers import DiffusionPipeline

    trained = DiffusionPipeline.from_pretrained(tmp_path / "run" / "final")
    assert not np.allclose(flow_images(trained, kind),
                           flow_images(DiffusionPipeline.from_pretrained(base), kind))


@pytest.mark.parametrize("kind", KINDS)
def test_the_dry_run_sizes_memory_the_text_cache_and_a_pairs_flops(kind, request, store_path,
                                                                   tmp_path):
    from train.memory import pair_flops
    from train.plan import plan

    folder = request.getfixturevalue(f"tiny_{kind}_dir")
    config = config_for(folder, store_path, tmp_path / "run", max_sequence_length=64,
                        gradient_checkpointing=True)
    lines = plan(config, 1).splitlines()
    [cache] = [line for line in lines if line.startswith("cache:  ")]
    bound = "at most " if kind != "flux2" else ""
    assert f"text {bound}" in cache and " KiB a caption" in cache  # tiny: 64 x 16 or 48
    [memory] = [line for line in lines if line.startswith("memory: ")]
    assert "saved for backward at 2 pairs of 32 px" in memory
    flops = pair_flops(config)
    assert flops.recompute == flops.reference > 0  # full: a frozen copy's forward
    [compute] = [line for line in lines if line.startswith("compute: ")]
    assert f"{flops.total / 1e12:.2f} TFLOP a pair" in compute
