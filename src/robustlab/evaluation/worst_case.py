"""The worst case per image over every attack of an evaluation, and who broke each image.

An image counts as robust only if it is classified correctly and no attack broke it; the
robust accuracy is then an upper bound (a stronger attack may break more). Each attack's
mask of broken images is kept, so the failure checks can ask which *kind* of attack broke
an image: Square breaking images no gradient attack broke is the classic sign of masked
gradients (AutoAttack's check), a transferred or black-box attack beating the white-box
ones is Carlini et al.'s and Pintor et al.'s.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch

Role = Literal["white", "black", "single"]  # white-box iterative, black-box, single-step


@dataclass
class WorstCase:
    """Per image: correct on the clean input, and the images each attack broke (in order)."""

    correct: torch.Tensor  # (n,) bool
    broke: dict[str, torch.Tensor] = field(default_factory=dict)
    roles: dict[str, Role] = field(default_factory=dict)

    @property
    def n(self) -> int:
        return len(self.correct)

    def add(self, name: str, role: Role, broken: torch.Tensor) -> int:
        """Record the images attack ``name`` broke; the number no earlier attack had broken."""
        if name in self.broke:
            raise ValueError(f"attack {name!r} recorded twice; give each step its own name")
        new = int((broken & self.robust).sum())
        self.broke[name], self.roles[name] = broken & self.correct, role
        return new

    @property
    def robust(self) -> torch.Tensor:
        """Images no attack broke (and classified correctly)."""
        return self.correct & ~self.by()

    def by(self, *roles: Role) -> torch.Tensor:
        """Images broken by some attack of these roles (all attacks if none given)."""
        chosen = [m for name, m in self.broke.items() if not roles or self.roles[name] in roles]
        return torch.stack(chosen).any(0) if chosen else torch.zeros_like(self.correct)

    def first_breakers(self) -> dict[str, int]:
        """Per attack, the images it broke first (in running order); sums to the broken."""
        counts, seen = {}, torch.zeros_like(self.correct)
        for name, mask in self.broke.items():
            counts[name] = int((mask & ~seen).sum())
            seen |= mask
        return counts

    def breaker_of(self) -> list[str]:
        """Per image, the first attack that broke it ("" if none did)."""
        first = [""] * self.n
        for name, mask in reversed(list(self.broke.items())):
            for i in mask.nonzero().flatten().tolist():
                first[i] = name
        return first
