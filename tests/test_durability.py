"""A writer killed with SIGKILL loses nothing it acknowledged and leaves nothing half-written."""

import os
import signal
import subprocess
import sys
import time

from helpers import public_shard_table, write_shard

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
