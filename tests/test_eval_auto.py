"""`eval auto`: the toy model against itself and against a visibly broken copy."""

import json
import os
import shutil
import subprocess
import sys
import time

import pytest
import torch
import yaml
from PIL import Image

from data.prompts import Prompt
from eval.auto import compare
from eval.config import Sampling
from eval.report import write_auto_report
from models.loading import TOY_DIR
from models.scorers import load_scorer
from models.toy.shapes import all_captions

PROMPTS = [Prompt(c, c.split()[-1]) for c in all_captions()]


@pytest.fixture(scope="module")
def broken_toy(tmp_path_factory):
    """The toy pipeline with noise in every UNet weight: it no longer draws its prompt."""
    from diffusers import UNet2DConditionModel

    folder = tmp_path_factory.mktemp("broken") / "pipeline"
    shutil.copytree(TOY_DIR, folder)
    unet = UNet2DConditionModel.from_pretrained(folder / "unet")
    torch.manual_seed(0)
    with torch.no_grad():
        for parameter in unet.parameters():
            parameter.add_(torch.randn_like(parameter) * parameter.float().std().nan_to_num(0.1))
    unet.save_pretrained(folder / "unet")
    return folder


def test_the_toy_model_against_itself_is_a_coin_toss(tmp_path):
    sampling = Sampling(seeds=1, steps=6)
    result = compare("toy", "toy", PROMPTS, load_scorer("toy_judge"), "toy_judge", sampling,
                     root=tmp_path / "images")
    summary = write_auto_report(result, tmp_path / "report", "test")
    assert summary["pairs"] == 18 and summary["ties"] == 18  # identical images
    assert summary["win_rate"] == 0.5
    assert summary["wilson"][0] < 0.5 < summary["wilson"][1]
    assert summary["bootstrap"][0] <= 0.5 <= summary["bootstrap"][1]
    # one folder of images, made once and shared: file names carry no model name
    [folder] = (tmp_path / "images").iterdir()
    names = [p.name for p in folder.iterdir()]
    assert len(names) == 18 and not any("toy" in n for n in names)


def test_a_visibly_worse_model_loses_clearly_and_the_report_says_so(broken_toy, tmp_path):
    sampling = Sampling(seeds=2, steps=10)
    result = compare("toy", str(broken_toy), PROMPTS, load_scorer("toy_judge"), "toy_judge",
                     sampling, root=tmp_path / "images")
    summary = write_auto_report(result, tmp_path / "report", "python -m eval auto ...")
    assert summary["pairs"] == 36
    assert summary["wilson"][1] < 0.5 and summary["bootstrap"][1] < 0.5
    assert summary["aligned_mean_score"] < summary["base_mean_score"]
    report = (tmp_path / "report" / "report.md").read_text()
    assert "| all | 36 |" in report and "| circle | 12 |" in report
    for chart in ("win_rate.png", "scores.png"):
        with Image.open(tmp_path / "report" / chart) as image:
            assert image.format == "PNG" and image.width > 500 and image.height > 200
    # the same comparison again reuses every image
    before = {p: p.stat().st_mtime_ns for p in (tmp_path / "images").rglob("*.png")}
    compare("toy", str(broken_toy), PROMPTS, load_scorer("toy_judge"), "toy_judge",
            sampling, root=tmp_path / "images")
    after = {p: p.stat().st_mtime_ns for p in (tmp_path / "images").rglob("*.png")}
    assert before == after and len(before) == 72


