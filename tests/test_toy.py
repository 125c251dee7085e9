"""The toy world: its judge, its tokenizer, its training command, and the bundled model."""

import random
import subprocess
import sys

import numpy as np
import pytest

from models.loading import TOY_DIR, load
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
