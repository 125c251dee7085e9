"""The collection logic without a browser: worker, screening, showings, gold, caps, logins."""

from __future__ import annotations

import json
import random
import sys
import threading
import time

import pytest
from PIL import Image

from annotate.gold import read_gold
from annotate.screening import MAX_PROMPT_CHARS, Blocklist, encoder_words, screen, token_counter
from annotate.showings import Collector, Settings
from annotate.worker import SET_SOURCE, PairWorker, PromptSet
from cli.errors import DataError, NotCounted, PageError, UsageError
from data.stats import format_stats, store_stats
from data.store import Store
from models.generate import GeneratedImage, generate_pair
from models.loading import load
from models.variety import PairVariety
from pages.shared import read_logins
from tests.helpers import fill_disk, small_filesystem

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
        def slow_step(done: int, total: int) -> None:  # outlast take's 0.1 s progress poll
            time.sleep(0.1)
            on_step(done, total)

        return generate_pair(toy, prompt, PairVariety(steps=3), random.Random(0),
                             on_step=slow_step)

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
        with pytest.raises(PageError, match="generation failed: out of memory"):
            worker.take(RED, timeout=5)
        assert worker.ready(RED) == 0
    finally:
        worker.stop()


def test_over_its_queue_the_worker_answers_busy_at_once():
    release, making = threading.Event(), threading.Event()

    def slow(prompt, on_step):
        making.set()
        release.wait(30)
        return fake_pair(prompt, on_step)

    worker = PairWorker(slow, buffer_size=0, max_waiting=2).start()
    results = []
    try:
        waiting = [threading.Thread(target=lambda k=k: results.append(
            worker.take(f"prompt {k}").prompt)) for k in range(3)]
        waiting[0].start()
        assert making.wait(30)  # the first is being made: it no longer waits
        for thread in waiting[1:]:  # two wait: the queue is full
            thread.start()
        wait_until(lambda: len(worker._waiting) == 2)
        start = time.perf_counter()
        with pytest.raises(NotCounted, match="busy, 2 ahead: try again in a moment"):
            worker.take("one too many")
        assert time.perf_counter() - start < 0.5
        release.set()
        for thread in waiting:
            thread.join(timeout=30)
        assert sorted(results) == ["prompt 0", "prompt 1", "prompt 2"]
    finally:
        release.set()
        worker.stop()


def test_stop_interrupts_a_generation_between_sampler_steps(toy):
    steps = []

    def make(prompt, on_step):
        def step(done, total):
            steps.append(done)
            on_step(done, total)

        return generate_pair(toy, prompt, PairVariety(steps=500), random.Random(0),
                             on_step=step)

    worker = PairWorker(make, buffer_size=0).start()
    failure = []
    waiter = threading.Thread(target=lambda: failure.append(
        pytest.raises(PageError, worker.take, RED).value))
    waiter.start()
    wait_until(lambda: len(steps) >= 2, timeout=120)  # mid-generation
    start = time.perf_counter()
    assert worker.stop(timeout=10)
    assert time.perf_counter() - start < 10  # one step, not the 500 left
    waiter.join(timeout=10)
    assert "shutting down" in str(failure[0])
    assert len(steps) < 500


# -- prompts --------------------------------------------------------------------------


def test_screening_refuses_empty_and_blocked_prompts(tmp_path):
    listed = tmp_path / "blocklist.txt"
    listed.write_text("# words we never generate\nGore\nred panda\n\n")
    blocklist = Blocklist.read(listed)
    for empty in ("", "   ", "\n"):
        with pytest.raises(PageError, match="empty"):
            screen(empty, blocklist)
    with pytest.raises(PageError, match='"Gore"'):
        screen("so much GORE here", blocklist)
    with pytest.raises(PageError, match='"red panda"'):
        screen("a Red Panda eating", blocklist)
    assert screen("a gorey story of a red pandas' cousin", blocklist) is None  # whole words


