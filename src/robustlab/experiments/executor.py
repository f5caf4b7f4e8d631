"""Run a spec: train what is missing, make each adversarial set once, evaluate, write results.

Everything is keyed by a hash of its configuration and written atomically under the
results directory, so a run killed at any point continues from the files it left, and
the final records are identical to those of an uninterrupted run:

    RESULTS/runs/<model>-<hash>/         trained models (resumed per epoch)
    RESULTS/advs/<hash>.npz              adversarial sets
    RESULTS/records/<hash>.json          one result cell each
    RESULTS/results.json, .csv, .md      everything, gathered at the end
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import platform
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

import robustlab
from robustlab import __version__
from robustlab.attacks import AdversarialSet, Ensemble, load_set
from robustlab.data import load_dataset, sample, sample_indices
from robustlab.evaluation.protocols import (
    decision_score,
    noise_curve,
    shuffle_probe,
    whitebox_accuracy,
)
from robustlab.evaluation.transfer import transfer
from robustlab.experiments.jobs import make_adversarial_set, model_config_for, resolve_device
from robustlab.experiments.spec import ModelEntry, Spec
from robustlab.io import atomic_write, read_json, write_json
from robustlab.training import train

Record = dict[str, Any]


def config_hash(data: Any) -> str:
    """A short stable hash of JSON-able data: the cache key of runs, sets and records."""
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:12]


class Executor:
    """Carries out one spec into one results directory."""

    def __init__(
        self,
        spec: Spec,
        out: str | Path,
        device: str = "auto",
        quiet: bool = False,
        command: str | None = None,
    ) -> None:
        self.spec, self.out, self.quiet, self.command = spec, Path(out), quiet, command
        self.device = resolve_device(device)
        self._models: dict[str, nn.Module] = {}
        test = load_dataset(spec.dataset, "test", spec.data_dir)
        self.indices = sample_indices(len(test), spec.n, spec.seed)
        self.x, self.y = test.subset(self.indices).tensors()

    def run(self) -> list[Record]:
        """All protocols, in spec order; writes results.json/.csv/.md and returns the records."""
        records: list[Record] = []
        protocols = tqdm(
            list(enumerate(self.spec.protocols)), desc="protocols", unit="protocol",
            disable=True if self.quiet else None,
        )  # fmt: skip
        for index, protocol in protocols:
            protocols.set_postfix_str(protocol.get("name", protocol["type"])[:40])
            cells = getattr(self, "_" + protocol["type"])(protocol)
            # where each number came from, for the report's links (not part of the cached cell)
            records += [{**cell, "protocol_index": index} for cell in cells]
        command = self.command or f"robustlab run {self.spec.path or 'SPEC'} --out {self.out}"
        write_json(
            self.out / "results.json",
            {"spec": self.spec.source, "spec_path": self.spec.path, "command": command,
             "environment": environment(self.device), "records": records},
        )  # fmt: skip
        _write_csv(self.out / "results.csv", records)
        with atomic_write(self.out / "results.md", "w") as handle:
            handle.write(markdown(records))
        return records

    # models ---------------------------------------------------------------------------------

    def run_dirs(self, name: str) -> list[Path]:
        """The run directories behind a model entry (several for an ensemble)."""
        entry = self.spec.models[name]
        if entry.members:
            return [d for member in entry.members for d in self.run_dirs(member)]
        return [self.out / "runs" / f"{name}-{self._train_key(entry)}"]

    def _train_key(self, entry: ModelEntry) -> str:
        config = self._model_config(entry)
        return config_hash(
            [config.to_dict(), entry.train.to_dict(), entry.train_limit, self.spec.dataset]
        )

    def _model_config(self, entry: ModelEntry) -> Any:
        data = load_dataset(self.spec.dataset, "train", self.spec.data_dir)
        return model_config_for(
            data, entry.arch, entry.defect, entry.regularizer, entry.thermometer, **entry.options
        )

    def model(self, name: str) -> nn.Module:
        """Train the entry if its run is missing or unfinished, then load it (cached)."""
        if name not in self._models:
            entry = self.spec.models[name]
            if entry.members:
                members = [self.model(m) for m in entry.members]
                self._models[name] = Ensemble(members).eval()
            else:
                self._train(entry)
                self._models[name] = robustlab.load(self.run_dirs(name)[0], self.device)
        return self._models[name]

    def _train(self, entry: ModelEntry) -> None:
        run = self.run_dirs(entry.name)[0]
        train_data = load_dataset(self.spec.dataset, "train", self.spec.data_dir)
        train_data = sample(train_data, entry.train_limit, entry.train.seed)
        test_data = load_dataset(self.spec.dataset, "test", self.spec.data_dir).subset(self.indices)
        train(
            self._model_config(entry),
            train_data,
            test_data,
            entry.train,
            run,
            resume=True,
            device=self.device,
            quiet=self.quiet,
            # absolute: the report and later commands reload the data from another folder
            extra_meta={"dataset": {"data_dir": _absolute(self.spec.data_dir)}},
        )

    # adversarial sets and records -------------------------------------------------------------

    def adversarial_set(self, sources: list[str], attack_name: str) -> AdversarialSet:
        """The set of ``attack_name`` on the (ensemble of) ``sources``, made once."""
        for name in sources:
            self.model(name)  # trains what is missing
        runs = [d for name in sources for d in self.run_dirs(name)]
        attack, params = self.spec.attacks[attack_name]
        key = config_hash([[r.name for r in runs], attack, params, self.spec.n, self.spec.seed])
        path = self.out / "advs" / f"{key}.npz"
        if not path.is_file():
            make_adversarial_set(
                sources=runs,
                attack=attack,
                params=params,
                out=path,
                dataset=self.spec.dataset,
                data_dir=_absolute(self.spec.data_dir),
                n=self.spec.n,
                seed=self.spec.seed,
                device=str(self.device),
                quiet=self.quiet,
            )
        return load_set(path)

    def record(self, key_data: Any, compute: Callable[[], Record]) -> Record:
        """A result cell, computed once and then read back from ``records/<hash>.json``."""
        path = self.out / "records" / f"{config_hash(key_data)}.json"
        if path.is_file():
            cached: Record = read_json(path)
            return cached
        record = {**compute(), "seed": self.spec.seed, "version": __version__}
        write_json(path, record)
        return record

    def _key(self, *parts: Any) -> list[Any]:
        return [*parts, self.spec.n, self.spec.seed]

    # protocols --------------------------------------------------------------------------------

    def _transfer(self, protocol: dict[str, Any]) -> Iterator[Record]:
        for source in protocol["sources"]:
            yield from self._transfer_cells(
                "transfer", [source], protocol["targets"], protocol["attacks"]
            )

    def _ensemble_transfer(self, protocol: dict[str, Any]) -> Iterator[Record]:
        for target in protocol["models"]:
            others = [m for m in protocol["models"] if m != target]
            yield from self._transfer_cells(
                "ensemble_transfer", others, [target], protocol["attacks"]
            )

    def _transfer_cells(
        self, kind: str, sources: list[str], targets: list[str], attacks: list[str]
    ) -> Iterator[Record]:
        for attack in attacks:
            for target in targets:
                key = self._key(
                    kind, self._names(sources), self._names([target]), self.spec.attacks[attack]
                )

                def compute(
                    attack: str = attack, target: str = target, sources: list[str] = sources
                ) -> Record:
                    adv_set = self.adversarial_set(sources, attack)
                    result = transfer(self.model(target), adv_set, self.x).to_dict()
                    return {
                        "protocol": kind,
                        "source": "+".join(sources),
                        "target": target,
                        "attack": attack,
                        "params": self.spec.attacks[attack][1],
                        **result,
                    }

                yield self.record(key, compute)

    def _whitebox(self, protocol: dict[str, Any]) -> Iterator[Record]:
        for attack in protocol["attacks"]:
            kind, params = self.spec.attacks[attack]
            for name in protocol["models"]:

                def compute(
                    name: str = name, attack: str = attack, kind: str = kind, params: Any = params
                ) -> Record:
                    model = self.model(name)
                    rate = whitebox_accuracy(model, self.x, self.y, kind, params, self.spec.seed)
                    return {"protocol": "whitebox", "target": name, "attack": attack,
                            "params": params, "accuracy": rate.to_dict()}  # fmt: skip

                yield self.record(self._key("whitebox", self._names([name]), kind, params), compute)

    def _decision(self, protocol: dict[str, Any]) -> Iterator[Record]:
        params: dict[str, Any] = {
            k: protocol[k] for k in ("steps", "candidates", "max_queries") if k in protocol
        }
        n = int(protocol.get("n", min(self.spec.n, 100)))
        for name in protocol["models"]:

            def compute(name: str = name) -> Record:
                score = decision_score(
                    self.model(name), self.x[:n], self.y[:n], params, self.spec.seed
                )
                return {
                    "protocol": "decision",
                    "target": name,
                    "attack": "boundary",
                    "params": params,
                    "score": score,
                }

            yield self.record(self._key("decision", self._names([name]), params, n), compute)

    def _noise(self, protocol: dict[str, Any]) -> Iterator[Record]:
        sigmas = [float(s) for s in protocol["sigmas"]]
        yield self._probe("noise", protocol["models"], sigmas, noise_curve)

    def _shuffle(self, protocol: dict[str, Any]) -> Iterator[Record]:
        ks = [int(k) for k in protocol.get("ks", [2, 4, 8])]
        yield self._probe("shuffle", protocol["models"], ks, shuffle_probe)

    def _probe(
        self, kind: str, names: list[str], levels: list[Any], probe: Callable[..., Any]
    ) -> Record:
        """One cell of a per-level accuracy curve over images every model gets right."""

        def compute() -> Record:
            models = {m: self.model(m) for m in names}
            return {
                "protocol": kind,
                "curves": _rates(probe(models, self.x, self.y, levels, self.spec.seed)),
            }

        return self.record(self._key(kind, self._names(names), levels), compute)

    def _names(self, models: list[str]) -> list[str]:
        """Models as their run directories' names: a record is keyed by what was trained."""
        return [d.name for m in models for d in self.run_dirs(m)]


