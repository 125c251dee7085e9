"""Crowdsourcing that can be trusted: agreement, annotator quality and flags, overlap
pairs, the paper's three questions, consensus exports and what the trainer reads."""

from __future__ import annotations

import random
from datetime import datetime, timedelta

import datasets
import pytest
from PIL import Image

from annotate.showings import Collector, Settings
from annotate.worker import SET_SOURCE, PairWorker, PromptSet
from cli.errors import PageError
from data.pairs import StorePairs
from data.pickapic import PICKAPIC_SCHEMA, export_pairs
from data.quality import (
    FlagRule,
    HumanVote,
    binomial_p,
    crowd_quality,
    krippendorff_alpha,
    store_quality,
)
from data.stats import format_stats, store_stats
from data.store import QUESTIONS, Store, Vote, new_uid
from models.generate import GeneratedImage
from tests.helpers import image_pair

PROMPTS = ["a red circle", "a blue square", "a green triangle"]


def test_krippendorff_alpha_matches_the_published_worked_example():
    # Krippendorff (2011), "Computing Krippendorff's Alpha-Reliability", example C: four
    # observers, twelve units, nominal values with some missing; alpha = 0.743
    rows = ["1 2 3 3 2 1 4 1 2 . . .", "1 2 3 3 2 2 4 1 2 5 . 3",
            ". 3 3 3 2 3 4 2 2 5 1 .", "1 2 3 3 2 4 4 1 2 5 1 ."]
    coded = [row.split() for row in rows]
    units = {u: [r[u] for r in coded if r[u] != "."] for u in range(12)}
    assert krippendorff_alpha(units) == pytest.approx(0.743, abs=5e-4)
    assert krippendorff_alpha({1: ["a", "a"], 2: ["b", "b"]}) == pytest.approx(1.0)
    assert krippendorff_alpha({1: ["a", "a"]}) is None  # one value throughout: undefined
    assert krippendorff_alpha({1: ["a"], 2: ["b"]}) is None  # nothing pairable


def test_binomial_p_is_two_sided():
    assert binomial_p(5, 10) == pytest.approx(1.0)
    assert binomial_p(20, 20) == pytest.approx(2 * 0.5**20)
    assert binomial_p(0, 20) == binomial_p(20, 20)
    assert binomial_p(15, 20) == pytest.approx(0.04139, abs=1e-5)


def store_votes(store: Store, votes: dict[str, dict[str, str]], gold: dict | None = None):
    """Store `votes[pair][annotator] = value` ('0', '1', 'tie'), each pair's images once;
    `gold[annotator] = (right, wrong)` gold answers. Returns the pairs' images."""
    pairs = {}
    for pair, by in votes.items():
        images = image_pair(pair, ((200, 0, 0), (0, 0, 200)))
        pairs[pair] = images
        for user, value in by.items():
            outcome = {"0": "left", "1": "right", "tie": "tie"}[value]
            store.record_vote(Vote(
                vote_id=new_uid(), caption=pair, image_0_uid=images[0].image_uid,
                image_1_uid=images[1].image_uid, outcome=outcome, shown_left=0,
                user_id=store.user_id(user), dwell_ms=2000, votes_wanted=3), images)
    for user, (right, wrong) in (gold or {}).items():
        for k in range(right + wrong):
            images = image_pair("gold", ((0, 200, 0), (0, 0, 0)), models=("gold", "gold"))
            store.record_vote(Vote(
                vote_id=new_uid(), caption="gold", image_0_uid=images[0].image_uid,
                image_1_uid=images[1].image_uid, outcome="left" if k < right else "right",
                shown_left=0, user_id=store.user_id(user), is_gold=True, split="gold",
                gold_best_uid=images[0].image_uid, dwell_ms=2000), images)
    return pairs


HAND = {  # pair -> annotator -> value; the figures below are worked by hand in the test
    "p1": {"ann": "0", "bea": "0", "cy": "0"},
    "p2": {"ann": "0", "bea": "1", "cy": "0"},
    "p3": {"ann": "1", "bea": "1", "cy": "tie"},
    "p4": {"ann": "0", "bea": "0"},
}


