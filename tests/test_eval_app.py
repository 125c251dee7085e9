"""The blind A/B evaluation: pairing, votes, the page (voted through a browser), blindness
and `python -m eval report`.

The models are two copies of the toy pipeline under unmistakable folder names (the
aligned one with noise in its UNet, so the two images of a pair differ), so a test can
search everything the browser received for their names.
"""

from __future__ import annotations

import io
import json
import random
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from datetime import datetime, timedelta

import duckdb
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from cli.errors import DataError
from data.prompts import Prompt
from eval.__main__ import main
from eval.app import build_app, launch_options
from eval.blind import BlindEval, Progress, informative_matchup, unseen_items
from eval.config import BlindConfig, ReportConfig, Sampling
from eval.images import images_for, model_folder
from eval.report import write_human_report
from eval.votes import VoteRow, VoteStore, outcome_of
from models.loading import TOY_DIR
from tests.helpers import fill_disk, saved_config_gives, serving, small_filesystem

PROMPTS = [Prompt("a red circle on a white background", "circle"),
           Prompt("a blue square on a white background", "square")]
SAMPLING = Sampling(seeds=2, steps=4)  # four pairs: a voter votes on each once
BASE_NAME, ALIGNED_NAME = "basemodel-qz7k", "alignedmodel-wx3v"


# -- plain functions, no models ------------------------------------------------------


def fake_eval(tmp_path, rng=None, seeds=2, question="preference") -> BlindEval:
    """A BlindEval over hand-made images: base draws red, aligned draws blue."""
    images = {}
    for model, color in (("base-m", (200, 0, 0)), ("aligned-m", (0, 0, 200))):
        folder = tmp_path / model
        folder.mkdir(exist_ok=True)
        images[model] = {}
        for p in PROMPTS:
            for s in range(seeds):
                path = folder / f"{abs(hash((p.text, s)))}.png"
                Image.new("RGB", (8, 8), color).save(path)
                images[model][(p.text, s)] = path
    votes = VoteStore(tmp_path / "votes.duckdb")
    return BlindEval(["base-m", "aligned-m"], PROMPTS, Sampling(seeds=seeds), images, votes, rng,
                     question=question)


def row(vote_id, outcome, side_a, prompt="p1", category=None, voter="ann", minutes=0):
    choice = {"tie": "tie", "both_bad": "both_bad"}.get(outcome) or \
        ("A" if outcome == side_a else "B")
    return VoteRow(vote_id, voter, prompt, category, 0, "toy", "runs/train/x/final", side_a,
                   choice, outcome, 4, 7.5, 100, datetime(2025, 1, 1) + timedelta(minutes=minutes))


def test_choices_mean_models_through_the_recorded_side():
    assert outcome_of("A", "aligned") == "aligned" and outcome_of("B", "aligned") == "base"
    assert outcome_of("A", "base") == "base" and outcome_of("B", "base") == "aligned"
    assert outcome_of("tie", "base") == "tie" and outcome_of("both_bad", "aligned") == "both_bad"
    with pytest.raises(DataError):
        outcome_of("left", "base")


def test_sides_are_shuffled_per_pair_and_recorded_with_the_vote(tmp_path):
    blind = fake_eval(tmp_path, random.Random(0), seeds=6)  # 12 pairs, one vote each
    red, blue = (200, 0, 0), (0, 0, 200)
    sides = []
    for k in range(12):
        pair = blind.deal("ann")
        shown = blind.show(pair)
        # the browser gets an opaque id and two files written for this showing alone: a
        # random name in the showings folder, pixels and no metadata
        assert re.fullmatch(r"[0-9a-f]{32}", shown.pair_id)
        for path in (shown.image_a, shown.image_b):
            assert path.parent == blind.showings.folder
            assert re.fullmatch(r"[0-9a-f]{32}\.png", path.name)
            with Image.open(path) as image:
                assert image.info == {}
        with Image.open(shown.image_a) as image:
            colour_a = image.convert("RGB").getpixel((4, 4))
        assert colour_a == (red if pair.side_a == "base" else blue)
        choice = ("A", "B", "tie", "both_bad")[k % 4]
        reveal = blind.vote(pair.pair_id, "ann", choice)
        assert not shown.image_a.exists()  # a voted pair's showing files are freed
        assert reveal.vote.side_a == pair.side_a and reveal.vote.choice == choice
        assert reveal.model_a == pair.model(pair.side_a) and reveal.model_b != reveal.model_a
        assert reveal.vote.outcome == outcome_of(choice, pair.side_a)
        sides.append(pair.side_a)
    assert 3 <= sides.count("aligned") <= 9  # shuffled, not fixed
    stored = blind.votes.votes()
    assert [v.side_a for v in stored] == sides and len({v.vote_id for v in stored}) == 12
    assert {v.seed for v in stored} == set(range(6)) and {v.category for v in stored} == {
        "circle", "square"}
    assert all(v.dwell_ms is not None and v.voter == "ann" for v in stored)


