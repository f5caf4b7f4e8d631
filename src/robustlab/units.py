"""Pixel units: specs and the command line speak 0-255 (ε = 8 means 8/255); the library
works in [0, 1]. This module is the one place where one becomes the other."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TypeVar

V = TypeVar("V")

PIXEL_UNITS = ("eps", "step", "xi")  # converted from 0-255 to [0, 1]; sigma stays in 0-255


def from_255(value: float) -> float:
    """A pixel quantity in 0-255 units (ε, step, ξ) in the library's [0, 1] units."""
    return value / 255


def pgd_budget(text: str) -> tuple[float, float, int]:
    """``"EPS:STEP:STEPS"`` in 0-255 units (adversarial training's PGD, e.g. ``"8:2:7"``) as
    ε and step in [0, 1] and a step count; ValueError when it is not of that form."""
    eps, step, steps = str(text).split(":")
    return from_255(float(eps)), from_255(float(step)), int(steps)


def to_unit(params: Mapping[str, V]) -> dict[str, V | float]:
    """Parameters with their 0-255 pixel quantities (eps, step, xi) in [0, 1] units."""
    return {
        k: (from_255(v) if k in PIXEL_UNITS and isinstance(v, int | float) else v)
        for k, v in params.items()
    }


# what every record says of its numbers (robustlab run writes it into each record)
RECORD_UNITS = {
    "eps, xi, sigma, levels, eps_max, resolution": "0-255 pixel levels (8 means 8/255)",
    "params, config": "the library's [0, 1] pixel units (ℓ2 radii: sums over pixels)",
    "rates": "fractions in [0, 1] with a 95 % Wilson interval (low, high)",
    "cost": "passes: images through a network; seconds: wall; memory: MiB",
}
