"""Pick-a-Pic import and export: exact schema, round trips, and refused bad shards."""

import io
import re
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import PUBLIC_ROWS, huge_header_jpeg, public_shard_table, record, write_shard
from PIL import Image

from cli.errors import DataError, ShardError
from data.pickapic import PICKAPIC_SCHEMA, export_pairs, import_shard, import_shards
from data.store import Store

# The public pickapic_v2 features (its dataset card), less the leftover pandas index.
PUBLIC_FEATURES = {
    "are_different": "bool", "best_image_uid": "string", "caption": "string",
    "created_at": "timestamp[ns]", "has_label": "bool", "image_0_uid": "string",
    "image_0_url": "string", "image_1_uid": "string", "image_1_url": "string",
    "jpg_0": "binary", "jpg_1": "binary", "label_0": "float64", "label_1": "float64",
    "model_0": "string", "model_1": "string", "ranking_id": "int64", "user_id": "int64",
    "num_example_per_prompt": "int64",
}


@pytest.fixture
def store(tmp_path):
    with Store(tmp_path / "prefs.duckdb") as s:
        yield s


def snapshot(store: Store) -> dict:
    """Everything in the store's data tables, for 'unchanged' checks."""
    cur = store.cursor()
    return {
        table: cur.execute(f"SELECT * FROM {table} ORDER BY 1").fetchall()
        for table in ("images", "rankings", "users")
    }


def fill_with_votes(store: Store) -> dict:
    """One vote of each kind, on both sides; returns the expected exported rows by id."""
    expected = {}
    for prompt, outcome, shown_left in [
        ("a red circle", "left", 0), ("a red circle", "left", 1), ("a blue square", "right", 0),
        ("a blue square", "right", 1), ("a green triangle", "tie", 1),
        ("a green triangle", "both_bad", 0), ("a cat", "skip", 1),
    ]:
        ranking, images = record(store, prompt, outcome, shown_left=shown_left, user="bo")
        if outcome in ("both_bad", "skip"):
            continue
        expected[ranking.ranking_id] = {
            "caption": prompt, "label_0": ranking.label_0, "label_1": ranking.label_1,
            "best_image_uid": ranking.best_image_uid,
            "image_0_uid": images[0].image_uid, "image_1_uid": images[1].image_uid,
            "jpg_0": images[0].jpg, "jpg_1": images[1].jpg, "model_0": "toy-a",
            "model_1": "toy-b", "are_different": True, "has_label": True,
            "user_id": store.user_id("bo"), "created_at": ranking.created_at,
        }
    return expected


def test_round_trip_through_export_pyarrow_datasets_and_reimport(store, tmp_path):
    expected = fill_with_votes(store)
    assert len(expected) == 5  # both-bad and skip are not pairs
    splits = export_pairs(store, tmp_path / "export")
    assert [(s.split, s.rows) for s in splits] == [("train", 5)]

    table = pq.read_table(tmp_path / "export" / "train")
    assert table.schema.names == PICKAPIC_SCHEMA.names
    assert table.schema.equals(PICKAPIC_SCHEMA)
    rows = {row["ranking_id"]: row for row in table.to_pylist()}
    assert rows.keys() == expected.keys()
    for ranking_id, want in expected.items():
        got = rows[ranking_id]
        for key, value in want.items():
            if key == "created_at":
                assert got[key].to_pydatetime() == value
            else:
                assert got[key] == value, key
    tie = [r for r in rows.values() if r["label_0"] == 0.5]
    assert len(tie) == 1 and tie[0]["best_image_uid"] == "none" and tie[0]["label_1"] == 0.5
    assert {r["num_example_per_prompt"] for r in rows.values()} == {1, 2}

    import datasets

    loaded = datasets.load_dataset(
        "parquet", data_files=str(tmp_path / "export" / "train" / "*.parquet"),
        split="train", cache_dir=str(tmp_path / "hf-cache"),
    )
    assert {k: v.dtype for k, v in loaded.features.items()} == PUBLIC_FEATURES
    assert list(loaded.features) == list(PUBLIC_FEATURES)
    by_id = {row["ranking_id"]: row for row in loaded}
    for ranking_id, want in expected.items():
        assert by_id[ranking_id]["jpg_0"] == want["jpg_0"]
        assert by_id[ranking_id]["label_0"] == want["label_0"]
        assert by_id[ranking_id]["best_image_uid"] == want["best_image_uid"]

    with Store(tmp_path / "again.duckdb") as again:
        import_shards(again, [tmp_path / "export"], progress=False)
        export_pairs(again, tmp_path / "export2")
    assert pq.read_table(tmp_path / "export2" / "train").equals(table)


