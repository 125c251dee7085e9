"""The toy world: its judge, its tokenizer, its training command, and the bundled model."""

import os
import random
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from models.loading import TOY_DIR, TOY_FLOW_DIR, load
from models.toy.evaluate import adherence, judge_accuracy
from models.toy.judge import judge
from models.toy.shapes import COLORS, SHAPES, WORDS, ShapeSpec, draw, random_spec


def test_judge_is_near_perfect_on_the_generators_images():
    accuracy = judge_accuracy(n=400, seed=7)
    assert accuracy["both"] >= 0.99


@pytest.mark.parametrize("color", list(COLORS))
@pytest.mark.parametrize("shape", SHAPES)
def test_judge_names_what_it_sees(color, shape):
    spec = random_spec(random.Random(hash((color, shape)) % 1000), color=color, shape=shape)
    verdict = judge(f"a {color} {shape}", draw(spec))
    assert (verdict.color, verdict.shape) == (color, shape) and verdict.adherent
    assert verdict.score > 0.5
    other_color = next(c for c in COLORS if c != color)
    wrong = judge(f"a {other_color} {shape}", draw(spec))
    assert not wrong.color_ok and wrong.shape_ok and wrong.score < verdict.score


def test_judge_gives_nothing_for_a_blank_image():
    blank = draw(ShapeSpec("red", "circle", (16, 16), 0.1))
    verdict = judge("a red circle", blank)
    assert verdict.score == 0.0 and not verdict.color_ok and not verdict.shape_ok


def test_bundled_tokenizer_keeps_every_word_whole():
    from transformers import CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(TOY_DIR / "tokenizer")
    for word in WORDS:
        assert len(tokenizer.tokenize(word)) == 1, word
    assert len(tokenizer("a yellow triangle").input_ids) <= tokenizer.model_max_length


def test_toy_loads_through_the_same_path_and_follows_prompts():
    model = load("toy")
    assert model.kind == "sd" and model.name == "toy"
    assert type(model.pipeline).__name__ == "StableDiffusionPipeline"
    result = adherence(model, pairs=36, steps=10)
    assert result["both"] >= 0.25  # chance is 1/18; the bundled model is far above it


def test_training_command_is_deterministic(tmp_path):
    outputs = []
    for run in ("a", "b"):
        out = tmp_path / run
        done = subprocess.run(
            [sys.executable, "-m", "models.toy.train", "--out", str(out), "--images", "400",
             "--vae-steps", "2", "--vae-batch", "8", "--unet-steps", "2", "--unet-batch", "8"],
            capture_output=True, text=True,
        )
        assert done.returncode == 0, done.stderr[-2000:]
        outputs.append((out / "unet" / "diffusion_pytorch_model.safetensors").read_bytes())
        assert (out / "model_index.json").exists() and not (out / "_build").exists()
    assert outputs[0] == outputs[1]
    model = load(str(tmp_path / "a"))
    images = model.pipeline("a red circle", num_inference_steps=2).images
    assert np.asarray(images[0]).shape == (32, 32, 3)
    # a rebuild stores what the bundled model stores: fp16 values, the text encoder in fp32
    for part, dtype in (("text_encoder", torch.float32), ("unet", torch.float16),
                        ("vae", torch.float16)):
        [weights] = (tmp_path / "a" / part).glob("*.safetensors")
        tensors = load_file(str(weights))
        assert {t.dtype for t in tensors.values()} == {dtype}, part
        assert all(torch.equal(t, t.half().to(dtype)) for t in tensors.values()), part
    assert plain_diffusers_images(tmp_path / "a").shape == (1, 32, 32, 3)


def plain_diffusers_images(folder) -> np.ndarray:
    """What a diffusers user gets from the folder: no dtype, no flags."""
    from diffusers import DiffusionPipeline

    pipeline = DiffusionPipeline.from_pretrained(str(folder))
    pipeline.set_progress_bar_config(disable=True)
    return pipeline("a red circle", num_inference_steps=2, output_type="np",
                    generator=torch.Generator().manual_seed(0)).images


def test_bundled_model_runs_under_plain_diffusers_as_it_does_here():
    model = load("toy")
    mine = model.pipeline("a red circle", num_inference_steps=2, output_type="np",
                          generator=torch.Generator().manual_seed(0)).images
    assert np.array_equal(plain_diffusers_images(TOY_DIR), mine)


