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


@dataclass
class _Bank:
    signals: torch.Tensor  # (N, C, H, W) high-pass inputs of earlier solves, oldest first
    state: CBPDNState  # their final ADMM variables

    def rows(self, index: torch.Tensor | slice) -> _Bank:
        state = self.state
        return _Bank(
            self.signals[index], CBPDNState(state.y[index], state.u[index], state.rho[index])
        )

    @staticmethod
    def cat(first: _Bank, second: _Bank) -> _Bank:
        a, b = first.state, second.state
        state = CBPDNState(torch.cat([a.y, b.y]), torch.cat([a.u, b.u]), torch.cat([a.rho, b.rho]))
        return _Bank(torch.cat([first.signals, second.signals]), state)


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
        bank rows they start from."""
        batch, (h, w) = len(signal), signal.shape[-2:]
        y = signal.new_zeros(batch, maps, h, w)
        u, rho = torch.zeros_like(y), signal.new_full((batch,), rho0)
        source = torch.full((batch,), -1, dtype=torch.long, device=signal.device)
        bank = self._banks.get(key)
        if bank is not None and batch and len(bank.signals):
            flat = signal.flatten(1)
            distance, nearest = torch.cdist(flat, bank.signals.flatten(1)).min(1)
            warm = distance < self.match * flat.norm(dim=1)
            source = torch.where(warm, nearest, source)
            rows = warm.nonzero().squeeze(1)
            y[rows], u[rows] = bank.state.y[nearest[rows]], bank.state.u[nearest[rows]]
            rho[rows] = bank.state.rho[nearest[rows]]
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
        tolerance); the bank rows the images started from make way for them."""
        converged = result.iterations < max_iter
        new = _Bank(signal.detach(), _detached(result.state)).rows(converged)
        old = self._banks.get(key)
        if old is not None:
            keep = torch.ones(len(old.signals), dtype=torch.bool, device=signal.device)
            keep[source[source >= 0]] = False
            new = _Bank.cat(old.rows(keep), new)
        self._banks[key] = new.rows(slice(-self.capacity, None))


def _detached(state: CBPDNState) -> CBPDNState:
    return CBPDNState(state.y.detach(), state.u.detach(), state.rho.detach())