def test_the_blocklist_reads_a_prompt_as_the_text_encoder_does(toy):
    """A blocked word is refused wherever the tokenizer would hand it to the text encoder
    as a word of its own (`a_red_circle` and `red2` are read as `red` and more), in any
    case or width; a longer word that contains it (`tired`, `credit`) is another word,
    even where the tokenizer spells it with a `red` piece (`t i red`)."""
    red = Blocklist(("red",))
    for prompt in ("a_red_circle", "red2", "RED", "\uff52\uff45\uff44", "a red-circle",
                   "red's hat", "[red]"):
        with pytest.raises(PageError, match='blocked term "red"'):
            screen(prompt, red)
    for prompt in ("credit", "tired", "a tired robot", "redder", "bored"):
        assert screen(prompt, red) is None, prompt
    phrases = Blocklist(("red panda", "c++"))
    for prompt in ("RED_PANDA", "a red   panda", "a red-panda", "c++ code"):
        with pytest.raises(PageError, match="blocked term"):
            screen(prompt, phrases)
    for prompt in ("a red circle and a panda", "red pandas", "c + +", "a c program"):
        assert screen(prompt, phrases) is None, prompt
    # the rule is the tokenizer's own word split: its decoded words, for the same prompts
    tokenizer = toy.pipeline.tokenizer
    for prompt in ("a_red_circle", "red2", "tired", "red's hat", "c++ code", "hello,world!!",
                   "covid19", "\u674e\u7ea2 red", "a red-circle", "[red]"):
        ids = tokenizer(prompt, truncation=False, verbose=False).input_ids
        assert encoder_words(prompt) == tokenizer.decode(ids, skip_special_tokens=True).split()


def test_a_prompt_longer_than_the_cap_is_refused_before_it_is_read(toy):
    count, limit = token_counter(toy.pipeline.tokenizer)
    assert screen("a" * MAX_PROMPT_CHARS, Blocklist(), count, limit) is not None  # a note
    start = time.perf_counter()
    with pytest.raises(PageError, match=f"at most {MAX_PROMPT_CHARS:,}"):
        screen("red " * 500_000, Blocklist(("red",)), count, limit)
    assert time.perf_counter() - start < 0.5


def test_a_long_prompt_is_accepted_with_a_note_that_counts_the_lost_tokens(toy):
    count, limit = token_counter(toy.pipeline.tokenizer)
    assert limit == toy.pipeline.tokenizer.model_max_length
    assert screen("red", Blocklist(), count, limit) is None
    long = " ".join(["red"] * 3 * limit)
    note = screen(long, Blocklist(), count, limit)
    assert f"the last {count(long) - limit} tokens" in note and "stored" in note


def test_counting_tokens_on_a_session_thread_leaves_the_pipelines_truncation_alone(toy):
    """A prompt screened while the worker generates must not reach the text encoder
    untruncated (the fast tokenizer's truncation setting is shared state)."""
    tokenizer = toy.pipeline.tokenizer
    count, limit = token_counter(tokenizer)
    long = "a red circle on a white background " * 3
    counting = threading.Event()

    def count_until_told():
        while not counting.is_set():
            count(long)

    switch = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads often, so that an unsafe count shows
    thread = threading.Thread(target=count_until_told)
    thread.start()
    try:
        lengths = {len(tokenizer([long], padding="max_length", max_length=limit,
                                 truncation=True).input_ids[0]) for _ in range(3000)}
    finally:
        counting.set()
        thread.join()
        sys.setswitchinterval(switch)
    assert lengths == {limit}


# -- showings and votes ----------------------------------------------------------------


@pytest.fixture
def collector(tmp_path, toy):
    def make(prompt, on_step):
        return generate_pair(toy, prompt, PairVariety(steps=2), random.Random(1))

    worker = PairWorker(make, PromptSet([RED, BLUE]), buffer_size=1).start()
    store = Store(tmp_path / "prefs.duckdb")
    yield Collector(store, worker, Settings(min_display_ms=0),
                    count_tokens=token_counter(toy.pipeline.tokenizer), rng=random.Random(0))
    worker.stop()
    store.close()


def test_a_vote_stores_the_pair_with_pickapic_labels_for_the_side_chosen(collector):
    ann = collector.annotator("ann")
    sides = set()
    for outcome in ("left", "right", "left", "right", "left", "right"):
        shown = collector.start(ann, RED, "new")
        ranking, voted = collector.vote(ann, shown.showing_id, outcome)
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
        ranking, _ = collector.vote(ann, shown.showing_id, outcome)
        assert ranking.outcome == outcome
    ties, bad, skip = collector.store.rankings()
    assert (ties.label_0, ties.best_image_uid) == (0.5, "none")
    assert bad.label_0 is None and not bad.has_label and skip.label_0 is None
    assert collector.tally(ann).total == 2  # a skip is not a vote


