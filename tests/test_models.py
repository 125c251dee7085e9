"""The model layer on tiny pipelines: loading by name, pairs, LoRA on a base, scorers."""

import json
import random
import re
import shutil
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cli.errors import ModelError
from models.generate import generate, generate_pair
from models.loading import LORA_BASE_FILE, LORA_WEIGHTS, check, load, looks_like_path
from models.scorers import AestheticHead, checked_scores, load_scorer
from models.variety import PairVariety


@pytest.fixture(scope="module")
def sd(tiny_sd_dir):
    return load(str(tiny_sd_dir))


def pixels(generated):
    return np.asarray(generated.image, dtype=np.int16)


def test_kind_is_read_from_the_models_own_files(sd, tiny_sdxl_dir):
    assert sd.kind == "sd" and type(sd.pipeline).__name__ == "StableDiffusionPipeline"
    xl = load(str(tiny_sdxl_dir))
    assert xl.kind == "sdxl" and type(xl.pipeline).__name__ == "StableDiffusionXLPipeline"
    assert (sd.device, sd.dtype) == ("cpu", torch.float32)
    a, b = generate_pair(xl, "a blue square", PairVariety(steps=2), seeds=[1, 2])
    assert a.image.size == b.image.size and a.seed == 1 and b.seed == 2


def test_dtype_and_scheduler_can_be_overridden(tiny_sd_dir):
    model = load(str(tiny_sd_dir), dtype=torch.bfloat16, scheduler="EulerDiscreteScheduler")
    assert model.pipeline.unet.dtype == torch.bfloat16
    assert model.scheduler_name == "EulerDiscreteScheduler"
    with pytest.raises(ModelError, match="unknown scheduler"):
        load(str(tiny_sd_dir), scheduler="Nonsense")


def test_a_pair_is_one_batched_call_with_its_provenance(sd):
    batches = []
    handle = sd.pipeline.unet.register_forward_hook(
        lambda module, args, output: batches.append(args[0].shape[0])
    )
    try:
        first, second = generate_pair(
            sd, "a red circle", PairVariety(guidance=6.0, steps=3), seeds=[11, 12]
        )
    finally:
        handle.remove()
    assert batches == [4, 4, 4]  # 3 steps, 2 images x (unconditioned, text)
    assert (first.seed, second.seed) == (11, 12)
    for image in (first, second):
        assert (image.prompt, image.model, image.steps) == ("a red circle", sd.name, 3)
        assert image.guidance_scale == 6.0 and image.scheduler == "DDIMScheduler"
        assert (image.width, image.height) == image.image.size and image.gen_ms > 0
    assert not np.array_equal(pixels(first), pixels(second))


def test_same_inputs_same_images(sd):
    variety = PairVariety(guidance_range=(3.0, 12.0), steps=2)
    a = generate_pair(sd, "a cat", variety, rng=random.Random(5))
    b = generate_pair(sd, "a cat", variety, rng=random.Random(5))
    for x, y in zip(a, b, strict=True):
        assert (x.seed, x.guidance_scale) == (y.seed, y.guidance_scale)
        assert np.array_equal(pixels(x), pixels(y))


def test_per_image_guidance_in_one_call_equals_separate_calls(sd):
    batched = generate(sd, "a green triangle", [3, 4], [3.0, 11.0], steps=3)
    alone = [generate(sd, "a green triangle", [s], [g], steps=3)[0]
             for s, g in ((3, 3.0), (4, 11.0))]
    for x, y in zip(batched, alone, strict=True):
        assert np.abs(pixels(x) - pixels(y)).max() <= 1
    assert [g.guidance_scale for g in batched] == [3.0, 11.0]


def test_guidance_range_draws_per_image_scales(sd):
    variety = PairVariety(guidance_range=(3.0, 12.0), steps=2)
    a, b = generate_pair(sd, "a cat", variety, rng=random.Random(0))
    assert 3.0 <= a.guidance_scale <= 12.0 and 3.0 <= b.guidance_scale <= 12.0
    assert a.guidance_scale != b.guidance_scale and a.seed != b.seed