def test_a_voter_is_dealt_no_item_whose_images_they_saw_revealed():
    """An image once revealed is known by sight: an item is dealt only while the voter has
    seen none of its images by the matchup's models revealed (on a board, by any vote)."""
    items = [(p, s) for p in PROMPTS for s in range(2)]
    p0, p1 = PROMPTS[0].text, PROMPTS[1].text
    revealed = {("m1", p0, 0), ("m2", p0, 0), ("m1", p1, 1), ("m3", p1, 1)}
    assert unseen_items(items, ["m1", "m2"], revealed) == [(PROMPTS[0], 1), (PROMPTS[1], 0)]
    # another matchup of the board: m3's image of (p1, 1) is known, m2's of (p0, 0)
    assert unseen_items(items, ["m2", "m3"], revealed) == [(PROMPTS[0], 1), (PROMPTS[1], 0)]
    assert unseen_items(items, ["m4", "m5"], revealed) == items
    assert unseen_items(items, ["m1", "m2"], set()) == items


def test_a_voter_waits_rather_than_see_a_revealed_pair_again(tmp_path):
    """While the second prompt's images are missing, a voter who voted on the first
    prompt's pairs is dealt nothing; once they exist, only those; then nothing again.
    A pair dealt before a name was typed takes no vote from a name that saw it revealed."""
    full = fake_eval(tmp_path, random.Random(5))
    first = {m: {k: v for k, v in paths.items() if k[0] == PROMPTS[0].text}
             for m, paths in full.images.items()}
    blind = BlindEval(full.models, PROMPTS, full.sampling, first, full.votes, random.Random(5))
    unnamed = blind.deal("")  # dealt to a page whose voter has typed no name yet
    dealt = []

    def vote_while_dealt(choice: str) -> None:
        for _ in range(8):  # more than there are pairs
            if (pair := blind.deal("ann")) is None:
                return
            dealt.append((pair.prompt, pair.seed))
            blind.vote(pair.pair_id, "ann", choice)

    vote_while_dealt("A")
    assert sorted(dealt, key=str) == [(PROMPTS[0], 0), (PROMPTS[0], 1)], dealt
    assert blind.progress().images < blind.progress().total  # still being made
    with pytest.raises(DataError, match="seen who made"):
        blind.vote(unnamed.pair_id, "ann", "B")
    assert len(blind.votes.votes()) == 2
    assert blind.deal("bob") is not None  # another voter still gets the ready pairs
    blind.images = full.images  # the second prompt's images now exist too
    vote_while_dealt("tie")
    assert len(dealt) == len(set(dealt)) == 4, dealt


def test_a_board_matchup_is_the_closest_rated_with_the_fewest_votes():
    rng = random.Random(0)
    ratings = [1000, 1010, 1400]
    matchups = [(0, 1), (0, 2), (1, 2)]
    assert informative_matchup(matchups, ratings, {}, rng) == (0, 1)
    # by hand: p(1 - p) / (1 + n) is 0.25 / 11 = 0.023 for (0, 1) after ten votes, 0.0866
    # for (1, 2) (p = 1 / (1 + 10 ** 0.975)) and 0.0826 for (0, 2) (p = 1 / (1 + 10))
    assert informative_matchup(matchups, ratings, {(0, 1): 10}, rng) == (1, 2)
    # one vote on (1, 2) halves its value to 0.0433
    assert informative_matchup(matchups, ratings, {(0, 1): 10, (1, 2): 1}, rng) == (0, 2)
    # equal ratings: the matchup with the fewest votes, ties drawn at random
    drawn = {informative_matchup(matchups, [0, 0, 0], {(0, 1): 1}, rng) for _ in range(40)}
    assert drawn == {(0, 2), (1, 2)}


def test_a_board_deals_its_informative_matchups_and_stores_each_vote_between_them(tmp_path):
    """Three models on a board: each pair shows two of them, chosen by the ratings and the
    votes so far; the vote names both models, and the reveal their board names."""
    colors = {"m-best": (200, 0, 0), "m-close": (0, 200, 0), "m-far": (0, 0, 200)}
    images = {}
    for model, color in colors.items():
        (tmp_path / model).mkdir()
        images[model] = {}
        for p in PROMPTS:
            path = tmp_path / model / f"{abs(hash(p.text))}.png"
            Image.new("RGB", (8, 8), color).save(path)
            images[model][(p.text, 0)] = path
    names = ["best", "close", "far"]
    with VoteStore(tmp_path / "votes.duckdb") as votes:
        blind = BlindEval(list(colors), PROMPTS, Sampling(seeds=1), images, votes,
                          random.Random(0), names=names, ratings=[1100, 1090, 700])
        dealt = []
        for k in range(8):  # a voter each: on a board of three, one pair per prompt each
            pair = blind.deal(f"voter {k}")
            shown = blind.show(pair)
            with Image.open(shown.image_a) as image:
                assert image.convert("RGB").getpixel((4, 4)) == colors[pair.model(pair.side_a)]
            reveal = blind.vote(pair.pair_id, f"voter {k}", "A")
            assert (reveal.vote.base_model, reveal.vote.aligned_model) == (pair.base,
                                                                            pair.aligned)
            assert reveal.name_a == names[list(colors).index(pair.model(pair.side_a))]
            dealt.append((pair.base, pair.aligned))
        # the close matchup first, until its votes make the far ones worth asking
        assert dealt[0] == ("m-best", "m-close")
        assert dealt.count(("m-best", "m-close")) > dealt.count(("m-close", "m-far")) > 0
        assert ("close", "far", dealt.count(("m-close", "m-far"))) in blind.matchup_votes()
        blind.close()


