"""Any number of models ranked from pairwise comparisons on the same prompts and seeds.

A match is one prompt and seed seen through two models and judged: one image won, or a
tie. The Bradley-Terry model gives each model a strength theta with
    P(i beats j) = sigmoid(theta_i - theta_j),
fitted by maximum likelihood with a tie counted as half a win for each side (as arena
leaderboards do). Every pair of models that met also gets `prior` virtual ties, so a model
that never lost still has a finite rating; the prior's pull fades as matches accumulate,
and prior=0 gives the plain maximum-likelihood fit. Ratings are on the Elo scale
(400 log10 of the odds) with the first model at 1000. Intervals are percentiles of a
bootstrap that resamples prompts, not matches: the matches of one prompt are not
independent. Both-bad votes state no preference and are not matches.

Where the judge saw the two images side by side (people on the blind page), the side is
a covariate, as arena leaderboards fit it:
    P(i on the left beats j) = sigmoid(theta_i - theta_j + gamma),
so ratings come with the left side's advantage gamma removed, and the board reports
gamma. A scorer sees no sides: its matches carry no position and no gamma is fitted.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cli.errors import DataError
from eval.auto import outcome
from eval.stats import Interval

ELO = 400 / math.log(10)  # rating points per unit of theta
ANCHOR = 1000.0
RESULTS = ("first", "second", "tie")
AS_MATCH = {"aligned": "first", "base": "second", "tie": "tie"}  # eval auto's outcomes


@dataclass(frozen=True)
class Match:
    """One prompt and seed through two models, judged."""

    prompt: str
    seed: int
    first: str
    second: str
    result: str  # one of RESULTS: which model's image won, or a tie
    left: str | None = None  # the model shown on the left; None where the judge saw no sides


@dataclass
class Board:
    """The fitted leaderboard, models in their given order."""

    models: list[str]
    judge: str
    ratings: np.ndarray  # Elo scale, models[0] at ANCHOR
    intervals: list[Interval]  # bootstrap 95%, by prompt
    wins: np.ndarray  # [i, j]: i's wins over j, ties counted one half each
    games: np.ndarray  # [i, j]: matches between i and j
    prompts: int
    prior: float
    min_matches: int = 0  # a model with fewer is listed below the ranking, unranked
    preliminary_below: int = 0  # a ranked model with fewer is marked preliminary
    position: float | None = None  # the left side's advantage, Elo points; None: no sides
    position_interval: Interval | None = None

    def matches(self, k: int) -> float:
        return float(self.games[k].sum())

    def lower(self, k: int) -> float:
        """The lower end of k's 95% interval (the anchor, fixed by definition: its rating)."""
        low = self.intervals[k].low
        return float(self.ratings[k]) if k == 0 or math.isnan(low) else float(low)

    def listed(self, k: int) -> bool:
        return self.matches(k) >= self.min_matches

    def preliminary(self, k: int) -> bool:
        return self.listed(k) and self.matches(k) < self.preliminary_below

    def ranked(self) -> list[int]:
        """Model indices as 2026 arenas rank them: the listed models by the lower end of
        their interval (a well-measured model ahead of a lucky few votes), the rating
        breaking ties; then the unlisted ones, by rating."""
        return sorted(range(len(self.models)),
                      key=lambda k: (not self.listed(k), -self.lower(k) if self.listed(k)
                                     else 0.0, -self.ratings[k]))

    def win_rate(self, i: int, j: int) -> float | None:
        """i's observed win rate over j, (W + T/2) / N; None if they never met."""
        return float(self.wins[i, j] / self.games[i, j]) if self.games[i, j] else None


def win_counts(matches: Sequence[Match], models: Sequence[str]) -> np.ndarray:
    """[i, j]: how often models[i] beat models[j], a tie counting one half to each."""
    return side_counts(matches, models).sum(axis=0)


def side_counts(matches: Sequence[Match], models: Sequence[str]) -> np.ndarray:
    """[side, i, j]: what models[i] won against models[j] (a tie one half to each) while
    on the left (side 0), on the right (1), or where no side was shown (2)."""
    index = {m: k for k, m in enumerate(models)}
    wins = np.zeros((3, len(models), len(models)))
    for match in matches:
        if match.result not in RESULTS:
            raise DataError(f"unknown match result {match.result!r}: use one of {RESULTS}")
        if match.first == match.second:
            raise DataError(f"a match of {match.first} against itself: compare two models")
        try:
            i, j = index[match.first], index[match.second]
        except KeyError as missing:
            raise DataError(f"match of {missing} which is not on the board") from None
        if match.left not in (None, match.first, match.second):
            raise DataError(f"a match of {match.first} and {match.second} shows "
                            f"{match.left} on the left: name one of the two, or None")
        side = {i: 2, j: 2} if match.left is None else \
            {i: 0, j: 1} if match.left == match.first else {i: 1, j: 0}
        if match.result == "tie":
            wins[side[i], i, j] += 0.5
            wins[side[j], j, i] += 0.5
        else:
            winner, loser = (i, j) if match.result == "first" else (j, i)
            wins[side[winner], winner, loser] += 1
    return wins


