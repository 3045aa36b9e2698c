"""Bootstrap confidence intervals: one score's, and a paired difference's between two systems.

A *statistic* maps an array of sample indices to a number: the mean of per-sample scores
(``mean_statistic``), a corpus BLEU recomputed from the resampled sentences, an FID from the
resampled generated images. Resampling the indices rather than the scores lets one core serve all
of them, and makes a comparison *paired*: both systems are scored on the same resampled samples,
so the interval reflects how the difference varies over samples, not each system's own spread.

Percentile intervals from a seeded ``numpy`` generator (reproducible, the global RNG untouched).

>>> a = np.array([0.2, 0.4, 0.5, 0.1, 0.3, 0.6, 0.2, 0.4])
>>> same = paired_difference_interval(mean_statistic(a), mean_statistic(a.copy()), len(a), n_resamples=200)
>>> same.estimate, same.low, same.high, same.significant
(0.0, 0.0, 0.0, False)
>>> better = paired_difference_interval(mean_statistic(a + 0.3), mean_statistic(a), len(a), n_resamples=200)
>>> round(better.estimate, 3), better.low > 0, better.significant
(0.3, True, True)
>>> one = bootstrap_interval(mean_statistic(a), len(a), n_resamples=200, seed=1)
>>> one.low <= one.estimate <= one.high
True
"""

from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np

Statistic = Callable[[np.ndarray], float]


@dataclass(frozen=True)
class Interval:
    """A point estimate (on all samples) and its bootstrap interval."""

    estimate: float
    low: float
    high: float
    confidence: float = 0.95
    n_resamples: int = 0

    @property
    def significant(self) -> bool:
        """For a difference: the interval excludes zero."""
        return not (self.low <= 0.0 <= self.high)

    def to_dict(self) -> dict:
        return {**asdict(self), "significant": self.significant}


def resample_indices(n: int, n_resamples: int = 1000, seed: int = 0) -> np.ndarray:
    """``[n_resamples, n]`` indices drawn with replacement from ``range(n)``.

    >>> resample_indices(4, n_resamples=2, seed=0).shape
    (2, 4)
    """
    if n < 1:
        raise ValueError("bootstrap needs at least one sample")
    return np.random.default_rng(seed).integers(0, n, size=(n_resamples, n))


def bootstrap_interval(statistic: Statistic, n: int, *, n_resamples: int = 1000, confidence: float = 0.95,
                       seed: int = 0) -> Interval:
    """The statistic on all ``n`` samples and its percentile interval over ``n_resamples`` resamples."""
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    estimate = float(statistic(np.arange(n)))
    draws = np.array([statistic(idx) for idx in resample_indices(n, n_resamples, seed)], dtype=float)
    draws = draws[np.isfinite(draws)]
    if not len(draws) or not np.isfinite(estimate):
        return Interval(estimate, float("nan"), float("nan"), confidence, n_resamples)
    tail = (1 - confidence) / 2
    low, high = np.quantile(draws, [tail, 1 - tail])
    return Interval(estimate, float(low), float(high), confidence, n_resamples)


def paired_difference_interval(statistic_a: Statistic, statistic_b: Statistic, n: int, *, n_resamples: int = 1000,
                               confidence: float = 0.95, seed: int = 0) -> Interval:
    """Interval of ``statistic_a - statistic_b``, both computed on the *same* resampled indices."""
    return bootstrap_interval(lambda idx: statistic_a(idx) - statistic_b(idx), n, n_resamples=n_resamples,
                              confidence=confidence, seed=seed)


def mean_statistic(scores) -> Statistic:
    """The mean of per-sample scores (sentence ROUGE-L, CLIP score per image) over the given indices."""
    values = np.asarray(scores, dtype=float)
    return lambda idx: float(values[idx].mean())