def test_the_matchup_chooser_counts_only_votes_that_rank_on_the_boards_question(tmp_path):
    """Both-bad votes and another question's votes say nothing of which model is better on
    this board's question, so they leave its matchup as unvoted as it was."""
    from datetime import datetime

    from eval.votes import VoteRow

    with VoteStore(tmp_path / "votes.duckdb") as votes:
        def vote(k: int, choice: str, outcome: str, question: str) -> None:
            votes.record(VoteRow(f"v{k}", "ann", "p", None, 0, "m-a", "m-b", "base", choice,
                                 outcome, 2, 7.5, 100, datetime.now(), question))

        vote(0, "A", "base", "preference")
        vote(1, "both_bad", "both_bad", "preference")
        vote(2, "B", "aligned", "appeal")
        blind = BlindEval(["m-a", "m-b"], PROMPTS, Sampling(seeds=1), {}, votes,
                          random.Random(0), names=["a", "b"], ratings=[1000, 1000])
        assert blind.matchup_votes() == [("a", "b", 1)]
        assert votes.comparisons() == [("m-a", "m-b", 3)]  # the report still sees every vote
        blind.close()


def test_the_board_flag_refuses_a_file_that_is_no_board_in_one_line(tmp_path):
    (tmp_path / "board.json").write_text("{}")
    for board in ("board.json", "missing.json"):
        out = run_eval("--board", board, cwd=tmp_path)
        assert out.returncode == 1 and out.stderr.count("\n") == 1, out.stderr
        assert board in out.stderr and "python -m eval leaderboard" in out.stderr


def test_a_vote_is_stored_once_however_often_it_is_sent(tmp_path):
    blind = fake_eval(tmp_path, random.Random(3), seeds=40)
    pair = blind.deal("ann")
    first = blind.vote(pair.pair_id, "ann", "A")
    again = blind.vote(pair.pair_id, "ann", "B")  # a second click, another button
    assert again.vote == first.vote and again.vote.choice == "A"
    # bursts of concurrent clicks on fresh pairs: one row each, every answer the same (a
    # click that met its twin's uncommitted insert once said "not stored", 7% of bursts)
    bursts = 30
    for _ in range(bursts):
        pair = blind.deal("ann")
        answers, errors = [], []

        def click(choice, pair=pair, answers=answers, errors=errors):
            try:
                answers.append(blind.vote(pair.pair_id, "ann", choice).vote)
            except Exception as error:  # noqa: BLE001 - the test reports any failure
                errors.append(error)

        threads = [threading.Thread(target=click, args=(c,)) for c in ("A", "B", "tie", "A")]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors and len(set(answers)) == 1
    assert len(blind.votes.votes()) == 1 + bursts
    with pytest.raises(DataError, match="unknown or expired"):
        blind.vote("not-a-pair", "ann", "A")
    with pytest.raises(DataError, match="name"):
        blind.vote(blind.deal("").pair_id, "  ", "A")


def test_the_report_tallies_votes_overall_and_by_category(tmp_path):
    votes = [  # circle: 3 aligned wins, 1 loss; square: 1 win, 1 tie, 1 both bad
        row("1", "aligned", "aligned", "c1", "circle"), row("2", "aligned", "base", "c1", "circle"),
        row("3", "aligned", "aligned", "c2", "circle"), row("4", "base", "base", "c2", "circle"),
        row("5", "aligned", "base", "s1", "square"), row("6", "tie", "aligned", "s1", "square"),
        row("7", "both_bad", "base", "s2", "square", voter="bob", minutes=5),
    ]
    summary = write_human_report(votes, tmp_path, "python -m eval report")
    assert (summary["wins"], summary["losses"], summary["ties"], summary["both_bad"]) == \
        (4, 1, 1, 1)
    assert summary["n"] == 6 and summary["win_rate"] == pytest.approx(4.5 / 6)
    assert summary["decisive_win_rate"] == pytest.approx(0.8)
    assert summary["tie_rate"] == pytest.approx(1 / 6)
    assert summary["both_bad_rate"] == pytest.approx(1 / 7)
    # side A (the left) won votes 1, 3 and 4 of the five decisive ones
    assert summary["left_win_rate"] == pytest.approx(3 / 5)
    assert summary["sign_test_p"] == pytest.approx(0.375)
    assert summary["voters"] == ["ann", "bob"] and summary["aligned"] == "runs/train/x/final"
    circle, square = summary["categories"]["circle"], summary["categories"]["square"]
    assert (circle["wins"], circle["losses"], square["ties"], square["both_bad"]) == (3, 1, 1, 1)
    low, high = summary["wilson"]
    assert low < summary["win_rate"] < high
    report = (tmp_path / "report.md").read_text()
    assert "| all | 6 | 4 / 1 / 1 / 1 |" in report and "| circle | 4 |" in report
    assert "| all | 16.7% | 14.3% | 60.0% of 5 |" in report
    with Image.open(tmp_path / "win_rate.png") as chart:
        assert chart.format == "PNG"


