"""What is in the store: counts by source, outcome, user and model, and bias checks."""

from __future__ import annotations

from dataclasses import dataclass

from data.store import Store


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


def _ratio(part: int, whole: int) -> float | None:
    return part / whole if whole else None


def store_stats(store: Store) -> StoreStats:
    cur = store.cursor()

    def counts(sql: str) -> dict[str, int]:
        return {str(key): n for key, n in cur.execute(sql).fetchall()}

    by_outcome = counts("SELECT outcome, count(*) FROM rankings GROUP BY 1 ORDER BY 2 DESC")
    voted = sum(n for outcome, n in by_outcome.items() if outcome != "skip")
    left, decisive = cur.execute(
        "SELECT count(*) FILTER (outcome = 'left'), count(*) FROM rankings "
        "WHERE outcome IN ('left', 'right') AND shown_left IS NOT NULL"
    ).fetchone()
    return StoreStats(
        rankings=sum(by_outcome.values()),
        images=cur.execute("SELECT count(*) FROM images").fetchone()[0],
        by_source=counts("SELECT source, count(*) FROM rankings GROUP BY 1 ORDER BY 2 DESC"),
        by_outcome=by_outcome,
        by_user=counts(
            "SELECT coalesce(u.name, r.source || ':' || r.user_id), count(*) "
            "FROM rankings r LEFT JOIN users u USING (user_id) GROUP BY 1 ORDER BY 2 DESC"
        ),
        by_model=counts(
            "SELECT coalesce(i.model, '(unknown)') || coalesce(' (round ' || i.model_round || ')',"
            " ''), count(DISTINCT r.ranking_id) "
            "FROM rankings r JOIN images i ON i.image_uid IN (r.image_0_uid, r.image_1_uid) "
            "GROUP BY 1 ORDER BY 2 DESC"
        ),
        tie_rate=_ratio(by_outcome.get("tie", 0), voted),
        both_bad_rate=_ratio(by_outcome.get("both_bad", 0), voted),
        left_win_rate=_ratio(left, decisive),
        left_win_votes=decisive,
        gold={
            str(name): (right, answered)
            for name, right, answered in cur.execute(
                "SELECT coalesce(u.name, r.source || ':' || r.user_id), "
                "count(*) FILTER (r.best_image_uid = g.best_image_uid), count(*) "
                "FROM rankings r JOIN gold_answers g USING (vote_id) "
                "LEFT JOIN users u USING (user_id) "
                "WHERE r.outcome <> 'skip' GROUP BY 1 ORDER BY 1"
            ).fetchall()
        },
    )


def format_stats(stats: StoreStats) -> str:
    """A plain-text report for the terminal."""

    def pct(x: float | None) -> str:
        return "n/a" if x is None else f"{100 * x:.1f}%"

    lines = [
        f"rankings: {stats.rankings}    images: {stats.images}",
        f"tie rate: {pct(stats.tie_rate)}    both-bad rate: {pct(stats.both_bad_rate)}    "
        f"left-side win rate: {pct(stats.left_win_rate)} "
        f"(over {stats.left_win_votes} decisive votes with a known side)",
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
        f"  {pct(right / answered):>8}  {name} ({right}/{answered})"
        for name, (right, answered) in stats.gold.items()
    ] or ["  (no gold pairs answered)"]
    return "\n".join(lines)
