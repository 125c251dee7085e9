"""Writers that die or fail lose nothing they acknowledged and leave nothing half-written.

SIGKILL mid-vote and mid-import, a disk that fills mid-import, and a store held by
another process.
"""

import io
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from helpers import public_shard_table, record, small_disk, write_shard
from PIL import Image

from cli.errors import DataError
from data.pickapic import import_shards
from data.store import Store

WRITER = """
import sys
sys.path.insert(0, {tests!r})
from helpers import image_pair
from data.store import Store, Vote
store = Store({db!r})
user = store.user_id("killed")
k = 0
while True:
    images = image_pair(f"prompt {{k}}", ((k % 256, 0, 0), (0, k % 256, 0)))
    vote = Vote(f"vote-{{k}}", f"prompt {{k}}", images[0].image_uid, images[1].image_uid,
                ("left", "right", "tie", "both_bad")[k % 4], k % 2, user)
    store.record_vote(vote, images=images)
    print(vote.vote_id, flush=True)  # the acknowledgement
    k += 1
"""


def test_sigkill_mid_stream_keeps_every_acknowledged_vote(tmp_path):
    db = tmp_path / "prefs.duckdb"
    tests = os.path.dirname(__file__)
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER.format(tests=tests, db=str(db))],
        stdout=subprocess.PIPE, text=True, cwd=os.path.dirname(tests),
    )
    acknowledged = []
    for line in writer.stdout:
        acknowledged.append(line.strip())
        if len(acknowledged) == 150:
            writer.send_signal(signal.SIGKILL)
            break
    acknowledged += [line.strip() for line in writer.stdout]  # already on the pipe
    writer.wait()
    assert writer.returncode == -signal.SIGKILL

    with Store(db) as store:
        cur = store.cursor()
        stored = {v for (v,) in cur.execute("SELECT vote_id FROM rankings").fetchall()}
        assert set(acknowledged) <= stored
        assert len(stored) - len(acknowledged) <= 1  # at most the one in flight
        # nothing half-written: every ranking has both images, labels agree with outcome
        assert cur.execute(
            "SELECT count(*) FROM rankings r WHERE NOT EXISTS "
            "(SELECT 1 FROM images i WHERE i.image_uid = r.image_0_uid) OR NOT EXISTS "
            "(SELECT 1 FROM images i WHERE i.image_uid = r.image_1_uid)"
        ).fetchone()[0] == 0
        assert cur.execute(
            "SELECT count(*) FROM rankings WHERE (outcome = 'tie') <> (label_0 = 0.5) "
            "OR (outcome = 'both_bad') <> (label_0 IS NULL)"
        ).fetchone()[0] == 0


IMPORTER = """
import sys
from data.store import Store
from data.pickapic import import_shard
from pathlib import Path
store = Store({db!r})
print("open", flush=True)
import_shard(store, Path({shard!r}), source="public:x", batch_rows=50)
print("done", flush=True)
"""


def test_sigkill_mid_import_leaves_all_or_nothing(tmp_path):
    rows = [("a prompt", 1.0, 0.0)] * 3000
    shard = write_shard(tmp_path / "big.parquet", public_shard_table(rows=rows, image_size=64))
    db = tmp_path / "prefs.duckdb"
    importer = subprocess.Popen(
        [sys.executable, "-c", IMPORTER.format(db=str(db), shard=str(shard))],
        stdout=subprocess.PIPE, text=True,
        cwd=os.path.dirname(os.path.dirname(__file__)),
    )
    assert importer.stdout.readline().strip() == "open"
    time.sleep(0.5)  # into the import, which takes about two seconds here
    importer.send_signal(signal.SIGKILL)
    rest = importer.stdout.read()
    importer.wait()
    with Store(db) as store:
        count = store.counts()["rankings"]
    assert count in (0, 3000)
    assert count == 0 or "done" in rest


def snapshot(store: Store) -> dict:
    cur = store.cursor()
    return {
        table: cur.execute(f"SELECT * FROM {table} ORDER BY 1").fetchall()
        for table in ("images", "rankings", "users")
    }


def data_command(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "data", *map(str, args)],
                          capture_output=True, text=True,
                          cwd=os.path.dirname(os.path.dirname(__file__)))


