"""What a computation cost, counted: passes through the networks, wall seconds, peak memory.

A *pass* is one image through a network marked with :func:`count_passes` (every network
robustlab loads from a run folder is, and the models the evaluation front doors are handed):
a batch of 32 counts 32 forward passes, and 32 backward passes once a gradient flows back
through its output. An input transformation, an EOT sample or an ensemble member is what it
runs on the networks: a defense that classifies 20 samples costs 20 passes per image. So PGD
with k steps on n images counts n·k forward and n·k backward passes, and its final
prediction n more.

Counting is exact and costs two Python calls per call of a marked network: the network's own
forward hooks, which count only while some :class:`Meter` is open. (Global module hooks, the
first design, ran for every module of every network while a meter was open: a one-image
forward pass of the specs' ResNet-8 took 1.21-1.26× as long, docs/benchmarks.md; they remain
only for a TorchScript network, which takes no hooks of its own.)

Meters nest: every open meter counts what runs inside it (a cell, and each of its attacks).
:func:`paused` stops every open meter (passes, seconds) for work that is not the measured
computation, such as training a model a cell needs; a meter opened inside the pause counts
that work on its own (an adversarial set made once for several cells records its own cost,
which none of the cells' costs includes).

Peak memory is the largest resident set size sampled every 20 ms while the meter is open (the
process's, not the computation's alone: what a user must have), and on CUDA the peak of
``torch.cuda.max_memory_allocated`` since the outermost meter opened.
"""

from __future__ import annotations

import os
import threading
import time
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

_MARK = "_robustlab_counts_passes"


def count_passes(network: nn.Module) -> nn.Module:
    """Mark ``network`` as one whose calls are passes (they count while a meter is open)."""
    if _marked(network):
        return network
    setattr(network, _MARK, True)
    try:  # module-level functions: a deepcopy of the network copies its hooks as they are
        network.register_forward_pre_hook(_enter)
        network.register_forward_hook(_leave, always_call=True)
    except RuntimeError:  # a TorchScript module takes no hooks: counted by global ones
        _STATE.add_scripted(network)
    return network


def counted(model: nn.Module) -> nn.Module:
    """``model`` with its passes counted: as it is when some part of it is marked (a network
    from a run folder inside a defense), else marked as a whole (a user's module)."""
    if not any(_marked(m) for m in model.modules()):
        count_passes(model)
    return model


def _marked(module: nn.Module) -> bool:
    """Marked by :func:`count_passes`: a plain attribute, so in the instance's ``__dict__``
    (looked up there directly: ``getattr`` on a module raises and catches for every module
    call of every forward pass while a meter is open)."""
    return _MARK in module.__dict__


# a cost as records store it: counts and measures by name (``Cost`` fields; no CUDA peak off GPUs)
CostRecord = dict[str, float]


@dataclass
class Cost:
    """Passes (images through a network), score-based queries, wall seconds, peak memory."""

    forward: int = 0
    backward: int = 0
    queries: int = 0
    seconds: float = 0.0
    peak_rss_mb: float = 0.0
    peak_cuda_mb: float | None = None

    def to_dict(self) -> CostRecord:
        values: CostRecord = asdict(self)
        values["seconds"] = round(self.seconds, 3)
        values["peak_rss_mb"] = round(self.peak_rss_mb, 1)
        if self.peak_cuda_mb is None:
            del values["peak_cuda_mb"]
        return values


def total(costs: list[CostRecord]) -> CostRecord:
    """The cost of several computations (records' ``cost``): counts and seconds add up, the
    peaks are the largest."""
    summed: CostRecord = {}
    for cost in costs:
        for key, value in cost.items():
            if key.startswith("peak"):
                summed[key] = max(summed.get(key, 0.0), value)
            else:
                summed[key] = summed.get(key, 0) + value
    if "seconds" in summed:
        summed["seconds"] = round(summed["seconds"], 3)
    return summed


class Meter:
    """``with Meter() as cost:`` counts into ``cost`` what runs in the block."""

    def __init__(self) -> None:
        self.cost = Cost()
        self._started = 0.0
        self.level = 0  # the pauses open when it opened: it counts only while no more are

    def __enter__(self) -> Cost:
        self.level = _STATE.paused
        _STATE.open(self)
        self._started = time.perf_counter()
        return self.cost

    def __exit__(self, *exc: object) -> None:
        self.cost.seconds += time.perf_counter() - self._started
        _STATE.close(self)

    def add_queries(self, queries: int) -> None:
        self.cost.queries += int(queries)


def add_queries(queries: int) -> None:
    """Score-based attacks report their model queries to every open meter not paused."""
    for meter in _STATE.counting():
        meter.add_queries(queries)