def test_evaluate_command_reports_json_and_draws_the_grid(tmp_path):
    import json

    from PIL import Image

    grid = tmp_path / "grid.png"
    done = subprocess.run(
        [sys.executable, "-m", "models.toy.evaluate", "--pairs", "18", "--steps", "4",
         "--judge-images", "50", "--grid", str(grid)],
        capture_output=True, text=True,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout)
    assert report["model"] == "toy" and report["judge_accuracy"]["images"] == 50
    assert 0.0 <= report["adherence"]["both"] <= 1.0 and report["adherence"]["pairs"] == 18
    with Image.open(grid) as image:
        assert image.size == (150 + 4 * 96, 18 * 96)


def test_evaluate_command_on_a_missing_model_is_one_line(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "models.toy.evaluate", "--model", str(tmp_path)],
        capture_output=True, text=True,
    )
    assert done.returncode == 1
    assert done.stderr.strip().count("\n") == 0 and "not a diffusers pipeline" in done.stderr


def test_evaluate_prints_no_torchvision_note():
    env = {k: v for k, v in os.environ.items() if k != "TRANSFORMERS_VERBOSITY"}
    done = subprocess.run(
        [sys.executable, "-m", "models.toy.evaluate", "--pairs", "2", "--steps", "2"],
        capture_output=True, text=True, env=env,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "torchvision" not in done.stderr


def test_every_prompt_offered_for_the_toy_is_read_whole(tmp_path):
    """The prompt set, the trainer's sample prompts, the page's example prompt and the
    latency benchmark's prompts all fit the toy's window, so no round carries the note
    that part of its prompt is not seen."""
    import runpy

    from transformers import CLIPTokenizer

    from annotate.config import PageConfig
    from annotate.screening import token_counter
    from annotate.serve import open_app
    from models.toy.shapes import all_captions
    from train.presets import PRESETS

    server = open_app(PageConfig(db=tmp_path / "prefs.duckdb", buffer=0))
    try:
        [placeholder] = [block.placeholder for block in server.demo.blocks.values()
                         if getattr(block, "elem_id", None) == "prompt"]
    finally:
        server.close()
    benchmark = runpy.run_path(str(TOY_DIR.parents[2] / "benchmarks" / "annotate_latency.py"))
    offered = {"prompt set": all_captions(), "sample prompts": PRESETS["toy"]["sample_prompts"],
               "page example": [placeholder], "latency benchmark": benchmark["PROMPTS"]}
    count, limit = token_counter(CLIPTokenizer.from_pretrained(TOY_DIR / "tokenizer"))
    too_long = {where: [p for p in prompts if count(p) > limit]
                for where, prompts in offered.items()}
    assert too_long == {where: [] for where in offered}


def test_flow_toy_loads_by_its_name_follows_prompts_and_runs_under_plain_diffusers():
    model = load("toy-flow")
    assert model.kind == "sd3" and type(model.pipeline).__name__ == "StableDiffusion3Pipeline"
    result = adherence(model, pairs=36, steps=10)
    assert result["both"] >= 0.2  # chance is 1/18
    mine = model.pipeline("a red circle", num_inference_steps=2, output_type="np",
                          generator=torch.Generator().manual_seed(0)).images
    assert np.array_equal(plain_diffusers_images(TOY_FLOW_DIR), mine)


def test_flow_toy_training_command_is_deterministic(tmp_path):
    outputs = []
    for name in ("a", "b"):
        out = tmp_path / name
        done = subprocess.run(
            [sys.executable, "-m", "models.toy.train_flow", "--out", str(out), "--images",
             "400", "--steps", "2", "--batch", "8"], capture_output=True, text=True)
        assert done.returncode == 0, done.stderr[-2000:]
        outputs.append(load_file(str(out / "transformer" / "diffusion_pytorch_model.safetensors")))
        assert (out / "model_index.json").exists() and not (out / "_build").exists()
    assert outputs[0].keys() == outputs[1].keys()
    assert all(torch.equal(outputs[0][k], outputs[1][k]) for k in outputs[0])
    assert load(str(tmp_path / "a")).kind == "sd3"