def test_public_shard_in_exact_v2_schema_imports(store, tmp_path):
    shard = write_shard(tmp_path / "data" / "train-00000-of-00645.parquet", public_shard_table())
    assert "__index_level_0__" in pq.read_schema(shard).names
    [done] = import_shards(store, [tmp_path / "data"], source="public:pickapic_v2",
                           progress=False)
    assert (done.rows, done.added) == (len(PUBLIC_ROWS), len(PUBLIC_ROWS))
    cur = store.cursor()
    outcomes = cur.execute(
        "SELECT ranking_id, outcome, label_0, best_image_uid, shown_left, source, split "
        "FROM rankings ORDER BY ranking_id"
    ).fetchall()
    assert [o[1] for o in outcomes] == ["left", "right", "tie", "left", "right", "tie"]
    assert all(o[4] is None for o in outcomes)  # the public set never says the side
    assert {o[5] for o in outcomes} == {"public:pickapic_v2"}
    assert {o[6] for o in outcomes} == {"train"}
    assert outcomes[2][3] == "none"

    # importing the same shard again adds nothing
    [again] = import_shards(store, [shard], progress=False)
    assert again.added == 0 and store.counts()["rankings"] == len(PUBLIC_ROWS)

    # and exporting it gives the public rows back, urls and all
    export_pairs(store, tmp_path / "out")
    exported = pq.read_table(tmp_path / "out" / "train").to_pylist()
    original = public_shard_table().drop_columns(["__index_level_0__"]).to_pylist()
    assert sorted(exported, key=lambda r: r["ranking_id"]) == original


def test_batches_and_transactions_of_any_size_store_the_same_images(tmp_path, monkeypatch):
    # one image a transaction (a cap below one JPEG) and two rows a batch, against the
    # defaults: the same rows, the same bytes
    import data.pickapic

    shard = write_shard(tmp_path / "train.parquet", public_shard_table())
    with Store(tmp_path / "default.duckdb") as store:
        import_shard(store, shard, source="public:x")
        expected = store.cursor().execute(
            "SELECT image_uid, jpg, width FROM images ORDER BY 1").fetchall()
    monkeypatch.setattr(data.pickapic, "TRANSACTION_BYTES", 1)
    with Store(tmp_path / "small.duckdb") as store:
        done = import_shard(store, shard, source="public:x", batch_rows=2)
        assert done.added == len(PUBLIC_ROWS)
        assert store.cursor().execute(
            "SELECT image_uid, jpg, width FROM images ORDER BY 1").fetchall() == expected
    assert len(expected) == 2 * len(PUBLIC_ROWS)


def test_export_writes_split_folders_and_reimport_keeps_splits(store, tmp_path):
    record(store, "a cat", "left", split="train")
    record(store, "a dog", "right", split="validation")
    record(store, "a fox", "tie", split="validation")
    export_pairs(store, tmp_path / "out", shard_rows=1)
    assert sorted(p.relative_to(tmp_path / "out").as_posix()
                  for p in (tmp_path / "out").rglob("*.parquet")) == [
        "train/train-00000-of-00001.parquet",
        "validation/validation-00000-of-00002.parquet",
        "validation/validation-00001-of-00002.parquet",
    ]
    with Store(tmp_path / "b.duckdb") as other:
        import_shards(other, [tmp_path / "out"], progress=False)
        splits = dict(other.cursor().execute(
            "SELECT split, count(*) FROM rankings GROUP BY 1").fetchall())
    assert splits == {"train": 1, "validation": 2}


