"""How far a crowd's votes can be trusted: agreement, each annotator's quality, flags.

Crowd labels are checked three ways: against each other where a pair was shown to
several annotators (Krippendorff's alpha over the pairs, and plain pairwise agreement),
against gold pairs whose better image is known, and against what an attentive person
does (picks each side about as often, since sides are shuffled; looks at a pair for a
moment before voting). `FlagRule` states which figures flag an annotator; the flagged
can be left out of exports (`data export --drop-flagged`) and training
(`drop_flagged`). Everything here reads human votes on one question.

A vote's value, for agreement, is what it says about the pair in storage order: image
0 better, image 1 better, a tie, or both bad. A skip says nothing and is left out.
"""

from __future__ import annotations

import math
import statistics
from collections import Counter, defaultdict
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from data.store import QUESTIONS, Store

BREAK_S = 300  # a gap between two votes longer than this is a break, not voting time


def krippendorff_alpha(units: Mapping[Hashable, Sequence[Hashable]]) -> float | None:
    """Krippendorff's alpha for nominal values: `units` maps each unit to the values its
    coders gave (missing ones simply absent). None when it is undefined: fewer than two
    pairable values, or every value the same."""
    coincidence: Counter = Counter()
    for values in units.values():
        m = len(values)
        if m < 2:
            continue
        counts = Counter(values)
        for c, n_c in counts.items():
            for k, n_k in counts.items():
                pairs = n_c * (n_c - 1) if c == k else n_c * n_k
                coincidence[c, k] += pairs / (m - 1)
    totals: Counter = Counter()
    for (c, _), o in coincidence.items():
        totals[c] += o
    n = sum(totals.values())
    expected = n * n - sum(t * t for t in totals.values())
    if n < 2 or expected <= 1e-12:
        return None
    observed = sum(o for (c, k), o in coincidence.items() if c != k)
    return 1.0 - (n - 1) * observed / expected


def binomial_p(k: int, n: int) -> float:
    """Two-sided p-value of `k` successes in `n` fair coin flips."""
    if n == 0:
        return 1.0

    def pmf(i: int) -> float:
        return math.exp(math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1)
                        - n * math.log(2))

    tail = sum(pmf(i) for i in range(0, min(k, n - k) + 1))
    return min(1.0, 2 * tail)


@dataclass(frozen=True)
class FlagRule:
    """When an annotator is flagged: any one reason, once they have `min_votes` votes."""

    min_votes: int = 10
    gold_min: int = 5  # gold answers needed before gold accuracy can flag
    gold_below: float = 0.6
    agreement_min: int = 10  # other votes compared before agreement can flag
    # below the crowd's median agreement by more than this, and by more than
    # `agreement_z` standard errors of an agreement over that many compared votes
    agreement_gap: float = 0.1
    agreement_z: float = 3.0
    side_min: int = 20  # decisive votes needed before the side rate can flag
    side_p: float = 0.001  # left-side rate this unlikely for someone who looks
    fast_ms: int = 1000  # a median look shorter than this

    def text(self) -> str:
        return (f"flagged, once {self.min_votes}+ votes, if: gold accuracy < "
                f"{self.gold_below:.0%} ({self.gold_min}+ gold answers); agreement with "
                f"others below the crowd's median by more than {self.agreement_gap:.0%} and "
                f"{self.agreement_z:g} standard errors ({self.agreement_min}+ compared "
                "votes); left-side rate with binomial "
                f"p < {self.side_p:g} ({self.side_min}+ decisive votes); median look "
                f"under {self.fast_ms / 1000:g} s")


@dataclass(frozen=True)
class AnnotatorQuality:
    name: str
    user_id: int
    votes: int  # votes on this question, skips left out, gold included
    decisive: int  # left or right, with the side known
    left_rate: float | None
    agreement: float | None  # share of other annotators' votes on the same pairs that agree
    compared: int  # the other votes behind `agreement`
    gold_right: int
    gold_answered: int
    votes_per_minute: float | None
    median_dwell_ms: float | None
    flags: tuple[str, ...] = ()

    @property
    def gold_accuracy(self) -> float | None:
        return self.gold_right / self.gold_answered if self.gold_answered else None


@dataclass(frozen=True)
class CrowdQuality:
    question: str
    alpha: float | None  # Krippendorff's alpha, nominal, over pairs with 2+ votes
    agreement: float | None  # share of vote pairs on the same pair that agree
    overlap_pairs: int  # non-gold pairs with votes from 2+ annotators
    median_agreement: float | None  # the median of annotators' `agreement`
    rule: str
    annotators: list[AnnotatorQuality] = field(default_factory=list)

    @property
    def flagged(self) -> list[AnnotatorQuality]:
        return [a for a in self.annotators if a.flags]


@dataclass(frozen=True)
class HumanVote:
    """One stored human vote, as quality needs it."""

    user_id: int
    name: str
    pair: tuple[str, str]  # (image_0_uid, image_1_uid)
    value: str  # '0', '1', 'tie' or 'both_bad'
    outcome: str
    shown_left: int | None
    dwell_ms: int | None
    created_at: datetime
    gold_right: bool | None  # None: not a gold pair


