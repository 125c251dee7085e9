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
                             pair_votes="each", max_steps=1)).train()  # a vote a pair
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


def hpdv3_folder(root, pairs: int = 3):
    """A small dataset in HPDv3's documented layout (MizzenAI/HPSv3 README): images/ and
    train.json / test.json arrays whose path1 is always the preferred image."""
    from tests.helpers import jpeg_bytes

    (root / "images").mkdir(parents=True)
    splits = {}
    for split, start in (("train", 0), ("test", 100)):
        items = []
        for k in range(start, start + pairs):
            for side in (1, 2):
                (root / "images" / f"{k}-{side}.jpg").write_bytes(
                    jpeg_bytes((k * 20 % 256, 40 * side, 90)))
            items.append({"prompt": f"prompt {k}", "choice_dist": [12, 7], "confidence": 0.99,
                          "path1": f"images/{k}-1.jpg", "path2": f"images/{k}-2.jpg",
                          "model1": "flux", "model2": "infinity"})
        (root / f"{split}.json").write_text(json.dumps(items, indent=4))
        splits[split] = items
    return splits


def test_hpdv3_imports_with_its_splits_preferred_first_in_chunks_and_once(tmp_path,
                                                                         monkeypatch):
    import data.manifest
    from data.pickapic import import_shards

    monkeypatch.setattr(data.manifest, "CHUNK_CHARS", 7)  # objects across chunk ends
    hpdv3_folder(tmp_path / "HPDv3")
    with Store(tmp_path / "prefs.duckdb") as store:
        done = import_shards(store, [tmp_path / "HPDv3"], source="public:hpdv3",
                             progress=False)
        assert [(d.path.name, d.rows, d.added, d.refused) for d in done] == [
            ("test.json", 3, 3, None), ("train.json", 3, 3, None)]
        rows = store.cursor().execute(
            "SELECT r.caption, r.split, r.label_0, i.jpg, i.model FROM rankings r "
            "JOIN images i ON i.image_uid = r.best_image_uid ORDER BY 1").fetchall()
        again = import_shards(store, [tmp_path / "HPDv3"], source="public:hpdv3",
                              progress=False)
    assert [(caption, split) for caption, split, *_ in rows] == [
        (f"prompt {k}", "test" if k >= 100 else "train") for k in (0, 1, 100, 101, 102, 2)]
    for caption, _, label, jpg, model in rows:  # the winner is path1's image
        k = int(caption.split()[1])
        assert label == 1.0 and model == "flux"
        assert jpg == (tmp_path / "HPDv3" / "images" / f"{k}-1.jpg").read_bytes()
    assert all(d.skipped for d in again)


def test_a_bad_hpdv3_pair_or_a_cut_file_is_refused_by_pair_and_nothing_is_stored(tmp_path):
    from data.pickapic import import_shards

    items = hpdv3_folder(tmp_path / "HPDv3")["train"]
    bad = tmp_path / "HPDv3" / "train.json"
    bad.write_text(json.dumps([items[0], {"prompt": "x", "path1": "images/0-1.jpg"}]))
    cut = tmp_path / "HPDv3" / "test.json"
    cut.write_text(cut.read_text()[:-3])
    with Store(tmp_path / "prefs.duckdb") as store:
        done = {d.path.name: d.refused for d in import_shards(store, [bad, cut],
                                                               progress=False)}
        [(pairs,)] = store.cursor().execute("SELECT count(*) FROM rankings").fetchall()
    assert done["train.json"] == (f"{bad}, pair 2: not an HPDv3 pair (an object with "
                                  "prompt, path1 and path2)")
    assert done["test.json"].startswith(f"{cut}, pair 3: not valid JSON")
    assert pairs == 0


def test_the_trainer_reads_a_manifest_and_hpdv3_in_place_as_it_reads_the_store(
        tmp_path, tiny_sd_dir):
    from cli.errors import ShardError
    from data.pairs import StorePairs, load_pairs
    from tests.helpers import config_for
    from train.trainer import Run

    with Store(tmp_path / "a.duckdb") as store:
        for i, outcome in enumerate(["left", "right", "tie", "left", "right"]):
            record(store, f"prompt {i}", outcome, shown_left=i % 2)
        export_pairs(store, tmp_path / "manifest", manifest=True)
    stored, read = StorePairs(tmp_path / "a.duckdb"), load_pairs([tmp_path / "manifest"])
    assert len(read) == len(stored) == 4  # the tie left out, as from the store
    by_caption = {stored[i].caption: stored[i] for i in range(len(stored))}
    for i in range(len(read)):
        pair = read[i]
        want = by_caption[pair.caption]
        assert pair.preferred.tobytes() == want.preferred.tobytes()
        assert pair.rejected.tobytes() == want.rejected.tobytes()
    with_ties = load_pairs([tmp_path / "manifest"], include_ties=True)
    assert sorted(with_ties.describe(i)[1].share for i in range(len(with_ties))) == [
        0.5, 1, 1, 1, 1]
    summary = Run(config_for(tiny_sd_dir, tmp_path / "manifest", tmp_path / "run",
                             max_steps=1)).train()
    assert summary["trained_steps"] == 1 and summary["pairs"] == 4

    hpdv3_folder(tmp_path / "HPDv3")
    train, test = (load_pairs([tmp_path / "HPDv3"], split=split) for split in ("train", "test"))
    assert [train.describe(i)[0] for i in range(len(train))] == ["prompt 0", "prompt 1",
                                                                 "prompt 2"]
    assert len(test) == 3
    first = train[0]  # path1 is the preferred image
    assert first.provenance.preferred_uid.endswith("images/0-1.jpg")
    assert {train.describe(i)[1].share for i in range(3)} == {1.0}  # each row one vote
    shared = load_pairs([tmp_path / "HPDv3"], pair_votes="share")
    assert {shared.describe(i)[1].share for i in range(3)} == {12 / 19}  # choice_dist [12, 7]
    soft = write_manifest(tmp_path / "soft", GOOD.replace("}", ', "label": 0.75}'))
    assert load_pairs([soft], pair_votes="share").describe(0)[1].share == 0.75
    assert load_pairs([soft]).describe(0)[1].share == 1.0
    (tmp_path / "HPDv3" / "images" / "1-2.jpg").write_bytes(b"not an image")
    with pytest.raises(ShardError, match=r"train.json, pair 2: `rejected` .*1-2.jpg"):
        train[1]
    write_manifest(tmp_path / "bad", GOOD, '{"prompt": "", "chosen": "red.jpg"}')
    with pytest.raises(ShardError, match=r"pairs.jsonl:2: `prompt` must be non-empty"):
        load_pairs([tmp_path / "bad"])
