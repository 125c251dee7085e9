"""The training view: winners first, ties dropped, sources mixed by ratio, one loader."""

import pyarrow as pa
import pytest
import torch
from helpers import (
    BLUE,
    GREEN,
    PUBLIC_ROWS,
    RED,
    color_of,
    huge_header_jpeg,
    public_shard_table,
    record,
    write_shard,
)

from cli.errors import DataError, ShardError
from data.pairs import MixedPairs, ParquetPairs, StorePairs, image_labels, load_pairs
from data.pickapic import export_pairs, import_shards
from data.store import Store

DECISIVE = sum(1 for _, label_0, _ in PUBLIC_ROWS if label_0 != 0.5)


def close_to(color, target, tolerance=30):
    return all(abs(a - b) <= tolerance for a, b in zip(color, target, strict=True))


@pytest.fixture
def shard(tmp_path):
    return write_shard(tmp_path / "public" / "train-00000-of-00001.parquet", public_shard_table())


def test_imported_public_shard_yields_winners_first_and_drops_ties(tmp_path, shard):
    with Store(tmp_path / "prefs.duckdb") as store:
        import_shards(store, [shard], progress=False)
        pairs = StorePairs(store)
        assert len(pairs) == DECISIVE
        for pair in pairs:
            assert close_to(color_of(pair.preferred), RED)
            assert close_to(color_of(pair.rejected), BLUE)
            assert not pair.provenance.tie
            assert pair.provenance.source == "public:pickapic"
        captions = [p.caption for p in pairs]
        assert captions == [c for c, label_0, _ in PUBLIC_ROWS if label_0 != 0.5]


def test_parquet_shard_is_read_the_same_way(shard):
    pairs = ParquetPairs([shard])
    assert len(pairs) == DECISIVE
    assert all(close_to(color_of(p.preferred), RED) for p in pairs)
    assert all(close_to(color_of(p.rejected), BLUE) for p in pairs)
    with_ties = ParquetPairs([shard], include_ties=True)
    ties = [p for p in with_ties if p.provenance.tie]
    assert len(with_ties) == len(PUBLIC_ROWS) and len(ties) == 2
    assert all(close_to(color_of(p.preferred), GREEN) for p in ties)


def test_a_shard_read_for_training_refuses_an_image_that_declares_12000_px(tmp_path):
    table = public_shard_table()
    column = table.schema.get_field_index("jpg_1")
    jpgs = table.column("jpg_1").to_pylist()
    jpgs[1] = huge_header_jpeg()
    path = write_shard(tmp_path / "bad" / "train-00000-of-00001.parquet",
                       table.set_column(column, "jpg_1", pa.array(jpgs, pa.binary())))
    pairs = ParquetPairs([path])
    assert pairs[0].preferred.size == (32, 32)  # the good rows read as before
    with pytest.raises(ShardError, match=r"row 1: jpg_1 declares 12000x12000 pixels, over "
                                         r"the 4096 px per side limit") as refused:
        pairs[1]
    assert "\n" not in str(refused.value) and str(path) in str(refused.value)


def test_store_and_its_export_give_the_same_pairs(tmp_path):
    path = tmp_path / "prefs.duckdb"
    with Store(path) as store:
        for k, (outcome, shown_left) in enumerate(
            [("left", 0), ("left", 1), ("right", 0), ("right", 1), ("tie", 0), ("both_bad", 0),
             ("skip", 1)]
        ):
            # the preferred image is always drawn red, so pixels tell the truth
            winner = shown_left if outcome == "left" else 1 - shown_left
            colors = (RED, BLUE) if winner == 0 else (BLUE, RED)
            record(store, f"prompt {k}", outcome, shown_left=shown_left, colors=colors)
        export_pairs(store, tmp_path / "export")
    from_store = StorePairs(path)  # read-only, as a trainer process opens it
    from_export = ParquetPairs([tmp_path / "export"], source="human")
    assert len(from_store) == len(from_export) == 4
    for a, b in zip(from_store, from_export, strict=True):
        assert a.caption == b.caption
        assert a.provenance == b.provenance
        assert a.preferred.tobytes() == b.preferred.tobytes()
        assert close_to(color_of(a.preferred), RED)
        assert close_to(color_of(a.rejected), BLUE)


