"""The Boundary attack (Brendel et al. 2018): a decision-based attack that needs labels only.

Start from an adversarial point: uniform noise blended toward the original by binary
search. Then, per example, repeat: draw a Gaussian direction orthogonal to the line to
the original, take a spherical step of relative size ``spherical_step`` (staying at the
same distance), then a step toward the original of relative size ``source_step``; keep
the candidate if it is adversarial and closer. Every ``update_every`` steps the step
sizes adapt to the recent success rates (spherical: raise both above 50 %, lower both
below 20 % over the last 100 checks; source: raise above 25 %, lower below 10 % over the
last 30), as in Foolbox 3. Examples stop when their source step falls below
``convergence`` or their queries reach ``max_queries``; only the others are evaluated.

With ``candidates`` = K > 1, each step draws K proposals per example and evaluates them
in one batch (as Brendel et al.'s original implementation could), keeping the closest
adversarial one; a step then counts as a success when any proposal succeeds, so the step
sizes grow to match. This costs K queries a step but far fewer sequential model calls for
the same distance; pair it with ``update_every=1`` and short histories (e.g. 10 and 5).
"""

from __future__ import annotations

import torch
from torch import nn

from robustlab.attacks.base import ATTACKS, Attack, AttackResult, check_steps, per_example_norm


class SuccessHistory:
    """The last ``maxlen`` successes (0/1) of each example; NaN marks empty slots."""

    def __init__(self, n: int, maxlen: int, device: torch.device) -> None:
        self.data = torch.full((n, maxlen), float("nan"), device=device)
        self.next = torch.zeros(n, dtype=torch.long, device=device)

    def append(self, index: torch.Tensor, success: torch.Tensor) -> None:
        self.data[index, self.next[index]] = success
        self.next[index] = (self.next[index] + 1) % self.data.shape[1]

    def full(self) -> torch.Tensor:
        return ~self.data.isnan().any(1)

    def rate(self) -> torch.Tensor:
        return self.data.nanmean(1)

    def clear(self, which: torch.Tensor) -> None:
        self.data[which] = float("nan")


