"""Plain pair manifests (JSONL of prompt, chosen and rejected image paths) out of the store,
read back by the ecosystem's plain call."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from helpers import record

from data.pickapic import export_pairs
from data.store import Store


def test_a_jsonl_export_loads_with_datasets_and_names_each_stored_image(tmp_path):
    with Store(tmp_path / "prefs.duckdb") as store:
        stored = {}
        for prompt, outcome, left in [("a red circle", "left", 0), ("a blue square", "right", 1),
                                      ("a green triangle", "tie", 0),
                                      ("a cat", "both_bad", 0)]:
            ranking, images = record(store, prompt, outcome, shown_left=left, user="bo")
            stored[prompt] = (ranking, {image.image_uid: image.jpg for image in images})
        [split] = export_pairs(store, tmp_path / "out", manifest=True)
    assert (split.split, split.rows) == ("train", 3)  # both-bad is no pair
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [  # the mark: hidden
        ".export.json", "images", "train.jsonl"]
    assert len(list((tmp_path / "out" / "images").iterdir())) == 6  # each image once
    loaded = subprocess.run(  # a fresh process, datasets' plain call
        [sys.executable, "-c", "import datasets, json, sys; "
         "d = datasets.load_dataset('json', data_dir=sys.argv[1]); "
         "print(json.dumps({s: d[s].to_list() for s in d}))", str(tmp_path / "out")],
        capture_output=True, text=True, timeout=300)
    assert loaded.returncode == 0, loaded.stderr[-2000:]
    rows = json.loads(loaded.stdout.strip().splitlines()[-1])
    assert list(rows) == ["train"] and len(rows["train"]) == 3
    for row in rows["train"]:
        ranking, jpgs = stored[row["prompt"]]
        chosen = (tmp_path / "out" / row["chosen"]).read_bytes()
        rejected = (tmp_path / "out" / row["rejected"]).read_bytes()
        assert {chosen, rejected} == set(jpgs.values())  # the stored JPEGs, unchanged
        if ranking.label_0 == 0.5:
            assert row["label"] == 0.5
        else:
            assert row["label"] == 1.0 and chosen == jpgs[ranking.best_image_uid]
        assert row["split"] == "train" and row["ranking_id"] == ranking.ranking_id


def test_a_jsonl_export_without_images_is_refused_in_one_line(tmp_path):
    Store(tmp_path / "prefs.duckdb").close()
    out = subprocess.run([sys.executable, "-m", "data", "export", str(tmp_path / "out"),
                          "--db", str(tmp_path / "prefs.duckdb"), "--format", "jsonl",
                          "--no-images"], capture_output=True, text=True)
    assert out.returncode != 0 and out.stderr.count("\n") == 1
    assert "leave out --no-images" in out.stderr and not (tmp_path / "out").exists()


def manifest_rows(folder) -> dict[str, tuple]:
    """prompt -> (label, chosen bytes, rejected bytes) of a manifest export's train split."""
    rows = [json.loads(line) for line in (folder / "train.jsonl").read_text().splitlines()]
    return {r["prompt"]: (r["label"], (folder / r["chosen"]).read_bytes(),
                          (folder / r["rejected"]).read_bytes()) for r in rows}