def test_split_filter(tmp_path):
    with Store(tmp_path / "prefs.duckdb") as store:
        record(store, "train one", "left")
        record(store, "held out", "left", split="validation")
        assert [p.caption for p in StorePairs(store)] == ["train one"]
        assert [p.caption for p in StorePairs(store, split="validation")] == ["held out"]
        assert len(StorePairs(store, split=None)) == 2


class Numbers(torch.utils.data.Dataset):
    def __init__(self, name, n):
        self.name, self.n = name, n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        if not 0 <= i < self.n:
            raise IndexError(i)
        return (self.name, i)


def test_mix_holds_the_ratio_in_every_stretch_and_is_deterministic():
    a, b = Numbers("a", 100), Numbers("b", 1000)
    mix = MixedPairs([a, b], ratios=[1, 3], seed=7)
    assert mix.source_counts() == [100, 300]  # limited by a: no source repeats
    items = [mix[i] for i in range(len(mix))]
    for start in range(0, 400, 40):
        stretch = items[start:start + 40]
        assert sum(1 for name, _ in stretch if name == "a") == 10
    assert len({i for name, i in items if name == "a"}) == 100
    again = MixedPairs([a, b], ratios=[1, 3], seed=7)
    assert [again[i] for i in range(len(again))] == items
    other = MixedPairs([a, b], ratios=[1, 3], seed=8)
    assert [other[i] for i in range(len(other))] != items


def test_mix_oversamples_a_small_source_when_asked():
    small, big = Numbers("small", 10), Numbers("big", 1000)
    mix = MixedPairs([small, big], ratios=[0.5, 0.5], num_samples=200, seed=0)
    counts = {}
    for name, i in (mix[k] for k in range(len(mix))):
        counts.setdefault(name, []).append(i)
    assert len(counts["small"]) == 100 and len(counts["big"]) == 100
    assert sorted(set(counts["small"])) == list(range(10))  # every small item, ~10 times
    assert len(set(counts["big"])) == 100  # the big source does not repeat


def test_mix_refuses_bad_ratios():
    with pytest.raises(DataError, match="2 sources but 1 ratios"):
        MixedPairs([Numbers("a", 1), Numbers("b", 1)], ratios=[1])
    with pytest.raises(DataError, match="has no pairs"):
        MixedPairs([Numbers("a", 0), Numbers("b", 1)], ratios=[1, 1])


def test_load_pairs_mixes_store_and_public_shards(tmp_path, shard):
    path = tmp_path / "prefs.duckdb"
    with Store(path) as store:
        for k in range(8):
            record(store, f"ours {k}", "left", colors=(RED, BLUE))
    pairs = load_pairs([path, shard.parent], ratios=[1, 1], num_samples=8, seed=3)
    assert len(pairs) == 8
    sources = [p.provenance.source for p in pairs]
    assert sources.count("human") == 4 and sources.count("public:pickapic") == 4
    assert all(close_to(color_of(p.preferred), RED) for p in pairs)
    again = load_pairs([path, shard.parent], ratios=[1, 1], num_samples=8, seed=3)
    assert [p.provenance for p in again] == [p.provenance for p in pairs]


def test_dataloader_workers_open_their_own_store_connection(tmp_path):
    path = tmp_path / "prefs.duckdb"
    with Store(path) as store:
        for k in range(6):
            record(store, f"p{k}", "right", shown_left=0, colors=(BLUE, RED))
    loader = torch.utils.data.DataLoader(
        StorePairs(path), batch_size=2, num_workers=2, collate_fn=list,
        multiprocessing_context="fork",
    )
    seen = [pair for batch in loader for pair in batch]
    assert sorted(p.caption for p in seen) == [f"p{k}" for k in range(6)]
    assert all(close_to(color_of(p.preferred), RED) for p in seen)


