"""`python -m annotate relabel`: a scorer's margin on pairs that exist, as SmPO's soft label,
written as a manifest the trainer and `datasets` read."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image
from test_manifest import GOOD, hpdv3_folder, write_manifest

from annotate.config import SMPO_TEMPERATURE
from annotate.relabel import smoothed

# a user's scorer (docs/SCORERS.md): an image's mean brightness; with RELABEL_DIE_AT=k the
# process dies on its k-th call, as a killed run would
BRIGHTNESS = """
import os
import numpy as np
import torch

calls = 0


def score(prompts, images):
    global calls
    calls += 1
    if calls == int(os.environ.get("RELABEL_DIE_AT", 0)):
        os._exit(9)
    return torch.tensor([np.asarray(image, dtype=np.float64).mean() / 255 for image in images])
"""


def brightness(path) -> float:
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.float64).mean() / 255


def relabel(tmp_path, *args, die_at: int = 0):
    (tmp_path / "scorers").mkdir(exist_ok=True)
    (tmp_path / "scorers" / "brightness.py").write_text(BRIGHTNESS)
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "scorers"),
           "RELABEL_DIE_AT": str(die_at)}
    return subprocess.run([sys.executable, "-m", "annotate", "relabel", *map(str, args),
                           "--scorer", "brightness:score", "--no-progress"],
                          capture_output=True, text=True, env=env, timeout=300)


def test_smpo_s_label_is_its_softmax_of_normalised_pickscores():
    """SmPO's train.py: PickScore cosines normalised by (s - 0.1154) / (0.2820 - 0.1154),
    then exp(n_w) / (exp(n_w) + exp(n_l)); our pickscore is 100x the cosine."""
    low, high = 0.11543526500463486, 0.28201571106910706
    for cos_w, cos_l in [(0.25, 0.20), (0.21, 0.23), (0.28, 0.12), (0.2, 0.2)]:
        n_w, n_l = ((c - low) / (high - low) for c in (cos_w, cos_l))
        theirs = math.exp(n_w) / (math.exp(n_w) + math.exp(n_l))
        assert smoothed(100 * cos_w, 100 * cos_l, SMPO_TEMPERATURE) == pytest.approx(
            theirs, abs=1e-4)


def test_relabel_orders_each_pair_by_the_scorer_with_its_smoothed_label_and_trains_on_it(
        tmp_path):
    from data.pairs import load_pairs

    splits = hpdv3_folder(tmp_path / "HPDv3")
    out = tmp_path / "soft" / "train.jsonl"
    done = relabel(tmp_path, tmp_path / "HPDv3" / "train.json", out, "--temperature", 0.05)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert (summary["pairs"], summary["scored_now"], summary["resumed_after"]) == (3, 3, 0)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 3 and sorted(p.name for p in out.parent.iterdir()) == [
        "train.jsonl", "train.relabel.yaml"]  # no partial file left
    for row, item in zip(rows, splits["train"], strict=True):
        chosen, rejected = (out.parent / row[key] for key in ("chosen", "rejected"))
        first, second = (tmp_path / "HPDv3" / item[key] for key in ("path1", "path2"))
        assert {chosen.resolve(), rejected.resolve()} == {first.resolve(), second.resolve()}
        s_chosen, s_rejected = brightness(chosen), brightness(rejected)
        assert s_chosen >= s_rejected  # the scorer's preferred image is chosen
        assert row["turned"] == (chosen.resolve() == second.resolve())
        assert row["scores"] == pytest.approx([s_chosen, s_rejected])
        assert row["label"] == pytest.approx(1 / (1 + math.exp(-(s_chosen - s_rejected) / 0.05)),
                                             abs=1e-6)
        assert row["split"] == "train" and row["annotator"] == "ai:brightness:score"
        assert row["model_chosen"] == ("infinity" if row["turned"] else "flux")
    assert summary["turned_now"] == sum(row["turned"] for row in rows) > 0

    shared = load_pairs([out], pair_votes="share")  # the trainer reads it in place
    assert [shared.describe(i)[1].share for i in range(3)] == pytest.approx(
        [row["label"] for row in rows], abs=1e-6)
    pair = shared[0]
    assert pair.preferred.tobytes() == Image.open(out.parent / rows[0]["chosen"]).convert(
        "RGB").tobytes()
    import datasets

    loaded = datasets.load_dataset("json", data_files=str(out), cache_dir=str(tmp_path / "c"))
    assert loaded["train"].to_list()[1]["label"] == rows[1]["label"]

    again = relabel(tmp_path, tmp_path / "HPDv3" / "train.json", out, "--temperature", 0.05)
    assert again.returncode == 1 and again.stderr.count("\n") == 1
    assert "exists: give another OUT or remove it" in again.stderr


def test_a_killed_relabel_resumes_after_its_last_whole_line_and_writes_what_one_run_does(
        tmp_path):
    from annotate.relabel import PAIRS_PER_WRITE
    from models.scorers import SCORE_BATCH

    rows = [json.loads(GOOD), {**json.loads(GOOD), "chosen": "blue.jpg", "rejected": "red.jpg"}]
    count = 2 * PAIRS_PER_WRITE + 10  # three writes
    manifest = write_manifest(tmp_path / "m", *(
        json.dumps({**rows[k % 2], "prompt": f"prompt {k}"}) for k in range(count)))
    whole = tmp_path / "whole" / "soft.jsonl"
    assert relabel(tmp_path, manifest, whole, "--temperature", 0.1).returncode == 0

    out = tmp_path / "resumed" / "soft.jsonl"
    killed = relabel(tmp_path, manifest, out, "--temperature", 0.1,
                     die_at=2 * PAIRS_PER_WRITE // SCORE_BATCH + 1)  # in the second write
    assert killed.returncode != 0 and not out.exists()
    [partial] = out.parent.glob("soft.jsonl.*.partial")
    assert len(partial.read_text().splitlines()) == PAIRS_PER_WRITE  # the first write
    with partial.open("a") as file:
        file.write('{"prompt": "torn')  # a write the kill cut
    done = relabel(tmp_path, manifest, out, "--temperature", 0.1)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert (summary["resumed_after"], summary["scored_now"]) == (PAIRS_PER_WRITE,
                                                                 count - PAIRS_PER_WRITE)
    assert out.read_text() == whole.read_text()  # both name ../m/ images
    assert not list(out.parent.glob("*.partial"))


def test_a_bad_row_a_missing_image_or_no_temperature_is_one_line_and_no_out(tmp_path):
    manifest = write_manifest(tmp_path / "m", GOOD, GOOD, '{"prompt": "x", "chosen": 3}')
    out = tmp_path / "soft" / "train.jsonl"
    bad = relabel(tmp_path, manifest, out, "--temperature", 0.1)
    assert bad.returncode == 1 and bad.stderr.count("\n") == 1, bad.stderr
    assert f"{manifest}:3: `chosen` must be an image path" in bad.stderr
    assert not out.parent.exists() or not list(out.parent.iterdir())
    missing = write_manifest(tmp_path / "n", GOOD, GOOD.replace('"red.jpg"', '"gone.jpg"'))
    gone = relabel(tmp_path, missing, out, "--temperature", 0.1)  # found while scoring
    assert gone.returncode == 1 and gone.stderr.count("\n") == 1, gone.stderr
    assert f"{missing}:2: `chosen` gone.jpg: No such file or directory" in gone.stderr
    assert not out.exists()
    unsure = relabel(tmp_path, manifest, out)
    assert unsure.returncode == 1 and "give --temperature for scorer brightness:score" in \
        unsure.stderr and unsure.stderr.count("\n") == 1


def test_a_full_disk_is_one_line_and_the_same_command_resumes_once_there_is_room(tmp_path):
    from annotate.relabel import PAIRS_PER_WRITE
    from tests.helpers import small_disk

    count = 3 * PAIRS_PER_WRITE
    rows = [json.loads(GOOD), {**json.loads(GOOD), "chosen": "blue.jpg", "rejected": "red.jpg"}]
    manifest = write_manifest(tmp_path / "m", *(json.dumps(
        {**rows[k % 2], "prompt": f"prompt {k} " + "x" * 400}) for k in range(count)))
    with small_disk(tmp_path / "disk", "64k") as disk:  # room for about 100 rows
        out = disk / "soft.jsonl"
        full = relabel(tmp_path, manifest, out, "--temperature", 0.1)
        assert full.returncode == 1 and full.stderr.count("\n") == 1, full.stderr
        assert "no space left on the disk holding" in full.stderr
        assert "the same command goes on after them" in full.stderr and not out.exists()
        [partial] = disk.glob("soft.jsonl.*.partial")
        kept = partial.read_bytes()
        moved = tmp_path / "moved"
        moved.mkdir()
        (moved / partial.name).write_bytes(kept)  # the user makes room: the files move
        (moved / "soft.relabel.yaml").write_bytes((disk / "soft.relabel.yaml").read_bytes())
    done = relabel(tmp_path, manifest, moved / "soft.jsonl", "--temperature", 0.1)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert 0 < summary["resumed_after"] < count and summary["scored_now"] == (
        count - summary["resumed_after"])
    assert len((moved / "soft.jsonl").read_text().splitlines()) == count