def test_a_manifest_imports_exports_the_same_pairs_reimports_nothing_and_trains(
        tmp_path, tiny_sd_dir):
    from data.pickapic import import_shards
    from tests.helpers import config_for
    from train.trainer import Run

    with Store(tmp_path / "a.duckdb") as store:
        for i, outcome in enumerate(["left", "right", "tie", "left", "right", "left"]):
            record(store, f"prompt {i % 3}", outcome, shown_left=i % 2, user=f"p{i % 2}")
        export_pairs(store, tmp_path / "first", manifest=True)
    with Store(tmp_path / "b.duckdb") as store:
        [done] = import_shards(store, [tmp_path / "first"], source="public:manifest",
                               progress=False)
        assert (done.rows, done.added, done.refused) == (6, 6, None)
        export_pairs(store, tmp_path / "second", manifest=True)
        again = tmp_path / "again" / "train.jsonl"  # the same manifest elsewhere
        again.parent.mkdir()
        again.write_bytes((tmp_path / "second" / "train.jsonl").read_bytes())
        (tmp_path / "again" / "images").symlink_to(tmp_path / "second" / "images")
        [twice] = import_shards(store, [again], source="public:manifest", progress=False)
        assert (twice.rows, twice.added, twice.already) == (6, 0, 6)
        [skipped] = import_shards(store, [again], source="public:manifest", progress=False)
        assert skipped.skipped
    assert sorted(manifest_rows(tmp_path / "first").values()) == sorted(
        manifest_rows(tmp_path / "second").values())
    summary = Run(config_for(tiny_sd_dir, tmp_path / "b.duckdb", tmp_path / "run",
                             max_steps=1)).train()
    assert summary["trained_steps"] == 1 and summary["pairs"] == 5  # the tie left out


def write_manifest(folder, *lines: str):
    from tests.helpers import jpeg_bytes

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "red.jpg").write_bytes(jpeg_bytes((200, 0, 0)))
    (folder / "blue.jpg").write_bytes(jpeg_bytes((0, 0, 200)))
    path = folder / "pairs.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


GOOD = '{"prompt": "a red circle", "chosen": "red.jpg", "rejected": "blue.jpg"}'


@pytest.mark.parametrize("line, says", [
    ("{not json", "not a JSON object"),
    ('["a", "b"]', "not a JSON object"),
    ('{"chosen": "red.jpg", "rejected": "blue.jpg"}', "`prompt` must be non-empty text"),
    ('{"prompt": "x", "chosen": "missing.jpg", "rejected": "blue.jpg"}',
     "`chosen` missing.jpg: No such file or directory"),
    ('{"prompt": "x", "chosen": "red.jpg", "rejected": "notes.txt"}',
     "`rejected` notes.txt is not a decodable image"),
    ('{"prompt": "x", "chosen": "red.jpg", "rejected": "blue.jpg", "label": 0.3}',
     "`label` 0.3: give 1 (chosen preferred) or 0.5 (a tie)"),
    ('{"prompt": "x", "chosen": "red.jpg", "rejected": "blue.jpg", "split": "test"}',
     "split 'test' after 'train': one split per file"),
    ('{"prompt": "x", "chosen": "red.jpg", "rejected": "red.jpg"}',
     "`chosen` and `rejected` are the same image"),
])
def test_a_bad_row_is_refused_with_its_file_and_line_and_nothing_is_stored(tmp_path, line,
                                                                           says):
    from data.pickapic import import_shards

    first = GOOD[:-1] + ', "split": "train"}'
    path = write_manifest(tmp_path / "m", first, line)
    (tmp_path / "m" / "notes.txt").write_text("not an image")
    with Store(tmp_path / "prefs.duckdb") as store:
        [done] = import_shards(store, [path], progress=False)
        counts = [store.cursor().execute(f"SELECT count(*) FROM {t}").fetchone()[0]
                  for t in ("rankings", "images")]
    assert done.refused.startswith(f"{path}:2: ") and says in done.refused, done.refused
    assert counts == [0, 0]


def test_a_png_is_stored_as_jpeg_and_the_cli_says_what_it_imported(tmp_path):
    from PIL import Image

    path = write_manifest(tmp_path / "m", GOOD.replace("blue.jpg", "blue.png"))
    Image.new("RGB", (32, 32), (0, 0, 200)).save(tmp_path / "m" / "blue.png")
    out = subprocess.run([sys.executable, "-m", "data", "import", str(path), "--db",
                          str(tmp_path / "prefs.duckdb")], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert f"{path}: 1 rows, 1 new pairs" in out.stdout
    with Store(tmp_path / "prefs.duckdb") as store:
        jpgs = [j for (j,) in store.cursor().execute("SELECT jpg FROM images").fetchall()]
    assert len(jpgs) == 2 and all(j[:2] == b"\xff\xd8" for j in jpgs)  # JPEG, both
