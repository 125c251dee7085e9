"""Online RL (`--objective nft`, train/online.py) on a tiny SD3 pipeline: its rollouts in a
store (labelled pairs, the page's pool, the export), rewards served over HTTP by another
process equal to in-process ones, exact resume, two processes as one, one-line errors."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest
import torch
from PIL import Image

from cli.errors import TrainError
from data.pairs import decode_image
from train import checkpoints
from train.config import resolve
from train.online import OldPolicy, OnlineRun

REWARD = '''
import torch

def brightness(prompts, images):
    """The brighter image is the better: the mean of its pixels, in [0, 1]."""
    return torch.tensor([sum(im.convert("L").getdata()) / (255.0 * im.width * im.height)
                         for im in images])
'''
SPEC = "online_reward:brightness"
PROMPTS = ["a red circle", "a blue square", "a green triangle"]


@pytest.fixture(scope="module")
def reward_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("reward")
    (folder / "online_reward.py").write_text(REWARD)
    (folder / "prompts.txt").write_text("\n".join(PROMPTS) + "\n")
    sys.path.insert(0, str(folder))
    yield folder
    sys.path.remove(str(folder))


def nft_config(model: Path, folder: Path, out: Path, **overrides):
    values = {
        "model": str(model), "objective": "nft", "rewards": [SPEC],
        "prompts": str(folder / "prompts.txt"), "output_dir": str(out), "resolution": 32,
        "group_size": 4, "groups_per_step": 2, "rollout_steps": 2, "rollout_guidance": 3.0,
        "noise_levels": 2, "batch_size": 4, "max_steps": 2, "learning_rate": 1e-3,
        "checkpoint_every": 0, "log_every": 1, "eval_every": 0, "keep_best": False,
        "mixed_precision": "no", "max_sequence_length": 8, "lora_rank": 4, "ema_decay": 0.0,
    }
    values.update(overrides)
    return resolve("toy-flow-nft", values)


def metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").open()]


def weights(run: OnlineRun) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in run.denoiser.named_parameters()
            if p.requires_grad}


@pytest.fixture(scope="module")
def first_run(tiny_sd3_dir, reward_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("nft") / "run"
    run = OnlineRun(nft_config(tiny_sd3_dir, reward_dir, out))
    summary = run.train()
    return out, summary, weights(run)


def brightness(image: Image.Image) -> float:
    return sum(image.convert("L").getdata()) / (255.0 * image.width * image.height)


def test_every_rollout_is_a_labelled_pair_and_a_pool_pair_of_the_store(first_run):
    out, summary, _ = first_run
    assert summary["trained_steps"] == 2 and summary["rollouts"] == 16
    db = Path(summary["rollout_db"])
    assert db == out / "rollouts.duckdb"
    con = duckdb.connect(str(db), read_only=True)
    votes = con.execute(
        "SELECT r.caption, r.source, r.label_0, i0.jpg, i1.jpg, i0.seed, i1.seed, i0.model "
        "FROM rankings r JOIN images i0 ON i0.image_uid = r.image_0_uid "
        "JOIN images i1 ON i1.image_uid = r.image_1_uid").fetchall()
    pool = con.execute("SELECT count(*), count(DISTINCT pool) FROM pool").fetchone()
    con.close()
    # 2 steps x 2 groups x 4 rollouts, two by two: 8 pairs, each also in the page's pool
    assert len(votes) == 8 and pool == (8, 1)
    for caption, source, label_0, jpg_0, jpg_1, seed_0, seed_1, model in votes:
        assert caption in PROMPTS and source == f"ai:{SPEC}"
        assert seed_1 == seed_0 + 1 and model.startswith(f"{out} step ")
        a, b = brightness(decode_image(jpg_0)), brightness(decode_image(jpg_1))
        assert label_0 == (0.5 if a == b else 1.0 if a > b else 0.0)  # the stored images'
    assert not any((db.parent / f"{db.name}.shards" / "rollouts").glob("*.parquet"))
    rows = metrics(out)
    assert [r["step"] for r in rows] == [1, 2]
    assert all(0 <= r["reward"] <= 1 and r["live_groups"] == 1.0 for r in rows)
    assert rows[0]["kl"] == 0.0 and rows[1]["kl"] > 0  # the reference is the base


def test_rollouts_export_as_pairs_datasets_loads(first_run, tmp_path):
    out, summary, _ = first_run
    done = subprocess.run([sys.executable, "-m", "data", "export", "--db",
                           summary["rollout_db"], "--format", "jsonl", str(tmp_path / "x")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    from datasets import load_dataset

    rows = load_dataset("json", data_files=str(tmp_path / "x" / "train.jsonl"))["train"]
    assert len(rows) == 8 and set(rows["prompt"]) <= set(PROMPTS)


def test_rewards_served_over_http_by_another_process_are_the_same(first_run, tiny_sd3_dir,
                                                                   reward_dir, tmp_path):
    out, _, trained = first_run
    server = subprocess.Popen(
        [sys.executable, "-m", "models.reward_server", "--scorer", SPEC, "--port", "0"],
        stdout=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": f"{reward_dir}{os.pathsep}{os.getcwd()}"})
    try:
        line = server.stdout.readline()
        assert line.startswith(f"serving {SPEC} at http://127.0.0.1:"), line
        url = line.split(" at ")[1].strip()
        run = OnlineRun(nft_config(tiny_sd3_dir, reward_dir, tmp_path / "http",
                                   rewards=[url]))
        run.train()
    finally:
        server.terminate()
        server.wait(timeout=30)
    served, here = metrics(tmp_path / "http"), metrics(out)
    assert served[0]["reward"] == here[0]["reward"]  # the same images: the same rewards
    # later steps' images come from weights that the free cores' thread count rounds
    assert [r["reward"] for r in served] == pytest.approx([r["reward"] for r in here],
                                                          abs=1e-4)
    for name, value in weights(run).items():
        assert torch.allclose(value, trained[name], atol=1e-4), name


def test_the_old_policy_follows_and_is_restored_from_its_state():
    net = torch.nn.Linear(3, 2)
    trainable = list(net.parameters())
    old = OldPolicy(trainable)
    start = [p.detach().clone() for p in trainable]
    with torch.no_grad():
        for p in trainable:
            p.add_(1.0)
    old.follow(trainable, decay=0.25)
    for kept, before, now in zip(old.weights, start, trainable, strict=True):
        assert torch.allclose(kept, 0.25 * before + 0.75 * now)
    with old.swapped_in(trainable):
        assert torch.equal(net.weight, old.weights[0])
    assert torch.equal(net.weight, start[0] + 1.0)  # back
    again = OldPolicy(trainable)
    again.load_state_dict(old.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(again.weights, old.weights, strict=True))


def test_a_stopped_run_resumes_to_the_uninterrupted_run_s_weights(tiny_sd3_dir, reward_dir,
                                                                   tmp_path):
    common = {"max_steps": 4, "checkpoint_every": 2, "checkpoints_kept": 5, "lora_rank": 0,
              "ema_decay": 0.5, "old_decay": 0.5, "learning_rate": 1e-4}
    whole = OnlineRun(nft_config(tiny_sd3_dir, reward_dir, tmp_path / "whole", **common))
    whole.train()
    kept = tmp_path / "resumed" / "checkpoints"
    kept.mkdir(parents=True)
    shutil.copytree(tmp_path / "whole" / "checkpoints" / "checkpoint-000002",
                    kept / "checkpoint-000002")
    resumed = OnlineRun(nft_config(tiny_sd3_dir, reward_dir, tmp_path / "resumed",
                                   resume="latest", **common))
    assert resumed.train()["trained_steps"] == 2
    for (name, a), (_, b) in zip(whole.denoiser.named_parameters(),
                                 resumed.denoiser.named_parameters(), strict=True):
        assert torch.allclose(a, b, atol=1e-6), name
    assert [r["reward"] for r in metrics(tmp_path / "resumed")] == pytest.approx(
        [r["reward"] for r in metrics(tmp_path / "whole")][2:], abs=1e-6)
    # an offline run over an online run's checkpoint (it holds the old policy): one line
    dpo = resolve("toy-flow", {"model": str(tiny_sd3_dir), "output_dir": str(tmp_path / "whole"),
                               "lora_rank": 0, "ema_decay": 0.5, "resume": "latest"})
    with pytest.raises(TrainError, match=r"online RL \(nft\); this run is a full fine-tune "
                                         r".* and ema_decay 0.5: resume with its settings "
                                         r"\(--objective nft\)"):
        checkpoints.check_kind(kept / "checkpoint-000002", dpo)
    checkpoints.check_kind(kept / "checkpoint-000002", resolve("toy-flow-nft", {
        "model": str(tiny_sd3_dir), "lora_rank": 0, "ema_decay": 0.5}))  # the same kind


def test_two_processes_train_what_one_does(first_run, tiny_sd3_dir, reward_dir, tmp_path):
    from cli.parser import save_config

    out, _, trained = first_run
    save_config(nft_config(tiny_sd3_dir, reward_dir, tmp_path / "two"), tmp_path / "two.yaml")
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "GLOO_SOCKET_IFNAME": "lo",
           "PYTHONPATH": f"{reward_dir}{os.pathsep}{os.getcwd()}"}
    done = subprocess.run(
        [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu",
         "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
         "--dynamo_backend", "no", "--main_process_port", "29547", "-m", "train",
         str(tmp_path / "two.yaml")], capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert [r["reward"] for r in metrics(tmp_path / "two")] == pytest.approx(
        [r["reward"] for r in metrics(out)], abs=1e-6)
    from safetensors.torch import load_file

    saved = load_file(str(tmp_path / "two" / "final" / "pytorch_lora_weights.safetensors"))
    one = load_file(str(out / "final" / "pytorch_lora_weights.safetensors"))
    assert saved.keys() == one.keys()
    for name in one:
        assert torch.allclose(saved[name], one[name], atol=1e-5), name
    con = duckdb.connect(str(tmp_path / "two" / "rollouts.duckdb"), read_only=True)
    assert con.execute("SELECT count(*) FROM rankings").fetchone() == (8,)
    con.close()


@pytest.mark.parametrize("flags, said", [
    (["--group_size", "1"], "group_size must be at least 2"),
    (["--model", "toy"], "nft trains flow-matching models"),
    (["--reward_weights", "1", "2"], "reward_weights: 2 weights for 1 rewards"),
])
def test_bad_settings_are_one_line(flags, said, tmp_path, capsys):
    from train.__main__ import main as train

    assert train(["toy-flow-nft", "--output_dir", str(tmp_path / "out"), *flags]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and said in err, err
    assert not (tmp_path / "out").exists()


def test_a_dry_run_says_a_step_s_work_and_loads_no_model(capsys):
    from train.__main__ import main as train

    assert train(["toy-flow-nft", "--dry_run", "--groups_per_step", "4", "--group_size", "6",
                  "--rewards", "toy_judge", "http://127.0.0.1:9", "--reward_weights", "1",
                  "0.5"]) == 0
    said = capsys.readouterr()
    assert "4 prompts x 6 rollouts = 24 rollouts" in said.out
    assert "reward: 1 toy_judge + 0.5 http://127.0.0.1:9" in said.out
    assert "Loading" not in said.err