def pq_image_bytes(shard: Path) -> int:
    table = pq.read_table(shard, columns=["jpg_0", "jpg_1"])
    return sum(pc.sum(pc.binary_length(table[c])).as_py() for c in ("jpg_0", "jpg_1"))


def test_a_full_disk_ends_an_import_with_one_line_and_the_store_as_it_was(tmp_path):
    rows = [("a prompt", 1.0, 0.0)] * 3000
    shard = write_shard(tmp_path / "big.parquet", public_shard_table(rows=rows, image_size=64))
    with small_disk(tmp_path / "disk", "3m") as disk:
        db = disk / "prefs.duckdb"
        with Store(db) as store:
            record(store, "already here", "left")
            before = snapshot(store)
        images = pq_image_bytes(shard)
        assert images > 2 * shutil.disk_usage(disk).free  # the shard cannot fit

        out = data_command("import", shard, "--db", db)
        assert out.returncode == 1
        assert out.stderr.count("\n") == 1 and "Traceback" not in out.stderr, out.stderr
        assert out.stderr.startswith(f"error: no space left on the disk holding {db} (")
        assert f"MB free): nothing of {shard} was imported; free some space and run the " \
            "command again" in out.stderr
        with Store(db) as store:
            assert snapshot(store) == before


def test_an_import_stopped_by_a_full_disk_has_printed_the_shards_it_imported(tmp_path):
    small = write_shard(tmp_path / "shards" / "a.parquet", public_shard_table(start_id=1))
    rows = [("a prompt", 1.0, 0.0)] * 3000
    big = write_shard(tmp_path / "shards" / "b.parquet",
                      public_shard_table(rows=rows, start_id=100, image_size=64))
    with small_disk(tmp_path / "disk", "3m") as disk:
        db = disk / "prefs.duckdb"
        out = data_command("import", tmp_path / "shards", "--db", db)
        assert out.returncode == 1
        assert out.stdout == f"{small}: 6 rows, 6 new pairs\n"
        assert out.stderr.startswith(f"error: no space left on the disk holding {db} (")
        assert f"nothing of {big} was imported" in out.stderr
        with Store(db, read_only=True) as store:
            assert store.counts()["rankings"] == 6


