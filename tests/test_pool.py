"""Pairs made on every process of a launch: `python -m annotate pool` and `feedback` under
`accelerate launch` (CPU processes here, one per GPU on a cluster) store exactly the pairs
one process stores, and a killed launch resumes without a duplicate.

The toy model at 2 sampler steps and one torch thread a process, so that a 1-process and
a 2-process run compute every image with the same kernels.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from data.shards import read_shard, shard_folder, take_in, write_shard
from data.store import ImageRecord, PoolPair, Store, Vote
from pages.shared import free_port

REPO = Path(__file__).resolve().parents[1]
FAST = ["--steps", "2", "--threads", "1", "--no-progress", "--batch", "8"]


def command(processes: int, name: str, db: Path, *args: str) -> list[str]:
    """`python -m annotate NAME`, under `accelerate launch` of `processes` CPU processes."""
    if processes == 1:
        return [sys.executable, "-m", "annotate", name, "--db", str(db), *FAST, *args]
    return [sys.executable, "-m", "accelerate.commands.launch", "-q", "--multi_gpu",
            "--num_processes", str(processes), "--num_machines", "1", "--mixed_precision",
            "no", "--dynamo_backend", "no", "--num_cpu_threads_per_process", "1",
            "--main_process_port", str(free_port()), "-m", "annotate", name, "--db",
            str(db), *FAST, *args]


ENV = {**os.environ, "ACCELERATE_USE_CPU": "true", "GLOO_SOCKET_IFNAME": "lo"}


def run(processes: int, name: str, db: Path, *args: str) -> dict:
    done = subprocess.run(command(processes, name, db, *args), capture_output=True, text=True,
                          cwd=REPO, env=ENV, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def pool_rows(db: Path) -> list[tuple]:
    """Every pool pair with what makes its images: ids, prompt, seeds, guidance, steps,
    JPEG bytes."""
    with Store(db, read_only=True) as store:
        return store.cursor().execute(
            "SELECT p.pair_id, p.pool, p.caption, i0.image_uid, i0.seed, i0.guidance_scale, "
            "i0.steps, i0.jpg, i1.image_uid, i1.seed, i1.guidance_scale, i1.steps, i1.jpg "
            "FROM pool p JOIN images i0 ON i0.image_uid = p.image_0_uid "
            "JOIN images i1 ON i1.image_uid = p.image_1_uid ORDER BY p.pair_id").fetchall()


def vote_rows(db: Path) -> list[tuple]:
    with Store(db, read_only=True) as store:
        return store.cursor().execute(
            "SELECT r.vote_id, r.caption, r.outcome, r.label_0, r.user_id, r.source, i0.jpg, "
            "i1.jpg FROM rankings r JOIN images i0 ON i0.image_uid = r.image_0_uid "
            "JOIN images i1 ON i1.image_uid = r.image_1_uid ORDER BY r.vote_id").fetchall()


@pytest.fixture(scope="module")
def one_process_pool(tmp_path_factory) -> tuple[Path, dict]:
    db = tmp_path_factory.mktemp("one") / "prefs.duckdb"
    return db, run(1, "pool", db, "--pairs", "400")


def test_a_pool_made_by_two_processes_equals_one_made_by_one(one_process_pool, tmp_path):
    one_db, one = one_process_pool
    two = run(2, "pool", tmp_path / "prefs.duckdb", "--pairs", "400")
    assert (one["added"], two["added"], one["processes"], two["processes"]) == (400, 400, 1, 2)
    assert one["run"] == two["run"] and one["source"] == two["source"] == f"pool-{one['run']}"
    first, second = pool_rows(one_db), pool_rows(tmp_path / "prefs.duckdb")
    assert len(first) == 400 and len({row[3] for row in first}) == 400
    assert first == second  # ids, prompts, seeds, guidance and JPEG bytes
    assert not any(shard_folder(tmp_path / "prefs.duckdb", two["run"]).iterdir())
    # the pool holds no votes: nothing to train on until people vote
    with Store(tmp_path / "prefs.duckdb", read_only=True) as store:
        assert store.counts() == {"images": 800, "rankings": 0, "users": 0}


def kill_tree(process: subprocess.Popen) -> None:
    import psutil

    children = []
    with contextlib.suppress(psutil.NoSuchProcess):
        children = psutil.Process(process.pid).children(recursive=True)
    for pid in [process.pid, *(child.pid for child in children)]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    process.wait()


def test_a_killed_two_process_pool_resumes_to_the_same_pool(one_process_pool, tmp_path):
    one_db, one = one_process_pool
    db = tmp_path / "prefs.duckdb"
    launched = subprocess.Popen(command(2, "pool", db, "--pairs", "400"), cwd=REPO, env=ENV,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True)
    shards = shard_folder(db, one["run"])
    deadline = time.monotonic() + 300
    while not (shards.is_dir() and list(shards.glob("*.parquet"))):
        assert launched.poll() is None and time.monotonic() < deadline, "no batch written"
        time.sleep(0.05)
    kill_tree(launched)
    again = run(2, "pool", db, "--pairs", "400")
    assert 0 < again["existing"] < 400 and again["existing"] + again["added"] == 400
    assert pool_rows(db) == pool_rows(one_db)  # 400 pairs, none twice, the same images
    assert not list(shards.iterdir())  # the killed run's batches taken in, nothing left


def test_feedback_on_two_processes_stores_the_votes_and_tallies_of_one(tmp_path):
    one = run(1, "feedback", tmp_path / "one.duckdb", "--pairs", "96")
    two = run(2, "feedback", tmp_path / "two.duckdb", "--pairs", "96")
    tallies = ("added", "left", "right", "ties", "run", "source")
    assert [one[k] for k in tallies] == [two[k] for k in tallies]
    assert one["added"] == 96 and two["processes"] == 2
    assert vote_rows(tmp_path / "one.duckdb") == vote_rows(tmp_path / "two.duckdb")


def test_a_shard_is_taken_in_whole_and_once(tmp_path):
    # the main process may die between a file's commit and its deletion: taking the same
    # file in again adds nothing
    images = tuple(ImageRecord(f"uid-{side}", bytes([side]) * 10, "a red circle", "toy", side,
                               7.5, 2) for side in (0, 1))
    vote = Vote("ai-x-00000000", "a red circle", "uid-0", "uid-1", "left", 0, 42,
                source="ai:toy_judge")
    pair = PoolPair("pool-x-00000000", "pool-x", "a red circle", "uid-0", "uid-1")
    folder = tmp_path / "shards"
    path = write_shard(folder, "a", [(vote, images), (pair, images)])
    assert read_shard(path) == [(vote, images), (pair, images)]
    assert [p.name for p in folder.iterdir()] == ["a.parquet"]  # no temporary file left
    copy = path.read_bytes()
    with Store(tmp_path / "prefs.duckdb") as store:
        store.user_id("ai:toy_judge")
        assert take_in(store, folder) == 2 and not path.exists()
        path.write_bytes(copy)
        assert take_in(store, folder) == 2
        assert store.counts()["images"] == 2 and len(store.rankings()) == 1
        assert store.pool_ids("pool-x-") == ["pool-x-00000000"]


# -- the page serves a pool ---------------------------------------------------------------


@pytest.fixture(scope="module")
def toy():
    from models.loading import load

    return load("toy")


@pytest.fixture
def pooled(tmp_path, toy):
    """A store with a 6-pair toy pool (2 captions x 3), and a page's Collector that serves
    it, with overlap factory `collector(overlap, share)`."""
    import random

    from annotate.__main__ import main as annotate_main
    from annotate.pool import PoolQueue
    from annotate.screening import token_counter
    from annotate.showings import HOLD_S, Collector, Settings
    from annotate.worker import PairWorker, PromptSet
    from models.generate import generate_pair
    from models.variety import PairVariety

    db = tmp_path / "prefs.duckdb"
    (tmp_path / "prompts.txt").write_text("a red circle\na blue square\n")
    assert annotate_main(["pool", "--db", str(db), "--prompts", str(tmp_path / "prompts.txt"),
                          "--pairs", "6", "--per-prompt", "3", *FAST]) == 0
    made = []

    def make(prompt, on_step):
        made.append(prompt)
        return generate_pair(toy, prompt, PairVariety(steps=2), random.Random(1))

    opened = []

    def collector(overlap: int = 1, share: float = 0.0) -> Collector:
        worker = PairWorker(make, PromptSet(["a red circle"]), buffer_size=0).start()
        store = Store(db)
        opened.append((worker, store))
        return Collector(store, worker, Settings(min_display_ms=0, overlap=overlap,
                                                 overlap_share=share),
                         count_tokens=token_counter(toy.pipeline.tokenizer),
                         rng=random.Random(0), pool=PoolQueue(store, HOLD_S))

    yield collector, made
    for worker, store in opened:
        worker.stop()
        store.close()


def test_the_page_shows_each_pool_pair_once_then_generates_and_says_so(pooled):
    from annotate.pool import DRY_NOTE

    make_collector, made = pooled
    collector = make_collector()
    pool = {p.pair_id: p for p in collector.store.pool_to_show()[0]}
    ann, bob = collector.annotator("ann"), collector.annotator("bob")
    held = collector.start(ann, "", "auto")  # a pool pair, held for ann while on her screen
    shown = [collector.start(bob, "", "auto") for _ in range(5)]
    assert {s.pool_pair for s in [held, *shown]} == set(pool)  # all six, none twice
    for s in [held, *shown]:
        pair = pool[s.pool_pair]
        assert s.pair == (pair.image_0_uid, pair.image_1_uid) and s.prompt == pair.caption
    assert collector.pool.left() == 6 and made == []  # nothing generated
    collector.vote(ann, held.showing_id, "left")
    assert collector.pool.left() == 5
    # bob's last showing is his current one: his vote counts; his other five were replaced
    collector.vote(bob, shown[-1].showing_id, "skip")  # a skip puts the pair back, not for bob
    assert collector.pool.left() == 5
    after_skip = collector.next_showing(ann, held, "left", "auto")
    assert after_skip.pool_pair == shown[-1].pool_pair
    # the four bob left unvoted stay held for him until HOLD_S: the pool has none for bob
    dry = collector.start(bob, "", "auto")
    assert dry.pool_pair is None and dry.note == DRY_NOTE and made == ["a red circle"]
    # data stats and the campaign page say how much of the pool is left
    from data.stats import format_stats, store_stats

    assert "pool: 5 of 6 pairs not yet voted on (1 first voted in the last hour: about 5.0 " \
        "hours left at that pace)" in format_stats(store_stats(collector.store))


def test_a_pool_pair_marked_for_overlap_goes_to_k_annotators(pooled):
    make_collector, made = pooled
    collector = make_collector(overlap=2, share=1.0)
    ann, bob = collector.annotator("ann"), collector.annotator("bob")
    first = collector.start(ann, "", "auto")
    collector.vote(ann, first.showing_id, "left")
    second = collector.start(bob, "", "auto")  # the overlap pair first: it wants a 2nd vote
    assert second.pair == first.pair and second.pool_pair is None
    collector.vote(bob, second.showing_id, "right")
    assert collector.store.overlap_progress() == (1, 1) and collector.pool.left() == 5
    assert made == []


def test_the_page_refuses_pool_when_the_store_has_none(tmp_path):
    from annotate.config import PageConfig
    from annotate.serve import open_app
    from cli.errors import UsageError

    with pytest.raises(UsageError, match=r"--pool: .* holds no pool pair still to vote on"):
        open_app(PageConfig(db=tmp_path / "prefs.duckdb", pool=True))


def test_a_showing_the_generator_must_make_is_pending_and_a_pool_one_is_not(pooled):
    # What lets the page record votes one at a time: next_showing(wait=False) never waits
    # for the generator; it hands back a Pending that waits when finished (in a thread)
    from annotate.showings import Pending

    make_collector, made = pooled
    collector = make_collector()
    ann = collector.annotator("ann")
    typed = collector.start(ann, "a green triangle", "new")  # made live (it waits)
    assert made == ["a green triangle"]
    collector.vote(ann, typed.showing_id, "left")
    pending = collector.next_showing(ann, typed, "left", "new", wait=False)
    assert isinstance(pending, Pending) and made == ["a green triangle"]  # nothing made yet
    shown = pending.finish(None)
    assert shown.prompt == "a green triangle" and len(made) == 2
    collector.vote(ann, shown.showing_id, "left")
    pooled_next = collector.next_showing(ann, shown, "left", "auto", wait=False)
    assert pooled_next.pool_pair is not None and len(made) == 2  # a pool pair: at once


def test_a_vote_that_waits_for_the_generator_holds_up_no_other_vote(tmp_path):
    # One annotator types a prompt (its pairs are made live, seconds each at 300 steps);
    # another votes on pool pairs meanwhile: votes are recorded one at a time, but a wait
    # for the generator happens outside that line
    import threading

    from gradio_client import Client

    from annotate.__main__ import main as annotate_main
    from annotate.config import PageConfig
    from annotate.serve import open_app
    from tests.helpers import serving

    db = tmp_path / "prefs.duckdb"
    assert annotate_main(["pool", "--db", str(db), "--pairs", "6", *FAST]) == 0
    server = open_app(PageConfig(db=db, pool=True, steps=300, buffer=0, min_display_ms=0))
    try:
        with serving(server.demo) as url:
            ann, bob = Client(url, verbose=False), Client(url, verbose=False)
            ann_shown = ann.predict("ann", "a red circle", "new", api_name="/generate")
            bob_shown = bob.predict("bob", "", "auto", api_name="/generate")
            ann_done = {}

            def ann_votes():
                start = time.perf_counter()
                out = ann.predict("ann", "new", ann_shown[3], api_name="/vote_left")
                ann_done.update(seconds=time.perf_counter() - start, at=time.perf_counter(),
                                out=out)

            waiting = threading.Thread(target=ann_votes)
            waiting.start()
            time.sleep(0.3)
            for _ in range(3):
                after = bob.predict("bob", "auto", bob_shown[3], api_name="/vote_left")
                assert after[3] and after[3] != bob_shown[3], after[5]  # the next pool pair
                bob_shown = after
            bob_done = time.perf_counter()
            waiting.join(timeout=120)
    finally:
        server.close()
    assert ann_done["out"][3] and ann_done["out"][2] == "a red circle"  # made live
    assert ann_done["seconds"] > 1.0 and bob_done < ann_done["at"]
    with Store(db, read_only=True) as store:
        assert store.cursor().execute("SELECT count(*) FROM rankings").fetchone()[0] == 4