def test_agreement_and_gold_figures_are_the_hand_computed_ones(tmp_path):
    # coincidences: o00 = 3 (p1) + 1 (p2) + 2 (p4) = 6, o01 = o10 = 1 (p2),
    # o11 = 1, o1t = ot1 = 1 (p3); n0 = 7, n1 = 3, nt = 1, n = 11;
    # alpha = 1 - (n - 1) * 4 / (n^2 - 49 - 9 - 1) = 1 - 40/62
    # pairwise: p1 3/3, p2 1/3, p3 1/3, p4 1/1 -> 6/10
    # ann agrees with 2+1+1+1 of 7 others' votes, bea 2+0+1+1 of 7, cy 2+1+0 of 6
    with Store(tmp_path / "prefs.duckdb") as store:
        store_votes(store, HAND, gold={"ann": (2, 0), "bea": (1, 1)})
        crowd = store_quality(store)
        text = format_stats(store_stats(store))
    assert crowd.alpha == pytest.approx(1 - 40 / 62)
    assert crowd.agreement == pytest.approx(0.6) and crowd.overlap_pairs == 4
    by = {a.name: a for a in crowd.annotators}
    assert by["ann"].agreement == pytest.approx(5 / 7) and by["ann"].compared == 7
    assert by["bea"].agreement == pytest.approx(4 / 7)
    assert by["cy"].agreement == pytest.approx(3 / 6)
    assert (by["ann"].gold_right, by["ann"].gold_answered) == (2, 2)
    assert (by["bea"].gold_right, by["bea"].gold_answered) == (1, 2)
    assert by["cy"].gold_answered == 0 and by["ann"].votes == 6
    assert "Krippendorff's alpha 0.355" in text and "pairwise agreement 60.0%" in text
    assert "pairs with 2+ annotators: 4" in text and "flagged: none" in text


def vote_of(user: str, pair: int, value: str, at: datetime, dwell: int = 2000,
            shown_left: int = 0, gold_right: bool | None = None) -> HumanVote:
    outcome = "tie" if value == "tie" else ("left" if (value == "0") == (shown_left == 0)
                                            else "right")
    # an id fixed by the name: hash() differs per process, and two names could share one
    user_id = int.from_bytes(user.encode(), "big")
    return HumanVote(user_id, user, (f"a{pair}", f"b{pair}"), value, outcome,
                     shown_left, dwell, at, gold_right)


def test_the_rule_flags_each_kind_of_bad_annotator_and_says_why():
    start = datetime(2026, 12, 1)
    rng = random.Random(0)
    votes = []
    for pair in range(40):
        truth = rng.choice("01")
        for k, user in enumerate(["h1", "h2", "h3", "h4"]):
            votes.append(vote_of(user, pair, truth, start + timedelta(seconds=10 * pair + k),
                                 shown_left=rng.randrange(2)))
        votes.append(vote_of("coin", pair, rng.choice("01"), start, shown_left=rng.randrange(2)))
        votes.append(vote_of("fast", pair, truth, start, dwell=300, shown_left=rng.randrange(2)))
        left = rng.randrange(2)  # always "left", whichever image that is
        votes.append(vote_of("lefty", pair, "0" if left == 0 else "1", start, shown_left=left))
    for k in range(6):
        votes.append(vote_of("h1", 100 + k, "0", start, gold_right=True))
        votes.append(vote_of("gold-miss", 100 + k, "1", start, gold_right=k == 0))
    for k in range(10):
        votes.append(vote_of("gold-miss", 200 + k, "0", start))
    crowd = crowd_quality(votes)
    flags = {a.name: a.flags for a in crowd.annotators if a.flags}
    assert set(flags) == {"coin", "fast", "lefty", "gold-miss"}
    assert any("agrees with others" in f for f in flags["coin"])
    assert flags["fast"] == ("median look 0.3 s",)
    assert any("left image in 100% of 40" in f for f in flags["lefty"])
    assert flags["gold-miss"] == ("gold accuracy 17% (1/6)",)
    h2 = next(a for a in crowd.annotators if a.name == "h2")
    assert h2.votes_per_minute == pytest.approx(6.0)  # a vote every 10 s
    # too few votes: never flagged, whatever they are
    assert crowd_quality(votes[:3] + [vote_of("new", 0, "1", start, dwell=1)]).flagged == []
    assert "median look under 1 s" in FlagRule().text()