def test_the_command_says_what_to_train_first(tmp_path, monkeypatch, capsys):
    from eval.__main__ import main

    monkeypatch.chdir(tmp_path)  # no runs/train here
    assert main(["auto"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: no aligned model") and err.count("\n") == 1


def test_a_run_s_kept_and_last_models_report_under_the_run_s_name():
    # README's loop judges runs/train/toy/best: its reports are human-toy and auto-toy
    from eval.__main__ import run_name

    assert run_name("runs/train/toy/best") == run_name("runs/train/toy/final") == "toy"
    assert run_name("toy") == "toy" and run_name("runs/rounds/round-1") == "round-1"


def test_the_command_writes_a_report_and_the_config_that_repeats_it(tmp_path, broken_toy,
                                                                     capsys):
    from eval.__main__ import main

    assert main(["auto", "--aligned", str(broken_toy), "--seeds", "1", "--steps", "4",
                 "--out", str(tmp_path / "r"), "--images", str(tmp_path / "i")]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["pairs"] == 18 and (tmp_path / "r" / "report.md").exists()
    assert summary.pop("judge_ms_per_pair") > 0  # the judge's time, shown with the tallies
    command = (f"python -m eval auto --aligned {broken_toy} --seeds 1 --steps 4 "
               f"--images {tmp_path / 'i'} --out {tmp_path / 'r'}")  # the fields' order
    assert f"`{command}`" in (tmp_path / "r" / "report.md").read_text()
    saved = yaml.safe_load((tmp_path / "r" / "config.yaml").read_text())
    assert saved["aligned"] == str(broken_toy) and saved["steps"] == 4
    shutil.copy(tmp_path / "r" / "config.yaml", tmp_path / "again.yaml")
    assert main(["auto", "--config", str(tmp_path / "again.yaml"), "--out",
                 str(tmp_path / "r2")]) == 0
    again = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert again.pop("report") == str(tmp_path / "r2" / "report.md")
    assert again.pop("judge_ms_per_pair") > 0
    summary.pop("report")
    assert again == summary


def test_every_scorer_given_is_reported_side_by_side_on_the_same_images(tmp_path, broken_toy):
    (tmp_path / "bright.py").write_text(  # a preference blind to the prompt
        "import numpy as np, torch\n"
        "def score(prompts, images):\n"
        "    assert len(images) <= 5, len(images)  # --score-batch 5\n"
        "    return torch.tensor([float(np.asarray(i).mean()) for i in images])\n")
    out = subprocess.run(
        [sys.executable, "-m", "eval", "auto", "--aligned", str(broken_toy), "--seeds", "1",
         "--steps", "4", "--scorer", "bright:score", "--also", "toy_judge", "--score-batch", "5",
         "--out", str(tmp_path / "r"), "--images", str(tmp_path / "i")],
        capture_output=True, text=True, cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(tmp_path)})
    assert out.returncode == 0, out.stderr[-2000:]
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    assert summary["scorer"] == "bright:score" and set(summary["scorers"]) == {
        "bright:score", "toy_judge"}
    judge = summary["scorers"]["toy_judge"]
    assert judge["wins"] + judge["losses"] + judge["ties"] == 18
    assert judge["losses"] > judge["wins"]  # the broken model draws no prompt: the judge says so
    assert summary["scorers"]["bright:score"]["wins"] == summary["wins"]
    report = (tmp_path / "r" / "report.md").read_text()
    assert "## Every scorer on the same images" in report
    assert "| toy_judge |" in report and "| bright:score |" in report
    assert len(list((tmp_path / "i").rglob("*.png"))) == 36  # generated once, judged twice


# -- every named model is checked before any work, and a wrong one fails at once --------

MISSING = "runs/train/nope/final"
HUB_ID = "some-org/some-model"
NO_HUB = "use `toy` or a local pipeline folder"
WRONG_NAMES = {  # (flag value, environment changes, the whole of stderr)
    "missing folder": (MISSING, {}, f"error: --aligned: no such model folder: {MISSING} (check "
                       "the path: a trained model is runs/train/<run>/final; or name `toy` "
                       "or a Hub id)\n"),
    "hub id, HF_HUB_OFFLINE=1": (HUB_ID, {"HF_HUB_OFFLINE": "1"},
                                 f"error: --aligned: {HUB_ID} is not in the local Hugging Face "
                                 f"cache and HF_HUB_OFFLINE is set: {NO_HUB}, or unset "
                                 "HF_HUB_OFFLINE to download it\n"),
    # a closed port on this machine: the Hub unreachable, and no outside address is tried
    "hub id, hub unreachable": (HUB_ID, {"HF_HUB_OFFLINE": None, "TRANSFORMERS_OFFLINE": None,
                                         "HF_ENDPOINT": "http://127.0.0.1:9"},
                                f"error: --aligned: cannot reach the Hugging Face Hub "
                                f"(http://127.0.0.1:9) to fetch {HUB_ID}, and it is not in the "
                                f"local cache: {NO_HUB}, or connect and try again\n"),
}


@pytest.mark.parametrize("command", [["auto"], []], ids=["eval auto", "eval"])
@pytest.mark.parametrize("case", list(WRONG_NAMES))
def test_a_wrong_model_name_fails_at_once_in_one_line_before_any_work(tmp_path, command, case):
    name, changes, expected = WRONG_NAMES[case]
    env = {k: v for k, v in os.environ.items() if k not in changes}
    env.update({k: v for k, v in changes.items() if v is not None})
    started = time.monotonic()
    out = subprocess.run([sys.executable, "-m", "eval", *command, "--aligned", name,
                          "--images", str(tmp_path / "images")],
                         capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120)
    took = time.monotonic() - started
    assert (out.returncode, out.stderr) == (1, expected)
    assert not list(tmp_path.rglob("*.png"))  # the toy base made no image first
    assert took < 45, f"{took:.0f} s"  # imports on a loaded machine; the check is instant


def test_two_processes_make_the_images_and_tallies_of_one(tmp_path, broken_toy):
    # `accelerate launch` of two CPU processes: each makes its share of both models'
    # images, the main one judges; the same files and the same summary as one process
    from pages.shared import free_port

    def auto(processes: int, folder: str) -> dict:
        flags = ["--aligned", str(broken_toy), "--seeds", "2", "--steps", "4", "--out",
                 str(tmp_path / folder / "r"), "--images", str(tmp_path / folder / "i")]
        launcher = [sys.executable, "-m", "accelerate.commands.launch", "-q", "--multi_gpu",
                    "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
                    "--dynamo_backend", "no", "--num_cpu_threads_per_process", "1",
                    "--main_process_port", str(free_port())]
        out = subprocess.run(
            [*(launcher if processes > 1 else [sys.executable]), "-m", "eval", "auto", *flags],
            capture_output=True, text=True, cwd=tmp_path, timeout=600,
            env={**os.environ, "ACCELERATE_USE_CPU": "true", "GLOO_SOCKET_IFNAME": "lo",
                 "OMP_NUM_THREADS": "1"})
        assert out.returncode == 0, out.stderr[-3000:]
        summary = json.loads(out.stdout.strip().splitlines()[-1])
        summary.pop("report")
        assert summary.pop("judge_ms_per_pair") > 0
        return summary

    one, two = auto(1, "one"), auto(2, "two")
    assert one == two and one["pairs"] == 36
    images = [{str(p.relative_to(tmp_path / f / "i")): p.read_bytes()
               for p in (tmp_path / f / "i").rglob("*.png")} for f in ("one", "two")]
    assert len(images[0]) == 72 and images[0] == images[1]


@pytest.mark.parametrize("command", ["auto", "leaderboard"])
def test_a_score_batch_below_one_is_refused_before_any_work(command):
    from cli.errors import UsageError
    from cli.parser import parse_command
    from eval.config import COMMANDS

    with pytest.raises(UsageError, match="--score-batch must be at least 1"):
        parse_command(COMMANDS, [command, "--score-batch", "0"], "python -m eval")
