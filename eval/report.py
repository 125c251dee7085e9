"""What an evaluation says, as a markdown report and PNG charts under runs/eval/<name>/."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from cli.errors import DataError
from data.stats import percent  # noqa: E402
from data.store import disk_full_error, is_disk_full, unwritable_folder  # noqa: E402
from eval.auto import AutoResult, mean_interval  # noqa: E402
from eval.stats import Judgement, Tally, tally, tally_by_category  # noqa: E402
from eval.votes import VoteRow  # noqa: E402


@contextmanager
def report_folder(out: Path) -> Iterator[Path]:
    """`out`, made if missing, for the report written inside the block. A folder that
    cannot be made or written (a file in its way, a read-only or full disk) ends the
    command in one line naming it, the cause and the fix."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        yield out
    except OSError as error:
        if is_disk_full(error):
            raise disk_full_error(out, "the report was not written") from None
        raise unwritable_folder(out, "the report", "give --out a folder you can write to",
                                error) from None


def _interval(interval) -> str:
    return "n/a" if interval is None else f"{100 * interval.low:.1f}-{100 * interval.high:.1f}%"


def tally_rows(tallies: dict[str, Tally]) -> list[str]:
    rows = ["| prompts | N | W / L / T / both bad | win rate | Wilson 95% | bootstrap 95% "
            "(by prompt) | decisive W/(W+L) | Wilson 95% | sign test p |",
            "|---|---|---|---|---|---|---|---|---|"]
    for name, t in tallies.items():
        rows.append(
            f"| {name} | {t.n} | {t.wins} / {t.losses} / {t.ties} / {t.both_bad} | "
            f"{percent(t.win_rate)} | {_interval(t.wilson)} | {_interval(t.bootstrap)} | "
            f"{percent(t.decisive_win_rate)} | {_interval(t.decisive_wilson)} | "
            f"{t.sign_test_p:.3g} |")
    return rows