def _absolute(path: str | None) -> str | None:
    return str(Path(path).resolve()) if path is not None else None


def curve_levels(record: Record) -> list[str]:
    """The levels (σ, k) of a curve record in numeric order: JSON files keep keys as sorted
    strings, so "12.0" would otherwise come before "2.0"."""
    return sorted(next(iter(record["curves"].values())), key=float)


def _rates(table: dict[str, dict[Any, Any]]) -> dict[str, dict[str, Any]]:
    return {
        name: {str(k): rate.to_dict() for k, rate in row.items()} for name, row in table.items()
    }


def _rate_text(rate: dict[str, Any]) -> str:
    if not rate["n"]:
        return "n/a"
    low, high = 100 * rate["low"], 100 * rate["high"]
    return f"{100 * rate['rate']:.1f} [{low:.1f}, {high:.1f}] n={rate['n']}"


def _write_csv(path: Path, records: list[Record]) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(
        ["protocol", "source", "target", "attack", "metric", "hits", "n", "rate", "low", "high"]
    )
    for r in records:
        for metric, rate in _flat_rates(r):
            writer.writerow(
                [
                    r["protocol"],
                    r.get("source", ""),
                    r.get("target", ""),
                    r.get("attack", ""),
                    metric,
                    rate["hits"],
                    rate["n"],
                    rate["rate"],
                    rate["low"],
                    rate["high"],
                ]
            )
    with atomic_write(path, "w") as handle:
        handle.write(buffer.getvalue())


