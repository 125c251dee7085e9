"""The store: schema, labels, idempotent votes, concurrency, and one-line errors."""

import subprocess
import sys
import threading

import duckdb
import pytest
from helpers import image_pair, record

from cli.errors import DailyCapReached, DataError
from data.migrations import LATEST_VERSION
from data.store import Store, Vote, new_uid, preference_labels


@pytest.fixture
def store(tmp_path):
    with Store(tmp_path / "prefs.duckdb") as s:
        yield s


def test_new_store_is_migrated_once(tmp_path):
    path = tmp_path / "runs" / "prefs.duckdb"
    with Store(path) as s:
        assert s.schema_version() == LATEST_VERSION
    with Store(path) as s:  # reopening applies nothing twice
        rows = s.cursor().execute("SELECT version FROM schema_version").fetchall()
        assert rows == [(v,) for v in range(1, LATEST_VERSION + 1)]


def test_newer_schema_is_refused(tmp_path):
    path = tmp_path / "prefs.duckdb"
    with Store(path) as s:
        s.cursor().execute("INSERT INTO schema_version (version) VALUES (?)", [LATEST_VERSION + 1])
    with pytest.raises(DataError, match="newer than this code"):
        Store(path)


@pytest.mark.parametrize(
    ("outcome", "shown_left", "expected"),
    [
        ("left", 0, (1.0, 0.0, "A", True)),
        ("left", 1, (0.0, 1.0, "B", True)),
        ("right", 0, (0.0, 1.0, "B", True)),
        ("right", 1, (1.0, 0.0, "A", True)),
        ("tie", 1, (0.5, 0.5, "none", True)),
        ("both_bad", 0, (None, None, None, False)),
        ("skip", 1, (None, None, None, False)),
    ],
)
def test_preference_labels_follow_pickapic(outcome, shown_left, expected):
    assert preference_labels(outcome, shown_left, "A", "B") == expected


def test_unknown_outcome_is_refused():
    with pytest.raises(DataError, match="unknown outcome"):
        preference_labels("maybe", 0, "A", "B")


def test_vote_is_stored_with_its_provenance(store):
    ranking, images = record(store, "a red circle", "right", shown_left=1, dwell_ms=830)
    assert ranking.label_0 == 1.0 and ranking.label_1 == 0.0  # image 0 was on the right
    assert ranking.best_image_uid == images[0].image_uid
    assert (ranking.shown_left, ranking.dwell_ms, ranking.outcome) == (1, 830, "right")
    assert ranking.source == "human" and ranking.split == "train" and not ranking.is_gold
    assert store.user_id("ann") == ranking.user_id
    stored = store.cursor().execute(
        "SELECT prompt, model, seed, guidance_scale, steps, scheduler, width, height "
        "FROM images WHERE image_uid = ?", [images[0].image_uid]
    ).fetchone()
    assert stored == ("a red circle", "toy-a", 0, 7.5, 20, "DDIM", 32, 32)


def test_replayed_vote_id_is_stored_once_and_answered_with_the_first_result(store):
    first, images = record(store, "a cat", "left", vote_id="click-1")
    replay = Vote(
        vote_id="click-1", caption="a cat", image_0_uid=images[0].image_uid,
        image_1_uid=images[1].image_uid, outcome="right", shown_left=0,
        user_id=store.user_id("ann"),
    )
    assert store.record_vote(replay) == first
    assert store.counts()["rankings"] == 1


def test_vote_on_unknown_images_is_refused_and_changes_nothing(store):
    vote = Vote(new_uid(), "a cat", new_uid(), new_uid(), "left", 0, store.user_id("ann"))
    before = store.counts()
    with pytest.raises(DataError, match="not stored"):
        store.record_vote(vote)
    assert store.counts() == before


def test_vote_with_bad_outcome_stores_neither_vote_nor_images(store):
    images = image_pair("a cat", ((1, 2, 3), (4, 5, 6)))
    vote = Vote(new_uid(), "a cat", images[0].image_uid, images[1].image_uid, "meh", 0, 1)
    with pytest.raises(DataError):
        store.record_vote(vote, images=images)
    assert store.counts()["images"] == 0 and store.counts()["rankings"] == 0


def _batch(store, n, unknown_last=False):
    """n votes, each with its pair; the last names an image it does not bring."""
    batch = []
    for k in range(n):
        images = image_pair(f"prompt {k}", ((k, 0, 0), (0, k, 0)))
        vote = Vote(f"batch-{k}", f"prompt {k}", images[0].image_uid, images[1].image_uid,
                    "left", 0, store.user_id("ai"))
        if unknown_last and k == n - 1:
            vote = Vote(vote.vote_id, vote.caption, new_uid(), images[1].image_uid,
                        "left", 0, vote.user_id)
        batch.append((vote, images))
    return batch