def test_pair_from_two_models(sd, tiny_sd_dir):
    other = load(str(tiny_sd_dir))
    other.name = "other"
    a, b = generate_pair([sd, other], "a cat", PairVariety(steps=2), seeds=[1, 1])
    assert (a.model, b.model) == (sd.name, "other")
    assert np.array_equal(pixels(a), pixels(b))  # same weights, same seed


def test_empty_prompt_is_refused(sd):
    with pytest.raises(ModelError, match="prompt is empty"):
        generate(sd, "   ", [1], [7.5], steps=2)


def test_lora_folder_loads_on_top_of_its_base(tiny_sd_dir, tmp_path):
    from diffusers import StableDiffusionPipeline
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    base = load(str(tiny_sd_dir))
    unet = base.pipeline.unet
    unet.add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights="gaussian",
                                target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    torch.manual_seed(0)
    with torch.no_grad():
        for name, param in unet.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)  # a trained-looking, visible change
    lora_dir = tmp_path / "lora"
    StableDiffusionPipeline.save_lora_weights(
        lora_dir, unet_lora_layers=get_peft_model_state_dict(unet), weight_name=LORA_WEIGHTS
    )
    (lora_dir / LORA_BASE_FILE).write_text(json.dumps({"base_model": str(tiny_sd_dir)}))
    with_lora = generate(base, "a cat", [0], [7.5], steps=2)[0]

    loaded = load(str(lora_dir))
    assert loaded.kind == "sd" and loaded.name == str(lora_dir)
    again = generate(loaded, "a cat", [0], [7.5], steps=2)[0]
    plain = generate(load(str(tiny_sd_dir)), "a cat", [0], [7.5], steps=2)[0]
    assert np.abs(pixels(again) - pixels(with_lora)).max() <= 1
    assert not np.array_equal(pixels(again), pixels(plain))


def test_lora_folder_without_its_base_is_a_clear_error(tmp_path):
    (tmp_path / LORA_WEIGHTS).write_bytes(b"")
    with pytest.raises(ModelError, match=f"no {LORA_BASE_FILE}"):
        load(str(tmp_path))


def test_hub_id_offline_is_one_line_naming_toy():
    with pytest.raises(ModelError) as info:
        load("stabilityai/stable-diffusion-xl-base-1.0")
    message = str(info.value)
    assert "not in the local Hugging Face cache" in message and "`toy`" in message
    assert "\n" not in message


def test_a_missing_folder_is_a_missing_folder_not_a_hub_problem(tmp_path):
    for name in ("runs/train/nope/final", str(tmp_path / "nope"), "./nope", "a/b/c"):
        with pytest.raises(ModelError, match=f"^no such model folder: {re.escape(name)} "):
            check(name)
    assert looks_like_path("runs/x") and not looks_like_path("org/model")


def test_a_hub_id_in_the_local_cache_loads_offline(tiny_sd_dir):
    """A Hub id the Hugging Face cache holds needs no network: as huggingface_hub lays a
    download out (refs/main naming a snapshot folder)."""
    from huggingface_hub import constants

    repo = Path(constants.HF_HUB_CACHE) / "models--test-org--tiny-sd"
    commit = "0" * 40
    shutil.copytree(tiny_sd_dir, repo / "snapshots" / commit, dirs_exist_ok=True)
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    assert check("test-org/tiny-sd") == "sd"
    loaded = load("test-org/tiny-sd")
    assert loaded.kind == "sd" and generate(loaded, "a cat", [0], [7.5], steps=1)


def test_folder_that_is_not_a_pipeline_is_refused(tmp_path):
    with pytest.raises(ModelError, match="not a diffusers pipeline folder"):
        load(str(tmp_path))


# -- scorers ----------------------------------------------------------------------------

IMAGES = [Image.new("RGB", (40, 40), (220, 30, 30)), Image.new("RGB", (48, 48), (30, 70, 220))]
PROMPTS = ["a red circle", "a blue square"]


@pytest.mark.parametrize("name", ["pickscore", "clip"])
def test_clip_scorers_give_finite_scores_of_the_right_shape(name, tiny_clip_dir):
    scorer = load_scorer(name, model=str(tiny_clip_dir), processor=str(tiny_clip_dir))
    scores = scorer(PROMPTS, IMAGES)
    assert scores.shape == (2,) and torch.isfinite(scores).all()
    assert not scores.requires_grad


