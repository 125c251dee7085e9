"""What a user of the ecosystem does with what the project ships and writes.

The project's own commands make the artefacts (a full fine-tune and a LoRA of the toy
model, an export); then each check runs as a separate Python process (`python -I`, so
neither this tree nor PYTHONPATH is on its path) whose code imports only diffusers, torch,
numpy, Pillow and datasets, and which fails if any project package was imported.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import numpy as np
import pytest

from data.store import Store
from models.loading import TOY_DIR
from models.toy.shapes import all_captions
from tests.helpers import record

USER_PRELUDE = """
import sys

import numpy as np
import torch
from diffusers import DiffusionPipeline


def images(pipe, prompt="a red circle"):
    pipe.set_progress_bar_config(disable=True)
    return pipe(prompt, num_inference_steps=2, output_type="np",
                generator=torch.Generator().manual_seed(0)).images


def card_code(folder):
    text = open(f"{folder}/README.md", encoding="utf-8").read()
    return text.split("```python\\n", 1)[1].split("```", 1)[0]
"""

USER_EPILOGUE = """
project = {"data", "models", "train", "annotate", "eval"} & set(sys.modules)
assert not project, f"imported the project's own code: {sorted(project)}"
print("ok")
"""


def run_as_user(code: str, *args, cwd) -> str:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run(
        [sys.executable, "-I", "-c", USER_PRELUDE + code + USER_EPILOGUE, *map(str, args)],
        capture_output=True, text=True, cwd=cwd, env=env,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().endswith("ok")
    return done.stdout


def project_command(*args, cwd):
    done = subprocess.run([sys.executable, "-m", *map(str, args)], capture_output=True,
                          text=True, cwd=cwd)
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """A store of 12 judged toy pairs, a full fine-tune and a LoRA of the toy model on it
    (the trainer's command line, 1 and 2 steps), and an export of the store."""
    root = tmp_path_factory.mktemp("interop")
    store_path = root / "prefs.duckdb"
    rng = np.random.default_rng(0)
    with Store(store_path) as store:
        for i, caption in enumerate(all_captions()[:12]):
            colors = [tuple(int(c) for c in rng.integers(0, 256, 3)) for _ in range(2)]
            record(store, caption, "left" if i % 3 else "right", colors=colors)
    common = ["--data", store_path, "--cache_dir", root / "cache", "--batch_size", "4",
              "--effective_batch", "4", "--learning_rate", "1e-3", "--eval_every", "0",
              "--checkpoint_every", "0", "--holdout_pairs", "0"]
    project_command("train", "toy", *common, "--output_dir", root / "full", "--max_steps", "1",
                    cwd=root)
    project_command("train", "toy", *common, "--output_dir", root / "lora", "--max_steps", "2",
                    "--lora_rank", "4", cwd=root)
    project_command("data", "export", root / "export", "--db", store_path, cwd=root)
    return root


def test_bundled_toy_pipeline_runs_with_a_plain_from_pretrained(tmp_path):
    run_as_user("""
out = images(DiffusionPipeline.from_pretrained(sys.argv[1]))
assert out.shape == (1, 32, 32, 3) and np.isfinite(out).all()
""", TOY_DIR, cwd=tmp_path)


def test_a_trained_full_pipeline_runs_as_its_card_says(work):
    final = work / "full" / "final"
    card = (final / "README.md").read_text()
    assert "objective: dpo (beta 5000)" in card and "steps: 1" in card
    run_as_user("""
scope = {}
exec(card_code(sys.argv[1]), scope)  # the card's own snippet, as a user pastes it
assert scope["image"].size == (32, 32)
out = images(DiffusionPipeline.from_pretrained(sys.argv[1]))
assert out.shape == (1, 32, 32, 3) and np.isfinite(out).all()
""", final, cwd=work)


def test_a_lora_loads_on_the_base_its_card_names_and_changes_the_images(work):
    final = work / "lora" / "final"
    card = (final / "README.md").read_text()
    [base] = re.findall(r'DiffusionPipeline\.from_pretrained\("([^"]+)"\)', card)
    assert base == str(TOY_DIR)  # the real folder, where base_model.json says `toy`
    run_as_user("""
import re

scope = {}
exec(card_code(sys.argv[1]), scope)  # the card's own snippet, as a user pastes it
with_lora = images(scope["pipe"])
base = re.search(r'from_pretrained\\("([^"]+)"\\)', card_code(sys.argv[1])).group(1)
plain = images(DiffusionPipeline.from_pretrained(base))
assert np.abs(with_lora - plain).max() > 1e-3, np.abs(with_lora - plain).max()
""", final, cwd=work)


def test_an_export_reads_with_datasets_as_pickapic(work):
    run_as_user("""
import io

import datasets
from PIL import Image

PICKAPIC_V2 = ["are_different", "best_image_uid", "caption", "created_at", "has_label",
               "image_0_uid", "image_0_url", "image_1_uid", "image_1_url", "jpg_0", "jpg_1",
               "label_0", "label_1", "model_0", "model_1", "ranking_id", "user_id",
               "num_example_per_prompt"]
pairs = datasets.load_dataset("parquet", data_files=f"{sys.argv[1]}/train/*.parquet",
                              split="train")
assert list(pairs.features) == PICKAPIC_V2, list(pairs.features)
assert len(pairs) == 12
for row in pairs:
    assert row["label_0"] + row["label_1"] == 1 and row["has_label"]
    assert row["best_image_uid"] == row["image_0_uid" if row["label_0"] else "image_1_uid"]
    assert Image.open(io.BytesIO(row["jpg_0"])).size == (32, 32)
""", work / "export", cwd=work)