def test_the_votes_file_has_a_schema_version_and_keeps_to_its_own_kind(tmp_path):
    from data.store import Store
    from eval.votes import MIGRATIONS

    path = tmp_path / "votes.duckdb"
    with VoteStore(path) as store:
        assert store.schema_version() == MIGRATIONS[-1][0]
        store.record(row("1", "aligned", "base"))
    with VoteStore(path, read_only=True) as store:  # reopening applies nothing twice
        assert store.schema_version() == MIGRATIONS[-1][0] and len(store.votes()) == 1
    # a votes file written before it had a schema_version is adopted, its votes kept
    with VoteStore(path) as store:
        store.record(row("2", "base", "aligned"))
    old = tmp_path / "old.duckdb"
    with duckdb.connect(str(old)) as con:
        con.execute(MIGRATIONS[0][1][0])
        con.execute(f"ATTACH '{path}' AS new (READ_ONLY)")
        con.execute("INSERT INTO votes SELECT * EXCLUDE (question) FROM new.votes")
    with pytest.raises(DataError, match="needs a schema upgrade: open it once read-write"):
        VoteStore(old, read_only=True)
    with VoteStore(old) as store:  # every migration applied, the votes kept
        assert store.schema_version() == MIGRATIONS[-1][0] and len(store.votes()) == 2
        assert {v.question for v in store.votes()} == {"preference"}
    # neither file is taken for the other: nothing is created in the wrong one
    Store(tmp_path / "prefs.duckdb").close()
    with pytest.raises(DataError, match="is not a votes file"):
        VoteStore(tmp_path / "prefs.duckdb")
    with pytest.raises(DataError, match="is not a preference store"):
        Store(path)
    with pytest.raises(DataError, match="is not a votes file"):
        VoteStore(tmp_path / "prefs.duckdb", read_only=True)


# -- the command ---------------------------------------------------------------------


def run_eval(*args, cwd):
    return subprocess.run([sys.executable, "-m", "eval", *args], capture_output=True,
                          text=True, cwd=cwd, timeout=120)


