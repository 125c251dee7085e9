"""`eval leaderboard`: the Bradley-Terry fit against hand computations, and the command."""

import json
import math
import subprocess
import sys
from datetime import datetime

import numpy as np
import pytest

from cli.errors import DataError
from eval.config import LeaderboardConfig
from eval.leaderboard import (
    Match,
    bradley_terry,
    bradley_terry_sides,
    fit,
    side_counts,
    win_counts,
)
from eval.votes import VoteRow, VoteStore
from tests.helpers import saved_config_gives
from tests.test_eval_auto import broken_toy  # noqa: F401  (a fixture)


def matches(first: str, second: str, wins: int, losses: int, ties: int = 0,
            prompt: str = "p") -> list[Match]:
    results = ["first"] * wins + ["second"] * losses + ["tie"] * ties
    return [Match(prompt, seed, first, second, r) for seed, r in enumerate(results)]


def test_two_models_three_wins_to_one_differ_by_ln_3():
    board = fit(matches("a", "b", 3, 1), ["a", "b"], "hand", prior=0, samples=0)
    # P(a beats b) = 3/4 = sigmoid(ln 3); on the Elo scale 400 log10(3) points
    assert board.ratings[0] == 1000
    assert board.ratings[1] == pytest.approx(1000 - 400 * math.log10(3), abs=1e-6)


def test_a_chain_separates_into_its_links():
    # a-b 3:1 and b-c 2:2, a and c never met: the likelihood is a product of the two links
    ms = matches("a", "b", 3, 1) + matches("b", "c", 2, 2)
    theta = bradley_terry(win_counts(ms, ["a", "b", "c"]), prior=0)
    assert theta[0] - theta[1] == pytest.approx(math.log(3), abs=1e-8)
    assert theta[1] == pytest.approx(theta[2], abs=1e-8)
    assert theta.mean() == pytest.approx(0, abs=1e-12)


def test_a_tie_is_half_a_win_to_each():
    # a won once and tied twice: a has 1 + 2/2 wins over b, b has 2/2 over a
    assert win_counts(matches("a", "b", 1, 0, ties=2), ["a", "b"]).tolist() == [[0, 2], [1, 0]]
    theta = bradley_terry(win_counts(matches("a", "b", 0, 0, ties=4), ["a", "b"]), prior=0)
    assert theta[0] == pytest.approx(theta[1])


def test_at_the_fit_every_model_is_expected_to_win_what_it_won():
    # the maximum-likelihood condition: sum_j n_ij sigmoid(theta_i - theta_j) = W_i
    rng = np.random.default_rng(1)
    wins = rng.integers(1, 9, size=(4, 4)).astype(float)
    np.fill_diagonal(wins, 0)
    theta = bradley_terry(wins, prior=0)
    games = wins + wins.T
    expected = (games / (1 + np.exp(theta[None, :] - theta[:, None]))).sum(axis=1)
    assert expected == pytest.approx(wins.sum(axis=1), abs=1e-6)


def test_the_fit_agrees_with_choix_on_the_same_votes():
    import choix

    rng = np.random.default_rng(3)
    wins = rng.integers(1, 12, size=(5, 5)) + 0.5 * rng.integers(0, 3, size=(5, 5))
    np.fill_diagonal(wins, 0)
    met = (wins + wins.T) > 0
    for prior in (0.0, 1.0):
        ours = bradley_terry(wins, prior=prior)
        # choix knows no prior: its virtual ties are given to it as half wins each way
        theirs = choix.ilsr_pairwise_dense(wins + prior / 2 * met, alpha=0.0, tol=1e-12)
        assert ours == pytest.approx(theirs - theirs.mean(), abs=1e-7)


def sided(first: str, second: str, results: str, left: str, prompt: str = "p") -> list[Match]:
    """Matches from a string of results: 'f' first won, 's' second won, 't' a tie."""
    named = {"f": "first", "s": "second", "t": "tie"}
    return [Match(prompt, seed, first, second, named[r], left=left)
            for seed, r in enumerate(results)]


def test_the_left_sides_advantage_on_a_hand_case():
    # a on the left beat b 6 of 8; b on the left beat a 4 of 8. With
    # logit P(left wins) = theta_left - theta_right + gamma, the two orientations give
    # theta_a - theta_b + gamma = logit(6/8) = ln 3 and theta_b - theta_a + gamma = logit(4/8) = 0,
    # so gamma = ln(3) / 2 and theta_a - theta_b = ln(3) / 2.
    ms = sided("a", "b", "ffffffss", left="a") + sided("a", "b", "ssssffff", left="b")
    theta, gamma = bradley_terry_sides(side_counts(ms, ["a", "b"]), prior=0)
    assert gamma == pytest.approx(math.log(3) / 2, abs=1e-9)
    assert theta[0] - theta[1] == pytest.approx(math.log(3) / 2, abs=1e-9)
    board = fit(ms, ["a", "b"], "hand", prior=0, samples=0)
    assert board.position == pytest.approx(400 * math.log10(3) / 2, abs=1e-6)
    assert board.ratings[1] == pytest.approx(1000 - 400 * math.log10(3) / 2, abs=1e-6)
    from eval.leaderboard import markdown, summary

    between_equals = summary(board, ["a", "b"])["position"]["left_wins_between_equals"]
    assert between_equals == pytest.approx(math.sqrt(3) / (1 + math.sqrt(3)))  # sigmoid(gamma)
    assert "the left image's advantage is +95 points" in markdown(board, ["a", "b"])[0]
    # a tie is half a win to each side, wherever it was shown
    counts = side_counts(sided("a", "b", "t", left="b"), ["a", "b"])
    assert counts[1, 0, 1] == counts[0, 1, 0] == 0.5 and counts.sum() == 1


