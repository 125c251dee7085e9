"""Each concept is defined once: the vote outcomes, the toy model's name, the scorer check."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
from PIL import Image

from cli.errors import ModelError
from data.store import OUTCOMES, Store


def test_the_vote_outcomes_are_the_stores_and_its_check_constraint(tmp_path):
    from annotate import showings

    assert showings.OUTCOMES is OUTCOMES
    with Store(tmp_path / "prefs.duckdb") as store:
        checks = store.cursor().execute(
            "SELECT expression FROM duckdb_constraints() "
            "WHERE table_name = 'rankings' AND constraint_type = 'CHECK' "
            "AND expression LIKE '%outcome%'"
        ).fetchall()
    assert [tuple(re.findall(r"'([^']*)'", expression)) for (expression,) in checks] == [OUTCOMES]


def test_the_toy_models_name_is_defined_once_and_costs_no_torch_import():
    from annotate.config import FeedbackConfig, PageConfig
    from eval.config import BlindConfig
    from models.loading import TOY_NAME as LOADING_NAME
    from models.toy import TOY_NAME
    from train.config import TrainConfig

    assert LOADING_NAME is TOY_NAME
    assert FeedbackConfig().model == TOY_NAME
    assert BlindConfig().base == TOY_NAME
    assert PageConfig().models == [TOY_NAME] and TrainConfig().model == TOY_NAME
    # The default is importable by commands that must start fast (eval report, --help).
    probe = "import sys, models.toy, cli.errors; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert out.stdout.strip() == "False", out.stderr


def _images(n: int) -> list[Image.Image]:
    return [Image.new("RGB", (8, 8), (40 * k, 0, 0)) for k in range(n)]


def _too_few(prompts, images):
    return [1.0] * (len(images) - 1)


def _not_a_number(prompts, images):
    return [float("nan")] * len(images)


@pytest.mark.parametrize("scorer, says", [(_too_few, "scores for"),
                                          (_not_a_number, "not a finite number")])
def test_the_trainers_samples_check_their_scores(scorer, says):
    from train.samples import score

    with pytest.raises(ModelError, match=f"scorer mine.*{says}"):
        score(scorer, "mine", [_images(2), _images(2)], ["a", "b"])
    assert score(lambda prompts, images: [2.0] * len(images), "mine",
                 [_images(2)], ["a"]) == 2.0


@pytest.mark.parametrize("scorer, says", [(_too_few, "scores for"),
                                          (_not_a_number, "not a finite number")])
def test_eval_auto_checks_its_scores(tmp_path, scorer, says):
    from eval.auto import score_images

    paths = []
    for k, image in enumerate(_images(3)):
        image.save(tmp_path / f"{k}.png")
        paths.append(tmp_path / f"{k}.png")
    with pytest.raises(ModelError, match=f"scorer mine.*{says}"):
        score_images(scorer, "mine", ["a"] * 3, paths, "base")


def test_every_command_s_toy_prompts_are_the_one_built_in_set():
    from annotate.feedback import default_prompts as feedback_prompts
    from eval.__main__ import default_prompts as eval_prompts
    from models.toy import built_in_prompts

    toy = built_in_prompts("toy")
    assert len(toy) == 18 and {p.category for p in toy} == {"circle", "square", "triangle"}
    assert eval_prompts("toy") == toy and built_in_prompts("toy-flow") == toy
    assert feedback_prompts("toy") == [p.text for p in toy]
    assert built_in_prompts("some/model") is None