# -- collection: overlap and questions --------------------------------------------------


def fake_pair(prompt, on_step):
    return tuple(
        GeneratedImage(image=Image.new("RGB", (8, 8), (40 * k, 0, 0)), prompt=prompt,
                       model="fake", seed=random.randrange(10**6), guidance_scale=7.5,
                       steps=1, scheduler="DDIM", width=8, height=8, gen_ms=1.0)
        for k in (1, 2)
    )


@pytest.fixture
def campaign(tmp_path):
    def make(**settings):
        store = Store(tmp_path / f"prefs-{len(made)}.duckdb")
        worker = PairWorker(fake_pair, PromptSet(PROMPTS), buffer_size=0).start()
        made.append((store, worker))
        return Collector(store, worker, Settings(min_display_ms=0, **settings),
                         rng=random.Random(1))

    made = []
    yield make
    for store, worker in made:
        worker.stop()
        store.close()


def test_overlap_pairs_reach_k_annotators_never_one_twice(campaign):
    collector = campaign(overlap=3, overlap_share=1.0)
    people = [collector.annotator(n) for n in ("ann", "bea", "cy", "dan")]
    ann = people[0]
    first = collector.start(ann, "", "auto")
    collector.vote(ann, first.showing_id, "left")
    second = collector.next_showing(ann, first, "left", "auto")
    assert second.pair != first.pair  # ann is never shown her pair again
    collector.vote(ann, second.showing_id, "right")
    # the next annotator gets the stored pair nearest to complete, oldest first
    bea = people[1]
    shown = collector.start(bea, "", "auto")
    assert shown.pair == first.pair and shown.votes_wanted == 3
    # while bea holds it, cy still gets it (it wants two more), then dan gets the other
    cy_showing = collector.start(people[2], "", "auto")
    assert cy_showing.pair == first.pair
    dan_showing = collector.start(people[3], "", "auto")
    assert dan_showing.pair == second.pair
    for person, showing in ((bea, shown), (people[2], cy_showing)):
        collector.vote(person, showing.showing_id, "tie")
    assert collector.store.overlap_progress() == (1, 2)
    # the complete pair is not offered again; a typed prompt never gets overlap pairs
    assert collector.start(people[3], "", "auto").pair not in (first.pair, second.pair)
    typed = collector.start(bea, "a red circle", "new")
    assert typed.pair not in (first.pair, second.pair) and typed.votes_wanted == 1
    rows = collector.store.rankings("image_0_uid = ?", [first.images[0].image_uid])
    assert sorted(r.user_id for r in rows) == sorted(p.user_id for p in people[:3])


def test_three_questions_are_stored_per_question_and_read_by_question(campaign, tmp_path):
    collector = campaign(questions=tuple(QUESTIONS))
    ann = collector.annotator("ann")
    shown = collector.start(ann, "", "auto")
    with pytest.raises(PageError, match="Answer every question first"):
        collector.vote(ann, shown.showing_id, "left", answers={"appeal": "left"})
    ranking, _ = collector.vote(ann, shown.showing_id, "left",
                                answers={"appeal": "right", "alignment": "tie"})
    rows = {r.question: r for r in collector.store.rankings()}
    assert set(rows) == set(QUESTIONS) and ranking.question == "preference"
    winner = shown.images[shown.shown_left].image_uid
    assert rows["preference"].best_image_uid == winner
    assert rows["appeal"].best_image_uid != winner and rows["alignment"].label_0 == 0.5
    # both bad needs no other answers; the tally counts a vote once
    nxt = collector.next_showing(ann, shown, "left", "auto")
    collector.vote(ann, nxt.showing_id, "both_bad")
    assert collector.tally(ann).total == 2
    # the trainer's loader and the export choose a question
    store = collector.store
    assert len(StorePairs(store)) == 1 and len(StorePairs(store, question="appeal")) == 1
    assert StorePairs(store, question="appeal")[0].preferred.size == (8, 8)
    assert len(StorePairs(store, question="alignment")) == 0  # a tie
    export_pairs(store, tmp_path / "appeal", question="appeal")
    table = datasets.load_dataset("parquet", data_dir=str(tmp_path / "appeal"), split="train")
    assert table[0]["best_image_uid"] != winner
    stats = store_stats(store)
    assert stats.rankings == 2 and stats.by_question == {"preference": 2, "appeal": 1,
                                                        "alignment": 1}