def test_export_without_images_matches_the_no_images_set(store, tmp_path):
    fill_with_votes(store)
    export_pairs(store, tmp_path / "out", images=False)
    schema = pq.read_schema(next((tmp_path / "out").rglob("*.parquet")))
    assert schema.names == [n for n in PICKAPIC_SCHEMA.names if n not in ("jpg_0", "jpg_1")]


def test_export_refuses_a_non_empty_folder(store, tmp_path):
    fill_with_votes(store)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    with pytest.raises(DataError, match="not empty"):
        export_pairs(store, tmp_path / "out")
    with pytest.raises(DataError, match="replaces only an earlier export"):
        export_pairs(store, tmp_path / "out", overwrite=True)
    assert (tmp_path / "out" / "keep.txt").read_text() == "mine"


# -- bad shards: each refused with file, row and problem; the store unchanged ------------


def _corrupt(table: pa.Table, column: str, row: int, value) -> pa.Table:
    values = table.column(column).to_pylist()
    values[row] = value
    index = table.schema.get_field_index(column)
    return table.set_column(index, table.schema.field(column), pa.array(values,
                            type=table.schema.field(column).type))


def _uid(table: pa.Table, k: int, row: int) -> str:
    return table.column(f"image_{k}_uid")[row].as_py()


def solid_jpeg(size: tuple[int, int], **save) -> bytes:
    """A real JPEG of one grey, encoded whole (every block has its entropy-coded data)."""
    buffer = io.BytesIO()
    Image.new("RGB", size, (128, 128, 128)).save(buffer, "JPEG", **save)
    return buffer.getvalue()


def png_bytes() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), (10, 200, 10)).save(buffer, "PNG")
    return buffer.getvalue()