@contextmanager
def paused() -> Iterator[None]:
    """Nothing in the block counts toward any open meter (passes or seconds); a meter opened
    inside the block counts it."""
    stopped = _STATE.counting()  # a pause inside a pause stops no more seconds
    _STATE.paused += 1
    started = time.perf_counter()
    try:
        yield
    finally:
        _STATE.paused -= 1
        for meter in stopped:
            meter._started += time.perf_counter() - started


class _State:
    """The open meters, the memory sampler, and the global hooks that count TorchScript
    networks while a meter is open."""

    def __init__(self) -> None:
        self.meters: list[Meter] = []
        self.paused = 0
        self.depth = 0  # inside a counted network's call (a network inside one is not a pass)
        self._scripted: weakref.WeakSet[nn.Module] = weakref.WeakSet()
        self._hooks: list[RemovableHandle] = []
        self._sampler: threading.Thread | None = None
        self._lock = threading.Lock()

    def add_scripted(self, network: nn.Module) -> None:
        self._scripted.add(network)
        if self.meters and not self._hooks:
            self._install()

    def _install(self) -> None:
        self._hooks = [
            nn.modules.module.register_module_forward_pre_hook(self._pre),
            nn.modules.module.register_module_forward_hook(self._post, always_call=True),
        ]

    def open(self, meter: Meter) -> None:
        if not self.meters:
            if self._scripted:
                self._install()
            if torch.cuda.is_available():
                torch.cuda.reset_peak_memory_stats()
            self._sampler = threading.Thread(target=self._sample, daemon=True)
        with self._lock:
            self.meters.append(meter)
        meter.cost.peak_rss_mb = max(meter.cost.peak_rss_mb, _rss_mb())
        if self._sampler is not None and not self._sampler.is_alive():
            self._sampler.start()

    def close(self, meter: Meter) -> None:
        meter.cost.peak_rss_mb = max(meter.cost.peak_rss_mb, _rss_mb())
        if torch.cuda.is_available():
            meter.cost.peak_cuda_mb = torch.cuda.max_memory_allocated() / 2**20
        with self._lock:
            self.meters.remove(meter)
        if not self.meters:
            for hook in self._hooks:
                hook.remove()
            self._hooks = []
            if self._sampler is not None:
                self._sampler.join()
            self._sampler = None

    def counting(self) -> list[Meter]:
        """The open meters no pause stops: those opened inside every open pause."""
        return [meter for meter in self.meters if meter.level == self.paused]

    def _pre(self, module: nn.Module, args: Any) -> None:
        if module in self._scripted:
            _enter(module, args)

    def _post(self, module: nn.Module, args: Any, output: Any) -> None:
        if module in self._scripted:
            _leave(module, args, output)

    def count(self, output: Any) -> None:
        """A marked network's outermost call returned ``output``: its rows are passes."""
        if not isinstance(output, torch.Tensor):
            return
        rows = int(output.shape[0]) if output.ndim else 1
        meters = self.counting()
        for meter in meters:
            meter.cost.forward += rows
        if output.requires_grad:

            def backward(grad: torch.Tensor) -> None:
                for meter in meters:
                    if meter in self.counting():
                        meter.cost.backward += rows

            output.register_hook(backward)  # type: ignore[no-untyped-call]

    def _sample(self) -> None:
        while True:
            with self._lock:
                meters = list(self.meters)
            if not meters:
                return
            rss = _rss_mb()
            for meter in meters:
                meter.cost.peak_rss_mb = max(meter.cost.peak_rss_mb, rss)
            time.sleep(0.02)


def device_memory(device: torch.device) -> int | None:
    """Total memory of ``device`` in bytes (None where it cannot be told)."""
    if device.type == "cuda":
        return int(torch.cuda.get_device_properties(device).total_memory)
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, ValueError, OSError):
        return None


def _rss_mb() -> float:
    """The resident set size of this process in MiB (0 where /proc is not there)."""
    try:
        with open("/proc/self/statm") as handle:
            pages = int(handle.read().split()[1])
    except (OSError, ValueError, IndexError):
        return 0.0
    return pages * _PAGE / 2**20


try:
    _PAGE = os.sysconf("SC_PAGE_SIZE")
except (AttributeError, ValueError, OSError):  # not POSIX
    _PAGE = 4096

_STATE = _State()


def _enter(module: nn.Module, args: Any) -> None:
    _STATE.depth += 1


def _leave(module: nn.Module, args: Any, output: Any) -> None:
    _STATE.depth -= 1  # called even when the forward pass raised (``always_call``)
    if not _STATE.depth and _STATE.meters:
        _STATE.count(output)
