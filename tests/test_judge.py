"""Your own judge: `python -m train judge` fits a reward model on the store's votes, its
folder is a scorer everywhere, and `python -m eval agreement` says how far each scorer
agrees with people."""

from __future__ import annotations

import json
import math
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import record

from data import heldout
from data.intervals import wilson
from data.pairs import encode_jpeg
from data.store import ImageRecord, Store, Vote, new_uid
from models.toy.shapes import all_captions, draw, random_spec
from train.loss import bradley_terry_loss

ROOT = Path(__file__).resolve().parents[1]


def size_store(path: Path, votes: int = 96, seed: int = 0, people: int = 4) -> Path:
    """A store of toy shapes in pairs of two sizes, each vote by one of `people` for the
    larger shape (a taste the toy judge does not have), every fifth a tie."""
    rng = random.Random(seed)
    with Store(path) as store:
        users = [store.user_id(f"person-{k}") for k in range(people)]
        batch = []
        for k in range(votes):
            caption = all_captions()[k % 9]
            specs = [random_spec(rng) for _ in range(2)]
            images = [ImageRecord(image_uid=new_uid(), jpg=encode_jpeg(draw(spec)),
                                  prompt=caption, model="toy") for spec in specs]
            larger = int(specs[1].radius > specs[0].radius)
            outcome = "tie" if k % 5 == 4 else ("left" if larger == 0 else "right")
            batch.append((Vote(vote_id=new_uid(), caption=caption,
                               image_0_uid=images[0].image_uid,
                               image_1_uid=images[1].image_uid, outcome=outcome,
                               shown_left=0, user_id=users[k % people]), images))
        store.record_votes(batch)
    return path


def tiny_judge(tmp_path: Path, store: Path, *extra: str,
               launch: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    """`python -m train judge toy` at a tiny size (flags in `extra` win), in a process of
    its own (or several: `launch` is accelerate's launcher and its flags)."""
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "GLOO_SOCKET_IFNAME": "lo"}
    return subprocess.run(
        [sys.executable, *launch, "-m", "train", "judge", "toy", "--data", str(store),
         "--output_dir", str(tmp_path / "judge"), "--max_steps", "6", "--eval_every", "3",
         "--batch_size", "16", "--micro_batch_size", "4", "--holdout_pairs", "30", *extra],
        cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)


def test_the_bradley_terry_loss_on_a_hand_case_ties_one_half():
    """Scores (2, 0): a vote for image 0 costs log(1 + e^-2), against it log(1 + e^2), a
    tie their mean less log 2 (PickScore's cross-entropy plus its log 0.5 for a tie)."""
    s0, s1 = torch.tensor([2.0, 2.0, 2.0, 1.5]), torch.tensor([0.0, 0.0, 0.0, 1.5])
    label_0 = torch.tensor([1.0, 0.0, 0.5, 0.5])
    loss = bradley_terry_loss(s0, s1, label_0)
    win, lose = math.log(1 + math.exp(-2)), math.log(1 + math.exp(2))
    assert loss.tolist() == pytest.approx([win, lose, (win + lose) / 2 - math.log(2), 0.0],
                                          abs=1e-6)
    # PickScore's own form: cross-entropy over softmax of the two scores, + log 0.5 on a tie
    logits = torch.stack([s0, s1], dim=-1)
    theirs = (label_0 * torch.nn.functional.cross_entropy(logits, torch.zeros(4, dtype=torch.long),
                                                          reduction="none")
              + (1 - label_0) * torch.nn.functional.cross_entropy(
                  logits, torch.ones(4, dtype=torch.long), reduction="none")
              + (label_0 == 0.5).float() * math.log(0.5))
    assert torch.allclose(loss, theirs, atol=1e-6)
    # a tie between equal scores is already right: no gradient
    a, b = torch.tensor([1.5], requires_grad=True), torch.tensor([1.5], requires_grad=True)
    bradley_terry_loss(a, b, torch.tensor([0.5])).sum().backward()
    assert a.grad.item() == 0 and b.grad.item() == 0


