"""Where a run's time goes: ``RESULTS/timings.jsonl``, one line per piece of work.

A line is written when a piece finishes: its ``kind`` (``train``, ``prepare``, ``adversarial
set``, ``universal``, ``record``), ``name``, what the caller adds (a record's protocol and
model) and ``seconds``, *exclusive* of timed work nested inside it (a model trained for a
record counts under ``train`` only), so the lines of a run add up to its time. Work found on
disk is not timed again; a killed piece is not logged. The log is never read back by a run:
results do not depend on it.

Beside the seconds, :func:`summarize` adds what each protocol's records counted
(``models.cost``: forward and backward passes through the networks, Square's queries), read
from the checked results.json: whether a protocol is slow because it makes many passes or
because its passes are slow.
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from robustlab.io import RobustlabError
from robustlab.report.results import read_results

LOG_FILE = "timings.jsonl"


class TimingLog:
    """Appends exclusive wall seconds of nested pieces of work to ``path``."""

    def __init__(self, path: Path, clock: Callable[[], float] = time.perf_counter) -> None:
        self.path, self.clock = path, clock
        self._nested: list[float] = []  # seconds of timed work inside each open piece

    @contextmanager
    def timed(self, kind: str, name: str) -> Iterator[dict[str, str | float]]:
        """Time the enclosed work; the dict yielded takes fields to log with it."""
        what: dict[str, str | float] = {"kind": kind, "name": name}
        start = self.clock()
        self._nested.append(0.0)
        try:
            yield what
        finally:
            nested = self._nested.pop()
        elapsed = self.clock() - start
        if self._nested:
            self._nested[-1] += elapsed
        what["seconds"] = round(elapsed - nested, 3)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        _drop_partial_line(self.path)
        with open(self.path, "a") as log:
            log.write(json.dumps(what, sort_keys=True) + "\n")


def _drop_partial_line(path: Path) -> None:
    """Cut a last line without its newline (a write killed midway), so that the next line
    starts on a line of its own and the log stays readable."""
    if not path.is_file():
        return
    with open(path, "rb+") as log:
        data = log.read()
        if data and not data.endswith(b"\n"):
            log.truncate(data.rfind(b"\n") + 1)


@dataclass(frozen=True)
class Passes:
    """Passes a protocol's records counted (``cost`` of each record), summed."""

    forward: int = 0
    backward: int = 0
    queries: int = 0

    def __add__(self, other: Passes) -> Passes:
        return Passes(
            self.forward + other.forward,
            self.backward + other.backward,
            self.queries + other.queries,
        )


@dataclass(frozen=True)
class TimingSummary:
    """Seconds by kind of work and by protocol, the passes each protocol counted, and the
    largest pieces."""

    total: float
    by_kind: dict[str, float]
    by_protocol: dict[str, float]
    largest: list[dict[str, str | float]]  # timing log lines: names and seconds
    passes: dict[str, Passes] = field(default_factory=dict)  # by protocol (results.json)

    def lines(self) -> list[str]:
        out = [f"total {self.total / 60:.1f} min of logged work"]
        out += [f"  {kind:16} {s / 60:7.1f} min" for kind, s in _descending(self.by_kind)]
        out += ["records by protocol (counted passes: forward, backward; queries):"]
        for name, seconds in _descending(self.by_protocol):
            counted = self.passes.get(name)
            detail = (
                f"  {counted.forward:>11,} fwd {counted.backward:>11,} bwd {counted.queries:>11,} q"
                if counted is not None
                else ""
            )
            out.append(f"  {name:16} {seconds / 60:7.1f} min{detail}")
        out += ["largest pieces:"]
        for piece in self.largest:
            subject = piece.get("model") or piece.get("target") or piece["name"]
            detail = " ".join(str(piece[k]) for k in ("protocol", "attack") if k in piece)
            out.append(
                f"  {float(piece['seconds']) / 60:7.1f} min  {piece['kind']} {detail} {subject}"
            )
        return out


def summarize(results: Path, top: int = 10) -> TimingSummary:
    """Sum the timing log of a results directory."""
    path = results / LOG_FILE
    if not path.is_file():
        raise RobustlabError(f"{path}: no timing log; run `robustlab run SPEC --out {results}`")
    pieces = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        try:
            piece = json.loads(line) if line.strip() else None
            if piece is not None and not (
                isinstance(piece, dict)
                and isinstance(piece.get("kind"), str)
                and isinstance(piece.get("seconds"), int | float)
            ):
                raise ValueError("no kind and seconds")
        except ValueError:
            raise RobustlabError(
                f"{path}:{number}: not a timing line; delete that line (the log is never read "
                "by a run: results do not depend on it)"
            ) from None
        if piece is not None:
            pieces.append(piece)
    by_kind: dict[str, float] = defaultdict(float)
    by_protocol: dict[str, float] = defaultdict(float)
    for piece in pieces:
        by_kind[piece["kind"]] += piece["seconds"]
        if piece["kind"] == "record":
            by_protocol[piece.get("protocol", "?")] += piece["seconds"]
    largest = sorted(pieces, key=lambda p: -p["seconds"])[:top]
    total = sum(p["seconds"] for p in pieces)
    return TimingSummary(total, dict(by_kind), dict(by_protocol), largest, _passes(results))


def _passes(results: Path) -> dict[str, Passes]:
    """Counted passes by protocol, from the records of results.json (none while a run has
    written none: the log is written as pieces finish, results.json at the end)."""
    if not (results / "results.json").is_file():
        return {}
    by_protocol: dict[str, Passes] = defaultdict(Passes)
    for record in read_results(results).records:
        cost = record.get("cost")
        if cost is not None:
            # counts, stored as JSON numbers in a CostRecord (dict[str, float])
            counted = Passes(*(int(cost[k]) for k in ("forward", "backward", "queries")))
            by_protocol[record["protocol"]] += counted
    return dict(by_protocol)


def _descending(table: dict[str, float]) -> list[tuple[str, float]]:
    return sorted(table.items(), key=lambda item: -item[1])
