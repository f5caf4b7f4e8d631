"""Run a spec: train what is missing, make each adversarial set once, evaluate, write results.

Everything is keyed by a hash of its configuration and written atomically under the
results directory, so a run killed at any point continues from the files it left, and
the final records are identical to those of an uninterrupted run:

    RESULTS/runs/<model>-<hash>/         trained models (resumed per epoch)
    RESULTS/defenses/<model>-<hash>/     prepared defenses (defense.json written last)
    RESULTS/advs/<hash>.npz              adversarial sets
    RESULTS/universal/<attack>-<hash>.safetensors   universal perturbations
    RESULTS/strong/<hash>/<attack>.safetensors      per-image robust flags of the strong protocol
    RESULTS/curves/<model>-<hash>.npz               success[eps_index, image] of the ε-curves
    RESULTS/records/<hash>.json          one result cell each
    RESULTS/results.json, .csv, .md      everything, gathered at the end
    RESULTS/timings.jsonl                where the time went (robustlab.experiments.timings)
"""

from __future__ import annotations

import json
import platform
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from robustlab import allocator
from robustlab.attacks import AdversarialSet, load_set
from robustlab.attacks.base import AttackConfig, Params
from robustlab.attacks.universal import UniversalPerturbation, build_universal
from robustlab.data import load_dataset, sample, sample_indices
from robustlab.defenses.base import attack_view
from robustlab.evaluation.clean import summary
from robustlab.evaluation.protocols import Record
from robustlab.experiments.jobs import make_adversarial_set, resolve_device
from robustlab.experiments.models import ModelStore
from robustlab.experiments.plan import check_plan
from robustlab.experiments.spec import Spec
from robustlab.experiments.timings import LOG_FILE, TimingLog
from robustlab.io import (
    absolute,
    atomic_write,
    config_hash,
    read_json,
    under,
    write_json,
    writes_output,
)
from robustlab.models.cost import Meter, paused
from robustlab.models.external import is_external, trusting
from robustlab.report.records import check_record
from robustlab.report.robustbench import model_card, write_cards
from robustlab.report.tables import markdown, write_csv
from robustlab.seeding import derive_seed
from robustlab.units import RECORD_UNITS, to_unit
from robustlab.version import __version__

__all__ = ["Executor", "config_hash", "environment", "run_spec"]

# what a timing line says about the cell it timed
CellField = Literal["protocol", "target", "source", "attack"]
_CELL_FIELDS: tuple[CellField, ...] = ("protocol", "target", "source", "attack")


