"""Plain pair manifests (JSONL of prompt, chosen and rejected image paths) out of the store,
read back by the ecosystem's plain call."""

from __future__ import annotations

import json
import subprocess
import sys

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