def test_a_rerun_after_a_kill_skips_the_shards_imported_before(tmp_path):
    rows = [("a prompt", 1.0, 0.0)] * 3000
    shards = [write_shard(tmp_path / "shards" / "a.parquet", public_shard_table(start_id=1)),
              write_shard(tmp_path / "shards" / "b.parquet",
                          public_shard_table(rows=rows, start_id=100, image_size=64)),
              write_shard(tmp_path / "shards" / "c.parquet", public_shard_table(start_id=10))]
    db = tmp_path / "prefs.duckdb"
    importer = subprocess.Popen(
        [sys.executable, "-m", "data", "import", str(tmp_path / "shards"), "--db", str(db)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        cwd=os.path.dirname(os.path.dirname(__file__)))
    first = importer.stdout.readline()  # printed as soon as a.parquet is in
    importer.send_signal(signal.SIGKILL)  # within b.parquet, which takes seconds
    importer.communicate()
    assert first == f"{shards[0]}: 6 rows, 6 new pairs\n"

    again = data_command("import", tmp_path / "shards", "--db", db)
    assert again.returncode == 0, again.stderr
    lines = again.stdout.splitlines()
    assert lines[0] == f"{shards[0]}: imported before (this file, same size and time), skipped"
    assert lines[1:3] == [f"{shards[1]}: 3000 rows, 3000 new pairs",
                          f"{shards[2]}: 6 rows, 6 new pairs"]
    assert lines[3] == (f"imported 2 of 3 shard(s): 3006 rows read, 3006 new pairs in {db}; "
                        "1 skipped, imported before")

    # a changed file is checked again: re-written as it was, it adds nothing; with
    # other content under the same ids, it is refused
    write_shard(shards[0], public_shard_table(start_id=1))
    changed = public_shard_table(start_id=10)
    changed = changed.set_column(changed.schema.get_field_index("caption"), "caption",
                                 pa.array(["another vote"] * changed.num_rows))
    write_shard(shards[2], changed)
    again = data_command("import", tmp_path / "shards", "--db", db)
    assert again.returncode == 1
    assert again.stdout.splitlines()[:2] == [
        f"{shards[0]}: 6 rows, 0 new pairs (6 already stored, identical)",
        f"{shards[1]}: imported before (this file, same size and time), skipped"]
    assert f"{shards[2]}, row 0: ranking_id 10 is already stored" in again.stderr
    with Store(db, read_only=True) as store:
        assert store.counts()["rankings"] == 3012


def noise_jpeg(rng: np.random.Generator, size: int = 64) -> bytes:
    """A JPEG of random pixels: about 4 KB at 64 px that no compression shrinks."""
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(buffer, "JPEG")
    return buffer.getvalue()


def big_store(tmp_path: Path) -> Path:
    """A store of 800 pairs of distinct noise JPEGs: about 5 MB of images, which a
    parquet export cannot shrink to fit a 3 MB disk."""
    rng = np.random.default_rng(0)
    table = public_shard_table(rows=[("a prompt", 1.0, 0.0)] * 800)
    for k in (0, 1):
        images = pa.array([noise_jpeg(rng) for _ in range(table.num_rows)], pa.binary())
        table = table.set_column(table.schema.get_field_index(f"jpg_{k}"), f"jpg_{k}", images)
    shard = write_shard(tmp_path / "big.parquet", table)
    assert pq_image_bytes(shard) > 4 << 20
    db = tmp_path / "prefs.duckdb"
    with Store(db) as store:
        import_shards(store, [shard], progress=False)
    return db


def test_an_export_onto_a_full_disk_says_so_in_one_line_and_leaves_nothing(tmp_path):
    db = big_store(tmp_path)
    with small_disk(tmp_path / "disk", "3m") as disk:
        out = disk / "export"
        done = data_command("export", out, "--db", db)
        assert done.returncode == 1
        assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr, done.stderr
        assert done.stderr.startswith(f"error: no space left on the disk holding {out} (")
        assert "MB free): nothing was exported; free some space and run the command " \
            "again" in done.stderr
        assert list(disk.iterdir()) == []  # no half export, no staging folder


def test_an_export_into_a_folder_it_cannot_write_says_so_in_one_line(tmp_path):
    db = tmp_path / "prefs.duckdb"
    with Store(db) as store:
        record(store, "a cat", "left")
    (tmp_path / "report.txt").write_text("a file")
    with small_disk(tmp_path / "disk", "1m", read_only=True) as disk:
        for out, cause in [(disk / "export", "Read-only file system"),
                           (tmp_path / "report.txt" / "export",
                            f"{tmp_path / 'report.txt'} is a file, not a folder")]:
            done = data_command("export", out, "--db", db)
            assert done.returncode == 1
            assert done.stderr == f"error: cannot write the export to {out}: {cause}: " \
                "choose a folder you can write to\n"
        assert list(disk.iterdir()) == []
    assert (tmp_path / "report.txt").read_text() == "a file"


HOLDER = """
import sys, time
from data.store import Store
store = Store(sys.argv[1])
print("open", flush=True)
time.sleep(300)
"""


def test_a_held_store_names_its_holder_and_a_way_out_that_works(tmp_path):
    db = tmp_path / "prefs.duckdb"
    with Store(db) as store:
        record(store, "a cat", "left")
    commands = [("stats", "--db", db), ("export", tmp_path / "out", "--db", db)]
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(db)], stdout=subprocess.PIPE,
                              text=True, cwd=os.path.dirname(os.path.dirname(__file__)))
    try:
        assert holder.stdout.readline().strip() == "open"
        for command in commands:
            out = data_command(*command)
            assert out.returncode == 1 and out.stderr.count("\n") == 1, out.stderr
            assert f"{db} is in use by process {holder.pid} " in out.stderr
            assert f"kill {holder.pid}), then run this command again" in out.stderr
            # no other command to try: every one meets the same lock (export and stats did)
            assert "python -m" not in out.stderr
    finally:
        holder.terminate()
        holder.wait()
    for command in commands:  # the advice followed: the same commands now work
        out = data_command(*command)
        assert out.returncode == 0, out.stderr


# -- a damaged store file: refused when opened, by every command ------------------------