BAD_SHARDS = {
    "missing column": (
        lambda t: t.drop_columns(["label_1"]), r"missing column\(s\) label_1"),
    "no images": (
        lambda t: t.drop_columns(["jpg_0", "jpg_1"]), r"no-images shard cannot be imported"),
    "wrong type": (
        lambda t: t.set_column(t.schema.get_field_index("label_0"), "label_0",
                               pa.array([str(v) for v in t.column("label_0").to_pylist()])),
        r"column label_0 has type string, expected number"),
    "undecodable image": (
        lambda t: _corrupt(t, "jpg_1", 3, b"\xff\xd8\xff\xe0 not really a jpeg"),
        r"row 3: jpg_1 is not a decodable image"),
    "bytes that are no image at all": (
        lambda t: _corrupt(t, "jpg_1", 3, b"hello, these bytes are not an image"),
        r"row 3: jpg_1 is not a decodable image"),
    "truncated image": (
        lambda t: _corrupt(t, "jpg_0", 4, t.column("jpg_0")[4].as_py()[:200]),
        r"row 4: jpg_0 is not a decodable image"),
    "12000x12000 declared in 633 bytes": (
        lambda t: _corrupt(t, "jpg_1", 2, huge_header_jpeg()),
        r"row 2: jpg_1 declares 12000x12000 pixels, over the 4096 px per side limit"),
    "PNG bytes in a jpg column": (
        lambda t: _corrupt(t, "jpg_0", 1, png_bytes()),
        r"row 1: jpg_0 holds PNG bytes, not JPEG: re-encode it as JPEG"),
    "label outside {0, 0.5, 1}": (
        lambda t: _corrupt(_corrupt(t, "label_0", 5, 0.3), "label_1", 5, 0.7),
        r"row 5: labels \(0.3, 0.7\) are not"),
    "labels not summing to one": (
        lambda t: _corrupt(t, "label_1", 1, 0.0), r"row 1: labels \(0, 0\) are not"),
    "null caption": (lambda t: _corrupt(t, "caption", 2, None), r"row 2: caption is empty"),
    "best_image_uid the loser": (
        lambda t: _corrupt(t, "best_image_uid", 0, _uid(t, 1, 0)),
        r"row 0: best_image_uid \(image_1's uid\) contradicts the labels \(1, 0\), which say "
        r"image_0 preferred"),
    "best_image_uid naming neither image": (
        lambda t: _corrupt(t, "best_image_uid", 3, "someone-else"),
        r"row 3: best_image_uid \('someone-else', naming neither image\) contradicts"),
    "a tie with a winner": (
        lambda t: _corrupt(t, "best_image_uid", 2, _uid(t, 0, 2)),
        r"row 2: best_image_uid \(image_0's uid\) contradicts the labels \(0.5, 0.5\), "
        r"which say a tie"),
    "a winner with a tie's best_image_uid": (
        lambda t: _corrupt(t, "best_image_uid", 1, "none"),
        r"row 1: best_image_uid \('none', a tie's\) contradicts the labels \(0, 1\)"),
    "one image uid on both sides": (
        lambda t: _corrupt(t, "image_1_uid", 2, _uid(t, 0, 2)),  # a tie: the same bytes
        r"row 2: image_0_uid and image_1_uid are both '00001002-0000-4000-8000-000000000000': "
        r"a pair compares two images; give one of them its own uid"),
    "has_label false with decisive labels": (
        lambda t: _corrupt(t, "has_label", 0, False),
        r"row 0: has_label is false but the labels \(1, 0\) say image_0 preferred: "
        r"fix has_label or the labels"),
    "an image uid that is the tie marker": (
        lambda t: _corrupt(_corrupt(t, "image_1_uid", 1, "none"), "best_image_uid", 1, "none"),
        r"row 1: image_1_uid is 'none', Pick-a-Pic's best_image_uid for a tie: give the "
        r"image a real uid"),
    "4096x4096 declared in 633 bytes": (
        lambda t: _corrupt(t, "jpg_1", 2, huge_header_jpeg(4096, 4096)),
        r"row 2: jpg_1 declares 4096x4096 pixels but holds \d+ bytes? of image data, under "
        r"the \d+ that many pixels take at the least: a truncated or damaged JPEG"),
    "4096x1 pixels": (
        lambda t: _corrupt(t, "jpg_0", 3, solid_jpeg((4096, 1))),
        r"row 3: jpg_0 is 4096x1 pixels, one side over 4 times the other \(the limit: 4:1\)"),
    "ranking_id repeated with other content": (
        lambda t: _corrupt(t, "ranking_id", 4, 1001),
        r"row 4: ranking_id 1001 repeats row 1 with a different caption: one ranking_id is "
        r"one vote"),
    "one image uid for two images": (
        lambda t: _corrupt(t, "image_0_uid", 1, _uid(t, 0, 0)),
        r"row 1: image_0_uid '00001000-0000-4000-8000-000000000000' is also an image of "
        r"row 0, with different bytes"),
}
INTERNALS = re.compile(r"\b0x[0-9a-f]{4,}|object at|<\w|Traceback", re.IGNORECASE)


def refusal(store: Store, shard) -> str:
    """Import one shard that must be refused; the refusal's one line."""
    [done] = import_shards(store, [shard], progress=False)
    assert getattr(done, "refused", None), f"accepted: {done}"
    assert done.added == 0
    return done.refused


@pytest.mark.parametrize("problem", BAD_SHARDS)
def test_bad_shard_is_refused_with_file_row_and_problem(store, tmp_path, problem):
    make_bad, message = BAD_SHARDS[problem]
    record(store, "already here", "left")
    before = snapshot(store)
    shard = write_shard(tmp_path / "bad.parquet", make_bad(public_shard_table()))
    refused = refusal(store, shard)
    assert re.search(message, refused), refused
    assert refused.startswith(f"{shard}") and "\n" not in refused
    assert not INTERNALS.search(refused), refused
    assert snapshot(store) == before