def test_both_bad_votes_join_as_pairs_with_both_images_disliked_only_when_asked(tmp_path):
    path = tmp_path / "prefs.duckdb"
    with Store(path) as store:
        for k, outcome in enumerate(["left", "right", "tie", "both_bad", "skip"]):
            record(store, f"prompt {k}", outcome)
    plain = StorePairs(path)
    assert [image_labels(plain.describe(i)[1]) for i in range(len(plain))] == [(1, -1)] * 2
    with_both_bad = StorePairs(path, include_both_bad=True)
    labels = [image_labels(with_both_bad.describe(i)[1]) for i in range(len(with_both_bad))]
    assert labels == [(1, -1), (1, -1), (-1, -1)]
    assert with_both_bad[2].caption == "prompt 3"
    with_ties = StorePairs(path, include_ties=True)
    tie = next(i for i in range(len(with_ties)) if with_ties.describe(i)[1].tie)
    with pytest.raises(DataError, match="a tie likes or dislikes neither image"):
        image_labels(with_ties.describe(tie)[1])


def test_votes_on_one_pair_count_each_or_as_the_majority_or_as_its_share(tmp_path):
    from data.store import Vote, new_uid

    path = tmp_path / "prefs.duckdb"
    with Store(path) as store:
        # pair 1 (red, blue): 3 annotators, two prefer red, one blue, one voted with the
        # images the other way round; pair 2: an even split; pair 3: one vote and one tie
        _, (red, blue) = record(store, "two to one", "left", user="a")
        store.record_vote(Vote(vote_id=new_uid(), caption="two to one", image_0_uid=blue.image_uid,
                               image_1_uid=red.image_uid, outcome="right", shown_left=0,
                               user_id=store.user_id("b")))
        store.record_vote(Vote(vote_id=new_uid(), caption="two to one", image_0_uid=red.image_uid,
                               image_1_uid=blue.image_uid, outcome="right", shown_left=0,
                               user_id=store.user_id("c")))
        _, (x, y) = record(store, "even", "left", user="a")
        store.record_vote(Vote(vote_id=new_uid(), caption="even", image_0_uid=x.image_uid,
                               image_1_uid=y.image_uid, outcome="right", shown_left=0,
                               user_id=store.user_id("b")))
        _, (u, v) = record(store, "with a tie", "right", user="a")
        store.record_vote(Vote(vote_id=new_uid(), caption="with a tie", image_0_uid=u.image_uid,
                               image_1_uid=v.image_uid, outcome="tie", shown_left=0,
                               user_id=store.user_id("b")))

    def summary(pairs):
        return [(pairs.describe(i)[0], pairs.describe(i)[1].votes, pairs.describe(i)[1].share,
                 pairs.describe(i)[1].tie) for i in range(len(pairs))]

    assert len(StorePairs(path)) == 6  # each decisive vote its own pair, ties left out
    assert summary(StorePairs(path, pair_votes="majority")) == [
        ("two to one", 3, 1.0, False), ("with a tie", 1, 1.0, False)]
    assert summary(StorePairs(path, pair_votes="share")) == [
        ("two to one", 3, pytest.approx(2 / 3), False), ("with a tie", 1, 1.0, False)]
    assert summary(StorePairs(path, pair_votes="share", include_ties=True)) == [
        ("two to one", 3, pytest.approx(2 / 3), False), ("even", 2, 0.5, True),
        ("with a tie", 2, 0.75, False)]  # the tie vote is half a vote for each image
    grouped = StorePairs(path, pair_votes="share")
    first = grouped[0]
    assert first.provenance.preferred_uid == red.image_uid  # the majority's side, first
    assert close_to(color_of(first.preferred), RED) and close_to(color_of(first.rejected), BLUE)
    third = grouped[1]  # "with a tie": the one decisive vote preferred image 1
    assert third.provenance.preferred_uid == v.image_uid
    with pytest.raises(DataError, match="both-bad votes have no side"):
        StorePairs(path, pair_votes="share", include_both_bad=True)
