"""Rates with confidence intervals: every rate robustlab reports carries one."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TypedDict


class IntervalRecord(TypedDict):
    """A share with its 95 % interval: what a rate and a restoration accuracy both carry."""

    n: int
    rate: float
    low: float
    high: float


class RateRecord(TypedDict):
    """A rate as records store it (:meth:`Rate.to_dict`)."""

    hits: int
    n: int
    rate: float  # NaN for n = 0
    low: float  # the Wilson 95 % interval
    high: float


@dataclass(frozen=True)
class Rate:
    """``hits`` out of ``n``, with a Wilson score interval at 95 % (z = 1.96)."""

    hits: int
    n: int

    @property
    def value(self) -> float:
        return self.hits / self.n if self.n else float("nan")

    @property
    def interval(self) -> tuple[float, float]:
        return wilson_interval(self.hits, self.n)

    def to_dict(self) -> RateRecord:
        low, high = self.interval
        return {"hits": self.hits, "n": self.n, "rate": self.value, "low": low, "high": high}

    def __str__(self) -> str:
        if not self.n:
            return "n/a (n=0)"
        low, high = self.interval
        return f"{100 * self.value:.1f}% [{100 * low:.1f}, {100 * high:.1f}] (n={self.n})"


def wilson_interval(hits: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion.

    .. math:: \\frac{\\hat p + z^2/2n \\pm z\\sqrt{\\hat p(1-\\hat p)/n + z^2/4n^2}}{1 + z^2/n}
    """
    if n == 0:
        return (0.0, 1.0)
    p = hits / n
    centre = p + z * z / (2 * n)
    spread = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    denominator = 1 + z * z / n
    # in exact arithmetic low <= p <= high; in floating point, at p = 0 or 1, the bound can
    # miss p by 1e-17 (a negative error bar, which plotting refuses): keep p inside
    low = min(p, max(0.0, (centre - spread) / denominator))
    high = max(p, min(1.0, (centre + spread) / denominator))
    return (low, high)