def test_pickscore_preference_is_a_softmax_over_the_pair(tiny_clip_dir):
    scorer = load_scorer("pickscore", model=str(tiny_clip_dir), processor=str(tiny_clip_dir))
    scores = scorer(["a red circle"] * 2, IMAGES)
    probs = scorer.preference("a red circle", IMAGES)
    assert torch.allclose(probs.sum(), torch.tensor(1.0))
    assert torch.allclose(probs, torch.softmax(scores, 0))
    assert int(probs.argmax()) == int(scores.argmax())
    swapped = scorer.preference("a red circle", IMAGES[::-1])
    assert torch.allclose(swapped, probs.flip(0), atol=1e-6)


def test_aesthetic_scorer_reads_predictor_weights(tiny_clip_dir, tmp_path):
    torch.manual_seed(0)
    torch.save(AestheticHead(16).state_dict(), tmp_path / "head.pth")
    scorer = load_scorer("aesthetic", model=str(tiny_clip_dir), weights=str(tmp_path / "head.pth"))
    scores = scorer(PROMPTS, IMAGES)
    assert scores.shape == (2,) and torch.isfinite(scores).all()
    with pytest.raises(ModelError, match="weights not found"):
        load_scorer("aesthetic", model=str(tiny_clip_dir), weights=str(tmp_path / "none.pth"))


def test_hpsv2_is_the_cosine_of_its_clip_embeddings_batched_as_one_at_a_time(tiny_clip_dir):
    from transformers import CLIPModel, CLIPProcessor

    scorer = load_scorer("hpsv2", model=str(tiny_clip_dir), processor=str(tiny_clip_dir))
    images = [Image.new("RGB", (40 + 4 * k, 40), (40 * k, 200 - 30 * k, 90)) for k in range(5)]
    prompts = [f"shape number {k}" for k in range(5)]
    scores = scorer(prompts, images)
    one_at_a_time = torch.cat([scorer([p], [im]) for p, im in zip(prompts, images, strict=True)])
    assert torch.allclose(scores, one_at_a_time, atol=1e-5)

    model, processor = CLIPModel.from_pretrained(tiny_clip_dir), CLIPProcessor.from_pretrained(
        tiny_clip_dir)  # HPS v2's reading, written out: image_features @ text_features.T
    inputs = processor(text=prompts, images=images, return_tensors="pt", padding=True)
    with torch.no_grad():
        out = model(**inputs)
    cosine = (out.image_embeds / out.image_embeds.norm(dim=-1, keepdim=True)) @ (
        out.text_embeds / out.text_embeds.norm(dim=-1, keepdim=True)).T
    assert torch.allclose(scores, cosine.diagonal(), atol=1e-5)


def test_checked_scores_calls_the_scorer_a_batch_at_a_time():
    calls = []

    def scorer(prompts, images):
        calls.append(len(images))
        return torch.tensor([float(im.width) for im in images])

    images = [Image.new("RGB", (10 + k, 8)) for k in range(5)]
    assert checked_scores(scorer, "widths", ["p"] * 5, images, batch=2) == [10, 11, 12, 13, 14]
    assert calls == [2, 2, 1]
    with pytest.raises(ModelError, match="returned 1 scores for 2 images"):
        checked_scores(lambda p, im: torch.zeros(1), "short", ["p"] * 5, images, batch=2)


def test_user_scorer_by_module_and_callable(tmp_path, monkeypatch):
    (tmp_path / "team_reward.py").write_text(textwrap.dedent("""
        import torch
        def brightness(prompts, images):
            return torch.tensor([sum(im.convert("L").getdata()) / im.width / im.height
                                 for im in images])
        class Factory:
            def __call__(self, prompts, images):
                return torch.zeros(len(images))
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    scorer = load_scorer("team_reward:brightness")
    assert scorer(PROMPTS, IMAGES).shape == (2,)
    assert load_scorer("team_reward:Factory")(PROMPTS, IMAGES).tolist() == [0.0, 0.0]
    with pytest.raises(ModelError, match="cannot import scorer"):
        load_scorer("team_reward:missing")
    sys.modules.pop("team_reward", None)


def test_unknown_scorer_names_the_choices():
    with pytest.raises(ModelError, match="pickscore, clip, aesthetic, hpsv2, toy_judge"):
        load_scorer("best")