def human_votes(store: Store, question: str = "preference") -> list[HumanVote]:
    """Every non-skip human vote on `question`, oldest first."""
    rows = store.cursor().execute(
        "SELECT r.user_id, coalesce(u.name, 'user:' || r.user_id), r.image_0_uid, "
        "r.image_1_uid, r.outcome, r.label_0, r.shown_left, r.dwell_ms, r.created_at, "
        "CASE WHEN g.vote_id IS NULL THEN NULL ELSE r.best_image_uid IS NOT DISTINCT FROM "
        "g.best_image_uid END "
        "FROM rankings r LEFT JOIN users u USING (user_id) "
        "LEFT JOIN gold_answers g ON g.vote_id = r.vote_id "
        "WHERE r.source = 'human' AND r.question = ? AND r.outcome <> 'skip' "
        "ORDER BY r.created_at, r.ranking_id", [question]).fetchall()
    votes = []
    for user_id, name, uid0, uid1, outcome, label_0, shown_left, dwell, at, gold in rows:
        if outcome == "both_bad":
            value = "both_bad"
        else:
            value = "tie" if label_0 == 0.5 else ("0" if label_0 == 1 else "1")
        votes.append(HumanVote(user_id, name, (uid0, uid1), value, outcome, shown_left,
                               dwell, at, gold))
    return votes


def votes_per_minute(times: Sequence[datetime]) -> float | None:
    """Votes per minute of voting time: gaps longer than `BREAK_S` are breaks."""
    gaps = [(b - a).total_seconds() for a, b in zip(times, times[1:], strict=False)]
    active = sum(g for g in gaps if g <= BREAK_S)
    voted = sum(1 for g in gaps if g <= BREAK_S)
    return 60 * voted / active if active > 0 else None


def _flags(a: AnnotatorQuality, median: float | None, rule: FlagRule) -> tuple[str, ...]:
    if a.votes < rule.min_votes:
        return ()
    flags = []
    if a.gold_answered >= rule.gold_min and a.gold_accuracy < rule.gold_below:
        flags.append(f"gold accuracy {a.gold_accuracy:.0%} ({a.gold_right}/"
                     f"{a.gold_answered})")
    if a.compared >= rule.agreement_min and median is not None:
        error = math.sqrt(median * (1 - median) / a.compared)
        if median - a.agreement > max(rule.agreement_gap, rule.agreement_z * error):
            flags.append(f"agrees with others {a.agreement:.0%} (crowd median "
                         f"{median:.0%})")
    if a.decisive >= rule.side_min:
        left = round(a.left_rate * a.decisive)
        if binomial_p(left, a.decisive) < rule.side_p:
            flags.append(f"chose the left image in {a.left_rate:.0%} of {a.decisive} "
                         "decisive votes")
    if a.median_dwell_ms is not None and a.median_dwell_ms < rule.fast_ms:
        flags.append(f"median look {a.median_dwell_ms / 1000:.1f} s")
    return tuple(flags)


def crowd_quality(votes: Iterable[HumanVote], question: str = "preference",
                  rule: FlagRule = FlagRule()) -> CrowdQuality:
    """Agreement over the pairs several annotators voted on, and each annotator's figures
    and flags. An annotator's second vote on the same pair is left out of agreement."""
    votes = list(votes)
    by_pair: dict[tuple[str, str], dict[int, str]] = defaultdict(dict)
    for v in votes:
        if v.gold_right is None:
            by_pair[v.pair].setdefault(v.user_id, v.value)
    shared = {pair: voters for pair, voters in by_pair.items() if len(voters) >= 2}
    alpha = krippendorff_alpha({pair: list(voters.values()) for pair, voters in shared.items()})
    agreeing = compared = 0
    for voters in shared.values():
        counts = Counter(voters.values())
        agreeing += sum(n * (n - 1) for n in counts.values()) // 2
        compared += len(voters) * (len(voters) - 1) // 2

    mine: dict[int, list[HumanVote]] = defaultdict(list)
    for v in votes:
        mine[v.user_id].append(v)
    figures = []
    for user_id, own in mine.items():
        agree = other = 0
        for voters in shared.values():
            if user_id in voters:
                for them, value in voters.items():
                    if them != user_id:
                        other += 1
                        agree += value == voters[user_id]
        sided = [v for v in own if v.outcome in ("left", "right") and v.shown_left is not None]
        gold = [v.gold_right for v in own if v.gold_right is not None]
        dwell = [v.dwell_ms for v in own if v.dwell_ms is not None]
        figures.append(AnnotatorQuality(
            name=own[0].name, user_id=user_id, votes=len(own), decisive=len(sided),
            left_rate=sum(v.outcome == "left" for v in sided) / len(sided) if sided else None,
            agreement=agree / other if other else None, compared=other,
            gold_right=sum(gold), gold_answered=len(gold),
            votes_per_minute=votes_per_minute(sorted(v.created_at for v in own)),
            median_dwell_ms=statistics.median(dwell) if dwell else None,
        ))
    judged = [a.agreement for a in figures if a.compared >= rule.agreement_min]
    median = statistics.median(judged) if judged else None
    annotators = sorted(
        (AnnotatorQuality(**{**a.__dict__, "flags": _flags(a, median, rule)}) for a in figures),
        key=lambda a: a.name)
    return CrowdQuality(question, alpha, agreeing / compared if compared else None,
                        len(shared), median, rule.text(), annotators)


def store_quality(store: Store, question: str = "preference",
                  rule: FlagRule = FlagRule()) -> CrowdQuality:
    """`crowd_quality` of the store's human votes on `question`."""
    if question not in QUESTIONS:
        raise ValueError(f"unknown question {question!r}: one of {', '.join(QUESTIONS)}")
    return crowd_quality(human_votes(store, question), question, rule)


def flagged_users(store: Store, rule: FlagRule = FlagRule()) -> list[int]:
    """The user ids the rule flags on the general-preference question."""
    return [a.user_id for a in store_quality(store, "preference", rule).flagged]
