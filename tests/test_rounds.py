"""`python -m rounds`: rounds of collect, train and evaluate, killed at any point and resumed."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pytest
import torch
from safetensors.torch import load_file

from cli.parser import parse
from models.loading import resolve, round_of
from rounds import stages
from rounds.config import RoundsConfig
from tests.helpers import saved_config_gives
from train.config import from_command_line

TINY = ["--pairs", "24", "--per-prompt", "4", "--steps", "6", "--eval-seeds", "1",
        "--adherence-pairs", "8", "--train-args", "--max_steps", "8", "--eval_every", "0",
        "--holdout_pairs", "2", "--checkpoint_every", "2", "--checkpoints_kept", "5"]


def command(out: Path, *extra: str, rounds: int = 2) -> list[str]:
    return [sys.executable, "-m", "rounds", "--out", str(out), "--rounds", str(rounds), *extra,
            *TINY]  # last: its --train-args takes the rest


def start(out: Path, cwd: Path, rounds: int) -> subprocess.Popen:
    return subprocess.Popen(command(out, rounds=rounds), cwd=cwd, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def kill_when(process: subprocess.Popen, ready, timeout: float = 900) -> None:
    """SIGKILL the whole command (its children too) once `ready()` holds, as a crash."""
    deadline = time.monotonic() + timeout
    try:
        while not ready():
            assert process.poll() is None, process.communicate()
            assert time.monotonic() < deadline, "the moment to kill never came"
            time.sleep(0.02)
    finally:  # a failed wait leaves nothing running either
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def pair_ids(store: Path) -> list[str]:
    """The pairs' indices in their feedback run (a run's key names its model's path, which
    differs between two run folders)."""
    with duckdb.connect(str(store), read_only=True) as con:
        rows = con.execute("SELECT vote_id FROM rankings ORDER BY vote_id").fetchall()
    return [r[0].rsplit("-", 1)[1] for r in rows]


def unet(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "unet" / "diffusion_pytorch_model.safetensors"))


@pytest.fixture(scope="module")
def whole(tmp_path_factory):
    """Two tiny rounds, uninterrupted."""
    cwd = tmp_path_factory.mktemp("whole")
    done = subprocess.run(command(cwd / "rounds"), cwd=cwd, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return cwd / "rounds", json.loads(done.stdout)


def test_each_round_trains_from_the_last_against_the_base_and_is_ranked(whole):
    out, printed = whole
    given = command(out)[3:]
    assert saved_config_gives(out / "config.yaml", RoundsConfig, given)
    rounds_settings = vars(parse(RoundsConfig, given, "rounds"))
    assert [r["round"] for r in printed["rounds"]] == [1, 2]
    for k in (1, 2):
        folder = out / f"round-{k}"
        assert len(pair_ids(folder / "prefs.duckdb")) == 24
        config = (folder / "train" / "config.yaml").read_text()
        start_model = "toy" if k == 1 else str(out / "round-1" / "train" / "final")
        assert f"model: {start_model}\n" in config
        assert ("reference_model: toy" in config) == (k == 2)  # round 1's model is the base
        # the trainer saved the very config rounds built for it, and the file gives it back
        planned = stages.train(RoundsConfig(**rounds_settings), k).config
        assert from_command_line([str(folder / "train" / "config.yaml")]) == planned
    # each round's images come from the previous round's model, and name it and its round
    made_by = {}
    for k in (1, 2):
        with duckdb.connect(str(out / f"round-{k}" / "prefs.duckdb"), read_only=True) as con:
            made_by[k] = con.execute("SELECT DISTINCT model, model_round FROM images").fetchall()
    assert made_by == {1: [("toy", None)],
                       2: [(str(out / "round-1" / "train" / "final"), 1)]}
    # the run folder stands for its newest round's model
    newest = (out / "round-2" / "train" / "final").resolve()
    assert resolve(str(out)) == str(newest) and round_of(str(out)) == 2
    assert (out / "round-2" / "versus-round-1" / "report.md").is_file()
    board = json.loads((out / "leaderboard.json").read_text())
    [scored] = board["boards"]
    assert {m["name"] for m in scored["models"]} == {"base", "round-1", "round-2"}
    assert (out / "leaderboard" / "leaderboard.md").is_file()


def test_killed_mid_collection_and_mid_training_it_resumes_to_the_same_result(whole, tmp_path):
    reference, _ = whole
    out, first = tmp_path / "rounds", tmp_path / "rounds" / "round-1"  # the same plan, 1 round
    kill_when(start(out, tmp_path, rounds=1), lambda: (first / "prefs.duckdb").exists())
    assert not (first / "collect.json").exists()  # killed while collecting
    kill_when(start(out, tmp_path, rounds=1),
              lambda: any((first / "train" / "checkpoints").glob("checkpoint-*/*")))
    assert not (first / "train.json").exists()  # killed while training
    done = subprocess.run(command(out, rounds=1), cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert pair_ids(first / "prefs.duckdb") == pair_ids(reference / "round-1" / "prefs.duckdb")
    resumed, uninterrupted = (unet(folder / "round-1" / "train" / "final")
                              for folder in (out, reference))
    for name, weight in uninterrupted.items():
        assert torch.allclose(resumed[name], weight, atol=1e-5), name


def test_a_rerun_with_other_settings_is_refused_in_one_line(whole):
    out, _ = whole
    done = subprocess.run(command(out, "--mix", "0.5"), capture_output=True, text=True,
                          cwd=out.parent)
    assert done.returncode == 1 and done.stderr.count("\n") == 1, done.stderr
    assert "other settings (mix)" in done.stderr


def test_people_rounds_take_the_pairs_people_labelled_on_the_previous_round_s_model(tmp_path):
    """--people: round 1 needs pairs of the base in the people's store, and names the page
    that labels them; once there, it trains on exactly those pairs."""
    people, out = tmp_path / "people.duckdb", tmp_path / "rounds"
    rounds = [sys.executable, "-m", "rounds", "--out", str(out), "--people", str(people),
              "--rounds", "1", "--pairs", "12", *TINY[2:]]

    def label(pairs: int) -> None:  # the toy judge stands in for the people here
        done = subprocess.run([sys.executable, "-m", "annotate", "feedback", "--db",
                               str(people), "--pairs", str(pairs), "--per-prompt", "4",
                               "--steps", "6", "--no-progress"],
                              cwd=tmp_path, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr

    label(8)
    short = subprocess.run(rounds, cwd=tmp_path, capture_output=True, text=True)
    assert short.returncode == 1 and short.stderr.count("\n") == 1, short.stderr
    assert f"holds 8: label more (python -m annotate --model toy --db {people})" in short.stderr
    label(20)  # the same feedback run, continued
    done = subprocess.run(rounds, cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    with duckdb.connect(str(people), read_only=True) as con:
        first = [r[0] for r in con.execute(
            "SELECT vote_id FROM rankings ORDER BY created_at, ranking_id LIMIT 12").fetchall()]
    with duckdb.connect(str(out / "round-1" / "prefs.duckdb"), read_only=True) as con:
        taken = [r[0] for r in con.execute("SELECT vote_id FROM rankings").fetchall()]
    assert sorted(taken) == sorted(first)
    assert json.loads((out / "round-1" / "collect.json").read_text())["pairs"] == 12


def test_a_rerun_ranks_the_rounds_by_the_blind_votes_cast_since(whole):
    """People vote on the board's models (python -m eval --board ... --db OUT/votes.duckdb);
    running the same command again adds their board beside the scorer's."""
    from eval.votes import VoteRow, VoteStore, now

    out, _ = whole
    models = [f"{out}/round-{k}/train/final" for k in (1, 2)]
    with VoteStore(out / "votes.duckdb") as votes:
        for k, (base, aligned) in enumerate([("toy", models[0]), (models[0], models[1])]):
            votes.record(VoteRow(f"v{k}", "ann", "a red circle", None, 0, base, aligned,
                                 "aligned", "A", "aligned", 20, 7.5, 900, now()))
    done = subprocess.run(command(out), cwd=out.parent, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    boards = json.loads((out / "leaderboard.json").read_text())["boards"]
    assert [b["judge"] for b in boards][1] == "people (blind votes)"
    assert {m["name"]: m["matches"] for m in boards[1]["models"]} == {
        "base": 1, "round-1": 2, "round-2": 1}


def test_with_keep_best_each_round_starts_from_the_previous_round_s_best_step(tmp_path):
    from rounds.config import RoundsConfig
    from rounds.stages import model_of, train

    config = RoundsConfig(rounds=2, pairs=8, keep_best=True, out=tmp_path / "rounds")
    best = str(tmp_path / "rounds" / "round-1" / "train" / "best")
    assert model_of(config, 1) == best and model_of(config, 0) == "toy"
    trained = train(config, 2).config
    assert trained.model == best and trained.keep_best


def test_a_plan_saved_before_a_setting_existed_continues_with_its_default(tmp_path):
    from cli.errors import DataError
    from rounds.__main__ import fixed_plan
    from rounds.config import RoundsConfig

    older = RoundsConfig(rounds=2, pairs=8, out=tmp_path).plan()
    del older["steps"]  # plan.json as written before --steps
    (tmp_path / "plan.json").write_text(json.dumps(older))
    fixed_plan(RoundsConfig(rounds=3, pairs=8, out=tmp_path))
    with pytest.raises(DataError, match=r"other settings \(steps\)"):
        fixed_plan(RoundsConfig(rounds=3, pairs=8, steps=6, out=tmp_path))


@pytest.mark.parametrize("flags, says", [
    (["--feedback-args", "--pairs 8 --tie-margn 0.3"],
     "--feedback-args: python -m annotate feedback: unknown flag --tie-margn: use "
     "--tie-margin, the nearest"),
    (["--feedback-args", "--steps 0"], "--feedback-args: --steps must be at least 1"),
    (["--train-args", "--max_steps", "8", "--learning_rat", "1e-5"],
     "round 1's training (--preset, --train-args): accelerate launch -m train: unknown "
     "flag --learning_rat: use --learning_rate, the nearest"),
    (["--preset", "toyy"], "round 1's training (--preset, --train-args): accelerate launch -m "
                           "train: 'toyy' is neither a preset"),
])
def test_a_misspelt_stage_setting_is_refused_before_any_stage_runs(tmp_path, capsys, flags,
                                                                    says):
    from rounds.__main__ import main

    out = tmp_path / "rounds"
    assert main(["--out", str(out), "--rounds", "2", "--pairs", "8", *flags]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: {says}") and err.count("\n") == 1, err
    assert not out.exists()  # nothing ran, nothing was written
