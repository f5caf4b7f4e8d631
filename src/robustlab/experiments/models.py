"""The models of a spec: trained runs, prepared defenses, ensembles, each made once.

Every model is keyed by a hash of everything it depends on and lives under the results
directory (``runs/<model>-<hash>/``, ``defenses/<model>-<hash>/``); a killed training resumes
from its last epoch. Planning and caching only: the algorithms are in ``training`` and
``defenses``.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from robustlab.attacks import Ensemble
from robustlab.data import load_dataset, sample
from robustlab.defenses.base import PrepareContext
from robustlab.defenses.training_time import DefectMasks, Thermometer, model_with
from robustlab.experiments.jobs import import_pretrained, model_config_for
from robustlab.experiments.spec import ModelEntry, Spec
from robustlab.experiments.timings import TimingLog
from robustlab.io import absolute, config_hash, under
from robustlab.models.config import ModelConfig
from robustlab.models.cost import paused
from robustlab.runs import check_run, load, model_config, read_meta
from robustlab.training import train


class ModelStore:
    """The spec's models in one results directory: trained, prepared and loaded on demand."""

    def __init__(
        self,
        spec: Spec,
        out: Path,
        device: torch.device,
        *,
        timings: TimingLog,
        indices: np.ndarray,
        quiet: bool = False,
    ) -> None:
        self.spec, self.out, self.device, self.quiet = spec, out, device, quiet
        self.timings, self.indices = timings, indices
        self._models: dict[str, nn.Module] = {}

    def run_dirs(self, name: str) -> list[Path]:
        """The run directories behind a trained entry (several for an ensemble)."""
        entry = self.spec.models[name]
        if entry.members:
            return [d for member in entry.members for d in self.run_dirs(member)]
        if entry.base is not None:
            raise ValueError(f"model {name!r} is defended: it has no run directory")
        return [under(self.out, "runs", f"{name}-{self.train_key(entry)}")]

    def check_runs(self) -> None:
        """Every run folder already there describes the model it is keyed by, before any work
        (a folder edited to name other code or another model stops the run here)."""
        for name, entry in self.spec.models.items():
            run = self.run_dirs(name)[0] if entry.trained else None
            if run is not None and (run / "meta.json").is_file():
                check_run(run, self.model_config(entry))

    def identity(self, name: str) -> list[str]:
        """What a model is, as names of what was made: run directories, and for a defended
        model its defense directory (keyed by the defense config and the base's identity)."""
        entry = self.spec.models[name]
        if entry.base is not None:
            assert entry.defense is not None
            parts: list[Any] = [entry.defense.describe(), self.identity(entry.base)]
            # ``prepare`` draws its subsets with the spec's seed, so the seed is part of the
            # key; seed 0 adds nothing, so the folders of seed-0 specs keep their names
            if self.spec.seed != 0:
                parts.append({"seed": self.spec.seed})
            return [f"{name}-{config_hash(parts)}"]
        return [d.name for d in self.run_dirs(name)]

    def train_key(self, entry: ModelEntry) -> str:
        config = self.model_config(entry)
        parts = [config.to_dict(), entry.recipe().to_dict(), entry.train_limit, self.spec.dataset]
        if entry.weights is not None:  # imported, not trained: keyed by the weights' bytes
            parts = [config.to_dict(), hashlib.sha256(Path(entry.weights).read_bytes()).hexdigest()]
        if self.spec.data_dir is not None or self.spec.dataset == "imagefolder":
            # the user's own files: a run is keyed by their content too (the named datasets'
            # files are checked against published checksums, so their name says it all)
            parts.append(self._data_digest())
        return config_hash(parts)

    @functools.cache  # noqa: B019 (one store per run; the digest is what is cached)
    def _data_digest(self) -> str:
        digest = hashlib.sha256()
        for split in ("train", "test"):
            data = load_dataset(self.spec.dataset, split, self.spec.data_dir)
            digest.update(data.images.tobytes())
            digest.update(data.labels.tobytes())
        return digest.hexdigest()[:16]

    def model_config(self, entry: ModelEntry) -> ModelConfig:
        data = load_dataset(self.spec.dataset, "train", self.spec.data_dir)
        config = model_config_for(data, entry.arch, **entry.options)
        config = replace(config, mean=entry.mean or config.mean, std=entry.std or config.std)
        return model_with(entry.training, config)

    def model(self, name: str) -> nn.Module:
        """Train the entry if its run is missing or unfinished (prepare its defense if it has
        one), then load it (cached). Not counted by the meter of the cell that asks first."""
        if name not in self._models:
            with paused():
                self._models[name] = self._build(name)
        return self._models[name]

    def _build(self, name: str) -> nn.Module:
        entry = self.spec.models[name]
        if entry.members:
            return Ensemble([self.model(m) for m in entry.members]).eval()
        if entry.base is not None:
            return self.defended(entry)
        self.train(entry)
        return load(self.run_dirs(name)[0], self.device, expected=self.model_config(entry))

    def defended(self, entry: ModelEntry) -> nn.Module:
        assert entry.defense is not None and entry.base is not None
        base = self.model(entry.base)
        directory = under(self.out, "defenses", self.identity(entry.name)[0])
        if not entry.defense.is_prepared(directory):
            run = self.run_dirs(entry.base)[0]
            context = PrepareContext(
                train=load_dataset(self.spec.dataset, "train", self.spec.data_dir),
                test=load_dataset(self.spec.dataset, "test", self.spec.data_dir).subset(
                    self.indices
                ),
                base_config=model_config(run),
                device=self.device,
                seed=self.spec.seed,
                quiet=self.quiet,
            )
            with self.timings.timed("prepare", directory.name):
                entry.defense.prepare(base, directory, context)
        return entry.defense.wrap(base, directory)

    def describe(self, name: str) -> dict[str, object]:
        """Where ``name``'s files are and what defends it, for results.json: the report
        rebuilds models from this, never from the spec or by guessing folders."""
        entry = self.spec.models[name]
        folder = f"defenses/{self.identity(name)[0]}" if entry.base is not None else None
        table = entry.defense_table
        return {
            "runs": [f"runs/{d.name}" for d in self.run_dirs(name)] if entry.base is None else [],
            "members": list(entry.members),
            "base": entry.base,
            "defense": {"table": table[0], "config": table[1]} if table is not None else None,
            "folder": folder,
            "training": [d.describe() for d in entry.training],
        }

    def base_of(self, name: str) -> str:
        """The undefended model behind ``name`` (itself when it is not defended)."""
        return self.spec.models[name].base or name

    def train(self, entry: ModelEntry) -> None:
        """Train (or import) a trained entry's run unless it is complete already."""
        run = self.run_dirs(entry.name)[0]
        if entry.weights is not None:
            if not (run / "meta.json").is_file():
                test_data = load_dataset(self.spec.dataset, "test", self.spec.data_dir)
                import_pretrained(
                    self.model_config(entry),
                    entry.weights,
                    run,
                    test_data.subset(self.indices),
                    device=self.device,
                    dataset_meta={"data_dir": absolute(self.spec.data_dir)},
                )
            return
        if (run / "meta.json").is_file() and read_meta(run).get("complete"):
            return
        train_data = load_dataset(self.spec.dataset, "train", self.spec.data_dir)
        train_data = sample(train_data, entry.train_limit, entry.train.seed)
        test_data = load_dataset(self.spec.dataset, "test", self.spec.data_dir).subset(self.indices)
        with self.timings.timed("train", run.name):
            train(
                self.model_config(entry),
                train_data,
                test_data,
                entry.recipe(),
                run,
                resume=True,
                device=self.device,
                quiet=self.quiet,
                # absolute: the report and later commands reload the data from another folder
                dataset_meta={"data_dir": absolute(self.spec.data_dir)},
            )

    def declared(self, name: str) -> list[str]:
        """The attack surface a trained model declares (a thermometer encoding: BPDA), for
        the keys of cells that attack through it; empty for the rest (a defended model's
        surface is part of its defense's identity already)."""
        training = self.spec.models[name].training
        return [
            f"surface:bpda:thermometer{d.levels}" for d in training if isinstance(d, Thermometer)
        ]

    def ids(self, models: list[str]) -> list[str]:
        """Models as what was made for them: a record is keyed by what was trained/prepared."""
        return [i for m in models for i in self.identity(m)]

    @staticmethod
    def defense_configs(entry: ModelEntry) -> list[dict[str, object]]:
        """The configs of an entry's defenses: the wrapping one, or the training-time ones."""
        if entry.defense is not None:
            return [entry.defense.describe()]
        return [d.describe() for d in entry.training]

    def architecture(self, name: str) -> str:
        """The model in a few words, for its RobustBench card."""
        entry = self.spec.models[name]
        if entry.members:
            return "ensemble of " + ", ".join(self.architecture(m) for m in entry.members)
        if entry.base is not None and entry.defense is not None:
            return f"{entry.defense.name} on {self.architecture(entry.base)}"
        defect = [d.spec for d in entry.training if isinstance(d, DefectMasks)]
        return entry.arch + (f" (defective {defect[0].keep_prob:g})" if defect else "")