def test_real_flat_wide_and_progressive_jpegs_pass_the_image_checks(store, tmp_path):
    # the least data a real encoder writes: one grey at the size limit, at the aspect
    # limit, progressive, without chroma subsampling, greyscale
    images = [solid_jpeg((4096, 4096)), solid_jpeg((4096, 1024)), solid_jpeg((256, 1024)),
              solid_jpeg((4096, 4096), progressive=True), solid_jpeg((2048, 2048), subsampling=0),
              solid_jpeg((1, 1), quality=1)]
    gray = io.BytesIO()
    Image.new("L", (4096, 4096), 0).save(gray, "JPEG", quality=5)
    images.append(gray.getvalue())
    table = public_shard_table(rows=[("flat", 1.0, 0.0)] * len(images))
    table = table.set_column(table.schema.get_field_index("jpg_0"), "jpg_0",
                             pa.array(images, pa.binary()))
    [done] = import_shards(store, [write_shard(tmp_path / "flat.parquet", table)],
                           progress=False)
    assert (done.refused, done.added) == (None, len(images))


def test_bad_row_late_in_a_shard_rolls_back_the_whole_file(store, tmp_path):
    good = write_shard(tmp_path / "a" / "good.parquet", public_shard_table(start_id=1))
    bad_table = _corrupt(public_shard_table(start_id=100), "label_0", 5, 2.0)
    bad = write_shard(tmp_path / "b" / "bad.parquet", bad_table)
    import_shards(store, [good], progress=False)
    before = snapshot(store)
    with pytest.raises(ShardError, match="row 5"):
        import_shard(store, bad, source="public:x", batch_rows=2)  # rows 0-3 went in first
    assert snapshot(store) == before


def test_not_parquet_and_missing_paths_are_one_line_errors(store, tmp_path):
    junk = tmp_path / "junk.parquet"
    junk.write_bytes(b"definitely not parquet")
    assert "not a readable parquet file" in refusal(store, junk)
    with pytest.raises(DataError, match="no such file or folder"):
        import_shards(store, [tmp_path / "nowhere"], progress=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no .parquet, .jsonl or .json files"):
        import_shards(store, [tmp_path / "empty"], progress=False)


def test_the_image_size_limit_is_a_parameter(store, tmp_path):
    shard = write_shard(tmp_path / "s.parquet", public_shard_table(image_size=64))
    with Store(tmp_path / "other.duckdb") as other:
        [done] = import_shards(other, [shard], max_side=32, progress=False)
    assert "row 0: jpg_0 declares 64x64 pixels, over the 32 px per side limit" in done.refused
    [done] = import_shards(store, [shard], max_side=64, progress=False)
    assert done.added == len(PUBLIC_ROWS)


# -- ranking_ids: one id is one vote -----------------------------------------------------


def test_a_ranking_id_stored_before_with_other_content_is_refused(store, tmp_path):
    import_shards(store, [write_shard(tmp_path / "a.parquet", public_shard_table())],
                  progress=False)
    before = snapshot(store)
    # The same id with another caption: the later row would be dropped without a word.
    other = _corrupt(public_shard_table(), "caption", 0, "a different vote")
    refused = refusal(store, write_shard(tmp_path / "b.parquet", other))
    assert refused == (
        f"{tmp_path / 'b.parquet'}, row 0: ranking_id 1000 is already stored (from "
        "public:pickapic) with a different caption: one ranking_id is one vote; drop the "
        "row or give it a new id"
    )
    # The same ids on other images: before, the rows were dropped and their images kept.
    renumbered = public_shard_table(start_id=5000)
    renumbered = renumbered.set_column(
        renumbered.schema.get_field_index("ranking_id"), "ranking_id",
        pa.array(range(1000, 1000 + len(PUBLIC_ROWS)), pa.int64()))
    refused = refusal(store, write_shard(tmp_path / "c.parquet", renumbered))
    assert "row 0: ranking_id 1000 is already stored (from public:pickapic) with a " \
        "different image_0_uid" in refused
    assert snapshot(store) == before


def test_repeated_identical_rankings_add_nothing_and_say_so(store, tmp_path):
    table = public_shard_table()
    doubled = pa.concat_tables([table, table.slice(0, 2)])  # rows 6, 7 repeat rows 0, 1
    [first] = import_shards(store, [write_shard(tmp_path / "a.parquet", doubled)],
                            progress=False)
    assert (first.rows, first.added, first.repeated, first.already) == (8, 6, 2, 0)
    # the same rankings under another file name (as a subset of another split would hold)
    [again] = import_shards(store, [write_shard(tmp_path / "copy.parquet", table)],
                            progress=False)
    assert (again.added, again.already, again.refused) == (0, 6, None)
    assert store.counts() == {"images": 12, "rankings": 6, "users": 0}


def test_our_export_imported_into_its_own_store_adds_nothing(store, tmp_path):
    fill_with_votes(store)
    before = snapshot(store)
    export_pairs(store, tmp_path / "out")
    [done] = import_shards(store, [tmp_path / "out"], progress=False)
    assert (done.refused, done.added, done.already) == (None, 0, 5)
    assert snapshot(store) == before


# -- the command line ---------------------------------------------------------------------


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "data", *map(str, args)],
                          capture_output=True, text=True)


