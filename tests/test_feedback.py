"""`python -m annotate feedback`: toy pairs labelled by a scorer, resumable, one-line errors.

The 200-pair run goes through `python -m annotate feedback` in a subprocess, on the
bundled toy model with 2 sampling steps so its generation takes seconds on a 2-core CPU
(the labels come from the judge whatever the images look like). Later runs call the
subcommand's `main` in this process: the same code, without paying a fresh process's
10 s of imports and model loading each time.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from annotate.__main__ import main as annotate_main
from annotate.feedback import FeedbackRun, image_uid, outcome, plan_batches
from data.pairs import decode_image
from data.store import Store
from models.toy.judge import score as judge
from models.toy.shapes import all_captions

REPO = Path(__file__).resolve().parents[1]
# One torch thread: the dev machine is shared, and two threads competing with another
# torch job for two cores run about ten times slower than one.
FAST = ["--steps", "2", "--threads", "1", "--no-progress"]


def main(argv: list[str]) -> int:
    """`python -m annotate feedback ARGV`, in this process."""
    return annotate_main(["feedback", *argv])


def feedback(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "annotate", "feedback", *args],
        capture_output=True, text=True, cwd=REPO, timeout=600,
    )


def summary(result: subprocess.CompletedProcess) -> dict:
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def feedback_here(capsys: pytest.CaptureFixture, *args: str) -> tuple[dict, str]:
    """The subcommand run in this process: its JSON summary and its stderr."""
    threads = torch.get_num_threads()
    try:
        code = main([*args])
    finally:
        torch.set_num_threads(threads)  # --threads must not outlive the call
    out = capsys.readouterr()
    assert code == 0, out.err
    return json.loads(out.out.strip().splitlines()[-1]), out.err


def stored_pairs(db: Path) -> list[tuple]:
    """(ranking, image_0 row, image_1 row) for every stored vote, images decoded."""
    with Store(db, read_only=True) as store:
        cur = store.cursor()
        rows = cur.execute(
            "SELECT r.vote_id, r.caption, r.outcome, r.shown_left, r.source, r.user_id, "
            "r.label_0, r.label_1, a.jpg, a.seed, a.guidance_scale, a.steps, a.model, "
            "b.jpg, b.seed, b.guidance_scale FROM rankings r "
            "JOIN images a ON a.image_uid = r.image_0_uid "
            "JOIN images b ON b.image_uid = r.image_1_uid ORDER BY r.vote_id"
        ).fetchall()
        names = dict(cur.execute("SELECT user_id, name FROM users").fetchall())
    return [(*row, names[row[5]]) for row in rows]


# -- the command ---------------------------------------------------------------


@pytest.fixture(scope="module")
def first_run(tmp_path_factory) -> tuple[Path, dict]:
    db = tmp_path_factory.mktemp("feedback") / "prefs.duckdb"
    return db, summary(feedback("--db", str(db), "--pairs", "200", *FAST))


def test_records_200_judged_toy_pairs_in_one_run(first_run):
    db, result = first_run
    assert result["added"] == 200 and result["existing"] == 0
    assert result["left"] + result["right"] + result["ties"] == 200
    pairs = stored_pairs(db)
    assert len(pairs) == 200
    assert {p[1] for p in pairs} == set(all_captions())
    clear = 0
    for (_, caption, result_, shown_left, source, _, label_0, label_1, jpg_0, seed_0, g_0,
         steps, model, jpg_1, seed_1, g_1, user) in pairs:
        assert source == "ai:toy_judge" and user == "ai:toy_judge"
        assert shown_left == 0 and model == "toy" and steps == 2
        assert seed_0 != seed_1 and g_0 == g_1 == 7.5
        s0, s1 = judge([caption, caption], [decode_image(jpg_0), decode_image(jpg_1)]).tolist()
        if abs(s0 - s1) > 0.01:  # the judge re-scores the stored JPEGs
            clear += 1
            assert result_ == ("left" if s0 > s1 else "right")
            assert (label_0, label_1) == ((1.0, 0.0) if s0 > s1 else (0.0, 1.0))
    assert clear >= 20  # enough clearly decided pairs to check (2 steps make weak images)


def test_a_larger_target_adds_only_the_missing_pairs_then_nothing(first_run, capsys):
    db, _ = first_run
    more, _ = feedback_here(capsys, "--db", str(db), "--pairs", "250", *FAST)
    assert (more["existing"], more["added"]) == (200, 50)
    again, said = feedback_here(capsys, "--db", str(db), "--pairs", "250", *FAST)
    assert (again["existing"], again["added"]) == (250, 0)
    assert "250 of 250 pairs already in" in said
    assert len(stored_pairs(db)) == 250


SCORER = '''
import torch

def brightness(prompts, images):
    """Prefers the brighter image: the mean of its pixels. Takes 3 images a call at most."""
    assert len(images) <= 3, f"{len(images)} images in one call"
    return torch.tensor([float(torch.tensor(list(im.convert("L").getdata())).float().mean())
                         for im in images])
'''


def test_a_module_callable_scorer_labels_by_its_own_scores(tmp_path, monkeypatch, capsys):
    (tmp_path / "my_scorer.py").write_text(SCORER)
    monkeypatch.syspath_prepend(str(tmp_path))
    db = tmp_path / "prefs.duckdb"
    spec = "my_scorer:brightness"
    result, _ = feedback_here(capsys, "--db", str(db), "--pairs", "24", "--scorer", spec,
                              "--guidance-range", "3", "12", "--score-batch", "3", *FAST)
    assert result["added"] == 24 and result["source"] == f"ai:{spec}"
    assert result["judge_ms_per_pair"] > 0
    pairs = stored_pairs(db)
    assert {p[4] for p in pairs} == {f"ai:{spec}"}
    assert any(p[10] != p[15] for p in pairs)  # guidance drawn per image
    for p in pairs:
        bright = [sum(decode_image(j).convert("L").getdata()) / 1024 for j in (p[8], p[13])]
        if abs(bright[0] - bright[1]) > 0.5:
            assert p[2] == ("left" if bright[0] > bright[1] else "right")


GUARDED = SCORER + '''

def darkness(prompts, images):
    """The opposite taste: the darker image is the better."""
    return -brightness(prompts, images)
'''


def test_a_guard_scorer_turns_the_labels_it_disagrees_with_into_ties(tmp_path, monkeypatch,
                                                                      capsys):
    """BalancedDPO's vote across scorers in its simplest form: a pair is decisive only where
    no guard prefers the other image by more than --guard-margin."""
    (tmp_path / "guarded_scorer.py").write_text(GUARDED)
    monkeypatch.syspath_prepend(str(tmp_path))
    common = ["--pairs", "12", "--scorer", "guarded_scorer:brightness", "--score-batch", "3",
              "--tie-margin", "0.5", *FAST]
    plain, _ = feedback_here(capsys, "--db", str(tmp_path / "plain.duckdb"), *common)
    vetoed, _ = feedback_here(capsys, "--db", str(tmp_path / "vetoed.duckdb"), *common,
                              "--guard-scorers", "guarded_scorer:darkness")
    decisive = plain["left"] + plain["right"]
    assert decisive >= 6 and plain["vetoed"] == 0
    # the opposite taste disagrees with every decisive label: each becomes a tie
    assert (vetoed["left"], vetoed["right"], vetoed["vetoed"]) == (0, 0, decisive)
    assert vetoed["ties"] == plain["ties"] + decisive
    assert {p[2] for p in stored_pairs(tmp_path / "vetoed.duckdb")} == {"tie"}
    assert vetoed["run"] != plain["run"]  # another labelling: another run, not a resume
    # a margin wider than any brightness gap lets every label through
    wide, _ = feedback_here(capsys, "--db", str(tmp_path / "wide.duckdb"), *common,
                            "--guard-scorers", "guarded_scorer:darkness", "--guard-margin",
                            "1000")
    assert (wide["left"], wide["right"], wide["vetoed"]) == (plain["left"], plain["right"], 0)


INTERRUPTING = """
import torch