def _flat_rates(record: Record) -> Iterator[tuple[str, dict[str, Any]]]:
    for metric in ("defense_rate", "accuracy", "clean_accuracy"):
        if metric in record:
            yield metric, record[metric]
    for model, row in record.get("curves", {}).items():
        for level, rate in row.items():
            yield f"{model}@{level}", rate


def markdown(records: list[Record]) -> str:
    """Tables a reviewer can read: one per protocol, rates with Wilson 95 % intervals."""
    lines: list[str] = []
    transfer_rows = [r for r in records if r["protocol"] in ("transfer", "ensemble_transfer")]
    if transfer_rows:
        lines += [
            "## Transfer: success defense rate (filtered, appendix A.7) and unfiltered accuracy",
            "",
            "| source | target | attack | defense rate | accuracy | clean accuracy |",
            "|---|---|---|---|---|---|",
        ]
        lines += [
            f"| {r['source']} | {r['target']} | {r['attack']} | {_rate_text(r['defense_rate'])} | "
            f"{_rate_text(r['accuracy'])} | {_rate_text(r['clean_accuracy'])} |"
            for r in transfer_rows
        ]
        lines.append("")
    white = [r for r in records if r["protocol"] == "whitebox"]
    if white:
        lines += ["## White-box accuracy", "", "| model | attack | accuracy |", "|---|---|---|"]
        lines += [f"| {r['target']} | {r['attack']} | {_rate_text(r['accuracy'])} |" for r in white]
        lines.append("")
    decision = [r for r in records if r["protocol"] == "decision"]
    if decision:
        lines += [
            "## Decision-based (Boundary): S(M) = median ‖δ‖²/N",
            "",
            "| model | S(M) | n | failed | median queries |",
            "|---|---|---|---|---|",
        ]
        lines += [
            f"| {r['target']} | {r['score']['score']:.2e} | {r['score']['n']} | "
            f"{r['score']['failed']} | {r['score']['median_queries']} |"
            for r in decision
        ]
        lines.append("")
    for kind, title, unit in (
        ("noise", "Additive Gaussian noise", "σ"),
        ("shuffle", "Patch shuffle", "k"),
    ):
        for r in (r for r in records if r["protocol"] == kind):
            levels = curve_levels(r)
            lines += [
                f"## {title}: accuracy on images every model gets right",
                "",
                "| model | " + " | ".join(f"{unit}={lv}" for lv in levels) + " |",
                "|---|" + "---|" * len(levels),
            ]
            lines += [
                f"| {m} | " + " | ".join(_rate_text(row[lv]) for lv in levels) + " |"
                for m, row in r["curves"].items()
            ]
            lines.append("")
    return "\n".join(lines)


def run_spec(
    spec: Spec,
    out: str | Path,
    device: str = "auto",
    quiet: bool = False,
    command: str | None = None,
) -> list[Record]:
    """Carry out ``spec`` into ``out`` (resumable); return the records."""
    torch.manual_seed(spec.seed)
    return Executor(spec, out, device, quiet, command).run()


def environment(device: torch.device) -> dict[str, Any]:
    """Where the results were computed: versions, platform, device, threads."""
    return {
        "robustlab": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "threads": torch.get_num_threads(),
    }