def test_a_repeated_vote_stores_one_ranking_and_another_annotator_cannot_vote(collector):
    ann, bob = collector.annotator("ann"), collector.annotator("bob")
    shown = collector.start(ann, RED, "new")
    with pytest.raises(PageError, match="another annotator"):
        collector.vote(bob, shown.showing_id, "left")
    first, voted = collector.vote(ann, shown.showing_id, "left")
    again, none = collector.vote(ann, shown.showing_id, "left")  # a client retry
    assert voted is not None and none is None and again == first
    with pytest.raises(NotCounted, match=r"already had your vote \(left\)"):
        collector.vote(ann, shown.showing_id, "right")  # a second key: refused
    with pytest.raises(PageError, match="no longer open"):
        collector.vote(bob, shown.showing_id, "left")
    assert collector.store.counts()["rankings"] == 1


def test_concurrent_double_clicks_store_one_ranking(collector):
    ann = collector.annotator("ann")
    shown = collector.start(ann, RED, "new")
    results = []
    threads = [threading.Thread(target=lambda: results.append(
        collector.vote(ann, shown.showing_id, "left")[0])) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len({r.ranking_id for r in results}) == 1
    assert collector.store.counts()["rankings"] == 1


def test_a_vote_for_a_pair_no_longer_on_screen_is_refused_never_moved_on(collector):
    ann = collector.annotator("ann")
    first = collector.start(ann, RED, "new")
    _, voted = collector.vote(ann, first.showing_id, "left")
    second = collector.next_showing(ann, voted, "left", "new")
    # A second key, pressed before the page had the next pair, names the first pair.
    with pytest.raises(NotCounted, match="was not stored"):
        collector.vote(ann, first.showing_id, "right")
    replaced = collector.start(ann, BLUE, "new")  # Generate pressed: `second` is gone
    with pytest.raises(NotCounted, match="no longer on your screen"):
        collector.vote(ann, second.showing_id, "tie")
    ranking, _ = collector.vote(ann, replaced.showing_id, "tie")
    assert [(r.vote_id, r.outcome) for r in collector.store.rankings()] == [
        (first.showing_id, "left"), (replaced.showing_id, "tie")]


def test_two_different_votes_40_to_400_ms_apart_store_one_ranking(collector):
    """What a page does when two keys are pressed in quick succession: the second vote
    names the pair the page showed when it was pressed (the first, until the answer to
    the first vote arrives)."""
    collector.settings = Settings(min_display_ms=500)
    ann = collector.annotator("ann")
    rng = random.Random(3)
    on_screen = {"showing": collector.start(ann, RED, "new").showing_id}
    for _trial in range(6):
        time.sleep(0.55)  # the pair on screen is shown long enough
        answers = []

        def first_key(answers=answers):
            _, voted = collector.vote(ann, on_screen["showing"], "left")
            on_screen["showing"] = collector.next_showing(ann, voted, "left", "new").showing_id
            answers.append("stored")

        thread = threading.Thread(target=first_key)
        thread.start()
        time.sleep(rng.uniform(0.04, 0.4))
        try:
            collector.vote(ann, on_screen["showing"], "right")
            answers.append("stored")
        except NotCounted:
            answers.append("refused")
        thread.join(timeout=60)
        assert sorted(answers) == ["refused", "stored"]
    assert [r.outcome for r in collector.store.rankings()] == ["left"] * 6


def test_a_vote_sooner_than_the_minimum_display_time_is_refused(collector):
    collector.settings = Settings(min_display_ms=400)
    ann = collector.annotator("ann")
    shown = collector.start(ann, RED, "new")
    with pytest.raises(NotCounted, match="look at both images first"):
        collector.vote(ann, shown.showing_id, "left")
    assert collector.store.counts()["rankings"] == 0
    assert 0 < collector.display_wait(shown.showing_id) <= 0.4
    time.sleep(collector.display_wait(shown.showing_id) + 0.01)
    ranking, _ = collector.vote(ann, shown.showing_id, "left")  # the same pair, now counted
    assert ranking.vote_id == shown.showing_id and collector.store.counts()["rankings"] == 1


@pytest.fixture
def tiny_disk(tmp_path):
    with small_filesystem(tmp_path / "tiny") as folder:
        yield folder


def test_a_full_disk_refuses_the_vote_in_one_line_and_keeps_the_pair(tiny_disk, toy):
    def make(prompt, on_step):
        return generate_pair(toy, prompt, PairVariety(steps=2), random.Random(1))

    worker = PairWorker(make, buffer_size=0).start()
    store = Store(tiny_disk / "prefs.duckdb")
    try:
        collector = Collector(store, worker, Settings(min_display_ms=0))
        ann = collector.annotator("ann")
        shown = collector.start(ann, RED, "new")
        filler = fill_disk(tiny_disk)
        with pytest.raises(NotCounted) as refused:
            collector.vote(ann, shown.showing_id, "left")
        message = str(refused.value)
        assert message.startswith("Could not save the vote: disk full")
        assert "free space" in message and "\n" not in message
        assert store.counts()["rankings"] == 0 and collector.display_wait(shown.showing_id) == 0
        filler.unlink()
        ranking, voted = collector.vote(ann, shown.showing_id, "left")  # the same vote
        assert voted == shown and ranking.vote_id == shown.showing_id
    finally:
        worker.stop()
        store.close()
    with Store(tiny_disk / "prefs.duckdb") as again:
        assert [r.outcome for r in again.rankings()] == ["left"]


def test_keep_the_winner_keeps_it_and_replaces_the_loser(collector):
    ann = collector.annotator("ann")
    shown = collector.start(ann, RED, "keep")
    for outcome in ("left", "right", "left"):
        _, voted = collector.vote(ann, shown.showing_id, outcome)
        winner = voted.images[voted.shown_left if outcome == "left" else 1 - voted.shown_left]
        shown = collector.next_showing(ann, voted, outcome, "keep")
        assert shown.images[0] == winner and shown.prompt == RED
        assert shown.images[1].image_uid not in {im.image_uid for im in voted.images}
    _, voted = collector.vote(ann, shown.showing_id, "tie")
    fresh = collector.next_showing(ann, voted, "tie", "keep")  # no winner: a fresh pair
    assert not {im.image_uid for im in fresh.images} & {im.image_uid for im in voted.images}


def test_auto_mode_moves_through_the_prompt_set(collector):
    ann = collector.annotator("ann")
    shown = collector.start(ann, "", "auto")
    prompts = [shown.prompt]
    for _ in range(3):
        _, voted = collector.vote(ann, shown.showing_id, "left")
        shown = collector.next_showing(ann, voted, "left", "auto")
        prompts.append(shown.prompt)
    assert prompts == [RED, BLUE, RED, BLUE]
    with pytest.raises(PageError, match="empty"):
        collector.start(ann, "  ", "new")


def test_the_daily_cap_stops_showings_and_votes(collector):
    collector.settings = Settings(daily_cap=2, min_display_ms=0)
    ann = collector.annotator("ann")
    shown = collector.start(ann, RED, "new")
    for _ in range(2):
        _, voted = collector.vote(ann, shown.showing_id, "left")
        if collector.tally(ann).today < 2:
            shown = collector.next_showing(ann, voted, "left", "new")
    with pytest.raises(PageError, match="today's limit of 2"):
        collector.next_showing(ann, voted, "left", "new")
    with pytest.raises(PageError, match="today's limit of 2"):
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


def test_gold_pairs_score_annotators_and_never_reach_training(collector, tmp_path):
    collector.gold = read_gold(write_gold(tmp_path, pairs=2))
    collector.settings = Settings(gold_rate=1.0, min_display_ms=0)
    ann, bob = collector.annotator("ann"), collector.annotator("bob")
    for annotator, right_answers in ((ann, 3), (bob, 1)):
        for k in range(4):
            shown = collector.start(annotator, BLUE, "new")
            assert shown.gold_best_uid == shown.images[0].image_uid and shown.prompt == RED
            better_side = "left" if shown.shown_left == 0 else "right"
            wrong_side = "right" if better_side == "left" else "left"
            outcome = better_side if k < right_answers else wrong_side
            ranking, _ = collector.vote(annotator, shown.showing_id, outcome)
            assert ranking.is_gold and ranking.split == "gold"
    shown = collector.start(ann, BLUE, "new")
    collector.vote(ann, shown.showing_id, "skip")  # skips are left out of the accuracy
    stats = store_stats(collector.store)
    assert stats.gold == {"ann": (3, 4), "bob": (1, 4)}
    assert "75.0%  ann (3/4)" in format_stats(stats)
    from data.pairs import StorePairs

    assert len(StorePairs(collector.store)) == 0  # the trainer reads the train split
    collector.settings = Settings(gold_rate=0.0, min_display_ms=0)
    assert collector.start(ann, BLUE, "new").gold_best_uid is None


def test_a_bad_gold_file_names_the_line(tmp_path):
    path = write_gold(tmp_path)
    path.write_text(path.read_text() + '{"prompt": "x", "better": "missing.png", '
                    '"worse": "bad0.png"}\n')
    with pytest.raises(UsageError, match=r"gold.jsonl:2: .*missing.png does not exist"):
        read_gold(path)
    path.write_text("not json\n")
    with pytest.raises(UsageError, match=r"gold.jsonl:1: not JSON"):
        read_gold(path)


def test_prompts_over_the_cap_in_the_owner_s_files_are_refused_and_never_voted(
        collector, tmp_path):
    from annotate.config import PageConfig
    from annotate.gold import GoldPair
    from annotate.serve import open_app

    long = "a red circle " * 200  # 2,600 characters (2,599 as a prompt-set line, stripped)
    path = write_gold(tmp_path)
    path.write_text(path.read_text() + json.dumps(
        {"prompt": long, "better": "good0.png", "worse": "bad0.png"}) + "\n")
    with pytest.raises(UsageError, match="gold.jsonl:2: the prompt is 2,600 characters "
                                            "long: shorten it to at most 2,000"):
        read_gold(path)
    (tmp_path / "prompts.txt").write_text(f"a red circle\n{long}\n")
    with pytest.raises(UsageError, match="prompts.txt holds a prompt of 2,599 characters"):
        open_app(PageConfig(db=tmp_path / "new.duckdb", prompts=tmp_path / "prompts.txt"))
    assert not (tmp_path / "new.duckdb").exists()
    # a showing whose prompt never passed the screening is not voted on either
    [gold] = read_gold(write_gold(tmp_path))
    collector.gold = [GoldPair(long, gold.better, gold.worse)]
    collector.settings = Settings(gold_rate=1.0, min_display_ms=0)
    ann = collector.annotator("ann")
    shown = collector.start(ann, RED, "new")
    assert shown.prompt == long
    with pytest.raises(PageError, match="at most 2,000"):
        collector.vote(ann, shown.showing_id, "left")
    assert collector.store.counts()["rankings"] == 0


def test_login_files(tmp_path):
    path = tmp_path / "logins"
    path.write_text("# who may annotate\nalice:s3cret:with:colons\n\nbob : pw\n")
    assert read_logins(path) == [("alice", "s3cret:with:colons"), ("bob", " pw")]
    path.write_text("alice\n")
    with pytest.raises(DataError, match="logins:1: write user:password"):
        read_logins(path)
    with pytest.raises(DataError, match="does not exist"):
        read_logins(tmp_path / "none")


# -- the store's SQL stays in data/store.py ------------------------------------------


def test_the_annotate_modules_hold_no_sql_of_their_own():
    """The store's SQL lives in data/store.py. (That the page's modules do not import the
    feedback command is pyproject.toml's import contract.)"""
    import ast
    from pathlib import Path

    folder = Path(__file__).resolve().parents[1] / "annotate"
    for path in sorted(folder.glob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        strings = [node.value for node in ast.walk(tree)
                   if isinstance(node, ast.Constant) and isinstance(node.value, str)]
        sql = [text for text in strings
               if any(word in text for word in ("SELECT ", "INSERT INTO", "DELETE FROM"))]
        assert sql == [], (path.name, sql)