calls = 0


def score(prompts, images):
    \"\"\"Image 1 always wins; the third call is a Ctrl-C.\"\"\"
    global calls
    calls += 1
    if calls == 3:
        raise KeyboardInterrupt
    return torch.arange(len(images), dtype=torch.float32) % 2
"""


def test_ctrl_c_keeps_the_finished_batches_and_the_same_command_continues(
    tmp_path, monkeypatch, capsys
):
    (tmp_path / "interrupting.py").write_text(INTERRUPTING)
    monkeypatch.syspath_prepend(str(tmp_path))
    db = tmp_path / "prefs.duckdb"
    args = ["--db", str(db), "--pairs", "40", "--scorer", "interrupting:score", *FAST]
    threads = torch.get_num_threads()
    try:
        code = main(args)
    finally:
        torch.set_num_threads(threads)
    out = capsys.readouterr()
    assert code == 130 and "interrupted: 6 pairs added" in out.err
    stopped = json.loads(out.out)
    assert stopped["interrupted"] and stopped["added"] == 6  # two batches of three pairs
    with Store(db, read_only=True) as store:
        assert store.counts()["rankings"] == 6 and store.counts()["images"] == 12
    resumed, _ = feedback_here(capsys, *args)
    assert (resumed["existing"], resumed["added"]) == (6, 34)
    assert {p[2] for p in stored_pairs(db)} == {"right"}


def test_a_store_held_by_another_process_is_one_line_and_exit_1(tmp_path):
    db = tmp_path / "prefs.duckdb"
    with Store(db):
        result = feedback("--db", str(db), "--pairs", "2", *FAST)
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: ")
    assert "in use by" in result.stderr


@pytest.mark.parametrize(
    "args, says",
    [
        (["--scorer", "no_such_scorer"], "unknown scorer"),
        (["--scorer", "no_such_module:score"], "cannot import scorer"),
        (["--prompts", "missing.txt"], "not found"),
        (["--model", "some/other-model"], "--prompts FILE"),
        (["--pairs", "0"], "--pairs must be at least 1"),
        (["--score-batch", "0"], "--score-batch must be at least 1"),
        (["--pairs", "many"], "invalid int value"),
        (["--guidance-range", "0.5", "12"], "1 < LOW <= HIGH"),
        (["--guidance", "5", "--guidance-range", "3", "12"], "not both"),
    ],
)
def test_bad_inputs_are_one_line_errors_with_exit_1(tmp_path, capsys, args, says):
    code = main(["--db", str(tmp_path / "prefs.duckdb"), *args, "--no-progress"])
    out = capsys.readouterr()
    assert code == 1 and out.out == ""
    assert out.err.count("\n") == 1 and out.err.startswith("error: ") and says in out.err


# -- the plain functions ---------------------------------------------------------


def test_a_pair_follows_from_the_settings_and_its_index_alone():
    run = FeedbackRun(prompts=("a", "b", "c"), pairs=10, seed=3, per_prompt=2, batch=8)
    same = FeedbackRun(prompts=("a", "b", "c"), pairs=99, seed=3, per_prompt=2, batch=2)
    assert run.key == same.key  # the target and the batch size are not the run's identity
    assert [run.draw(i) for i in range(10)] == [same.draw(i) for i in range(10)]
    assert [run.prompt(i) for i in range(7)] == ["a", "a", "b", "b", "c", "c", "a"]
    assert run.draw(0)[0] != run.draw(1)[0]
    for other in (FeedbackRun(prompts=("a", "b", "c"), seed=4),
                  FeedbackRun(prompts=("a", "b", "c"), scorer="m:f"),
                  FeedbackRun(prompts=("a", "b"), tie_margin=0.1)):
        assert other.key != FeedbackRun(prompts=("a", "b", "c")).key
    assert image_uid(run.vote_id(5), 0) == image_uid(same.vote_id(5), 0)
    assert image_uid(run.vote_id(5), 0) != image_uid(run.vote_id(5), 1)


def test_batches_hold_one_prompt_and_go_round_the_prompts():
    run = FeedbackRun(prompts=("a", "b"), pairs=12, batch=2)
    batches = plan_batches(run, [i for i in range(12) if i != 2])
    assert batches == [[0, 4], [1, 3], [6, 8], [5, 7], [10], [9, 11]]
    assert all(len({run.prompt(i) for i in batch}) == 1 for batch in batches)


def test_outcomes_tie_within_the_margin():
    assert outcome(0.9, 0.2, 0.0) == "left" and outcome(0.2, 0.9, 0.0) == "right"
    assert outcome(0.5, 0.5, 0.0) == "tie"
    assert outcome(0.55, 0.5, 0.1) == "tie" and outcome(0.7, 0.5, 0.1) == "left"