def test_cli_import_export_stats(tmp_path):
    db = tmp_path / "prefs.duckdb"
    shard = write_shard(tmp_path / "shards" / "train-0.parquet", public_shard_table())
    out = run_cli("import", tmp_path / "shards", "--db", db)
    assert out.returncode == 0, out.stderr
    assert f"{len(PUBLIC_ROWS)} new pairs" in out.stdout
    out = run_cli("import", shard, "--db", db)
    assert f"{shard}: imported before (this file, same size and time), skipped" in out.stdout
    copy = write_shard(tmp_path / "copy" / "train-0.parquet", public_shard_table())
    out = run_cli("import", copy, "--db", db)
    assert f"{copy}: 6 rows, 0 new pairs (6 already stored, identical)" in out.stdout

    out = run_cli("stats", "--db", db)
    assert out.returncode == 0, out.stderr
    assert "rankings: 6" in out.stdout and "tie rate: 33.3%" in out.stdout
    assert "public:pickapic" in out.stdout

    out = run_cli("export", tmp_path / "out", "--db", db, "--no-images")
    assert out.returncode == 0, out.stderr
    assert "train: 6 pairs in 1 file(s)" in out.stdout
    out = run_cli("export", tmp_path / "out", "--db", db)
    assert out.returncode == 1 and out.stderr.startswith("error: ") and "--overwrite" in out.stderr


