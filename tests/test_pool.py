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
