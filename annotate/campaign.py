"""What the campaign dashboard shows: the store's figures as text, tables and series.

The numbers are `data stats`' own (data/stats.py, data/quality.py), so the page and the
terminal agree; this module only shapes them for the page. Names go into Markdown through
`markdown_literal`: a store may hold any name (one typed before names were checked, an
import), and the owner's browser must show it, not follow it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from data.quality import CrowdQuality, human_votes
from data.stats import StoreStats, percent, pool_line, store_stats
from data.store import Store
from pages.shared import markdown_literal

ANNOTATOR_COLUMNS = ["annotator", "votes", "agreement with others", "compared",
                     "gold accuracy", "gold answered", "left-side rate", "votes/min",
                     "median look (s)", "flags"]


@dataclass(frozen=True)
class Campaign:
    summary: str  # Markdown: progress, agreement, gold, left-side rate
    timeline: list[tuple[datetime, int]]  # (bucket start, human votes in it)
    bucket: str  # the timeline's bucket, in words
    annotators: list[list]  # rows of ANNOTATOR_COLUMNS
    agreement: list[tuple[str, float, str]]  # (annotator, % agreeing, flagged or not)
    flagged: str  # Markdown: who is flagged and why, and the rule


def _bucket(first: datetime, last: datetime) -> tuple[timedelta, str]:
    span = last - first
    if span <= timedelta(hours=3):
        return timedelta(minutes=1), "minute"
    if span <= timedelta(days=3):
        return timedelta(hours=1), "hour"
    return timedelta(days=1), "day"


def timeline(times: list[datetime]) -> tuple[list[tuple[datetime, int]], str]:
    """Votes per minute, hour or day (whichever suits the span), empty buckets included."""
    if not times:
        return [], "minute"
    step, name = _bucket(times[0], times[-1])
    origin = datetime.min
    start = origin + (times[0] - origin) // step * step
    counts = [0] * ((times[-1] - start) // step + 1)
    for t in times:
        counts[(t - start) // step] += 1
    return [(start + i * step, n) for i, n in enumerate(counts)], name


def _round(x: float | None, digits: int = 2) -> float | None:
    return None if x is None else round(x, digits)


def annotator_rows(crowd: CrowdQuality) -> list[list]:
    return [
        [a.name, a.votes, percent(a.agreement, 0), a.compared,
         percent(a.gold_accuracy, 0), a.gold_answered, percent(a.left_rate, 0),
         _round(a.votes_per_minute, 1),
         None if a.median_dwell_ms is None else round(a.median_dwell_ms / 1000, 1),
         "; ".join(a.flags) or ""]
        for a in crowd.annotators
    ]


def summary_text(stats: StoreStats, progress: tuple[int, int]) -> str:
    crowd = stats.crowd
    complete, started = progress
    gold_right = sum(r for r, _ in stats.gold.values())
    gold_answered = sum(n for _, n in stats.gold.values())
    alpha = "n/a" if crowd.alpha is None else f"{crowd.alpha:.3f}"
    human = stats.by_source.get("human", 0)
    pool = pool_line(stats.pool)
    return "\n".join([
        f"- **Votes:** {human} by {len(crowd.annotators)} annotators "
        f"({stats.rankings} rankings in the store) · **overlap pairs:** {complete} complete "
        f"of {started} started",
        f"- **Agreement** ({crowd.question}): Krippendorff's alpha **{alpha}** · pairwise "
        f"**{percent(crowd.agreement, 0)}** over {crowd.overlap_pairs} pairs with 2+ annotators",
        f"- **Gold accuracy:** {percent(gold_right / gold_answered if gold_answered else None, 0)} "
        f"({gold_right}/{gold_answered}) · **left-side win rate:** "
        f"{percent(stats.left_win_rate, 0)} of {stats.left_win_votes} decisive votes · "
        f"**tie rate:** {percent(stats.tie_rate, 0)}",
        *([f"- **Pool:** {pool.removeprefix('pool: ')}"] if pool else []),
    ])


def flagged_text(crowd: CrowdQuality) -> str:
    flagged = crowd.flagged
    lines = [f"- **{markdown_literal(a.name)}**: {'; '.join(a.flags)}" for a in flagged]
    head = (f"**Flagged annotators: {len(flagged)}**" if flagged
            else "**Flagged annotators: none**")
    return "\n".join([head, *lines, "",
                      f"Rule: {crowd.rule}. `python -m data export --drop-flagged` and the "
                      "trainer's `--drop_flagged true` leave their votes out."])


def campaign(store: Store, question: str = "preference") -> Campaign:
    """The dashboard's content, read from the store now."""
    stats = store_stats(store, question)
    times = [v.created_at for v in human_votes(store, "preference")]
    series, bucket = timeline(times)
    return Campaign(
        summary=summary_text(stats, store.overlap_progress()),
        timeline=series, bucket=bucket, annotators=annotator_rows(stats.crowd),
        agreement=[(a.name, round(100 * a.agreement, 1),
                    "flagged" if a.flags else "not flagged")
                   for a in stats.crowd.annotators if a.agreement is not None],
        flagged=flagged_text(stats.crowd),
    )
