r"""Warm starts for CBPDN under attack: start each solve from the nearest earlier one.

An iterative attack purifies a slowly moving image hundreds of times: Square changes a few
pixels per query, APGD moves by one step, DeepFool by a small step. ADMM converges from any
start, so the solve of the moved image can start from the sparse code :math:`y`, the scaled
dual :math:`u` and the penalty :math:`\rho` of the earlier solve of the same image and stop
by the same rule (relative residuals under ``rel_tol``), in a fraction of the iterations.

"The same image" is found by distance, not by position (attacks query changing subsets of
a batch): the nearest remembered high-pass signal :math:`s'` is used when it is nearer
than the cold start's implicit one, ``‖s − s'‖ < match · ‖s‖`` (a zero code is the exact
solution for :math:`s' = 0`), with ``match = 0.5`` by default. Only solves that met the
tolerance are remembered, so the result equals the cold solve's within the solver's
tolerance (not bit for bit); where ``max_iter`` stops every solve first (sporco's adaptive
ρ on some images), nothing is remembered and every solve stays cold.

Warm starts are scoped: :meth:`~robustlab.defenses.csc.purifier.CSCPurifier.warm_start`
opens a memory for one attack run and drops it after (attacks enter it through
:func:`robustlab.models.base.warm_started`), so the same seed still gives the same attack,
and every prediction robustlab scores (clean accuracy, the final adversarials) is a cold
solve, the defense as specified.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from robustlab.defenses.csc.cbpdn import CBPDNResult, CBPDNState

Key = tuple[int, int, int, str, torch.dtype]  # cluster, height, width, device, dtype


class _Bank:
    """``capacity`` slots of earlier solves, updated in place (no copy of the bank per call):
    an image's solve replaces the slot it started from, a new image the least recently used."""

    def __init__(self, signal: torch.Tensor, maps: int, capacity: int) -> None:
        shape = signal.shape[1:]
        self.signals = signal.new_zeros(capacity, *shape)
        self.y = signal.new_zeros(capacity, maps, *shape[1:])
        self.u = torch.zeros_like(self.y)
        self.rho = signal.new_zeros(capacity)
        self.used = torch.full((capacity,), -1, dtype=torch.long, device=signal.device)
        self.clock = 0

    def filled(self) -> torch.Tensor:
        return (self.used >= 0).nonzero().squeeze(1)

    def store(self, slots: torch.Tensor, signal: torch.Tensor, state: CBPDNState) -> None:
        self.clock += 1
        for bank, new in ((self.signals, signal), (self.y, state.y), (self.u, state.u)):
            bank.index_copy_(0, slots, new.detach())
        self.rho.index_copy_(0, slots, state.rho.detach())
        self.used.index_fill_(0, slots, self.clock)


@dataclass
class SolveCounts:
    """Solves and ADMM iterations of a purifier (all solves, and the warm-started ones)."""

    solves: int = 0
    iterations: int = 0
    warm_solves: int = 0
    warm_iterations: int = 0

    def add(self, iterations: torch.Tensor, warm: torch.Tensor) -> None:
        self.solves += len(iterations)
        self.iterations += int(iterations.sum())
        self.warm_solves += int(warm.sum())
        self.warm_iterations += int(iterations[warm].sum())


@dataclass
class WarmStarts:
    """Remembered solves (at most ``capacity`` per dictionary and size; the oldest go first).

    Memory: ``capacity`` images of two coefficient stacks each (M × H × W floats twice):
    512 images of 64 maps of 28 × 28 pixels take 200 MB.
    """

    capacity: int = 512
    match: float = 0.5
    _banks: dict[Key, _Bank] = field(default_factory=dict)

    def start(
        self, key: Key, signal: torch.Tensor, rho0: float, maps: int
    ) -> tuple[CBPDNState, torch.Tensor, torch.Tensor]:
        """The starting state of each image of ``signal`` (B, C, H, W): its nearest
        remembered solve, or the cold start (zeros, ρ0). Also which rows are warm and the
        bank slots they start from (-1: cold)."""
        batch, (h, w) = len(signal), signal.shape[-2:]
        y = signal.new_zeros(batch, maps, h, w)
        u, rho = torch.zeros_like(y), signal.new_full((batch,), rho0)
        source = torch.full((batch,), -1, dtype=torch.long, device=signal.device)
        bank = self._banks.get(key)
        slots = bank.filled() if bank is not None else source[:0]
        if bank is not None and batch and len(slots):
            flat = signal.flatten(1)
            distance, nearest = torch.cdist(flat, bank.signals[slots].flatten(1)).min(1)
            warm = distance < self.match * flat.norm(dim=1)
            rows, chosen = warm.nonzero().squeeze(1), slots[nearest[warm]]
            y[rows], u[rows], rho[rows] = bank.y[chosen], bank.u[chosen], bank.rho[chosen]
            source[rows] = chosen
        return CBPDNState(y, u, rho), source >= 0, source

    def remember(
        self,
        key: Key,
        signal: torch.Tensor,
        source: torch.Tensor,
        result: CBPDNResult,
        *,
        max_iter: int,
    ) -> None:
        """Keep the new solves that converged (a solve stopped by ``max_iter`` is no solution
        to start from: its successor would differ from a cold solve by more than the
        tolerance), each in the slot it started from or else the least recently used one."""
        converged = (result.iterations < max_iter).nonzero().squeeze(1)[: self.capacity]
        if not len(converged):
            return
        if key not in self._banks:
            self._banks[key] = _Bank(signal, result.state.y.shape[1], self.capacity)
        bank = self._banks[key]
        slots = _slots(source[converged].tolist(), torch.argsort(bank.used).tolist())
        state = result.state
        picked = CBPDNState(state.y[converged], state.u[converged], state.rho[converged])
        bank.store(torch.tensor(slots, device=signal.device), signal[converged], picked)


def _slots(sources: list[int], least_recent: list[int]) -> list[int]:
    """A distinct slot per new solve: the one it started from (its first claimant), else the
    least recently used slot no other solve claims (deterministic, no duplicate writes)."""
    claimed: set[int] = set()
    first = []
    for slot in sources:
        first.append(slot >= 0 and slot not in claimed)
        if slot >= 0:
            claimed.add(slot)
    spare = iter(i for i in least_recent if i not in claimed)
    return [slot if own else next(spare) for slot, own in zip(sources, first, strict=True)]