def truncated_store(tmp_path: Path, keep: float) -> Path:
    """A store of 30 votes (about 3 MB) cut to `keep` of its size on disk, as a copy
    stopped by a full disk or a crash would leave it."""
    db = tmp_path / "prefs.duckdb"
    with Store(db) as store:
        for k in range(30):
            record(store, f"prompt {k}", "left")
    with open(db, "r+b") as file:
        file.truncate(int(db.stat().st_size * keep))
    return db


@pytest.mark.parametrize("keep", [0.5, 0.003])
def test_a_truncated_store_is_refused_when_opened_by_every_command(tmp_path, keep):
    db = truncated_store(tmp_path, keep)
    size = db.stat().st_size
    damaged = f"{db} is damaged (truncated: "
    fix = "restore it from a copy, or move it away to start a new store"
    # the annotate app opens its store as Store(path) (annotate/serve.py), as these do
    for read_only in (False, True):
        with pytest.raises(DataError) as refused:
            Store(db, read_only=read_only)
        assert str(refused.value).startswith(damaged) and str(refused.value).endswith(fix)
    shard = write_shard(tmp_path / "s.parquet", public_shard_table())
    for command in (["stats"], ["export", tmp_path / "out"], ["import", shard]):
        out = data_command(*command, "--db", db)
        assert out.returncode == 1, out.stdout
        assert out.stderr.count("\n") == 1 and "Traceback" not in out.stderr, out.stderr
        assert out.stderr.startswith(f"error: {damaged}") and fix in out.stderr
        assert out.stdout == ""
    assert db.stat().st_size == size and not (tmp_path / "out").exists()


def test_a_store_duckdb_shortened_by_its_free_blocks_opens_whole(tmp_path):
    """DuckDB cuts free blocks off the end of its file on close while its header still
    counts them: a store opened and closed a few times (an online run's rollouts, step
    after step) is then shorter than its total blocks, and whole."""
    db = tmp_path / "prefs.duckdb"
    shorter = False
    for k in range(6):
        with Store(db) as store:
            record(store, f"prompt {k}", "left")
        con = duckdb.connect(str(db), read_only=True)
        block, total = con.execute(
            "SELECT block_size, total_blocks FROM pragma_database_size()").fetchone()
        con.close()
        shorter |= db.stat().st_size < 3 * 4096 + total * block
        with Store(db, read_only=True) as store:
            assert store.cursor().execute("SELECT count(*) FROM rankings").fetchone() == (k + 1,)
    assert shorter  # the case arose: a check by total blocks would have called it damaged


def test_a_wal_that_cannot_be_replayed_is_moved_aside_with_one_line(tmp_path):
    db = tmp_path / "prefs.duckdb"
    with Store(db) as store:
        record(store, "a cat", "left")
    wal = Path(f"{db}.wal")
    garbage = bytes(range(256)) * 20  # not a DuckDB log: DuckDB would skip it silently
    wal.write_bytes(garbage)
    out = data_command("stats", "--db", db)
    assert out.returncode == 0, out.stderr
    [moved] = tmp_path.glob("prefs.duckdb.wal.bad-*")
    assert moved.read_bytes() == garbage and not wal.exists()
    assert out.stderr == (
        f"warning: {wal} could not be replayed (damaged, or not this store's), so the "
        f"store was opened without it; moved aside as {moved}\n"
    )
    assert "rankings: 1" in out.stdout


KILLED_WRITER = """
import os, sys
sys.path.insert(0, {tests!r})
from helpers import record
from data.store import Store
store = Store({db!r})
record(store, "a dog", "right")
os._exit(0)  # no close: the vote is in the store's .wal only
"""


def test_a_wal_left_by_a_killed_writer_is_replayed_without_a_word(tmp_path):
    db = tmp_path / "prefs.duckdb"
    with Store(db) as store:
        record(store, "a cat", "left")
    subprocess.run([sys.executable, "-c", KILLED_WRITER.format(
        tests=os.path.dirname(__file__), db=str(db))], check=True,
        cwd=os.path.dirname(os.path.dirname(__file__)))
    assert Path(f"{db}.wal").stat().st_size > 0
    out = data_command("stats", "--db", db)
    assert (out.returncode, out.stderr) == (0, "")
    assert "rankings: 2" in out.stdout
    assert not list(tmp_path.glob("*.bad-*"))
