"""Win-rate statistics against values computed independently, edge cases included."""

import pytest

from eval.stats import (
    Interval,
    Judgement,
    clustered_bootstrap,
    sign_test,
    tally,
    tally_by_category,
    wilson,
)


def votes(prompt="p", **counts):
    return [Judgement(prompt, outcome) for outcome, k in counts.items() for _ in range(k)]


def test_wilson_interval_matches_published_values():
    # 8 of 10: the textbook Wilson 95% interval (0.4902, 0.9433)
    interval = wilson(8, 10)
    assert (interval.low, interval.high) == pytest.approx((0.49016, 0.94332), abs=1e-5)
    assert wilson(0, 10).high == pytest.approx(0.27753, abs=1e-5)  # zero successes
    assert wilson(0, 10).low == 0.0 and wilson(10, 10).high == 1.0
    assert wilson(10, 10).low == pytest.approx(0.72247, abs=1e-5)
    assert wilson(0, 0) is None


def test_sign_test_is_the_exact_two_sided_binomial():
    assert sign_test(5, 0) == 0.0625  # 2 * (1/2)^5
    assert sign_test(9, 1) == pytest.approx(2 * (1 + 10) / 1024)
    assert sign_test(1, 9) == sign_test(9, 1)
    assert sign_test(3, 3) == 1.0 and sign_test(0, 0) == 1.0
    assert sign_test(600, 400) < 1e-9  # large n stays exact and small


def test_win_rates_with_ties():
    t = tally(votes(aligned=6, base=2, tie=2, both_bad=5))
    assert (t.wins, t.losses, t.ties, t.both_bad, t.n) == (6, 2, 2, 5, 10)
    assert t.win_rate == pytest.approx(0.7)  # (6 + 2/2) / 10
    assert t.decisive_win_rate == pytest.approx(0.75)  # 6 / 8
    assert t.tie_rate == pytest.approx(0.2)
    assert t.both_bad_rate == pytest.approx(5 / 15)
    assert t.wilson == wilson(7, 10)
    assert t.decisive_wilson == wilson(6, 8)
    assert t.sign_test_p == pytest.approx(2 * (1 + 8 + 28) / 256)


def test_no_votes_all_ties_and_one_side_only():
    empty = tally([])
    assert empty.win_rate is None and empty.decisive_win_rate is None
    assert empty.wilson is None and empty.bootstrap is None and empty.sign_test_p == 1.0
    ties = tally(votes(tie=12))
    assert ties.win_rate == 0.5 and ties.decisive_win_rate is None and ties.tie_rate == 1.0
    assert ties.sign_test_p == 1.0 and ties.wilson.contains(0.5)
    one_side = tally(votes(aligned=7))
    assert one_side.win_rate == 1.0 and one_side.decisive_win_rate == 1.0
    assert one_side.sign_test_p == pytest.approx(2 / 128)
    assert one_side.wilson.high == 1.0 and one_side.wilson.low < 1.0
    only_bad = tally(votes(both_bad=3))
    assert only_bad.n == 0 and only_bad.win_rate is None and only_bad.both_bad_rate == 1.0


def test_bootstrap_resamples_prompts_so_correlated_votes_widen_the_interval():
    # five prompts the aligned model always wins, five it always loses, ten votes each
    data = [v for i in range(5) for v in votes(f"win {i}", aligned=10)]
    data += [v for i in range(5) for v in votes(f"lose {i}", base=10)]
    clustered = clustered_bootstrap(data, samples=4000, seed=1)
    naive = wilson(50, 100)
    assert clustered.contains(0.5)
    assert clustered.high - clustered.low > 1.5 * (naive.high - naive.low)
    assert clustered_bootstrap(data, samples=4000, seed=1) == clustered  # seeded
    # with independent prompts (one vote each) it agrees with Wilson roughly
    spread = [Judgement(f"p{i}", "aligned" if i % 2 else "base") for i in range(200)]
    independent = clustered_bootstrap(spread, samples=4000, seed=1)
    assert independent.high - independent.low == pytest.approx(
        wilson(100, 200).high - wilson(100, 200).low, rel=0.15)


def test_left_side_win_rate_checks_position_bias():
    left_always_wins = [Judgement("p", "aligned", aligned_left=True),
                        Judgement("p", "base", aligned_left=False),
                        Judgement("p", "aligned", aligned_left=True),
                        Judgement("p", "tie", aligned_left=False),  # not decisive
                        Judgement("p", "base")]  # side unknown
    t = tally(left_always_wins)
    assert t.left_win_rate == 1.0 and t.left_decisive_votes == 3


def test_tallies_per_category():
    data = votes("a", aligned=3) + [Judgement("b", "base", category="animals")] * 2
    data += [Judgement("c", "aligned", category="art")]
    tallies = tally_by_category(data)
    assert list(tallies) == ["all", "animals", "art"]
    assert tallies["all"].n == 6 and tallies["animals"].win_rate == 0.0
    assert tallies["art"].wins == 1


def test_unknown_outcomes_are_refused():
    with pytest.raises(ValueError, match="unknown outcome"):
        tally([Judgement("p", "left")])


def test_interval_contains():
    assert Interval(0.4, 0.6).contains(0.5) and not Interval(0.4, 0.6).contains(0.7)