def files_under(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_cli_export_overwrite_replaces_only_an_earlier_export(tmp_path):
    work = tmp_path / "work"
    db = work / "runs" / "prefs.duckdb"
    with Store(db) as store:
        fill_with_votes(store)
    (work / "runs" / "train" / "run-1").mkdir(parents=True)
    (work / "runs" / "train" / "run-1" / "weights.bin").write_bytes(b"trained")
    (work / "mine").mkdir()
    (work / "mine" / "notes.txt").write_text("mine")
    (work / "report.txt").write_text("not a folder")

    def export(out, *flags):
        return subprocess.run(
            [sys.executable, "-m", "data", "export", str(out), "--db", "runs/prefs.duckdb",
             *flags], capture_output=True, text=True, cwd=work)

    everything = files_under(tmp_path)
    refusals = {
        "runs": "--overwrite would delete runs, which holds the store being exported "
                "(runs/prefs.duckdb): export to another folder",
        ".": ". is or holds the folder this command runs in: export to another folder",
        "..": ".. is or holds the folder this command runs in: export to another folder",
        "mine": "--overwrite replaces only an earlier export, and mine has no .export.json "
                "(the mark every export carries): export to another folder, or empty this "
                "one yourself",
        "report.txt": "cannot write the export to report.txt: report.txt is a file, not a "
                      "folder: choose a folder you can write to",
    }
    for out, message in refusals.items():
        refused = export(out, "--overwrite")
        assert refused.returncode == 1, (out, refused.stdout)
        assert refused.stderr == f"error: {message}\n", out
        assert files_under(tmp_path) == everything, out
        with Store(db, read_only=True) as store:
            assert len(store.rankings()) == 7

    assert export("out").returncode == 0
    first = files_under(work / "out")
    assert ".export.json" in first and "train/train-00000-of-00001.parquet" in first
    with Store(db) as store:
        record(store, "one more", "left")
    again = export("out", "--overwrite")
    assert again.returncode == 0, again.stderr
    assert pq.read_table(work / "out" / "train").num_rows == 6
    (work / "out" / "train" / "mine.txt").write_text("mine")
    refused = export("out", "--overwrite")
    assert refused.stderr == (
        "error: --overwrite replaces only an earlier export, and out holds train/mine.txt, "
        "which no export wrote: move it away, or export to another folder\n")
    assert (work / "out" / "train" / "mine.txt").read_text() == "mine"


def test_cli_bad_shard_prints_one_line_and_exits_nonzero(tmp_path):
    bad = write_shard(tmp_path / "bad.parquet", public_shard_table().drop_columns(["jpg_0"]))
    out = run_cli("import", bad, "--db", tmp_path / "prefs.duckdb")
    assert out.returncode == 1
    assert out.stderr.count("\n") == 1 and "Traceback" not in out.stderr
    assert "missing column(s) jpg_0" in out.stderr


def test_cli_non_image_bytes_give_one_line_without_internals(tmp_path):
    table = _corrupt(public_shard_table(), "jpg_1", 3, b"hello, these bytes are not an image")
    bad = write_shard(tmp_path / "bad.parquet", table)
    out = run_cli("import", bad, "--db", tmp_path / "prefs.duckdb")
    assert out.returncode == 1
    assert out.stderr == (
        f"error: {bad}, row 3: jpg_1 is not a decodable image (an unknown format, or a "
        "damaged header); nothing of this file was imported\n"
    )
    assert not INTERNALS.search(out.stderr + out.stdout)


def test_cli_imports_the_good_shard_of_a_folder_and_reports_only_the_bad(tmp_path):
    db = tmp_path / "prefs.duckdb"
    good = write_shard(tmp_path / "shards" / "a.parquet", public_shard_table(start_id=1))
    bad_table = _corrupt(public_shard_table(start_id=100), "jpg_1", 2, huge_header_jpeg())
    bad = write_shard(tmp_path / "shards" / "b.parquet", bad_table)
    out = run_cli("import", tmp_path / "shards", "--db", db)
    assert out.returncode == 1
    assert out.stderr == (
        f"error: {bad}, row 2: jpg_1 declares 12000x12000 pixels, over the 4096 px per side "
        "limit (--max-image-side); nothing of this file was imported\n"
    )
    assert out.stdout.splitlines() == [
        f"{good}: 6 rows, 6 new pairs",
        f"imported 1 of 2 shard(s): 6 rows read, 6 new pairs in {db}; 1 refused (see above)",
    ]
    with Store(db, read_only=True) as store:
        ids = [r.ranking_id for r in store.rankings()]
    assert ids == list(range(1, 7))

    # the limit is the user's to raise, but this header lies: 10 bytes of image data
    # cannot hold 12000x12000 pixels (they decode to flat grey, without an error)
    out = run_cli("import", bad, "--db", db, "--max-image-side", "12000")
    assert out.returncode == 1
    assert f"{bad}, row 2: jpg_1 declares 12000x12000 pixels but holds 10 bytes of image " \
        "data, under the 70313 that many pixels take at the least: a truncated or damaged " \
        "JPEG; nothing of this file was imported" in out.stderr
