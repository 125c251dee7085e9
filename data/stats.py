"""What is in the store: counts by source, outcome, user and model, bias checks, and the
crowd's agreement and annotator quality (data/quality.py).

The counts are of votes on the general-preference question (a vote that answered all
three questions is one vote here); `by_question` counts the answers to each."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from data.quality import CrowdQuality, store_quality
from data.store import Store


def percent(x: float | None, digits: int = 1) -> str:
    """A share as the pages, reports and `data stats` print it: `62.5%`, or `n/a`."""
    return "n/a" if x is None else f"{100 * x:.{digits}f}%"


@dataclass(frozen=True)
class StoreStats:
    rankings: int
    images: int
    by_source: dict[str, int]
    by_outcome: dict[str, int]
    by_user: dict[str, int]  # annotator name (or the imported user id) -> rankings
    by_model: dict[str, int]  # model (and its round, if rounds trained it) -> pairs it is in
    tie_rate: float | None  # ties / votes that were not skipped
    both_bad_rate: float | None  # both-bad / votes that were not skipped
    left_win_rate: float | None  # left / (left + right), where the side is known
    left_win_votes: int  # the decisive votes behind left_win_rate
    gold: dict[str, tuple[int, int]]  # annotator -> (right answers, answered gold pairs)
    by_question: dict[str, int]  # question -> answers stored
    crowd: CrowdQuality
    pool: tuple[int, int, int]  # pool pairs not voted on, pool pairs, first voted last hour


def pool_line(pool: tuple[int, int, int]) -> str | None:
    """How much of the store's pair pool is left and, at the last hour's pace, for how
    long (the campaign page and `data stats`); None without a pool."""
    left, total, last_hour = pool
    if not total:
        return None
    pace = (f"{last_hour:,} first voted in the last hour: about {left / last_hour:.1f} hours "
            "left at that pace" if last_hour else "none voted in the last hour")
    return f"pool: {left:,} of {total:,} pairs not yet voted on ({pace})"


def _ratio(part: int, whole: int) -> float | None:
    return part / whole if whole else None


def store_stats(store: Store, question: str = "preference") -> StoreStats:
    cur = store.cursor()
    main = "question = 'preference'"

    def counts(sql: str) -> dict[str, int]:
        return {str(key): n for key, n in cur.execute(sql).fetchall()}

    by_outcome = counts(f"SELECT outcome, count(*) FROM rankings WHERE {main} "
                        "GROUP BY 1 ORDER BY 2 DESC")
    voted = sum(n for outcome, n in by_outcome.items() if outcome != "skip")
    left, decisive = cur.execute(
        "SELECT count(*) FILTER (outcome = 'left'), count(*) FROM rankings "
        f"WHERE outcome IN ('left', 'right') AND shown_left IS NOT NULL AND {main}"
    ).fetchone()
    crowd = store_quality(store, question)
    return StoreStats(
        rankings=sum(by_outcome.values()),
        images=cur.execute("SELECT count(*) FROM images").fetchone()[0],
        by_source=counts(f"SELECT source, count(*) FROM rankings WHERE {main} "
                         "GROUP BY 1 ORDER BY 2 DESC"),
        by_outcome=by_outcome,
        by_user=counts(
            "SELECT coalesce(u.name, r.source || ':' || r.user_id), count(*) "
            f"FROM rankings r LEFT JOIN users u USING (user_id) WHERE r.{main} "
            "GROUP BY 1 ORDER BY 2 DESC"
        ),
        by_model=counts(
            "SELECT coalesce(i.model, '(unknown)') || coalesce(' (round ' || i.model_round || ')',"
            " ''), count(DISTINCT r.ranking_id) "
            "FROM rankings r JOIN images i ON i.image_uid IN (r.image_0_uid, r.image_1_uid) "
            f"WHERE r.{main} GROUP BY 1 ORDER BY 2 DESC"
        ),
        tie_rate=_ratio(by_outcome.get("tie", 0), voted),
        both_bad_rate=_ratio(by_outcome.get("both_bad", 0), voted),
        left_win_rate=_ratio(left, decisive),
        left_win_votes=decisive,
        gold={a.name: (a.gold_right, a.gold_answered)
              for a in crowd.annotators if a.gold_answered},
        by_question=counts("SELECT question, count(*) FROM rankings GROUP BY 1 ORDER BY 2 DESC"),
        crowd=crowd,
        pool=store.pool_progress(
            datetime.now(timezone.utc).replace(tzinfo=None) - timedelta(hours=1)),
    )


def format_stats(stats: StoreStats) -> str:
    """A plain-text report for the terminal."""

    lines = [
        f"rankings: {stats.rankings}    images: {stats.images}",
        f"tie rate: {percent(stats.tie_rate)}    both-bad rate: {percent(stats.both_bad_rate)}    "
        f"left-side win rate: {percent(stats.left_win_rate)} "
        f"(over {stats.left_win_votes} decisive votes with a known side)",
        *filter(None, [pool_line(stats.pool)]),
    ]
    for title, table in (
        ("by source", stats.by_source),
        ("by outcome", stats.by_outcome),
        ("by user", stats.by_user),
        ("by model", stats.by_model),
    ):
        lines.append(f"\n{title}:")
        lines += [f"  {n:>8}  {key}" for key, n in table.items()] or ["  (none)"]
    lines.append("\ngold accuracy by user (tie, both-bad: wrong; skips left out):")
    lines += [
        f"  {percent(right / answered):>8}  {name} ({right}/{answered})"
        for name, (right, answered) in stats.gold.items()
    ] or ["  (no gold pairs answered)"]
    if len(stats.by_question) > 1:
        lines.append("\nanswers by question:")
        lines += [f"  {n:>8}  {q}" for q, n in stats.by_question.items()]
    return "\n".join(lines + ["", *crowd_lines(stats.crowd)])


def _num(x: float | None, form: str = ".2f") -> str:
    return "n/a" if x is None else format(x, form)


def crowd_lines(crowd: CrowdQuality) -> list[str]:
    """The crowd's agreement and the per-annotator table, as the dashboard shows them."""
    lines = [
        f"crowd ({crowd.question}): Krippendorff's alpha {_num(crowd.alpha, '.3f')}    "
        f"pairwise agreement {_num(crowd.agreement, '.1%')}    "
        f"pairs with 2+ annotators: {crowd.overlap_pairs}",
        f"  {'annotator':<20} {'votes':>6} {'agree':>7} {'gold':>9} {'left':>6} "
        f"{'v/min':>6} {'look s':>7}  flags",
    ]
    for a in crowd.annotators:
        gold = (f"{a.gold_accuracy:.0%}/{a.gold_answered}" if a.gold_answered else "-")
        look = None if a.median_dwell_ms is None else a.median_dwell_ms / 1000
        lines.append(
            f"  {a.name[:20]:<20} {a.votes:>6} {_num(a.agreement, '.0%'):>7} {gold:>9} "
            f"{_num(a.left_rate, '.0%'):>6} {_num(a.votes_per_minute, '.1f'):>6} "
            f"{_num(look, '.1f'):>7}  {'; '.join(a.flags) or '-'}")
    if not crowd.annotators:
        lines.append("  (no human votes)")
    flagged = [a.name for a in crowd.flagged]
    lines.append(f"flagged: {', '.join(flagged) if flagged else 'none'} ({crowd.rule})")
    return lines