def test_consensus_export_reads_as_pick_a_pic_with_majority_labels(tmp_path):
    with Store(tmp_path / "prefs.duckdb") as store:
        pairs = store_votes(store, HAND)
        store_votes(store, {"p5": {"ann": "0", "bea": "1"}})
        per_vote = export_pairs(store, tmp_path / "votes")
        consensus = export_pairs(store, tmp_path / "consensus", consensus=True)
    assert per_vote[0].rows == 13 and per_vote[0].consensus is None
    [split] = consensus
    assert split.rows == 5
    assert split.consensus.text() == ("5 pairs from 13 votes: 0 with one vote, 2 unanimous, "
                                      "2 by majority, 1 without a majority (exported as ties)")
    features = datasets.Features.from_arrow_schema(PICKAPIC_SCHEMA)
    for folder in ("votes", "consensus"):
        loaded = datasets.load_dataset("parquet", data_dir=str(tmp_path / folder),
                                       split="train")
        assert loaded.features == features
    loaded = datasets.load_dataset("parquet", data_dir=str(tmp_path / "consensus"),
                                   split="train")
    by_caption = {row["caption"]: row for row in loaded}
    uid = {name: (images[0].image_uid, images[1].image_uid) for name, images in pairs.items()}
    assert by_caption["p2"]["best_image_uid"] == uid["p2"][0]  # 2 of 3 said image 0
    assert by_caption["p3"]["best_image_uid"] == uid["p3"][1]  # 2 of 3 said image 1
    assert (by_caption["p5"]["label_0"], by_caption["p5"]["best_image_uid"]) == (0.5, "none")
    assert {row["user_id"] for row in loaded} == {0}


def test_flagged_votes_can_be_left_out_of_exports_and_training(tmp_path):
    votes = {f"p{k}": {"ann": "0", "bea": "0", "cy": "0", "zed": "1"} for k in range(12)}
    with Store(tmp_path / "prefs.duckdb") as store:
        store_votes(store, votes)
        zed = store.user_id("zed")
        assert [a.name for a in store_quality(store).flagged] == ["zed"]
        kept = export_pairs(store, tmp_path / "kept", drop_flagged=True)
        everything = export_pairs(store, tmp_path / "all")
        assert (kept[0].rows, everything[0].rows) == (36, 48)
        assert len(StorePairs(store, drop_flagged=True)) == 36
        assert zed not in {StorePairs(store, drop_flagged=True).describe(i)[1].user_id
                           for i in range(36)}
    loaded = datasets.load_dataset("parquet", data_dir=str(tmp_path / "kept"), split="train")
    assert zed not in set(loaded["user_id"])


def test_the_train_config_takes_question_and_drop_flagged():
    from cli.errors import TrainError
    from train.config import TrainConfig

    config = TrainConfig(data=["x.duckdb"], question="alignment", drop_flagged=True)
    config.check()
    with pytest.raises(TrainError, match="unknown question 'looks'"):
        TrainConfig(data=["x.duckdb"], question="looks").check()


def test_a_set_source_showing_is_still_made_when_no_overlap_pair_waits(campaign):
    collector = campaign(overlap=2, overlap_share=0.0)
    ann = collector.annotator("ann")
    shown = collector.start(ann, "", "auto")
    assert shown.source == SET_SOURCE and shown.votes_wanted == 1
    collector.vote(ann, shown.showing_id, "left")
    assert collector.store.overlap_progress() == (0, 0)