def test_held_out_by_annotator_keeps_whole_annotators_out():
    users = [1, 2, 3, 1, 2, 3, 4, 4, 4, 4]
    held = heldout.by_annotator(users, 5, seed=0)
    chosen = {users[i] for i in held}
    assert len(held) <= 5 and chosen
    assert all(users[i] not in chosen for i in range(len(users)) if i not in set(held))


def test_a_judge_loads_as_a_scorer_by_path_in_a_fresh_process_and_two_processes_fit_it(
        tmp_path):
    store = size_store(tmp_path / "people.duckdb")
    done = tiny_judge(tmp_path, store)
    assert done.returncode == 0, done.stderr
    # two processes: each takes half of a step's pairs, the loss is the weighted mean over
    # both halves, so the losses, held-out accuracies and weights are one process's
    two = tiny_judge(tmp_path, store, "--output_dir", str(tmp_path / "two"), launch=[
        "-m", "accelerate.commands.launch", "-q", "--multi_gpu", "--num_processes", "2"])
    assert two.returncode == 0, two.stderr
    from safetensors.torch import load_file

    one, both = (load_file(folder / "final" / "model.safetensors")
                 for folder in (tmp_path / "judge", tmp_path / "two"))
    assert all(torch.allclose(one[k], both[k], atol=1e-4) for k in one)
    histories = [json.loads((folder / "final" / "judge.json").read_text())["history"]
                 for folder in (tmp_path / "judge", tmp_path / "two")]
    for mine, theirs in zip(*histories, strict=True):
        assert mine == pytest.approx(theirs, rel=1e-4)
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    final = tmp_path / "judge" / "final"
    record_ = json.loads((final / "judge.json").read_text())
    trained = record_["trained_on"]
    held = record_["heldout"]
    assert trained["annotators"] == 4 and trained["sources"] == [str(store)]
    assert trained["pairs"] + held["pairs"] == 96 and held["pairs"] <= 30
    assert trained["ties"] > 0 and trained["date"].startswith("20")
    assert held["by"] == "prompt" and len(record_["history"]) == 2
    assert held["interval"][0] <= held["accuracy"] <= held["interval"][1]
    assert summary["heldout"] == held and not (tmp_path / "judge" / "checkpoint.pt").exists()
    assert len(np.load(final / "trained_pairs.npy")) == trained["pairs"]
    # a fresh process: the plain calls load it, and every command's scorer loader too
    check = subprocess.run([sys.executable, "-c", f"""
from transformers import AutoProcessor, CLIPModel
from models.scorers import PickScore, load_scorer
CLIPModel.from_pretrained({str(final)!r}); AutoProcessor.from_pretrained({str(final)!r})
assert isinstance(load_scorer({str(final)!r}), PickScore)
"""], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert check.returncode == 0, check.stderr
    # its agreement with the held-out votes, from its folder, is what training measured
    agreement = subprocess.run([sys.executable, "-m", "eval", "agreement", "--db", str(store),
                                "--scorers", "toy_judge", str(final)],
                               cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert agreement.returncode == 0, agreement.stderr
    report = json.loads(agreement.stdout.strip().splitlines()[-1])
    judged = {s["scorer"]: s for s in report["scorers"]}
    assert report["votes"] == held["decisive"]
    assert judged[str(final)]["agreement"] == pytest.approx(held["accuracy"])
    assert "agreement  Wilson 95%" in agreement.stderr


def test_a_stopped_judge_run_continues_to_the_weights_of_an_uninterrupted_one(
        tmp_path, monkeypatch):
    from train import judge

    store = size_store(tmp_path / "people.duckdb", votes=60)

    def config(name: str):
        return judge.from_command_line(
            ["toy", "--data", str(store), "--output_dir", str(tmp_path / name),
             "--max_steps", "6", "--eval_every", "2", "--batch_size", "16",
             "--holdout_pairs", "20"])

    judge.train_judge(config("whole"))
    real = judge.Batches.__getitem__

    def stopped_at_step_4(self, k):  # Ctrl+C while step 4's pairs are read
        if self.start + k == 4:
            raise KeyboardInterrupt
        return real(self, k)

    monkeypatch.setattr(judge.Batches, "__getitem__", stopped_at_step_4)
    with pytest.raises(KeyboardInterrupt):
        judge.train_judge(config("stopped"))
    assert (tmp_path / "stopped" / "checkpoint.pt").exists()
    monkeypatch.setattr(judge.Batches, "__getitem__", real)
    judge.train_judge(config("stopped"))
    from safetensors.torch import load_file

    whole, resumed = (load_file(tmp_path / name / "final" / "model.safetensors")
                      for name in ("whole", "stopped"))
    assert whole.keys() == resumed.keys()
    assert all(torch.allclose(whole[k], resumed[k], atol=1e-6) for k in whole)
    history = [json.loads((tmp_path / name / "final" / "judge.json").read_text())["history"]
               for name in ("whole", "stopped")]
    assert [h["step"] for h in history[1]] == [2, 4, 6]
    for whole_step, resumed_step in zip(*history, strict=True):
        assert whole_step == pytest.approx(resumed_step, rel=1e-6)


BRIGHTNESS = """
import numpy as np
import torch


def score(prompts, images):
    return torch.tensor([np.asarray(image, dtype=np.float64).mean() for image in images])
"""


def test_agreement_is_a_hand_count_of_people_s_decisive_votes(tmp_path, monkeypatch, capsys):
    """Five votes by people: the brighter image chosen three times, the darker once, and
    once two equally bright images (one half): 3.5 of 5. A tie, a both-bad vote and AI
    feedback are not counted."""
    from eval.__main__ import main

    (tmp_path / "brightness.py").write_text(BRIGHTNESS)
    monkeypatch.syspath_prepend(str(tmp_path))
    light, dark = (230, 230, 230), (20, 20, 20)
    with Store(tmp_path / "prefs.duckdb") as store:
        for outcome in ("left", "left", "right"):  # chose the brighter
            colors = (light, dark) if outcome == "left" else (dark, light)
            record(store, "a cat", outcome, colors=colors)
        record(store, "a cat", "right", colors=(light, dark))  # chose the darker
        record(store, "a dog", "left", colors=(light, light))  # equally bright
        record(store, "a dog", "tie", colors=(light, dark))
        record(store, "a dog", "both_bad", colors=(light, dark))
        record(store, "a dog", "right", colors=(light, dark), source="ai:toy_judge")
    code = main(["agreement", "--db", str(tmp_path / "prefs.duckdb"), "--scorers",
                 "brightness:score"])
    out = capsys.readouterr()
    assert code == 0, out.err
    report = json.loads(out.out.strip().splitlines()[-1])
    (measured,) = report["scorers"]
    assert (report["votes"], measured["agreed"], measured["agreement"]) == (5, 3.5, 0.7)
    interval = wilson(3.5, 5)
    assert measured["wilson"] == [interval.low, interval.high]


def test_bad_input_to_a_judge_is_one_line(tmp_path, capsys):
    from eval.__main__ import main as eval_main
    from train.__main__ import main as train_main

    with Store(tmp_path / "ai.duckdb") as store:
        record(store, "a cat", "left", source="ai:toy_judge")
    code = train_main(["judge", "toy", "--data", str(tmp_path / "ai.duckdb"), "--output_dir",
                       str(tmp_path / "judge")])
    assert (code, capsys.readouterr().err.strip().splitlines()) == (1, [
        f"error: {tmp_path / 'ai.duckdb'} holds no people's votes, only AI feedback (ai:*): "
        "collect votes (python -m annotate) or give --votes all"])
    with Store(tmp_path / "people.duckdb") as store:
        record(store, "a cat", "left")
    (tmp_path / "empty").mkdir()
    for db, scorer, line in [
        ("ai.duckdb", "toy_judge", f"error: {tmp_path / 'ai.duckdb'} holds no decisive vote "
         "by people that no named judge trained on: collect votes (python -m annotate) and "
         "measure on those"),
        ("people.duckdb", str(tmp_path / "empty"), f"error: {tmp_path / 'empty'} is a folder "
         "but not a scorer: give a judge's folder (python -m train judge writes one: "
         "runs/judge/final) or a CLIP checkpoint"),
    ]:
        code = eval_main(["agreement", "--db", str(tmp_path / db), "--scorers", scorer])
        assert (code, capsys.readouterr().err.strip().splitlines()) == (1, [line])