def test_report_command_on_votes_and_its_one_line_errors(tmp_path, capsys):
    db = tmp_path / "votes.duckdb"
    assert main(["report", "--db", str(db)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: no votes yet") and err.count("\n") == 1
    VoteStore(db).close()  # the file exists, with no votes in it
    assert main(["report", "--db", str(db)]) == 1
    assert capsys.readouterr().err.startswith("error: no votes yet")
    with VoteStore(db) as store:
        for k, (outcome, side) in enumerate([("aligned", "base"), ("base", "aligned"),
                                             ("aligned", "aligned")]):
            store.record(row(str(k), outcome, side, f"p{k}", minutes=k))
        store.record(VoteRow("other", "ann", "p", None, 0, "toy", "elsewhere", "base", "A",
                             "base", 4, 7.5, None, datetime(2024, 1, 1)))
        # while the votes file is held (by a running app), report says so in one line
        held = run_eval("report", "--db", str(db), cwd=tmp_path)
        assert held.returncode == 1 and held.stderr.count("\n") == 1
        assert "in use by" in held.stderr
    assert main(["report", "--db", str(db), "--out", str(tmp_path / "r")]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["aligned"] == "runs/train/x/final" and summary["votes"] == 3
    assert summary["wins"] == 2 and summary["losses"] == 1
    report = (tmp_path / "r" / "report.md").read_text()
    assert "elsewhere against toy (1 votes)" in report  # the other comparison is named
    assert saved_config_gives(tmp_path / "r" / "config.yaml", ReportConfig,
                              ["--db", str(db), "--out", str(tmp_path / "r")])
    assert main(["report", "--db", str(db), "--aligned", "elsewhere", "--out",
                 str(tmp_path / "r2")]) == 0
    assert json.loads(capsys.readouterr().out)["losses"] == 1


def test_a_report_folder_that_cannot_be_written_is_one_line_naming_it(tmp_path):
    """--out under a regular file, or a file itself: one line naming the folder, the
    cause and the fix; nothing written (tests run as root: permissions stop nothing)."""
    db = tmp_path / "votes.duckdb"
    with VoteStore(db) as store:
        store.record(row("1", "aligned", "base"))
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    for out in (blocker / "report", blocker):
        done = run_eval("report", "--db", str(db), "--out", str(out), cwd=tmp_path)
        assert done.returncode == 1 and done.stderr.count("\n") == 1, done.stderr
        assert done.stderr == f"error: cannot write the report to {out}: {blocker} is a " \
            "file, not a folder: give --out a folder you can write to\n"
    assert blocker.read_text() == "not a folder"


def test_a_report_onto_a_full_disk_is_one_line_naming_it(tmp_path):
    db = tmp_path / "votes.duckdb"
    with VoteStore(db) as store:
        store.record(row("1", "aligned", "base"))
    with small_filesystem(tmp_path / "tiny") as disk:
        fill_disk(disk)
        done = run_eval("report", "--db", str(db), "--out", str(disk / "report"), cwd=tmp_path)
    assert done.returncode == 1 and done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.startswith(f"error: no space left on the disk holding {disk / 'report'}")
    assert "the report was not written; free some space" in done.stderr


def test_images_are_made_in_the_background_and_a_pair_is_dealt_once_both_exist(
        tmp_path, models):
    with VoteStore(tmp_path / "votes.duckdb") as votes:
        blind = BlindEval.prepare(models, PROMPTS, Sampling(seeds=2, steps=2), votes,
                                  tmp_path / "images")
        assert blind.progress() == Progress(0, 8, 0, 4) and blind.deal("ann") is None
        blind.start()
        assert blind.wait(timeout=300) == Progress(8, 8, 4, 4)
        assert blind.deal("ann") is not None
        blind.close()
        assert not blind.showings.folder.exists()
        # a second comparison over the same cache finds every image there at once
        again = BlindEval.prepare(models, PROMPTS, Sampling(seeds=2, steps=2), votes,
                                  tmp_path / "images")
        again.start()
        assert again.wait(timeout=60) == Progress(8, 8, 4, 4)
        again.close()


def test_the_page_says_what_to_train_first(tmp_path):
    out = run_eval(cwd=tmp_path)
    assert out.returncode == 1 and out.stderr.count("\n") == 1
    assert "accelerate launch -m train toy" in out.stderr


# -- the page, through a browser -----------------------------------------------------


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Two toy copies with telltale names; the aligned one's UNet is perturbed."""
    root = tmp_path_factory.mktemp("models")
    base, aligned = root / BASE_NAME, root / ALIGNED_NAME
    shutil.copytree(TOY_DIR, base)
    shutil.copytree(TOY_DIR, aligned)
    [weights] = (aligned / "unet").glob("*.safetensors")
    tensors = load_file(weights)
    generator = torch.Generator().manual_seed(0)
    for name, tensor in tensors.items():
        if tensor.is_floating_point():
            noise = torch.randn(tensor.shape, generator=generator, dtype=torch.float32)
            tensors[name] = tensor + (0.3 * tensor.float().std().nan_to_num(0.1)
                                      * noise).to(tensor.dtype)
    save_file(tensors, weights)
    return str(base), str(aligned)


@pytest.fixture(scope="module")
def app(models, tmp_path_factory):
    """The page served on 127.0.0.1, with its BlindEval and image cache root."""
    root = tmp_path_factory.mktemp("eval")
    votes = VoteStore(root / "votes.duckdb")
    blind = BlindEval.prepare(models, PROMPTS, SAMPLING, votes, root / "images")
    blind.start()
    assert blind.wait().pairs == len(blind.items)
    with serving(build_app(blind), **OPTIONS) as url:
        yield url, blind, root
    blind.close()
    votes.close()


OPTIONS = {k: v for k, v in launch_options("127.0.0.1", None).items()
           if k not in ("server_name", "server_port")}


# Gradio's client reads its queue's server-sent events through fetch (and EventSource in
# some versions); a response still open cannot be read by Playwright, so the page keeps
# a copy of every chunk it receives.
TEE_STREAMS = """
window.__received = [];
const originalFetch = window.fetch;
window.fetch = async (...args) => {
  const response = await originalFetch(...args);
  try {
    const reader = response.clone().body.getReader();
    const decoder = new TextDecoder();
    (async () => {
      for (;;) {
        const {done, value} = await reader.read();
        if (done) break;
        window.__received.push(decoder.decode(value, {stream: true}));
      }
    })().catch(() => {});
  } catch (error) {}
  return response;
};
if (window.EventSource) {
  const Original = window.EventSource;
  window.EventSource = class extends Original {
    constructor(...args) {
      super(...args);
      this.addEventListener("message", (event) => window.__received.push(event.data));
    }
  };
}
"""


def open_page(browser, url):
    page = browser.new_page()
    page.goto(url)
    page.wait_for_function(
        "() => document.querySelector('#eval-image-b img') && "
        "!document.querySelector('#eval-vote-a').disabled", timeout=30_000)
    return page


def wait_revealed(page, votes_before):
    page.wait_for_function("() => document.querySelector('#eval-reveal').innerText"
                           ".includes('Image A:')", timeout=15_000)
    page.wait_for_function("n => document.querySelector('#eval-tally').innerText"
                           ".includes(`: ${n} vote`)", arg=votes_before + 1, timeout=15_000)
    return page.inner_text("#eval-reveal")


def side_a_in(reveal: str) -> str:
    return re.search(r"Image A: (base|aligned)", reveal).group(1)


def test_voting_blind_through_the_page(browser, app):
    url, blind, _ = app
    page = open_page(browser, url)
    assert "a / ←" in page.inner_text("#eval-vote-a")  # the shortcuts are on the page
    assert page.is_disabled("#eval-next")
    page.fill("#eval-voter input, #eval-voter textarea", "alice")
    # vote 1 by mouse
    prompt = page.inner_text("#eval-prompt")
    page.click("#eval-vote-a")
    reveal = wait_revealed(page, 0)
    assert page.is_disabled("#eval-vote-b") and page.is_enabled("#eval-next")
    first_side = side_a_in(reveal)
    # vote 2 by keyboard: n for the next pair, t for a tie
    page.locator("body").click(position={"x": 1, "y": 1})  # focus off the name field
    page.keyboard.press("n")
    page.wait_for_function("() => !document.querySelector('#eval-vote-a').disabled && "
                           "document.querySelector('#eval-reveal').innerText.trim() === ''",
                           timeout=15_000)
    second_prompt = page.inner_text("#eval-prompt")
    page.keyboard.press("t")
    reveal2 = wait_revealed(page, 1)
    # typing into the name field is not a vote
    page.keyboard.press("n")
    page.wait_for_function("() => !document.querySelector('#eval-vote-a').disabled",
                           timeout=15_000)
    name = page.locator("#eval-voter input, #eval-voter textarea")
    name.press_sequentially(" bat")
    name.fill("alice")
    assert page.inner_text("#eval-reveal").strip() == ""
    # vote 3: a double click stores one vote
    page.dblclick("#eval-vote-b")
    wait_revealed(page, 2)
    time.sleep(0.5)
    rows = blind.votes.votes()
    assert [r.choice for r in rows] == ["A", "tie", "B"] and {r.voter for r in rows} == {"alice"}
    assert rows[0].side_a == first_side and rows[1].side_a == side_a_in(reveal2)
    assert rows[0].outcome == first_side and rows[1].outcome == "tie"
    assert rows[2].outcome == ("base" if rows[2].side_a == "aligned" else "aligned")
    assert [r.prompt for r in rows[:2]] == [prompt.strip(), second_prompt.strip()]
    assert len({(r.prompt, r.seed) for r in rows}) == 3  # never a pair alice saw revealed
    assert {r.category for r in rows} <= {"circle", "square"}
    wins = sum(r.outcome == "aligned" for r in rows)
    assert f"3 votes: {wins} aligned, {2 - wins} base, 1 ties, 0 both bad" in \
        page.inner_text("#eval-tally")
    page.close()


def test_nothing_before_the_vote_tells_which_model_made_which_image(browser, app, models):
    url, blind, root = app
    secrets = {BASE_NAME, ALIGNED_NAME, *models,
               *(model_folder(m, SAMPLING, root / "images").name for m in models)}
    for path in blind.images[blind.base].values():
        secrets.add(str(path))
    responses = []
    page = browser.new_page()
    page.add_init_script(TEE_STREAMS)
    page.on("response", lambda response: responses.append(response))
    page.goto(url)
    page.wait_for_function(
        "() => document.querySelector('#eval-image-b img') && "
        "!document.querySelector('#eval-vote-a').disabled", timeout=30_000)
    received = [page.content().encode()]
    sources = page.eval_on_selector_all("img", "images => images.map(i => i.src)")
    received.append(" ".join(sources).encode())
    images_seen = []
    for response in responses:
        received.append(response.url.encode())
        received.append(json.dumps(response.headers).encode())
        if "event-stream" in response.headers.get("content-type", ""):
            continue  # still open; its messages are in window.__received
        try:
            body = response.body()
        except Exception:  # noqa: BLE001 - a redirect or aborted request has no body
            continue
        received.append(body)
        if response.headers.get("content-type", "").startswith("image/"):
            with Image.open(io.BytesIO(body)) as image:  # pixels only, no text chunks
                images_seen.append(image.info)
    assert len(images_seen) >= 2 and not any(set(info) - {"dpi", "gamma"}
                                             for info in images_seen), images_seen
    streamed = page.evaluate("() => window.__received.join('\\n')")
    assert "process_completed" in streamed and len(sources) >= 2  # SSE payloads seen
    received.append(streamed.encode())
    everything = b"\n".join(received)
    for secret in secrets:
        assert secret.encode() not in everything, secret
    text = page.inner_text("body")
    assert not re.search(r"\b[AB]\b\W{0,4}(is\W+)?(by\W+)?(the\W+)?(base|aligned)\b", text, re.I)
    assert page.inner_text("#eval-reveal").strip() == ""
    # no API client can call the page's events (all private)
    from gradio_client import Client

    assert not Client(url, verbose=False).view_api(print_info=False,
                                                    return_format="dict")["named_endpoints"]
    # after the vote the reveal names both models, so the searches above could fail
    page.fill("#eval-voter input, #eval-voter textarea", "bob")
    before = len(blind.votes.votes())
    page.click("#eval-vote-bad")
    reveal = wait_revealed(page, before)
    assert BASE_NAME in reveal and ALIGNED_NAME in reveal
    assert re.search(r"Image A: (base|aligned)", reveal)
    after = page.content() + page.evaluate("() => window.__received.join('\\n')")
    assert BASE_NAME in after and ALIGNED_NAME in after  # the same collection sees them now
    page.close()


def image_sources(page) -> list[str]:
    return page.eval_on_selector_all("#eval-image-a img, #eval-image-b img",
                                     "images => images.map(i => i.src)")


def test_no_two_showings_of_an_image_share_an_address(browser, app, models):
    """The same pair shown again, to another session and after a restart, gets new URLs:
    a voter who saw earlier reveals cannot tell the models apart by an address."""
    url, blind, root = app
    showings = []  # (server, prompt, [src, src], [etag, etag])

    def look(server_url: str, server: int, times: int) -> None:
        for _ in range(times):
            page = open_page(browser, server_url)
            sources = image_sources(page)
            etags = [page.request.get(src).headers.get("etag") for src in sources]
            showings.append((server, page.inner_text("#eval-prompt"), sources, etags))
            page.close()

    look(url, 0, 3)
    # the restart: a new server over the same image cache and votes file's folder
    with VoteStore(root / "votes-restart.duckdb") as votes:
        restarted = BlindEval.prepare(models, PROMPTS, SAMPLING, votes, root / "images")
        restarted.start()
        assert restarted.wait().pairs == len(restarted.items)
        with serving(build_app(restarted), **OPTIONS) as second_url:
            look(second_url, 1, 2)
        restarted.close()
    prompts = [prompt for _, prompt, _, _ in showings]
    assert max(prompts.count(p) for p in prompts) >= 2  # a pair was shown more than once
    sources = [src for *_, srcs, _ in showings for src in srcs]
    assert len(sources) == 10 and len(set(sources)) == 10, sources
    # every path component of one showing's URL is either shared by every image the same
    # server sends (its fixed folder) or belongs to that one URL alone
    for server in (0, 1):
        paths = [src.split("/") for s, _, srcs, _ in showings if s == server for src in srcs]
        shared = set.intersection(*map(set, paths))
        own = [set(p) - shared for p in paths]
        assert all(own) and all(a.isdisjoint(b) for i, a in enumerate(own) for b in own[i + 1:])
    etags = [etag for *_, tags in showings for etag in tags]
    assert None not in etags and len(set(etags)) == len(etags)


def test_the_page_is_served_before_the_images_are_made_and_says_how_far(browser, tmp_path):
    """The URL comes at once; the page shows the image making's progress (here: it stops,
    as the aligned model has no UNet weights) and the terminal has the one-line error."""
    aligned = tmp_path / "no-weights"
    shutil.copytree(TOY_DIR, aligned)
    for weights in (aligned / "unet").glob("*.safetensors"):
        weights.unlink()
    (tmp_path / "prompts.txt").write_text(f"{PROMPTS[0].text}\n")
    process = subprocess.Popen(
        [sys.executable, "-m", "eval", "--aligned", str(aligned), "--prompts", "prompts.txt",
         "--seeds", "1", "--steps", "2", "--images", str(tmp_path / "images"), "--db",
         str(tmp_path / "votes.duckdb")],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = process.stdout.readline()
        found = re.search(r"(http://127\.0\.0\.1:\d+/)", line)
        assert found, line + process.stderr.read()
        page = browser.new_page()
        page.goto(found.group(1))
        page.wait_for_function("() => document.querySelector('#eval-progress')?.innerText"
                               ".includes('Making images stopped')", timeout=300_000)
        assert page.is_disabled("#eval-vote-a")
        page.close()
    finally:
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=60)
    errors = [e for e in err.splitlines() if e.startswith("error: ")]
    assert len(errors) == 1 and "cannot load" in errors[0], err[-2000:]
    assert "Traceback" not in err
    assert saved_config_gives(  # the page's settings, beside its votes
        tmp_path / "votes.blind.yaml", BlindConfig,
        ["--aligned", str(aligned), "--prompts", "prompts.txt", "--seeds", "1", "--steps", "2",
         "--images", str(tmp_path / "images"), "--db", str(tmp_path / "votes.duckdb")])


def test_while_images_are_made_a_voter_waits_rather_than_see_a_revealed_pair_again(
        browser, models, tmp_path):
    """One prompt's images exist, the other's are made only later: the voter votes on the
    ready pairs, then the page says it is making images and deals nothing (it polls) until
    an unseen pair exists; no pair whose reveal the voter saw is dealt to them again."""
    sampling = Sampling(seeds=2, steps=2)
    made = {m: images_for(m, [PROMPTS[0].text], sampling, tmp_path / "images") for m in models}
    fresh_pair = ("() => !document.querySelector('#eval-vote-a').disabled && "
                  "document.querySelector('#eval-reveal').innerText.trim() === ''")
    with VoteStore(tmp_path / "votes.duckdb") as votes:
        blind = BlindEval(models, PROMPTS, sampling, made, votes, root=tmp_path / "images")
        with serving(build_app(blind), **OPTIONS) as url:
            page = open_page(browser, url)
            page.fill("#eval-voter input, #eval-voter textarea", "carol")
            for k in range(2):  # the first prompt's two pairs
                if k:
                    page.wait_for_function(fresh_pair, timeout=15_000)
                page.click("#eval-vote-a")
                wait_revealed(page, k)
                page.click("#eval-next")
            page.wait_for_function("() => document.querySelector('#eval-progress').innerText"
                                   ".includes('voted on every pair ready so far')",
                                   timeout=15_000)
            assert "Making images: 4 of 8" in page.inner_text("#eval-progress")
            time.sleep(3)  # the page polls each second: still nothing to deal
            assert page.is_disabled("#eval-vote-a") and not image_sources(page)
            blind.start()  # now the second prompt's images are made
            for k in range(2, 4):
                page.wait_for_function(fresh_pair, timeout=300_000)
                assert PROMPTS[1].text in page.inner_text("#eval-prompt")
                page.click("#eval-vote-b")
                wait_revealed(page, k)
                page.click("#eval-next")
            page.wait_for_function("() => document.querySelector('#eval-progress').innerText"
                                   ".includes('You have voted on every pair')", timeout=60_000)
            assert page.is_disabled("#eval-vote-a")
            page.close()
        blind.close()
        rows = votes.votes()
    assert [r.voter for r in rows] == ["carol"] * 4
    assert len({(r.prompt, r.seed) for r in rows}) == 4, [(r.prompt, r.seed) for r in rows]


def test_a_full_disk_says_why_the_vote_was_not_stored_and_keeps_the_pair(browser, tmp_path):
    """The votes file's disk fills: the page says so and what to do, in the annotate
    page's words; once space is freed the same vote on the same pair is stored."""
    images = fake_eval(tmp_path).images
    with small_filesystem(tmp_path / "tiny") as disk, VoteStore(disk / "votes.duckdb") as votes:
        blind = BlindEval(["base-m", "aligned-m"], PROMPTS, Sampling(seeds=2), images, votes)
        with serving(build_app(blind, voter="dora"), **OPTIONS) as url:
            page = open_page(browser, url)
            prompt = page.inner_text("#eval-prompt")
            votes.cursor().execute("CHECKPOINT")  # the next vote must grow the file
            filler = fill_disk(disk)
            page.click("#eval-vote-a")
            warning = page.get_by_text("Could not save the vote: disk full")
            warning.wait_for(timeout=30_000)
            assert f"({disk}) - free space and vote again (the pair stays)." in \
                warning.inner_text()
            assert page.inner_text("#eval-reveal").strip() == "" and votes.votes() == []
            filler.unlink()
            page.click("#eval-vote-a")  # the same vote, on the same pair
            wait_revealed(page, 0)
            [row] = votes.votes()
            assert row.voter == "dora" and row.choice == "A" and row.prompt == prompt.strip()
            page.close()
        blind.close()


def test_with_a_login_the_voter_is_the_login_and_the_tally_can_be_your_own(browser, tmp_path):
    from data.store import QUESTIONS

    blind = fake_eval(tmp_path, question="alignment")
    logins = [("alice", "a-pass"), ("bob", "b-pass")]
    with serving(build_app(blind, auth=True), auth=logins, **OPTIONS) as url:
        for user, password, votes in (("alice", "a-pass", 1), ("bob", "b-pass", 2)):
            page = browser.new_page()
            page.goto(url)
            page.get_by_label("username").fill(user)
            page.get_by_label("password").fill(password)
            page.get_by_role("button", name="Login").click()
            page.wait_for_function("() => document.querySelector('#eval-image-b img') && "
                                   "!document.querySelector('#eval-vote-a').disabled",
                                   timeout=30_000)
            assert QUESTIONS["alignment"] in page.inner_text("body")
            assert not page.locator("#eval-voter").is_visible()  # no name to type
            before = len(blind.votes.votes())
            for k in range(votes):
                if k:
                    page.click("#eval-next")
                    page.wait_for_function(
                        "() => !document.querySelector('#eval-vote-a').disabled",
                        timeout=15_000)
                page.click("#eval-vote-a")
                wait_revealed(page, before + k)
            page.get_by_text("Your votes").click()
            page.wait_for_function(
                "u => document.querySelector('#eval-tally').innerText.includes(`(${u})`)",
                arg=user, timeout=15_000)
            assert f"{votes} vote" in page.inner_text("#eval-tally")
            page.close()
    rows = blind.votes.votes()
    assert [r.voter for r in rows] == ["alice", "bob", "bob"]
    assert {r.question for r in rows} == {"alignment"}
    assert blind.votes.votes(question="preference") == []
    assert blind.tallies("bob")["all"].n == 2 and blind.tallies()["all"].n == 3
    blind.close()
    blind.votes.close()