class Executor:
    """Carries out one spec into one results directory: the :class:`Context` every protocol
    runs in (models from the :class:`ModelStore`, adversarial sets and universal
    perturbations made once, every cell cached by its key)."""

    def __init__(
        self,
        spec: Spec,
        out: str | Path,
        device: str = "auto",
        *,
        quiet: bool = False,
        command: str | None = None,
    ) -> None:
        self.spec, self.out, self.quiet, self.command = spec, Path(out), quiet, command
        self.device = resolve_device(device)
        self.timings = TimingLog(self.out / LOG_FILE)
        test = load_dataset(spec.dataset, "test", spec.data_dir)
        self.indices: np.ndarray = sample_indices(len(test), spec.n, spec.seed)
        self.x, self.y = test.subset(self.indices).tensors()
        self.seed, self.n = spec.seed, spec.n
        self.models = ModelStore(
            spec, self.out, self.device, timings=self.timings, indices=self.indices, quiet=quiet
        )
        check_plan(spec, test, self.models, self.device)  # before any model trains

    def run(self) -> list[Record]:
        """All protocols, in spec order; writes results.json/.csv/.md and returns the records."""
        self.models.check_runs()
        records: list[Record] = []
        protocols = tqdm(
            list(enumerate(self.spec.protocols)),
            desc="protocols",
            unit="protocol",
            disable=True if self.quiet else None,
        )
        for index, protocol in protocols:
            protocols.set_postfix_str(protocol.title[:40])
            # where each number came from, for the report's links (not part of the cached cell)
            for cell in protocol.cells(self):
                indexed = cell.copy()
                indexed["protocol_index"] = index
                records.append(indexed)
        records += [self._summary(name) for name in self.compared_models()]
        for record in records:
            check_record(record)
        self._write(records)
        return records

    def _write(self, records: list[Record]) -> None:
        command = self.command or f"robustlab run {self.spec.path or 'SPEC'} --out {self.out}"
        spec = self.spec
        results = {
            "spec": spec.source,
            "spec_path": spec.path,
            "command": command,
            "environment": environment(self.device),
            # what the report rebuilds models from (it never parses the spec)
            "experiment": {
                "name": spec.name,
                "dataset": spec.dataset,
                "data_dir": absolute(spec.data_dir),
                "n": spec.n,
                "seed": spec.seed,
            },
            "models": {name: self.models.describe(name) for name in spec.models},
            # by the records' protocol_index: the report's section titles
            "protocols": [{"name": p.title, "type": p.kind} for p in spec.protocols],
            "records": records,
        }
        write_json(self.out / "results.json", results)
        write_csv(self.out / "results.csv", records)
        cards = [self._card(name, records, command) for name in self.compared_models()]
        write_cards(self.out, cards)
        with atomic_write(self.out / "results.md", "w") as handle:
            handle.write(markdown(records))

    # the protocols' context --------------------------------------------------------------------

    def model(self, name: str) -> nn.Module:
        return self.models.model(name)

    def base_of(self, name: str) -> str:
        return self.models.base_of(name)

    def ids(self, models: list[str]) -> list[str]:
        return self.models.ids(models)

    def declared(self, name: str) -> list[str]:
        return self.models.declared(name)

    def attack(self, name: str) -> AttackConfig:
        return self.spec.attacks[name]

    def path(self, folder: str, name: str) -> Path:
        return under(self.out, folder, name)

    def adversarial_set(self, sources: list[str], attack_name: str) -> AdversarialSet:
        """The set of ``attack_name`` on the (ensemble of) ``sources``, made once."""
        for name in sources:
            self.model(name)  # trains what is missing
        runs = [d for name in sources for d in self.models.run_dirs(name)]
        attack, params = self.spec.attacks[attack_name]
        key = config_hash([[r.name for r in runs], attack, params, self.spec.n, self.spec.seed])
        path = self.out / "advs" / f"{key}.npz"
        if not path.is_file():
            # made once for every cell that reads it: its cost is its timing line, not theirs
            with self.timings.timed("adversarial set", path.stem), paused():
                make_adversarial_set(
                    sources=runs,
                    attack=attack,
                    params=params,
                    out=path,
                    dataset=self.spec.dataset,
                    data_dir=absolute(self.spec.data_dir),
                    n=self.spec.n,
                    seed=self.spec.seed,
                    device=str(self.device),
                    quiet=self.quiet,
                )
        return load_set(path)

    def universal_perturbation(
        self, victim: str, attack: str, xi: float, attack_images: int, options: Params
    ) -> UniversalPerturbation:
        """δ of ``attack`` at strength ``xi`` (0-255) against ``victim``'s attack view, computed
        once on seeded training images and cached by everything it depends on (its config
        says what it cost to make)."""
        key = config_hash([self.ids([victim]), attack, xi, attack_images, options, self.spec.seed])
        path = under(self.out, "universal", f"{attack}-{key}.safetensors")
        if not path.is_file():
            train_data = load_dataset(self.spec.dataset, "train", self.spec.data_dir)
            subset = sample(train_data, attack_images, derive_seed(self.spec.seed, "uap"))
            images, _ = subset.tensors()
            params = to_unit({**options, "xi": xi})
            view = attack_view(self.model(victim))
            # made once for the cells that read it, as adversarial sets: its own cost
            with self.timings.timed("universal", path.stem), paused(), Meter() as cost:
                found = build_universal(attack, view, seed=self.spec.seed, **params)(
                    images.to(self.device)
                )
            found.config["victim"] = victim  # which model it fools (the report's galleries)
            found.config["cost"] = cost.to_dict()
            found.save(path)
        return UniversalPerturbation.load(path)

    def record(self, key: list[Any], compute: Callable[[], Record]) -> Record:
        """A result cell, computed once and then read back from ``records/<hash>.json``."""
        path = self.out / "records" / f"{config_hash(key)}.json"
        if path.is_file():
            cached: Record = read_json(path)
            return cached
        with self.timings.timed("record", path.stem) as what:
            with Meter() as cost:  # models a cell trains or sets it makes first are paused
                computed = compute()
            record = computed.copy()
            record["cost"], record["seed"] = cost.to_dict(), self.spec.seed
            record["units"], record["version"] = RECORD_UNITS, __version__
            what.update({k: record[k] for k in _CELL_FIELDS if k in record})
        check_record(record)  # a bug, not bad input: never write a cell the report cannot read
        write_json(path, record)
        # as read back: a resumed run (records from disk) and an uninterrupted one (computed
        # records) then give the same key order, and byte-identical tables
        normalized: Record = json.loads(json.dumps(record, sort_keys=True))
        return normalized

    # the comparison's own cells: clean accuracy and cost of every evaluated model --------------

    def compared_models(self) -> list[str]:
        """Every model some protocol evaluates (not only as a transfer source), in spec order."""
        named = {m for protocol in self.spec.protocols for m in protocol.evaluated()}
        return [name for name in self.spec.models if name in named]

    def _summary(self, name: str) -> Record:
        def compute() -> Record:
            model, base = self.model(name), self.model(self.base_of(name))
            return {"protocol": "summary", "target": name, **summary(model, base, self.x, self.y)}

        # "passes": cells that count network passes (older summary cells lack them)
        key = ["summary", self.ids([name, self.base_of(name)]), self.spec.n, self.spec.seed]
        key.append("passes")
        # not part of the cached cell: a description of the spec's entry
        return {**self.record(key, compute), "defense": self.spec.models[name].defense_text()}

    def _card(self, name: str, records: list[Record], command: str) -> dict[str, object]:
        """The RobustBench-style card of one evaluated model."""
        entry = self.spec.models[name]
        summary = next(r for r in records if r["protocol"] == "summary" and r["target"] == name)
        passes = max(1, round(summary["passes_per_image"]))  # counted, not declared
        return model_card(
            name,
            records,
            architecture=self.models.architecture(name),
            dataset=self.spec.dataset,
            forward_passes=passes,
            extra={
                "defense": self.models.defense_configs(entry),
                "n": self.spec.n,
                "seed": self.spec.seed,
                "command": command,
            },
        )


@writes_output("out", "robustlab run")  # one writer per results directory
def run_spec(
    spec: Spec,
    out: str | Path,
    device: str = "auto",
    *,
    quiet: bool = False,
    command: str | None = None,
) -> list[Record]:
    """Carry out ``spec`` into ``out`` (resumable); return the records.

    One writer per results directory (a second stops, naming the first); the factories the
    spec names are trusted while it runs (the run folders it reads back name them too)."""
    torch.manual_seed(spec.seed)
    factories = [entry.arch for entry in spec.models.values() if is_external(entry.arch)]
    with trusting(factories):
        return Executor(spec, out, device, quiet=quiet, command=command).run()


def environment(device: torch.device) -> dict[str, object]:
    """Where the results were computed: versions, platform, device, threads, allocator."""
    return {
        "robustlab": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "threads": torch.get_num_threads(),
        "allocator": allocator.describe(),
    }
