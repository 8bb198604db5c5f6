import pytest

from heartlora.training.stats import bootstrap_ci, mean_std, paired_comparison, pareto_front


def test_bootstrap_ci_is_deterministic_per_seed_and_brackets_the_mean():
    values = [0.5, -1.0, 2.0, 1.5, 0.0, 3.0, -0.5, 1.0, 2.5]
    low, high = bootstrap_ci(values, seed=3)
    assert (low, high) == bootstrap_ci(values, seed=3)
    # with few resamples another seed gives another interval
    assert bootstrap_ci(values, resamples=50, seed=3) != bootstrap_ci(values, resamples=50, seed=4)
    mean = sum(values) / len(values)
    assert low < mean < high
    # the interval narrows with the confidence level and is inside the data's range
    narrow = bootstrap_ci(values, confidence=0.5, seed=3)
    assert low <= narrow[0] < narrow[1] <= high and min(values) < low and high < max(values)


def test_bootstrap_ci_of_constant_or_single_values_is_degenerate():
    assert bootstrap_ci([1.25] * 5) == (1.25, 1.25)
    assert bootstrap_ci([2.0]) == (2.0, 2.0)
    for bad in (
        {"values": []},
        {"values": [1.0], "confidence": 1.0},
        {"values": [1.0], "resamples": 0},
    ):
        with pytest.raises(ValueError):
            bootstrap_ci(**bad)


def test_paired_comparison_uses_shared_pairs_only():
    candidate = {("a", 0): 80.0, ("a", 1): 82.0, ("b", 0): 60.0, ("b", 1): 61.0}
    baseline = {("a", 0): 79.0, ("a", 1): 83.0, ("b", 0): 57.0, ("c", 0): 10.0}
    result = paired_comparison(candidate, baseline, seed=1)
    assert result.pairs == 3 and sorted(result.differences) == [-1.0, 1.0, 3.0]
    assert result.mean == pytest.approx(1.0) and result.wins == 2
    assert result.low <= result.mean <= result.high
    with pytest.raises(ValueError, match="share no"):
        paired_comparison({("a", 0): 1.0}, {("b", 0): 1.0})


def test_pareto_front_keeps_only_undominated_points():
    points = [(100, 70.0), (50, 60.0), (80, 75.0), (120, 75.0), (80, 75.0), (200, 80.0), (60, 55.0)]
    # (100, 70) is beaten by (80, 75); (120, 75) by (80, 75); (60, 55) by (50, 60)
    assert pareto_front(points) == [1, 2, 4, 5]
    assert pareto_front([(1, 1.0)]) == [0]


def test_mean_std():
    assert mean_std([1.0, 3.0]) == (2.0, pytest.approx(1.4142135))
    assert mean_std([5.0]) == (5.0, 0.0)