def test_the_sided_fit_maximises_the_likelihood_written_out_match_by_match():
    from scipy.optimize import minimize

    rng = np.random.default_rng(0)
    models, truth, gamma = ["a", "b", "c"], np.array([0.3, 0.0, -0.5]), 0.4
    ms = []
    for k in range(600):
        i, j = rng.choice(3, size=2, replace=False)
        left = models[i] if rng.random() < 0.5 else models[j]
        logit = truth[i] - truth[j] + (gamma if left == models[i] else -gamma)
        draw = rng.random()
        result = "tie" if draw < 0.1 else "first" if draw < 0.1 + 0.9 / (1 + np.exp(-logit)) \
            else "second"
        ms.append(Match(f"p{k % 60}", k, models[i], models[j], result, left=left))

    def minus_loglik(x):  # x = theta_b, theta_c, gamma; theta_a = 0
        theta = dict(zip(models, [0.0, x[0], x[1]], strict=True))
        total = 0.0
        for m in ms:
            toward_first = theta[m.first] - theta[m.second] + (x[2] if m.left == m.first
                                                                 else -x[2])
            share = {"first": 1.0, "second": 0.0, "tie": 0.5}[m.result]
            total += share * np.logaddexp(0, -toward_first) \
                + (1 - share) * np.logaddexp(0, toward_first)
        return total

    best = minimize(minus_loglik, np.zeros(3), method="BFGS", options={"gtol": 1e-9}).x
    theta, fitted_gamma = bradley_terry_sides(side_counts(ms, models), prior=0)
    assert theta[1:] - theta[0] == pytest.approx(best[:2], abs=1e-4)
    assert fitted_gamma == pytest.approx(best[2], abs=1e-4)
    board = fit(ms, models, "simulated", prior=0, samples=200)
    interval = board.position_interval
    assert interval.low < 400 / math.log(10) * gamma < interval.high  # the truth, recovered
    assert interval.low > 0


def test_no_position_is_fitted_where_sides_cannot_be_told_from_models():
    # b always on the left: its strength and the left's advantage are one number
    ms = sided("a", "b", "ffsss", left="b")
    board = fit(ms, ["a", "b"], "hand", prior=1, samples=0)
    assert board.position is None and board.position_interval is None
    assert board.ratings[1] == pytest.approx(1000 + 400 * math.log10(3.5 / 2.5))
    # each won once, both times on the left: without a prior the advantage is unbounded
    once_each = sided("a", "b", "f", left="a") + sided("a", "b", "s", left="b")
    with pytest.raises(DataError, match="left side won every match"):
        bradley_terry_sides(side_counts(once_each, ["a", "b"]), prior=0)
    theta, gamma = bradley_terry_sides(side_counts(once_each, ["a", "b"]), prior=1)
    assert theta[0] == pytest.approx(theta[1]) and 0 < gamma < 2


def test_an_unbeaten_model_needs_the_prior_and_the_prior_pulls_to_even():
    unbeaten = matches("a", "b", 5, 0)
    with pytest.raises(DataError, match="prior above 0"):
        fit(unbeaten, ["a", "b"], "hand", prior=0, samples=0)
    board = fit(unbeaten, ["a", "b"], "hand", prior=1, samples=0)
    # one virtual tie: 5.5 wins to 0.5, so theta_a - theta_b = ln 11
    assert board.ratings[0] - board.ratings[1] == pytest.approx(400 * math.log10(11))


def test_an_unbeaten_model_or_group_is_refused_without_a_prior_though_all_others_won():
    # every model won something, but a never lost: its maximum-likelihood rating is
    # infinite (the fit used to stop at an arbitrary one after max_iter)
    ms = matches("a", "b", 2, 0) + matches("a", "c", 2, 0) + matches("b", "c", 1, 1)
    with pytest.raises(DataError, match=r"^a never lost or tied to the other models"):
        fit(ms, ["a", "b", "c"], "hand", prior=0, samples=0)
    # a group that traded wins within itself but never lost to the rest
    group = (matches("a", "b", 1, 1) + matches("b", "c", 3, 0) + matches("a", "d", 2, 0)
             + matches("c", "d", 1, 1))
    with pytest.raises(DataError, match=r"^a, b never lost or tied"):
        fit(group, ["a", "b", "c", "d"], "hand", prior=0, samples=0)
    assert np.isfinite(fit(ms, ["a", "b", "c"], "hand", prior=1, samples=0).ratings).all()
    beaten_once = ms + matches("a", "c", 0, 1)  # one loss makes the fit finite
    assert np.isfinite(fit(beaten_once, ["a", "b", "c"], "hand", prior=0,
                           samples=0).ratings).all()