def check_connected(games: np.ndarray, models: Sequence[str]) -> None:
    """Ratings compare only models linked by matches, directly or through others."""
    reached, frontier = {0}, [0]
    while frontier:
        i = frontier.pop()
        for j in np.flatnonzero(games[i] > 0):
            if int(j) not in reached:
                reached.add(int(j))
                frontier.append(int(j))
    apart = [m for k, m in enumerate(models) if k not in reached]
    if apart:
        raise DataError(f"{', '.join(apart)} never met {models[0]}, directly or through other "
                        "models: compare them on the same prompts and seeds first")


def unbeaten_group(wins: np.ndarray) -> list[int]:
    """The indices of a group of models that never lost or tied to any model outside
    it, or [] when there is none. The likelihood has a finite maximum exactly when every
    model beat (or tied) its way to every other one (Zermelo; Ford 1957): the "beat or
    tied" graph is strongly connected. Without it, the group's ratings grow without bound
    and the fit stops at an arbitrary one."""
    from scipy.sparse.csgraph import connected_components

    count, component = connected_components(wins > 0, directed=True, connection="strong")
    if count == 1:
        return []
    beaten = {component[j] for i, j in zip(*np.nonzero(wins > 0), strict=True)
              if component[i] != component[j]}  # j lost to a model of another group
    top = next(c for c in range(count) if c not in beaten)
    return [int(k) for k in np.flatnonzero(component == top)]


def check_finite(wins: np.ndarray, names: Sequence[str] | None = None) -> None:
    """Refuse `wins` (the prior's virtual ties included) where no finite rating exists: a
    model that never won or tied, or a group that never lost or tied to the rest."""
    if np.any(wins.sum(axis=1) <= 0):
        raise DataError("a model that never won or tied has no finite Bradley-Terry rating: "
                        "use a prior above 0")
    unbeaten = unbeaten_group(wins)
    if unbeaten:
        named = [names[k] if names else f"model {k}" for k in unbeaten]
        raise DataError(f"{', '.join(named)} never lost or tied to the other models: no "
                        "finite Bradley-Terry rating exists; use a prior above 0")


def bradley_terry(wins: np.ndarray, prior: float = 1.0, tol: float = 1e-10,
                  max_iter: int = 100_000, names: Sequence[str] | None = None) -> np.ndarray:
    """Strengths theta (mean 0) maximising the Bradley-Terry likelihood of `wins`.

    Hunter's MM update p_i <- W_i / sum_j n_ij / (p_i + p_j), which raises the
    likelihood at every step. A model with no win and no prior has no finite strength:
    give prior > 0, or matches it won.
    """
    met = (wins + wins.T) > 0
    wins = wins + (prior / 2) * met  # `prior` virtual ties per pair that met
    games = wins + wins.T
    total = wins.sum(axis=1)
    check_finite(wins, names)
    strength = np.ones(len(wins))
    for _ in range(max_iter):
        new = total / (games / (strength[:, None] + strength[None, :])).sum(axis=1)
        new /= np.exp(np.log(new).mean())
        if np.max(np.abs(np.log(new) - np.log(strength))) < tol:
            strength = new
            break
        strength = new
    return np.log(strength)