def win_rate_chart(tallies: dict[str, Tally], title: str, path: Path) -> Path:
    """Win rate of aligned over base per prompt group, with Wilson and bootstrap bars."""
    names = [n for n, t in tallies.items() if t.win_rate is not None]
    fig, ax = plt.subplots(figsize=(7, 1.8 + 0.5 * len(names)))
    for row, name in enumerate(reversed(names)):
        t = tallies[name]
        ax.barh(row, t.win_rate, color="#4c72b0" if name == "all" else "#8da0cb")
        ax.errorbar(t.win_rate, row, xerr=[[t.win_rate - t.wilson.low],
                                           [t.wilson.high - t.win_rate]],
                    color="black", capsize=4, label="Wilson 95%" if row == 0 else None)
        if t.bootstrap is not None:
            ax.plot([t.bootstrap.low, t.bootstrap.high], [row + 0.3] * 2, color="#dd8452",
                    linewidth=3, label="bootstrap 95% (by prompt)" if row == 0 else None)
        ax.text(1.01, row, f"{100 * t.win_rate:.1f}% (N={t.n})", va="center",
                transform=ax.get_yaxis_transform())
    ax.axvline(0.5, color="grey", linestyle="--", linewidth=1)
    ax.set_yticks(range(len(names)), list(reversed(names)))
    ax.set_xlim(0, 1)
    ax.set_xlabel("win rate of aligned over base, (W + T/2) / N")
    ax.set_title(title, fontsize=10)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.35), ncol=2, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def score_chart(result: AutoResult, path: Path) -> Path:
    """The two models' score distributions, their means marked."""
    fig, ax = plt.subplots(figsize=(7, 3.6))
    low = min(result.base_scores.min(), result.aligned_scores.min())
    high = max(result.base_scores.max(), result.aligned_scores.max())
    bins = list(low + (high - low) * k / 30 for k in range(31)) if high > low else 10
    for scores, label, color in ((result.base_scores, "base", "#8c8c8c"),
                                 (result.aligned_scores, "aligned", "#4c72b0")):
        mean, _ = mean_interval(scores)
        ax.hist(scores, bins=bins, alpha=0.55, color=color,
                label=f"{label}: mean {mean:.3f}")
        ax.axvline(mean, color=color, linewidth=2)
    ax.set_xlabel(f"{result.scorer} score")
    ax.set_ylabel("images")
    ax.set_title(f"{result.scorer} scores, {len(result.base_scores)} images per model",
                 fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _pair(interval) -> list[float] | None:
    return None if interval is None else [interval.low, interval.high]


def tally_summary(t: Tally) -> dict:
    """A tally as plain JSON values."""
    return {"n": t.n, "wins": t.wins, "losses": t.losses, "ties": t.ties,
            "both_bad": t.both_bad, "win_rate": t.win_rate, "wilson": _pair(t.wilson),
            "bootstrap": _pair(t.bootstrap), "decisive_win_rate": t.decisive_win_rate,
            "decisive_wilson": _pair(t.decisive_wilson), "sign_test_p": t.sign_test_p,
            "tie_rate": t.tie_rate, "both_bad_rate": t.both_bad_rate,
            "left_win_rate": t.left_win_rate, "left_decisive_votes": t.left_decisive_votes}


def rate_rows(tallies: dict[str, Tally]) -> list[str]:
    """Tie and both-bad rates and the left-side (side A) win rate, per prompt group."""
    rows = ["| prompts | tie rate T/N | both-bad rate B/(N+B) | left (side A) image won, of "
            "decisive votes |", "|---|---|---|---|"]
    for name, t in tallies.items():
        rows.append(f"| {name} | {percent(t.tie_rate)} | {percent(t.both_bad_rate)} | "
                    f"{percent(t.left_win_rate)} of {t.left_decisive_votes} |")
    return rows


def write_report(out: Path, title: str, intro: list[str], votes: list[Judgement], summary: dict,
                 sections: list[str] = (), rates: bool = False) -> dict:
    """The report every evaluation writes: report.md, win_rate.png and summary.json.

    `intro` and `sections` are markdown lines before and after the tallies; `summary`
    holds what the evaluation adds to the overall tally's figures. Returns the summary.
    """
    out.mkdir(parents=True, exist_ok=True)
    tallies = tally_by_category(votes)
    win_rate_chart(tallies, title, out / "win_rate.png")
    lines = [f"# {title}", "", *intro, "", *tally_rows(tallies), "",
             *([*rate_rows(tallies), ""] if rates else []), *sections,
             "![win rate](win_rate.png)", ""]
    (out / "report.md").write_text("\n".join(lines))
    summary = {**summary, **tally_summary(tallies["all"]),
               "categories": {name: tally_summary(t) for name, t in tallies.items()
                              if name != "all"},
               "report": str(out / "report.md")}
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary


def scorer_rows(results: list[AutoResult]) -> tuple[list[str], dict]:
    """Every scorer's verdict on the same images side by side: a markdown table and its
    figures by scorer."""
    lines = ["| scorer | base mean | aligned mean | wins / losses / ties | decisive win rate "
             "(Wilson 95%) |", "|---|---|---|---|---|"]
    figures = {}
    for r in results:
        t = tally(r.votes)
        base_mean, aligned_mean = mean_interval(r.base_scores)[0], \
            mean_interval(r.aligned_scores)[0]
        lines.append(f"| {r.scorer} | {base_mean:.4f} | {aligned_mean:.4f} | {t.wins} / "
                     f"{t.losses} / {t.ties} | {percent(t.decisive_win_rate)} "
                     f"({_interval(t.decisive_wilson)}) |")
        figures[r.scorer] = {"base_mean_score": base_mean, "aligned_mean_score": aligned_mean,
                             **tally_summary(t)}
    return lines, figures


def write_auto_report(result: AutoResult, out: Path, command: str,
                      also: list[AutoResult] = ()) -> dict:
    """report.md, win_rate.png, scores.png and summary.json in `out`; returns the summary.
    `also`: the same images judged by other scorers, reported beside `result`'s."""
    out.mkdir(parents=True, exist_ok=True)
    base_mean, base_ci = mean_interval(result.base_scores)
    aligned_mean, aligned_ci = mean_interval(result.aligned_scores)
    score_chart(result, out / "scores.png")
    s = result.sampling
    intro = [
        f"`{command}`", "",
        f"{len(result.votes)} pairs: {len({p.text for p in result.prompts})} prompts x "
        f"{s.seeds} seeds (0..{s.seeds - 1}), {s.steps} steps, guidance {s.guidance}, the "
        f"same seed for both models. The higher score wins; a difference of "
        f"{result.tie_margin} or less is a tie.",
    ]
    sections = [
        "| model | mean score | 95% interval |", "|---|---|---|",
        f"| base: {result.base} | {base_mean:.4f} | {base_ci.low:.4f}-{base_ci.high:.4f} |",
        f"| aligned: {result.aligned} | {aligned_mean:.4f} | "
        f"{aligned_ci.low:.4f}-{aligned_ci.high:.4f} |", "",
        "![scores](scores.png)", "",
    ]
    summary = {"base": result.base, "aligned": result.aligned, "scorer": result.scorer,
               "pairs": len(result.votes), "base_mean_score": base_mean,
               "aligned_mean_score": aligned_mean,
               "judge_ms_per_pair": round(1000 * result.judge_s / len(result.votes), 1)}
    if also:
        table, figures = scorer_rows([result, *also])
        sections += ["## Every scorer on the same images", "",
                     f"The tallies above are {result.scorer}'s; a preference can rise while "
                     "another quality falls.", "", *table, ""]
        summary["scorers"] = figures
    return write_report(out, f"{result.aligned} against {result.base}, judged by "
                             f"{result.scorer}", intro, result.votes, summary, sections)


def write_human_report(votes: list[VoteRow], out: Path, command: str,
                       others: list[tuple[str, str, int]] = ()) -> dict:
    """The blind page's votes on one comparison as report.md, win_rate.png, summary.json."""
    if not votes:
        raise DataError("no votes to report")
    base, aligned = votes[0].base_model, votes[0].aligned_model
    voters = sorted({v.voter for v in votes})
    settings = sorted({(v.steps, v.guidance) for v in votes})
    intro = [
        f"`{command}`", "",
        f"{len(votes)} blind votes by {len(voters)} voter(s) ({', '.join(voters)}) on "
        f"{len({v.prompt for v in votes})} prompts, "
        f"{votes[0].created_at:%Y-%m-%d %H:%M} to {votes[-1].created_at:%Y-%m-%d %H:%M} UTC; "
        f"sampling (steps, guidance): {', '.join(f'{s}, {g}' for s, g in settings)}, the same "
        "seed for both models, sides shuffled per pair. N counts wins, losses and ties; "
        "both-bad votes state no preference.",
    ]
    if others:
        intro += ["", "Other comparisons in this file (report one with --base/--aligned): "
                  + "; ".join(f"{a} against {b} ({n} votes)" for b, a, n in others) + "."]
    summary = {"base": base, "aligned": aligned, "votes": len(votes), "voters": voters}
    return write_report(out, f"{aligned} against {base}, blind votes", intro,
                        [v.as_stat() for v in votes], summary, rates=True)