def test_models_that_never_met_cannot_be_ranked_together():
    with pytest.raises(DataError, match="c never met a"):
        fit(matches("a", "b", 2, 1), ["a", "b", "c"], "hand", samples=0)
    with pytest.raises(DataError, match="not on the board"):
        fit(matches("a", "x", 2, 1), ["a", "b"], "hand", samples=0)


def test_the_bootstrap_resamples_prompts_and_brackets_the_fit():
    ms = [m for p in range(12) for m in matches("a", "b", 3 + p % 3, 2, prompt=f"p{p}")]
    board = fit(ms, ["a", "b"], "hand", samples=300)
    assert board.prompts == 12
    low, high = board.intervals[1].low, board.intervals[1].high
    assert low < board.ratings[1] < high < 1000  # b is worse, and the interval says so
    assert board.intervals[0].low == board.intervals[0].high == 1000  # the anchor


def vote(i: int, outcome: str, aligned: str) -> VoteRow:
    choice = {"base": "A", "aligned": "B", "tie": "tie"}[outcome]
    return VoteRow(f"v{i}", "ann", f"prompt {i % 3}", None, i, "toy", aligned, "base", choice,
                   outcome, 6, 7.5, 1000, datetime(2026, 12, 2, 12, 0, i))


def test_the_command_ranks_the_toy_above_a_broken_copy_by_scorer_and_by_votes(
        broken_toy, tmp_path):  # noqa: F811
    votes = tmp_path / "votes.duckdb"
    with VoteStore(votes) as store:
        for i, outcome in enumerate(["base"] * 7 + ["aligned"] + ["tie"] * 2):
            store.record(vote(i, outcome, str(broken_toy)))
    out = tmp_path / "board"
    done = subprocess.run(
        [sys.executable, "-m", "eval", "leaderboard", "--models", "toy", str(broken_toy),
         "--names", "toy", "broken", "--seeds", "1", "--steps", "6", "--votes", str(votes),
         "--out", str(out), "--images", str(tmp_path / "images")],
        capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    scorer, people = result["boards"]
    assert scorer["judge"].startswith("toy_judge") and people["judge"].startswith("people")
    for board in (scorer, people):
        assert [m["name"] for m in board["models"]] == ["toy", "broken"]
        broken = board["models"][1]
        assert broken["interval"][0] <= broken["rating"] <= broken["interval"][1] < 1000
    assert scorer["models"][0]["matches"] == 18  # 18 captions x 1 seed
    # the people's board is the 10 votes: 7 + 1 ties' halves against 1 + 1, plus the prior
    assert people["win_rate"]["toy"]["broken"] == pytest.approx(0.8)
    assert people["models"][1]["rating"] == pytest.approx(1000 - 400 * math.log10(8.5 / 2.5))
    report = (out / "leaderboard.md").read_text()
    assert "| 1 | toy |" in report and "Row beats column" in report
    assert saved_config_gives(out / "config.yaml", LeaderboardConfig, done.args[4:])
    assert (out / "leaderboard-people-blind-votes.png").stat().st_size > 10_000


def test_the_board_ranks_by_the_lower_end_lists_after_min_matches_and_marks_preliminary():
    from eval.leaderboard import Board, markdown, summary
    from eval.stats import Interval

    # b: rated higher on 12 matches; c: a little lower on 200; d: 4 matches
    games = np.zeros((4, 4))
    for i, j, n in ((0, 1, 6), (1, 2, 6), (0, 2, 194), (0, 3, 4)):
        games[i, j] = games[j, i] = n
    board = Board(["a", "b", "c", "d"], "people", np.array([1000.0, 1100.0, 1060.0, 1200.0]),
                  [Interval(float("nan"), float("nan")), Interval(950.0, 1250.0),
                   Interval(1030.0, 1090.0), Interval(900.0, 1500.0)],
                  games / 2, games, prompts=10, prior=1.0, min_matches=10,
                  preliminary_below=50)
    assert board.ranked() == [2, 0, 1, 3]  # c (1030) > a (1000, the anchor) > b (950); d last
    assert [board.listed(k) for k in range(4)] == [True, True, True, False]
    assert [board.preliminary(k) for k in range(4)] == [False, True, False, False]
    rows = [line for line in markdown(board, ["a", "b", "c", "d"]) if line.startswith("| ")]
    assert [row.split(" | ")[:2] for row in rows[1:5]] == [
        ["| 1", "c"], ["| 2", "a"], ["| 3", "b (preliminary)"],
        ["| -", "d (unranked: under 10 matches)"]]
    listed = [(m["name"], m["listed"], m["preliminary"], m["lower"])
              for m in summary(board, ["a", "b", "c", "d"])["models"]]
    assert listed == [("c", True, False, 1030.0), ("a", True, False, 1000.0),
                      ("b", True, True, 950.0), ("d", False, False, 900.0)]