def _logit_terms(sides: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One row per (side, winner, loser) with points in `side_counts`: its points, and its
    logit's gradient by parameter (theta_1.., gamma; theta_0 = 0 fixes the scale)."""
    n = sides.shape[1]
    side, winner, loser = np.nonzero(sides)
    rows = np.arange(len(side))
    design = np.zeros((len(side), n + 1))
    np.add.at(design, (rows, winner), 1.0)
    np.add.at(design, (rows, loser), -1.0)
    design[:, n] = np.array([1.0, -1.0, 0.0])[side]
    return sides[side, winner, loser], design[:, 1:]


def position_estimable(sides: np.ndarray) -> bool:
    """Whether matches seen side by side tell the left side's advantage apart from the
    models' strengths: not when, say, one model was always on the left."""
    if not sides[:2].sum():
        return False
    _, design = _logit_terms(sides)
    return bool(np.linalg.matrix_rank(design) == design.shape[1])


def bradley_terry_sides(sides: np.ndarray, prior: float = 1.0, tol: float = 1e-10,
                        max_iter: int = 100, names: Sequence[str] | None = None,
                        ) -> tuple[np.ndarray, float]:
    """Strengths theta (mean 0) and the left side's advantage gamma maximising
        sum over matches of log sigmoid(theta_winner - theta_loser +/- gamma)
    (+ when the winner was on the left, - on the right, no gamma where no side was shown;
    a tie is half a win to each), from `side_counts`. The prior's virtual ties are split
    evenly between the sides, so they pull gamma to 0 as they pull ratings together.

    Newton's method: the log-likelihood is concave, and the step is halved until it rises.
    """
    n = sides.shape[1]
    met = (sides.sum(axis=0) + sides.sum(axis=0).T) > 0
    sides = sides + np.stack([(prior / 4) * met, (prior / 4) * met, np.zeros((n, n))])
    check_finite(sides.sum(axis=0), names)
    if sides[0].sum() == 0 or sides[1].sum() == 0:
        won = "left" if sides[1].sum() == 0 else "right"
        raise DataError(f"the {won} side won every match shown side by side: its advantage "
                        "has no finite estimate; use a prior above 0")
    weight, design = _logit_terms(sides)

    def loglik(x: np.ndarray) -> float:
        return float(weight @ -np.logaddexp(0.0, -(design @ x)))

    x = np.zeros(n)
    for _ in range(max_iter):
        p = 1 / (1 + np.exp(-(design @ x)))
        gradient = design.T @ (weight * (1 - p))
        hessian = (design * (weight * p * (1 - p))[:, None]).T @ design
        try:
            step = np.linalg.solve(hessian, gradient)
        except np.linalg.LinAlgError:
            raise DataError("these matches do not tell the left side's advantage from the "
                            "models' strengths: use a prior above 0") from None
        before, size = loglik(x), 1.0
        while loglik(x + size * step) < before and size > 1e-8:
            size /= 2
        x = x + size * step
        if np.max(np.abs(size * step)) < tol:
            break
    theta = np.concatenate([[0.0], x[:-1]])
    return theta - theta.mean(), float(x[-1])


def fit(matches: Sequence[Match], models: Sequence[str], judge: str, prior: float = 1.0,
        samples: int = 1000, seed: int = 0, min_matches: int = 0,
        preliminary_below: int = 0) -> Board:
    """The leaderboard of `models` from `matches`, with prompt-bootstrap intervals;
    `min_matches` and `preliminary_below` are its listing rules (`Board`)."""
    models = list(models)
    if len(set(models)) != len(models):
        raise DataError("a model is named twice on the board: name each once")
    by_prompt: dict[str, list[Match]] = defaultdict(list)
    for match in matches:
        by_prompt[match.prompt].append(match)
    per_prompt = np.array([side_counts(group, models) for group in by_prompt.values()])
    if not len(per_prompt):
        raise DataError("no matches to rank: judge some pairs first")
    sided = position_estimable(per_prompt.sum(axis=0))
    wins = per_prompt.sum(axis=(0, 1))
    games = wins + wins.T
    check_connected(games, models)

    def ratings(sides: np.ndarray) -> np.ndarray:
        """Ratings on the Elo scale, then the left side's advantage in Elo points if fitted."""
        if sided:
            theta, gamma = bradley_terry_sides(sides, prior, names=models)
        else:
            theta, gamma = bradley_terry(sides.sum(axis=0), prior, names=models), 0.0
        return np.append(ANCHOR + ELO * (theta - theta[0]), ELO * gamma)

    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(samples):
        resampled = per_prompt[rng.integers(0, len(per_prompt), len(per_prompt))].sum(axis=0)
        met = resampled.sum(axis=0) + resampled.sum(axis=0).T
        try:  # a draw that leaves a model apart or winless says nothing about it
            check_connected(met, models)
            draws.append(ratings(resampled))
        except DataError:
            continue
    spread = np.percentile(np.array(draws), [2.5, 97.5], axis=0) if draws else None
    intervals = [Interval(float(spread[0, k]), float(spread[1, k])) if spread is not None
                 else Interval(float("nan"), float("nan")) for k in range(len(models) + 1)]
    fitted = ratings(per_prompt.sum(axis=0))
    return Board(models, judge, fitted[:-1], intervals[:-1], wins, games, len(per_prompt),
                 prior, min_matches, preliminary_below,
                 position=float(fitted[-1]) if sided else None,
                 position_interval=intervals[-1] if sided else None)


def scored_matches(models: Sequence[str], prompts: Sequence[str], seeds: int,
                   scores: dict[str, np.ndarray], tie_margin: float) -> list[Match]:
    """Every pair of models on every prompt and seed, judged as eval auto judges a pair.

    `scores[model]` holds one score per (prompt, seed), prompts outer, seeds 0..seeds-1;
    scores within `tie_margin` of each other are a tie.
    """
    keys = [(p, s) for p in prompts for s in range(seeds)]
    matches = []
    for a in range(len(models)):
        for b in range(a + 1, len(models)):
            first, second = scores[models[a]], scores[models[b]]
            for k, (prompt, seed) in enumerate(keys):
                judged = outcome(second[k], first[k], tie_margin)  # first as the "aligned"
                matches.append(Match(prompt, seed, models[a], models[b], AS_MATCH[judged]))
    return matches


def vote_matches(votes, models: Sequence[str]) -> list[Match]:
    """The blind page's votes (eval.votes.VoteRow) between models on the board."""
    results = {"base": "first", "aligned": "second", "tie": "tie"}  # base is the first here
    return [Match(v.prompt, v.seed, v.base_model, v.aligned_model, results[v.outcome],
                  left=v.base_model if v.side_a == "base" else v.aligned_model)
            for v in votes if v.outcome in results
            and v.base_model in models and v.aligned_model in models]


def _rating(board: Board, k: int) -> str:
    if k == 0:
        return f"{board.ratings[0]:.0f} (the anchor)"
    low, high = board.intervals[k].low, board.intervals[k].high
    return f"{board.ratings[k]:.0f} ({low:.0f}-{high:.0f})"


def left_wins_between_equals(board: Board) -> float | None:
    """P(the left image wins) between two equally rated models: the position effect."""
    return None if board.position is None else 1 / (1 + 10 ** (-board.position / 400))


def _position_line(board: Board) -> str:
    if board.position is None:
        return ""
    low, high = board.position_interval.low, board.position_interval.high
    return (f" Side shown: the left image's advantage is {board.position:+.0f} points "
            f"({low:+.0f} to {high:+.0f}), between equal models the left wins "
            f"{100 * left_wins_between_equals(board):.1f}%; the ratings are fitted with it "
            "removed.")


def markdown(board: Board, names: Sequence[str]) -> list[str]:
    """The ranking table and the pairwise win-rate matrix, as markdown lines."""
    rules = ""
    if board.min_matches or board.preliminary_below:
        rules = (f" Ranked by the lower end of the interval; a model needs "
                 f"{board.min_matches} matches to be ranked, and is preliminary below "
                 f"{board.preliminary_below}.")
    lines = [f"Judge: {board.judge}; {int(board.games.sum() / 2)} matches on "
             f"{board.prompts} prompts; Bradley-Terry ratings (Elo scale, {names[0]} = "
             f"{ANCHOR:.0f}) with 95% intervals from {board.prompts}-prompt bootstraps; prior "
             f"{board.prior:g} virtual tie per pair.{rules}{_position_line(board)}", "",
             "| rank | model | rating (95%) | P(beats " + names[0] + ") | matches | "
             "win rate, all matches |", "|---|---|---|---|---|---|"]
    rank = 0
    for k in board.ranked():
        p_base = 1 / (1 + 10 ** (-(board.ratings[k] - board.ratings[0]) / 400))
        games = board.matches(k)
        rate = board.wins[k].sum() / games if games else float("nan")
        rank += board.listed(k)
        shown = (str(rank) if board.listed(k) else "-")
        name = names[k] + (" (preliminary)" if board.preliminary(k) else "") + (
            f" (unranked: under {board.min_matches} matches)" if not board.listed(k) else "")
        lines.append(f"| {shown} | {name} | {_rating(board, k)} | {100 * p_base:.1f}% | "
                     f"{games:.0f} | {100 * rate:.1f}% |")
    order = board.ranked()
    lines += ["", "Row beats column, (W + T/2) / N, N matches:", "",
              "| | " + " | ".join(names[k] for k in order) + " |",
              "|---|" + "---|" * len(order)]
    for i in order:
        cells = []
        for j in order:
            rate = board.win_rate(i, j)
            cells.append("" if i == j else "n/a" if rate is None else
                         f"{100 * rate:.1f}% ({board.games[i, j]:.0f})")
        lines.append(f"| {names[i]} | " + " | ".join(cells) + " |")
    return lines


def chart(board: Board, names: Sequence[str], path: Path) -> Path:
    """Ratings with their intervals beside the win-rate matrix, one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    order = board.ranked()
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 1.6 + 0.55 * len(order)),
                                      gridspec_kw={"width_ratios": [1, 1.1]})
    for row, k in enumerate(reversed(order)):
        interval = board.intervals[k]
        left.errorbar(board.ratings[k], row,
                      xerr=[[board.ratings[k] - interval.low], [interval.high - board.ratings[k]]],
                      fmt="o", color="#4c72b0", capsize=4)
        left.text(interval.high, row, f"  {board.ratings[k]:.0f}", va="center", fontsize=8)
    left.axvline(ANCHOR, color="grey", linestyle="--", linewidth=1)
    left.set_yticks(range(len(order)), [names[k] for k in reversed(order)])
    left.set_xlabel(f"Bradley-Terry rating (Elo scale, {names[0]} = {ANCHOR:.0f}), 95% bootstrap")
    left.set_title(f"judge: {board.judge}", fontsize=10)
    matrix = np.full((len(order), len(order)), np.nan)
    for a, i in enumerate(order):
        for b, j in enumerate(order):
            rate = board.win_rate(i, j)
            if i != j and rate is not None:
                matrix[a, b] = rate
    right.imshow(matrix, cmap="RdBu", vmin=0, vmax=1)
    for a in range(len(order)):
        for b in range(len(order)):
            if not np.isnan(matrix[a, b]):
                right.text(b, a, f"{100 * matrix[a, b]:.0f}%", ha="center", va="center",
                           fontsize=8)
    right.set_xticks(range(len(order)), [names[k] for k in order], rotation=30, ha="right")
    right.set_yticks(range(len(order)), [names[k] for k in order])
    right.set_title("row beats column, (W + T/2) / N", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def summary(board: Board, names: Sequence[str]) -> dict:
    """The board as plain JSON values."""
    return {"judge": board.judge, "prompts": board.prompts, "prior": board.prior,
            "min_matches": board.min_matches, "preliminary_below": board.preliminary_below,
            "position": None if board.position is None else {
                "elo": board.position,
                "interval": [board.position_interval.low, board.position_interval.high],
                "left_wins_between_equals": left_wins_between_equals(board)},
            "models": [{"name": names[k], "model": board.models[k],
                        "rating": float(board.ratings[k]),
                        "interval": [board.intervals[k].low, board.intervals[k].high],
                        "lower": board.lower(k), "matches": board.matches(k),
                        "listed": board.listed(k), "preliminary": board.preliminary(k)}
                       for k in board.ranked()],
            "win_rate": {names[i]: {names[j]: board.win_rate(i, j)
                                    for j in range(len(names)) if j != i}
                         for i in range(len(names))}}


def write_boards(boards: list[Board], names: Sequence[str], out: Path, command: str) -> dict:
    """leaderboard.md, one leaderboard-<judge>.png per board and leaderboard.json in `out`."""
    out.mkdir(parents=True, exist_ok=True)
    lines = ["# Leaderboard", "", f"`{command}`", ""]
    for board in boards:
        picture = chart(board, names, out / f"leaderboard-{slug(board.judge)}.png")
        lines += [f"## {board.judge}", "", *markdown(board, names), "",
                  f"![{board.judge}]({picture.name})", ""]
    (out / "leaderboard.md").write_text("\n".join(lines))
    result = {"boards": [summary(b, names) for b in boards], "report": str(out / "leaderboard.md")}
    (out / "leaderboard.json").write_text(json.dumps(result, indent=1))
    return result


def read_board(path: Path) -> tuple[list[str], list[str], list[float]]:
    """(models, names, ratings) of a leaderboard.json's first board, best first."""
    try:
        board = json.loads(Path(path).read_text())["boards"][0]
        rows = board["models"]
        return ([r["model"] for r in rows], [r["name"] for r in rows],
                [float(r["rating"]) for r in rows])
    except FileNotFoundError:
        raise DataError(f"no such board: {path} (make one: python -m eval leaderboard)") \
            from None
    except (ValueError, KeyError, IndexError, TypeError):
        raise DataError(f"{path} is not a leaderboard.json of python -m eval leaderboard") \
            from None


def slug(text: str) -> str:
    """A file name part for a judge: `toy_judge (tie margin 0.1)` -> `toy-judge-tie-margin-0-1`."""
    return "-".join("".join(c if c.isalnum() else " " for c in text).split())
