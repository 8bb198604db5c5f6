"""Statistics for comparing fine-tuning methods: paired differences, bootstrap intervals, Pareto sets.

Two methods run on the same tasks with the same seeds form pairs: the difference of their
accuracies on one (task, seed) removes what the task and the seed's data order contribute to
both. The mean of those differences gets a percentile-bootstrap confidence interval, resampling
the pairs with replacement; a seeded generator makes every interval reproducible.
"""

from __future__ import annotations

import statistics
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from heartlora.errors import HeartLoRAError


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value).

    Raises:
        HeartLoRAError: for an empty sequence.
    """
    if not values:
        raise HeartLoRAError("mean_std needs at least one value")
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def bootstrap_ci(
    values: Sequence[float], confidence: float = 0.95, resamples: int = 10_000, seed: int = 0
) -> tuple[float, float]:
    """Percentile-bootstrap confidence interval of the mean of ``values``.

    Draws ``resamples`` samples of ``len(values)`` values with replacement (numpy's PCG64 seeded
    with ``seed``) and returns the (1 − confidence)/2 and (1 + confidence)/2 quantiles of their
    means. One value gives the degenerate interval (v, v).

    Raises:
        HeartLoRAError: for no values, ``confidence`` outside (0, 1) or ``resamples`` < 1.
    """
    if not values:
        raise HeartLoRAError("bootstrap_ci needs at least one value")
    if not 0.0 < confidence < 1.0:
        raise HeartLoRAError(f"confidence must be in (0, 1), got {confidence}")
    if resamples < 1:
        raise HeartLoRAError(f"resamples must be at least 1, got {resamples}")
    data = np.asarray(values, dtype=np.float64)
    generator = np.random.default_rng(seed)
    means = data[generator.integers(0, len(data), size=(resamples, len(data)))].mean(axis=1)
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(means, [tail, 1.0 - tail])
    return float(low), float(high)


@dataclass(frozen=True)
class PairedComparison:
    """``candidate`` − ``baseline`` over their shared (task, seed) pairs.

    Attributes:
        differences: one accuracy difference per pair, in the sorted order of the pairs.
        mean: mean difference (points).
        low, high: bootstrap confidence interval of the mean.
        wins: pairs where the candidate is strictly ahead.
    """

    differences: tuple[float, ...]
    mean: float
    low: float
    high: float
    wins: int

    @property
    def pairs(self) -> int:
        """How many (task, seed) pairs were compared."""
        return len(self.differences)


def paired_comparison(
    candidate: Mapping[Hashable, float],
    baseline: Mapping[Hashable, float],
    confidence: float = 0.95,
    resamples: int = 10_000,
    seed: int = 0,
) -> PairedComparison:
    """Compare two methods on the keys (e.g. (task, seed)) both have.

    Raises:
        HeartLoRAError: when the two share no key.
    """
    keys = sorted(set(candidate) & set(baseline), key=repr)
    if not keys:
        raise HeartLoRAError("paired comparison: the two methods share no (task, seed) pair")
    differences = tuple(float(candidate[k]) - float(baseline[k]) for k in keys)
    low, high = bootstrap_ci(differences, confidence, resamples, seed)
    return PairedComparison(
        differences, statistics.fmean(differences), low, high, sum(d > 0 for d in differences)
    )


CHANCE_MARGIN_SE = 2.0
"""How many binomial standard errors above chance an accuracy must be to count as learned."""


def at_chance(accuracy: float, num_classes: int, images: int) -> bool:
    """Whether an accuracy (%) on ``images`` evaluation images is no better than guessing.

    Chance is 100 / ``num_classes`` (the mini-VTAB and VTAB-1k evaluation splits are close to
    balanced); a run is *at chance* when its accuracy is within `CHANCE_MARGIN_SE` binomial
    standard errors of it: 50 % ± 3.2 on 1000 images of two classes, 10 % ± 1.9 on ten.

    Raises:
        HeartLoRAError: ``num_classes`` < 2 or ``images`` < 1.
    """
    if num_classes < 2 or images < 1:
        raise HeartLoRAError(
            f"at_chance needs at least 2 classes and 1 image, got {num_classes} and {images}"
        )
    p = 1.0 / num_classes
    margin = CHANCE_MARGIN_SE * 100.0 * (p * (1.0 - p) / images) ** 0.5
    return accuracy <= 100.0 * p + margin


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the (cost, value) points that no other point dominates.

    A point is dominated when another costs no more and is worth at least as much, and is
    strictly better in one of the two. Equal points are all kept. Returned in order of cost.
    """
    front = [
        i
        for i, (cost, value) in enumerate(points)
        if not any(
            c <= cost and v >= value and (c < cost or v > value)
            for j, (c, v) in enumerate(points)
            if j != i
        )
    ]
    return sorted(front, key=lambda i: (points[i][0], -points[i][1]))