def test_a_batch_of_votes_is_stored_all_or_none_and_replays_once(store):
    with pytest.raises(DataError, match="not stored"):
        store.record_votes(_batch(store, 3, unknown_last=True))
    assert store.counts()["rankings"] == 0 and store.counts()["images"] == 0
    batch = _batch(store, 3)
    store.record_votes(batch[:2])
    store.record_votes(batch)  # the first two again: stored once
    assert store.counts()["rankings"] == 3 and store.counts()["images"] == 6
    assert {r.vote_id for r in store.rankings()} == {"batch-0", "batch-1", "batch-2"}


def test_eight_threads_by_200_votes_give_exactly_1600_rankings(store):
    uid_pairs = []
    for i in range(8):
        images = image_pair(f"prompt {i}", ((i, 0, 0), (0, i, 0)))
        store.add_images(images)
        uid_pairs.append((images[0].image_uid, images[1].image_uid))
    errors = []
    barrier = threading.Barrier(8)

    def annotate(worker: int) -> None:
        try:
            user = store.user_id(f"worker-{worker}")
            uid0, uid1 = uid_pairs[worker]
            barrier.wait()
            for k in range(200):
                vote = Vote(f"w{worker}-{k}", f"prompt {worker}", uid0, uid1,
                            ("left", "right", "tie")[k % 3], k % 2, user)
                store.record_vote(vote)
                if k % 50 == 0:  # a client retry of a vote already acknowledged
                    store.record_vote(vote)
        except Exception as error:  # pragma: no cover - reported below
            errors.append(error)

    threads = [threading.Thread(target=annotate, args=(w,)) for w in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    cur = store.cursor()
    assert cur.execute("SELECT count(*) FROM rankings").fetchone()[0] == 1600
    per_user = dict(cur.execute(
        "SELECT u.name, count(*) FROM rankings r JOIN users u USING (user_id) GROUP BY 1"
    ).fetchall())
    assert per_user == {f"worker-{w}": 200 for w in range(8)}
    # every vote is attributed to the worker that cast it
    assert cur.execute(
        "SELECT count(*) FROM rankings r JOIN users u USING (user_id) "
        "WHERE split_part(r.vote_id, '-', 1) <> 'w' || split_part(u.name, '-', 2)"
    ).fetchone()[0] == 0


def test_same_vote_id_from_racing_threads_is_stored_once(store):
    images = image_pair("a cat", ((9, 9, 9), (99, 99, 99)))
    store.add_images(images)
    results = []
    barrier = threading.Barrier(8)

    def vote(k: int) -> None:
        barrier.wait()
        results.append(store.record_vote(Vote(
            "same-click", "a cat", images[0].image_uid, images[1].image_uid,
            ("left", "right")[k % 2], 0, store.user_id("ann"),
        )))

    threads = [threading.Thread(target=vote, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 8 and len(set(results)) == 1
    assert store.counts()["rankings"] == 1


def test_racing_votes_of_one_annotator_never_pass_the_daily_cap(store):
    """Eight tabs of one annotator vote at the same moment with a cap of 2: two votes are
    stored and six refused, however the transactions interleave."""
    user = store.user_id("ann")
    pairs = [image_pair("a cat", ((9, 9, 9), (99, 99, 99))) for _ in range(8)]
    for images in pairs:
        store.add_images(images)
    refused, barrier = [], threading.Barrier(8)

    def vote(images) -> None:
        barrier.wait()
        try:
            store.record_vote(Vote(new_uid(), "a cat", images[0].image_uid,
                                   images[1].image_uid, "left", 0, user), daily_cap=2)
        except DailyCapReached:
            refused.append(images)

    for _ in range(3):  # three rounds of eight: the cap holds in each interleaving
        threads = [threading.Thread(target=vote, args=(images,)) for images in pairs]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert store.counts()["rankings"] == 2 and len(refused) == 22


def test_second_process_gets_one_line_naming_the_fix(store):
    code = (
        "import sys\n"
        "from data.store import Store\n"
        "from cli.errors import DataError\n"
        "try:\n"
        f"    Store({str(store.path)!r}, read_only=True)\n"
        "except DataError as e:\n"
        "    print(e); sys.exit(3)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 3, out.stderr
    line = out.stdout.strip()
    assert "\n" not in line
    assert "in use by process" in line and "stop that process" in line


def test_cli_on_a_locked_store_prints_one_line(store):
    out = subprocess.run(
        [sys.executable, "-m", "data", "stats", "--db", str(store.path)],
        capture_output=True, text=True,
    )
    assert out.returncode == 1
    assert out.stdout == ""
    assert out.stderr.count("\n") == 1 and "Traceback" not in out.stderr
    assert out.stderr.startswith("error: ") and "stop that process" in out.stderr


def test_not_a_duckdb_file_is_one_line_error(tmp_path):
    bogus = tmp_path / "prefs.duckdb"
    bogus.write_text("hello")
    with pytest.raises(DataError) as info:
        Store(bogus)
    assert "\n" not in str(info.value)


def test_locked_error_is_a_data_error():
    assert issubclass(DataError, DataError)
    assert issubclass(duckdb.IOException, duckdb.Error)


def test_the_tally_and_a_run_s_vote_ids_are_store_queries(store):
    from datetime import datetime, timedelta

    for outcome in ("left", "skip", "tie"):
        record(store, "a cat", outcome)
    record(store, "a dog", "left", user="bob")
    record(store, "a cat", "left", vote_id="ai-run-00000007", source="ai:toy_judge")
    ann = store.user_id("ann")
    now = datetime.now()
    assert store.vote_tally(ann, now - timedelta(hours=1)) == (2, 2)  # a skip is no vote
    assert store.vote_tally(ann, now + timedelta(hours=1)) == (0, 2)
    assert store.vote_tally(ann, now - timedelta(hours=1), source="ai:toy_judge") == (1, 1)
    assert store.vote_ids("ai-run-") == ["ai-run-00000007"]


def test_a_generated_image_becomes_its_row_and_jpeg_round_trips():
    from PIL import Image

    from data.pairs import decode_image, encode_jpeg
    from models.generate import GeneratedImage

    picture = Image.new("RGB", (16, 8), (200, 30, 30))
    made = GeneratedImage(image=picture, prompt="red", model="toy", seed=3, guidance_scale=7.5,
                          steps=20, scheduler="DDIM", width=16, height=8, gen_ms=12.5)
    jpg = encode_jpeg(picture)
    row = made.record("uid-1", jpg)
    assert (row.image_uid, row.jpg, row.prompt, row.model, row.seed, row.steps) == (
        "uid-1", jpg, "red", "toy", 3, 20)
    assert (row.width, row.height, row.gen_ms, row.scheduler) == (16, 8, 12.5, "DDIM")
    back = decode_image(jpg)
    assert back.size == (16, 8) and max(abs(a - b) for a, b in zip(
        back.getpixel((8, 4)), (200, 30, 30), strict=True)) < 8


def test_pairs_one_model_made_are_copied_whole_into_another_store(tmp_path, store):
    """A round of `python -m rounds --people` takes the labelled, non-gold pairs of its
    model from the people's store: rankings, images and annotators, as they were."""
    from data.store import ImageRecord

    def vote(model: str, outcome: str, **extra) -> str:
        images = [ImageRecord(new_uid(), b"jpg", prompt="p", model=model, model_round=2)
                  for _ in range(2)]
        vote_id = new_uid()
        store.record_vote(Vote(vote_id, "p", images[0].image_uid, images[1].image_uid,
                               outcome, 1, store.user_id("ann"), **extra), images)
        return vote_id

    mine = [vote("m", "left"), vote("m", "tie")]
    vote("other", "left")
    vote("m", "skip")  # no label
    vote("m", "right", is_gold=True, gold_best_uid=None)
    mine.append(vote("m", "right"))
    assert store.labelled_pairs(["m"]) == mine and set(store.models()) == {"m", "other"}
    with Store(tmp_path / "round.duckdb") as copy:
        copy.copy_pairs(store, mine[:2])
        copy.copy_pairs(store, mine)  # again, and one more: nothing twice
        assert copy.counts() == {"images": 6, "rankings": 3, "users": 1}
        columns = "vote_id, outcome, label_0, label_1, best_image_uid, user_id, created_at"
        assert copy.cursor().execute(f"SELECT {columns} FROM rankings ORDER BY 1").fetchall() \
            == store.cursor().execute(f"SELECT {columns} FROM rankings WHERE vote_id IN "
                                      "(?, ?, ?) ORDER BY 1", mine).fetchall()
        assert copy.cursor().execute("SELECT DISTINCT model, model_round FROM images"
                                     ).fetchall() == [("m", 2)]


def test_stats_and_export_upgrade_a_store_made_by_an_older_version(tmp_path):
    path = tmp_path / "prefs.duckdb"
    with Store(path) as s:
        record(s, "a cat", "left")
    con = duckdb.connect(str(path))  # back to schema version 4, before imported_files
    con.execute("DROP TABLE imported_files")
    con.execute("DROP TABLE pool")
    con.execute("DELETE FROM schema_version WHERE version >= 5")
    con.close()
    for command in (["stats"], ["export", tmp_path / "out"]):
        out = subprocess.run([sys.executable, "-m", "data", *map(str, command), "--db",
                              str(path)], capture_output=True, text=True)
        assert (out.returncode, out.stderr) == (0, ""), command
    with Store(path, read_only=True) as s:
        assert s.schema_version() == LATEST_VERSION == 6


def test_a_store_killed_while_it_is_made_opens_on_the_next_run(tmp_path):
    # killed the moment its file appears (the rounds test's kill while collecting): the
    # file that carries the store's name is always whole, so the next run opens it
    for attempt in range(5):
        path = tmp_path / f"run{attempt}" / "prefs.duckdb"
        maker = subprocess.Popen([sys.executable, "-c",
                                  f"from data.store import Store; Store({str(path)!r})"])
        while not path.exists() and maker.poll() is None:
            pass
        maker.kill()
        maker.wait()
        with Store(path) as store:
            assert store.counts()["rankings"] == 0