@ATTACKS.register()
class Boundary(Attack):
    """Boundary attack with ``steps`` iterations and an optional per-example query budget."""

    name = "boundary"
    gradient = False

    def __init__(
        self,
        model: nn.Module,
        steps: int = 5000,
        spherical_step: float = 1e-2,
        source_step: float = 1e-2,
        step_adaptation: float = 1.5,
        update_every: int = 10,
        max_queries: int | None = None,
        init_draws: int = 100,
        init_search_steps: int = 25,
        convergence: float = 1e-7,
        candidates: int = 1,
        spherical_history: int = 100,
        step_history: int = 30,
        *,
        seed: int = 0,
    ) -> None:
        super().__init__(model, seed=seed)
        self.steps = check_steps("steps", steps)
        self.update_every = check_steps("update_every", update_every)
        self.init_draws = check_steps("init_draws", init_draws)
        self.init_search_steps = check_steps("init_search_steps", init_search_steps)
        self.candidates = check_steps("candidates", candidates)
        self.spherical_history = check_steps("spherical_history", spherical_history)
        self.step_history = check_steps("step_history", step_history)
        if min(spherical_step, source_step, convergence) <= 0 or step_adaptation <= 1:
            raise ValueError("step sizes and convergence must be > 0, step_adaptation > 1")
        if max_queries is not None:
            check_steps("max_queries", max_queries)
        self.spherical_step, self.source_step = float(spherical_step), float(source_step)
        self.step_adaptation, self.convergence = float(step_adaptation), float(convergence)
        self.max_queries = max_queries

    def _run(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        target: torch.Tensor | None,
        generator: torch.Generator,
    ) -> AttackResult:
        self._labels, self._targeted = (y if target is None else target), target is not None
        self._queries = torch.zeros(len(x), dtype=torch.long, device=x.device)
        best, found = self._initialise(x, generator)
        n = len(x)
        spherical = torch.full((n,), self.spherical_step, device=x.device, dtype=x.dtype)
        source = torch.full_like(spherical, self.source_step)
        spherical_stats = SuccessHistory(n, self.spherical_history, x.device)
        step_stats = SuccessHistory(n, self.step_history, x.device)
        for step in range(1, self.steps + 1):
            active = found & (source >= self.convergence) & (best != x).flatten(1).any(1)
            if self.max_queries is not None:
                active &= self._queries < self.max_queries
            index = active.nonzero().squeeze(1)
            if len(index) == 0:
                break
            k = self.candidates
            repeated = index.repeat(k)
            proposals, spherical_proposals, distance = self._propose(
                x[repeated], best[repeated], spherical[repeated], source[repeated], generator
            )
            check = step % self.update_every == 0
            if check:  # one model call for both sets of proposals
                both = self._is_adversarial(
                    torch.cat([proposals, spherical_proposals]), repeated.repeat(2)
                )
                is_adv, spherical_adv = both.chunk(2)
            else:
                is_adv = self._is_adversarial(proposals, repeated)
            new_distance = (x[repeated] - proposals).flatten(1).norm(dim=1)
            score = torch.where(is_adv & (new_distance < distance), new_distance, float("inf"))
            choice = score.view(k, -1).argmin(0)  # the closest adversarial proposal
            improved = score.view(k, -1).gather(0, choice[None])[0].isfinite()
            picked = proposals.view(k, len(index), *x.shape[1:])[choice, torch.arange(len(index))]
            best[index[improved]] = picked[improved]
            if check:
                spherical_stats.append(index, spherical_adv.view(k, -1).any(0).float())
                step_stats.append(index, is_adv.view(k, -1).any(0).float())
                self._adapt(spherical, source, spherical_stats, step_stats)
        return AttackResult(best, self._queries)

    def _is_adversarial(self, candidates: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """Query the model (counted per example): is each candidate misclassified / on target?"""
        self._queries.index_add_(0, index, torch.ones_like(index))
        with torch.no_grad():
            predicted: torch.Tensor = self.model(candidates).argmax(1)
        labels = self._labels[index]
        return predicted == labels if self._targeted else predicted != labels

    def _initialise(
        self, x: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Adversarial starting points: blended uniform noise, blend found by binary search."""
        everyone = torch.arange(len(x), device=x.device)
        noise = x.clone()
        found = self._is_adversarial(x, everyone)  # already misclassified: distance 0
        for _ in range(self.init_draws):
            todo = everyone[~found]
            if len(todo) == 0:
                break
            draw = torch.rand(x[todo].shape, generator=generator, device=x.device, dtype=x.dtype)
            hit = self._is_adversarial(draw, todo)
            noise[todo[hit]] = draw[hit]
            found[todo[hit]] = True
        blend = everyone[found & (noise != x).flatten(1).any(1)]
        low = torch.zeros(len(blend), device=x.device, dtype=x.dtype)
        high = torch.ones_like(low)
        for _ in range(self.init_search_steps):
            mid = (low + high) / 2
            hit = self._is_adversarial(self._mix(x[blend], noise[blend], mid), blend)
            high, low = torch.where(hit, mid, high), torch.where(hit, low, mid)
        best = x.clone()
        best[blend] = self._mix(x[blend], noise[blend], high)
        return best, found

    @staticmethod
    def _mix(x: torch.Tensor, noise: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        weight = weight.view(-1, *([1] * (x.ndim - 1)))
        return (1 - weight) * x + weight * noise

    @staticmethod
    def _propose(
        x: torch.Tensor,
        best: torch.Tensor,
        spherical: torch.Tensor,
        source: torch.Tensor,
        generator: torch.Generator,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """A spherical step, then a step toward ``x``.

        Returns (candidates, spherical candidates, current distance to ``x``).
        """
        to_source = x - best
        distance = per_example_norm(to_source, 2)
        direction = to_source / distance
        eta = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        eta = eta - (eta * direction).flatten(1).sum(1).view_as(distance) * direction
        eta = eta * (spherical.view_as(distance) * distance / per_example_norm(eta, 2))
        # Pythagoras: the orthogonal step moved the point off the sphere by this factor
        spherical_candidates = (
            x + (eta - to_source) / (spherical.square() + 1).sqrt().view_as(distance)
        ).clamp(0, 1)
        new_to_source = x - spherical_candidates
        new_distance = per_example_norm(new_to_source, 2)
        length = (source.view_as(distance) * distance + new_distance - distance).clamp(min=0)
        candidates = (spherical_candidates + length / new_distance * new_to_source).clamp(0, 1)
        return candidates, spherical_candidates, distance.flatten()

    def _adapt(
        self,
        spherical: torch.Tensor,
        source: torch.Tensor,
        spherical_stats: SuccessHistory,
        step_stats: SuccessHistory,
    ) -> None:
        """Adapt step sizes in place from the success rates of full histories."""
        factor = self.step_adaptation
        full, rate = spherical_stats.full(), spherical_stats.rate()
        up, down = full & (rate > 0.5), full & (rate < 0.2)
        for sizes in (spherical, source):
            sizes.mul_(torch.where(up, factor, 1.0)).div_(torch.where(down, factor, 1.0))
        spherical_stats.clear(up | down)
        full, rate = step_stats.full(), step_stats.rate()
        up, down = full & (rate > 0.25), full & (rate < 0.1)
        source.mul_(torch.where(up, factor, 1.0)).div_(torch.where(down, factor, 1.0))
        step_stats.clear(up | down)
