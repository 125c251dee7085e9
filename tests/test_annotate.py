"""The collection logic without a browser: worker, screening, rounds, gold, caps, logins."""

from __future__ import annotations

import json
import random
import threading
import time

import pytest
from PIL import Image

from annotate.gold import GoldFileError, read_gold
from annotate.rounds import AnnotateError, Collector, Settings
from annotate.screening import Blocklist, PromptRefused, screen, token_counter
from annotate.serve import ServeError, read_logins
from annotate.worker import SET_SOURCE, PairWorker, PromptSet, WorkerError
from data.stats import format_stats, store_stats
from data.store import Store
from models.generate import GeneratedImage, PairVariety, generate_pair
from models.loading import load

RED = "a red circle on a white background"
BLUE = "a blue square on a white background"


@pytest.fixture(scope="module")
def toy():
    return load("toy", "cpu")


def fake_pair(prompt, on_step, delay=0.0, made=None):
    """Two tiny solid images, standing in for a pipeline where only timing matters."""
    time.sleep(delay)
    if made is not None:
        made.append(prompt)
    return tuple(
        GeneratedImage(image=Image.new("RGB", (8, 8), (40 * k, 0, 0)), prompt=prompt,
                       model="fake", seed=k, guidance_scale=7.5, steps=1, scheduler="DDIM",
                       width=8, height=8, gen_ms=delay * 1000)
        for k in (1, 2)
    )


def wait_until(condition, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


# -- the worker -----------------------------------------------------------------------


def test_worker_fills_a_buffer_and_serves_from_it_without_waiting():
    worker = PairWorker(lambda p, s: fake_pair(p, s, delay=0.05), buffer_size=3).start()
    try:
        worker.prefetch(RED)
        wait_until(lambda: worker.ready(RED) == 3)
        start = time.perf_counter()
        pair = worker.take(RED)
        assert time.perf_counter() - start < 0.02
        assert pair.prompt == RED
        wait_until(lambda: worker.ready(RED) == 3)  # the slot is refilled
        time.sleep(0.2)
        assert worker.ready(RED) == 3 and worker.made == 4  # and no more than that
    finally:
        worker.stop()


def test_without_a_buffer_each_pair_is_made_when_asked():
    made = []
    worker = PairWorker(lambda p, s: fake_pair(p, s, made=made), buffer_size=0).start()
    try:
        worker.prefetch(RED)
        time.sleep(0.1)
        assert made == [] and worker.ready(RED) == 0
        assert worker.take(BLUE).prompt == BLUE
        time.sleep(0.1)
        assert made == [BLUE]
    finally:
        worker.stop()


def test_waiting_people_come_before_refills_and_progress_is_reported(toy):
    def make(prompt, on_step):
        return generate_pair(toy, prompt, PairVariety(steps=3), random.Random(0),
                             on_step=on_step)

    worker = PairWorker(make, buffer_size=2).start()
    try:
        seen = []
        pair = worker.take(RED, progress=lambda text, fraction: seen.append(text))
        assert pair.images[0].image.size == (32, 32) and pair.images[0].steps == 3
        assert any(text.startswith(("generating step", "starting")) for text in seen)
    finally:
        worker.stop()


def test_the_prompt_set_is_served_in_order_to_everyone():
    worker = PairWorker(fake_pair, PromptSet(["one", "two", "three"]), buffer_size=0).start()
    try:
        assert [worker.take(SET_SOURCE).prompt for _ in range(4)] == [
            "one", "two", "three", "one"]
    finally:
        worker.stop()


def test_a_failed_generation_reaches_the_waiter_as_one_line():
    def broken(prompt, on_step):
        raise RuntimeError("out of memory")

    worker = PairWorker(broken, buffer_size=2).start()
    try:
        with pytest.raises(WorkerError, match="generation failed: out of memory"):
            worker.take(RED, timeout=5)
        assert worker.ready(RED) == 0
    finally:
        worker.stop()


# -- prompts --------------------------------------------------------------------------


def test_screening_refuses_empty_and_blocked_prompts(tmp_path):
    listed = tmp_path / "blocklist.txt"
    listed.write_text("# words we never generate\nGore\nred panda\n\n")
    blocklist = Blocklist.read(listed)
    for empty in ("", "   ", "\n"):
        with pytest.raises(PromptRefused, match="empty"):
            screen(empty, blocklist)
    with pytest.raises(PromptRefused, match='"Gore"'):
        screen("so much GORE here", blocklist)
    with pytest.raises(PromptRefused, match='"red panda"'):
        screen("a Red Panda eating", blocklist)
    assert screen("a gorey story of a red pandas' cousin", blocklist) is None  # whole words


def test_a_long_prompt_is_accepted_with_a_note_that_counts_the_lost_tokens(toy):
    count, limit = token_counter(toy.pipeline.tokenizer)
    assert limit == toy.pipeline.tokenizer.model_max_length
    assert screen("red", Blocklist(), count, limit) is None
    long = " ".join(["red"] * 3 * limit)
    note = screen(long, Blocklist(), count, limit)
    assert f"the last {count(long) - limit} tokens" in note and "stored" in note


# -- rounds and votes ------------------------------------------------------------------


@pytest.fixture
def collector(tmp_path, toy):
    def make(prompt, on_step):
        return generate_pair(toy, prompt, PairVariety(steps=2), random.Random(1))

    worker = PairWorker(make, PromptSet([RED, BLUE]), buffer_size=1).start()
    store = Store(tmp_path / "prefs.duckdb")
    yield Collector(store, worker, count_tokens=token_counter(toy.pipeline.tokenizer),
                    rng=random.Random(0))
    worker.stop()
    store.close()


def test_a_vote_stores_the_pair_with_pickapic_labels_for_the_side_chosen(collector):
    ann = collector.annotator("ann")
    sides = set()
    for outcome in ("left", "right", "left", "right", "left", "right"):
        shown = collector.start(ann, RED, "new")
        ranking, voted = collector.vote(ann, shown.round_id, outcome)
        winner = shown.shown_left if outcome == "left" else 1 - shown.shown_left
        assert voted == shown
        assert ranking.best_image_uid == shown.images[winner].image_uid
        assert (ranking.label_0, ranking.label_1) == ((1.0, 0.0) if winner == 0 else (0.0, 1.0))
        assert ranking.shown_left == shown.shown_left and ranking.user_id == ann.user_id
        assert ranking.caption == RED and ranking.source == "human" and ranking.outcome == outcome
        sides.add(shown.shown_left)
    assert sides == {0, 1}  # the sides are shuffled
    jpgs = collector.store.image_jpgs([shown.images[0].image_uid, shown.images[1].image_uid])
    assert len(jpgs) == 2
    assert collector.tally(ann).today == 6 and collector.tally(ann).total == 6


def test_tie_both_bad_and_skip_are_kept_apart(collector):
    ann = collector.annotator("ann")
    for outcome in ("tie", "both_bad", "skip"):
        shown = collector.start(ann, RED, "new")
        ranking, _ = collector.vote(ann, shown.round_id, outcome)
        assert ranking.outcome == outcome
    ties, bad, skip = collector.store.rankings()
    assert (ties.label_0, ties.best_image_uid) == (0.5, "none")
    assert bad.label_0 is None and not bad.has_label and skip.label_0 is None
    assert collector.tally(ann).total == 2  # a skip is not a vote


def test_a_repeated_vote_stores_one_ranking_and_another_annotator_cannot_vote(collector):
    ann, bob = collector.annotator("ann"), collector.annotator("bob")
    shown = collector.start(ann, RED, "new")
    with pytest.raises(AnnotateError, match="another annotator"):
        collector.vote(bob, shown.round_id, "left")
    first, voted = collector.vote(ann, shown.round_id, "left")
    again, none = collector.vote(ann, shown.round_id, "right")
    assert voted is not None and none is None and again == first
    with pytest.raises(AnnotateError, match="no longer open"):
        collector.vote(bob, shown.round_id, "left")
    assert collector.store.counts()["rankings"] == 1


def test_concurrent_double_clicks_store_one_ranking(collector):
    ann = collector.annotator("ann")
    shown = collector.start(ann, RED, "new")
    results = []
    threads = [threading.Thread(target=lambda: results.append(
        collector.vote(ann, shown.round_id, "left")[0])) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len({r.ranking_id for r in results}) == 1
    assert collector.store.counts()["rankings"] == 1


def test_keep_the_winner_keeps_it_and_replaces_the_loser(collector):
    ann = collector.annotator("ann")
    shown = collector.start(ann, RED, "keep")
    for outcome in ("left", "right", "left"):
        _, voted = collector.vote(ann, shown.round_id, outcome)
        winner = voted.images[voted.shown_left if outcome == "left" else 1 - voted.shown_left]
        shown = collector.next_round(ann, voted, outcome, "keep")
        assert shown.images[0] == winner and shown.prompt == RED
        assert shown.images[1].image_uid not in {im.image_uid for im in voted.images}
    _, voted = collector.vote(ann, shown.round_id, "tie")
    fresh = collector.next_round(ann, voted, "tie", "keep")  # no winner: a fresh pair
    assert not {im.image_uid for im in fresh.images} & {im.image_uid for im in voted.images}


def test_auto_mode_moves_through_the_prompt_set(collector):
    ann = collector.annotator("ann")
    shown = collector.start(ann, "", "auto")
    prompts = [shown.prompt]
    for _ in range(3):
        _, voted = collector.vote(ann, shown.round_id, "left")
        shown = collector.next_round(ann, voted, "left", "auto")
        prompts.append(shown.prompt)
    assert prompts == [RED, BLUE, RED, BLUE]
    with pytest.raises(PromptRefused, match="empty"):
        collector.start(ann, "  ", "new")


def test_the_daily_cap_stops_rounds_and_votes(collector):
    collector.settings = Settings(daily_cap=2)
    ann = collector.annotator("ann")
    shown = collector.start(ann, RED, "new")
    for _ in range(2):
        _, voted = collector.vote(ann, shown.round_id, "left")
        if collector.tally(ann).today < 2:
            shown = collector.next_round(ann, voted, "left", "new")
    with pytest.raises(AnnotateError, match="today's limit of 2"):
        collector.next_round(ann, voted, "left", "new")
    with pytest.raises(AnnotateError, match="today's limit of 2"):
        collector.start(ann, RED, "new")
    bob = collector.annotator("bob")
    assert collector.start(bob, RED, "new").user_id == bob.user_id  # per annotator


def write_gold(folder, pairs=1):
    lines = []
    for k in range(pairs):
        Image.new("RGB", (16, 16), (200, 0, 0)).save(folder / f"good{k}.png")
        Image.new("RGB", (16, 16), (0, 0, 200 - k)).save(folder / f"bad{k}.png")
        lines.append(json.dumps({"prompt": RED, "better": f"good{k}.png",
                                 "worse": f"bad{k}.png"}))
    path = folder / "gold.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_gold_rounds_score_annotators_and_never_reach_training(collector, tmp_path):
    collector.gold = read_gold(write_gold(tmp_path, pairs=2))
    collector.settings = Settings(gold_rate=1.0)
    ann, bob = collector.annotator("ann"), collector.annotator("bob")
    for annotator, right_answers in ((ann, 3), (bob, 1)):
        for k in range(4):
            shown = collector.start(annotator, BLUE, "new")
            assert shown.gold_best_uid == shown.images[0].image_uid and shown.prompt == RED
            better_side = "left" if shown.shown_left == 0 else "right"
            wrong_side = "right" if better_side == "left" else "left"
            outcome = better_side if k < right_answers else wrong_side
            ranking, _ = collector.vote(annotator, shown.round_id, outcome)
            assert ranking.is_gold and ranking.split == "gold"
    shown = collector.start(ann, BLUE, "new")
    collector.vote(ann, shown.round_id, "skip")  # skips are left out of the accuracy
    stats = store_stats(collector.store)
    assert stats.gold == {"ann": (3, 4), "bob": (1, 4)}
    assert "75.0%  ann (3/4)" in format_stats(stats)
    from data.pairs import StorePairs

    assert len(StorePairs(collector.store)) == 0  # the trainer reads the train split
    collector.settings = Settings(gold_rate=0.0)
    assert collector.start(ann, BLUE, "new").gold_best_uid is None


def test_a_bad_gold_file_names_the_line(tmp_path):
    path = write_gold(tmp_path)
    path.write_text(path.read_text() + '{"prompt": "x", "better": "missing.png", '
                    '"worse": "bad0.png"}\n')
    with pytest.raises(GoldFileError, match=r"gold.jsonl:2: .*missing.png does not exist"):
        read_gold(path)
    path.write_text("not json\n")
    with pytest.raises(GoldFileError, match=r"gold.jsonl:1: not JSON"):
        read_gold(path)


def test_login_files(tmp_path):
    path = tmp_path / "logins"
    path.write_text("# who may annotate\nalice:s3cret:with:colons\n\nbob : pw\n")
    assert read_logins(path) == [("alice", "s3cret:with:colons"), ("bob", " pw")]
    path.write_text("alice\n")
    with pytest.raises(ServeError, match="logins:1: write user:password"):
        read_logins(path)
    with pytest.raises(ServeError, match="does not exist"):
        read_logins(tmp_path / "none")
