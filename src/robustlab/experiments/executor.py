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

import functools
import hashlib
import json
import platform
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

import robustlab
from robustlab import __version__
from robustlab.assemble import ModelConfig
from robustlab.attacks import AdversarialSet, Ensemble, load_set
from robustlab.attacks.universal import UniversalPerturbation, build_universal
from robustlab.data import load_dataset, sample, sample_indices
from robustlab.defenses.base import PrepareContext, added_parameters, attack_view
from robustlab.defenses.training_time import DefectMasks, Thermometer, model_with
from robustlab.evaluation.adaptive import adaptive_attack, gradient_checks
from robustlab.evaluation.curve import accuracy_at, save_success, smallest_eps
from robustlab.evaluation.protocols import (
    decision_score,
    noise_curve,
    shuffle_probe,
    whitebox_accuracy,
)
from robustlab.evaluation.stats import Rate
from robustlab.evaluation.strong import StrongConfig, strong_attack
from robustlab.evaluation.transfer import transfer
from robustlab.evaluation.universal import universal_scores
from robustlab.experiments.jobs import (
    import_pretrained,
    make_adversarial_set,
    model_config_for,
    resolve_device,
)
from robustlab.experiments.spec import (
    ModelEntry,
    Spec,
    curve_settings,
    strong_configs,
)
from robustlab.experiments.timings import LOG_FILE, TimingLog
from robustlab.io import atomic_write, read_json, under, write_json, writes_output
from robustlab.models.base import eval_mode, model_device, predict
from robustlab.models.external import is_external, trusting
from robustlab.report.records import check_record
from robustlab.report.robustbench import model_card, write_cards
from robustlab.report.tables import Record, markdown, write_csv
from robustlab.runs import check_run, model_config, read_meta
from robustlab.seeding import derive_seed
from robustlab.training import train
from robustlab.units import from_255, to_unit


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
        *,
        quiet: bool = False,
        command: str | None = None,
    ) -> None:
        self.spec, self.out, self.quiet, self.command = spec, Path(out), quiet, command
        self.device = resolve_device(device)
        self._models: dict[str, nn.Module] = {}
        self.timings = TimingLog(self.out / LOG_FILE)
        test = load_dataset(spec.dataset, "test", spec.data_dir)
        self.indices = sample_indices(len(test), spec.n, spec.seed)
        self.x, self.y = test.subset(self.indices).tensors()

    def run(self) -> list[Record]:
        """All protocols, in spec order; writes results.json/.csv/.md and returns the records."""
        self.check_runs()
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
        records += [self._summary(name) for name in self.compared_models()]
        for record in records:
            check_record(record)
        command = self.command or f"robustlab run {self.spec.path or 'SPEC'} --out {self.out}"
        write_json(
            self.out / "results.json",
            {"spec": self.spec.source, "spec_path": self.spec.path, "command": command,
             "environment": environment(self.device), "records": records},
        )  # fmt: skip
        write_csv(self.out / "results.csv", records)
        write_cards(
            self.out, [self._card(name, records, command) for name in self.compared_models()]
        )
        with atomic_write(self.out / "results.md", "w") as handle:
            handle.write(markdown(records))
        return records

    # models ---------------------------------------------------------------------------------

    def run_dirs(self, name: str) -> list[Path]:
        """The run directories behind a trained entry (several for an ensemble)."""
        entry = self.spec.models[name]
        if entry.members:
            return [d for member in entry.members for d in self.run_dirs(member)]
        if entry.base is not None:
            raise ValueError(f"model {name!r} is defended: it has no run directory")
        return [under(self.out, "runs", f"{name}-{self._train_key(entry)}")]

    def check_runs(self) -> None:
        """Every run folder already there describes the model it is keyed by, before any work
        (a folder edited to name other code or another model stops the run here)."""
        for name, entry in self.spec.models.items():
            run = self.run_dirs(name)[0] if entry.trained else None
            if run is not None and (run / "meta.json").is_file():
                check_run(run, self._model_config(entry))

    def identity(self, name: str) -> list[str]:
        """What a model is, as names of what was made: run directories, and for a defended
        model its defense directory (keyed by the defense config and the base's identity)."""
        entry = self.spec.models[name]
        if entry.base is not None:
            assert entry.defense is not None
            key = config_hash([entry.defense.describe(), self.identity(entry.base)])
            return [f"{name}-{key}"]
        return [d.name for d in self.run_dirs(name)]

    def _train_key(self, entry: ModelEntry) -> str:
        config = self._model_config(entry)
        parts = [config.to_dict(), entry.recipe().to_dict(), entry.train_limit, self.spec.dataset]
        if entry.weights is not None:  # imported, not trained: keyed by the weights' bytes
            parts = [config.to_dict(), hashlib.sha256(Path(entry.weights).read_bytes()).hexdigest()]
        if self.spec.data_dir is not None or self.spec.dataset == "imagefolder":
            # the user's own files: a run is keyed by their content too (the named datasets'
            # files are checked against published checksums, so their name says it all)
            parts.append(self._data_digest())
        return config_hash(parts)

    @functools.cache  # noqa: B019 (one executor per run; the digest is what is cached)
    def _data_digest(self) -> str:
        digest = hashlib.sha256()
        for split in ("train", "test"):
            data = load_dataset(self.spec.dataset, split, self.spec.data_dir)
            digest.update(data.images.tobytes())
            digest.update(data.labels.tobytes())
        return digest.hexdigest()[:16]

    def _model_config(self, entry: ModelEntry) -> ModelConfig:
        data = load_dataset(self.spec.dataset, "train", self.spec.data_dir)
        config = model_config_for(data, entry.arch, **entry.options)
        config = replace(config, mean=entry.mean or config.mean, std=entry.std or config.std)
        return model_with(entry.training, config)

    def model(self, name: str) -> nn.Module:
        """Train the entry if its run is missing or unfinished (prepare its defense if it has
        one), then load it (cached)."""
        if name not in self._models:
            entry = self.spec.models[name]
            if entry.members:
                members = [self.model(m) for m in entry.members]
                self._models[name] = Ensemble(members).eval()
            elif entry.base is not None:
                self._models[name] = self._defended(entry)
            else:
                self._train(entry)
                self._models[name] = robustlab.load(
                    self.run_dirs(name)[0], self.device, expected=self._model_config(entry)
                )
        return self._models[name]

    def _defended(self, entry: ModelEntry) -> nn.Module:
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
                device=self.device, seed=self.spec.seed, quiet=self.quiet,
            )  # fmt: skip
            with self.timings.timed("prepare", directory.name):
                entry.defense.prepare(base, directory, context)
        return entry.defense.wrap(base, directory)

    def base_of(self, name: str) -> str:
        """The undefended model behind ``name`` (itself when it is not defended)."""
        return self.spec.models[name].base or name

    def _train(self, entry: ModelEntry) -> None:
        run = self.run_dirs(entry.name)[0]
        if entry.weights is not None:
            if not (run / "meta.json").is_file():
                test_data = load_dataset(self.spec.dataset, "test", self.spec.data_dir)
                import_pretrained(
                    self._model_config(entry), entry.weights, run,
                    test_data.subset(self.indices), device=self.device,
                    dataset_meta={"data_dir": _absolute(self.spec.data_dir)},
                )  # fmt: skip
            return
        if (run / "meta.json").is_file() and read_meta(run).get("complete"):
            return
        train_data = load_dataset(self.spec.dataset, "train", self.spec.data_dir)
        train_data = sample(train_data, entry.train_limit, entry.train.seed)
        test_data = load_dataset(self.spec.dataset, "test", self.spec.data_dir).subset(self.indices)
        with self.timings.timed("train", run.name):
            train(
                self._model_config(entry),
                train_data,
                test_data,
                entry.recipe(),
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
            with self.timings.timed("adversarial set", path.stem):
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
        with self.timings.timed("record", path.stem) as what:
            record = {**compute(), "seed": self.spec.seed, "version": __version__}
            what.update({k: record[k] for k in _CELL_FIELDS if k in record})
        check_record(record)  # a bug, not bad input: never write a cell the report cannot read
        write_json(path, record)
        # as read back: a resumed run (records from disk) and an uninterrupted one (computed
        # records) then give the same key order, and byte-identical tables
        normalized: Record = json.loads(json.dumps(record, sort_keys=True))
        return normalized

    def _key(self, *parts: Any) -> list[Any]:
        return [*parts, self.spec.n, self.spec.seed]

    def _card(self, name: str, records: list[Record], command: str) -> dict[str, Any]:
        """The RobustBench-style card of one evaluated model."""
        entry = self.spec.models[name]
        model = self.model(name)
        surface = getattr(model, "surface", None)
        passes = surface.eot_samples if surface is not None and surface.kind == "randomized" else 1
        return model_card(
            name, records, architecture=self._architecture(name), dataset=self.spec.dataset,
            forward_passes=passes,
            extra={"defense": self._defense_configs(entry), "n": self.spec.n,
                   "seed": self.spec.seed, "command": command},
        )  # fmt: skip

    @staticmethod
    def _defense_configs(entry: ModelEntry) -> list[dict[str, Any]]:
        """The configs of an entry's defenses: the wrapping one, or the training-time ones."""
        if entry.defense is not None:
            return [entry.defense.describe()]
        return [d.describe() for d in entry.training]

    def _architecture(self, name: str) -> str:
        entry = self.spec.models[name]
        if entry.members:
            return "ensemble of " + ", ".join(self._architecture(m) for m in entry.members)
        if entry.base is not None and entry.defense is not None:
            return f"{entry.defense.name} on {self._architecture(entry.base)}"
        defect = [d.spec for d in entry.training if isinstance(d, DefectMasks)]
        return entry.arch + (f" (defective {defect[0].keep_prob:g})" if defect else "")

    # the comparison's own cells: clean accuracy and cost of every evaluated model --------------

    def compared_models(self) -> list[str]:
        """Every model some protocol evaluates (not only as a transfer source), in spec order."""
        keys = ("targets", "models")
        named = {m for p in self.spec.protocols for k in keys for m in p.get(k, [])}
        return [name for name in self.spec.models if name in named]

    def _summary(self, name: str) -> Record:
        def compute() -> Record:
            model, base = self.model(name), self.model(self.base_of(name))
            clean = Rate(int((predict(model, self.x) == self.y.cpu()).sum()), len(self.y))
            ms = ms_per_image(model, self.x)
            ratio = ms / ms_per_image(base, self.x) if base is not model else None
            return {"protocol": "summary", "target": name, "clean_accuracy": clean.to_dict(),
                    "ms_per_image": ms, "cost_ratio": ratio,
                    "added_parameters": added_parameters(model, base)}  # fmt: skip

        key = self._key("summary", self._ids([name, self.base_of(name)]))
        # not part of the cached cell: a description of the spec's entry
        return {**self.record(key, compute), "defense": self.spec.models[name].defense_text()}

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
                    kind, self._ids(sources), self._ids([target]), self.spec.attacks[attack]
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
        for name in protocol["models"]:
            cells = []
            for attack in protocol["attacks"]:
                kind, params = self.spec.attacks[attack]

                def compute(
                    name: str = name, attack: str = attack, kind: str = kind, params: Any = params
                ) -> Record:
                    model = self.model(name)
                    rate = whitebox_accuracy(
                        model, self.x, self.y, attack=kind, params=params, seed=self.spec.seed
                    )
                    checks = gradient_checks(model, self.x, self.y).to_dict()
                    return {"protocol": "whitebox", "target": name, "attack": attack,
                            "params": params, "accuracy": rate.to_dict(), **checks}  # fmt: skip

                key = self._key("whitebox/2", self._ids([name]), kind, params)
                cells.append(self.record(key, compute))
            yield from flag_rising_with_eps(
                cells, group=lambda r: self.spec.attacks[r["attack"]][0]
            )

    def _adaptive(self, protocol: dict[str, Any]) -> Iterator[Record]:
        for attack in protocol["attacks"]:
            kind, params = self.spec.attacks[attack]
            for name in protocol["models"]:

                def compute(
                    name: str = name, attack: str = attack, kind: str = kind, params: Any = params
                ) -> Record:
                    model, base = self.model(name), self.model(self.base_of(name))
                    result = adaptive_attack(model, self.x, self.y, kind, params,
                                             base=base, seed=self.spec.seed)  # fmt: skip
                    return {"protocol": "adaptive", "target": name, "attack": attack,
                            "params": params, **result.to_dict()}  # fmt: skip

                key = self._key("adaptive", self._ids([name, self.base_of(name)]), kind, params,
                                *self._declared(name))  # fmt: skip
                yield self.record(key, compute)

    def _strong(self, protocol: dict[str, Any]) -> Iterator[Record]:
        n = min(int(protocol.get("n", self.spec.n)), self.spec.n)
        eps = protocol.get("eps", 8)
        pairs = list(zip(strong_configs(protocol), eps if isinstance(eps, list) else [eps],
                         strict=True))  # fmt: skip
        for name in protocol["models"]:
            cells = [self._strong_cell(name, config, value, n, headline=index == 0)
                     for index, (config, value) in enumerate(pairs)]  # fmt: skip
            yield from flag_rising_with_eps(cells, group=lambda r: r["attack"])

    def _strong_cell(
        self, name: str, config: StrongConfig, eps: float, n: int, *, headline: bool
    ) -> Record:
        """One model under the strong protocol at one ε (0-255 units in ``eps``)."""
        key = self._key("strong", self._ids([name]), config.to_dict(), n, *self._declared(name))

        def compute() -> Record:
            store = self.out / "strong" / config_hash(key)
            result = strong_attack(self.model(name), self.x[:n], self.y[:n], config,
                                   seed=self.spec.seed, store=store)  # fmt: skip
            return {"protocol": "strong", "target": name, "attack": "+".join(config.attacks),
                    "eps": eps, "params": config.to_dict(), **result.to_dict()}  # fmt: skip

        # not part of the cached cell: which ε is the headline depends on the spec's order
        return {**self.record(key, compute), "headline": headline}

    def _curve(self, protocol: dict[str, Any]) -> Iterator[Record]:
        """One record with every model's robust accuracy per ε (cells cached per model)."""
        search, levels = curve_settings(protocol)
        n = min(int(protocol.get("n", self.spec.n)), self.spec.n)
        curves: dict[str, Any] = {}
        for name in protocol["models"]:
            key = self._key("curve", self._ids([name]), search.eps_max, search.search_steps,
                            search.steps, levels, n, *self._declared(name))  # fmt: skip

            def compute(name: str = name, key: list[Any] = key) -> Record:
                star = smallest_eps(self.model(name), self.x[:n], self.y[:n], search,
                                    seed=self.spec.seed)  # fmt: skip
                path = under(self.out, "curves", f"{name}-{config_hash(key)}.npz")
                save_success(path, star, levels, self.indices[:n])
                rates = accuracy_at(star, [from_255(v) for v in levels])
                return {"protocol": "curve_cell", "target": name, "success_file": str(path),
                        "rates": [r.to_dict() for r in rates.values()]}  # fmt: skip

            cell = self.record(key, compute)
            curves[name] = {str(v): rate for v, rate in zip(levels, cell["rates"], strict=True)}
        yield {"protocol": "curve", "attack": "apgd-ce", "eps_max": search.eps_max * 255,
               "resolution": search.resolution * 255, "steps": search.steps, "n": n,
               "curves": curves, "seed": self.spec.seed, "version": __version__}  # fmt: skip

    def _universal(self, protocol: dict[str, Any]) -> Iterator[Record]:
        yield from self._imported_universal(protocol)
        attack_images = int(protocol.get("attack_images", 256))
        options: dict[str, dict[str, Any]] = protocol.get("options", {})
        for attack in protocol.get("attacks", []):
            for xi in protocol.get("xis", [10]):
                for against in protocol.get("against", ["base", "defended"]):
                    for name in protocol["models"]:
                        if against == "defended" and self.base_of(name) == name:
                            continue  # an undefended model: the same as against its base

                        def compute(
                            name: str = name, attack: str = attack, xi: float = xi,
                            against: str = against,
                        ) -> Record:  # fmt: skip
                            model, base = self.model(name), self.model(self.base_of(name))
                            victim = name if against == "defended" else self.base_of(name)
                            delta = self.universal_perturbation(
                                victim, attack, xi, attack_images, options.get(attack, {})
                            )
                            scores = universal_scores(model, base, self.x, self.y, delta)
                            return {"protocol": "universal", "target": name, "attack": attack,
                                    "xi": xi, "against": against, **scores.to_dict()}  # fmt: skip

                        key = self._key("universal", self._ids([name, self.base_of(name)]),
                                        attack, xi, against, attack_images,
                                        options.get(attack, {}))  # fmt: skip
                        yield self.record(key, compute)

    def _imported_universal(self, protocol: dict[str, Any]) -> Iterator[Record]:
        """Cells of perturbation files (``perturbations``), scored as they are."""
        for file in protocol.get("perturbations", []):
            digest = hashlib.sha256(Path(file).read_bytes()).hexdigest()[:16]
            for name in protocol["models"]:

                def compute(name: str = name, file: str = file) -> Record:
                    found = UniversalPerturbation.load(file)
                    found.check_fits(self.x.shape[1:], file)
                    model, base = self.model(name), self.model(self.base_of(name))
                    scores = universal_scores(model, base, self.x, self.y, found.delta)
                    return {"protocol": "universal", "target": name,
                            "attack": f"file:{Path(file).name}", "xi": 255 * scores.linf,
                            "against": "imported", **scores.to_dict()}  # fmt: skip

                key = self._key("universal-file", self._ids([name, self.base_of(name)]), digest)
                yield self.record(key, compute)

    def universal_perturbation(
        self, victim: str, attack: str, xi: float, attack_images: int, options: dict[str, Any]
    ) -> torch.Tensor:
        """δ of ``attack`` at strength ``xi`` (0-255) against ``victim``'s attack view, computed
        once on seeded training images and cached by everything it depends on."""
        key = config_hash([self._ids([victim]), attack, xi, attack_images, options, self.spec.seed])
        path = under(self.out, "universal", f"{attack}-{key}.safetensors")
        if not path.is_file():
            train_data = load_dataset(self.spec.dataset, "train", self.spec.data_dir)
            subset = sample(train_data, attack_images, derive_seed(self.spec.seed, "uap"))
            images, _ = subset.tensors()
            params = to_unit({**options, "xi": xi})
            view = attack_view(self.model(victim))
            with self.timings.timed("universal", path.stem):
                found = build_universal(attack, view, seed=self.spec.seed, **params)(
                    images.to(self.device)
                )
            found.config["victim"] = victim  # which model it fools (the report's galleries)
            found.save(path)
        return UniversalPerturbation.load(path).delta

    def _decision(self, protocol: dict[str, Any]) -> Iterator[Record]:
        params: dict[str, Any] = {
            k: protocol[k] for k in ("steps", "candidates", "max_queries") if k in protocol
        }
        n = int(protocol.get("n", min(self.spec.n, 100)))
        for name in protocol["models"]:

            def compute(name: str = name) -> Record:
                score = decision_score(
                    self.model(name), self.x[:n], self.y[:n], params=params, seed=self.spec.seed
                ).to_dict()
                return {
                    "protocol": "decision",
                    "target": name,
                    "attack": "boundary",
                    "params": params,
                    "score": score,
                }

            yield self.record(self._key("decision", self._ids([name]), params, n), compute)

    def _noise(self, protocol: dict[str, Any]) -> Iterator[Record]:
        sigmas = [float(s) for s in protocol["sigmas"]]

        def probe(models: dict[str, nn.Module]) -> dict[str, dict[float, Rate]]:
            return noise_curve(models, self.x, self.y, sigmas=sigmas, seed=self.spec.seed)

        yield self._probe("noise", protocol["models"], sigmas, probe)

    def _shuffle(self, protocol: dict[str, Any]) -> Iterator[Record]:
        ks = [int(k) for k in protocol.get("ks", [2, 4, 8])]

        def probe(models: dict[str, nn.Module]) -> dict[str, dict[int, Rate]]:
            return shuffle_probe(models, self.x, self.y, ks=ks, seed=self.spec.seed)

        yield self._probe("shuffle", protocol["models"], ks, probe)

    def _probe(
        self,
        kind: str,
        names: list[str],
        levels: list[Any],
        probe: Callable[[dict[str, nn.Module]], dict[str, dict[Any, Rate]]],
    ) -> Record:
        """One cell of a per-level accuracy curve over images every model gets right."""

        def compute() -> Record:
            models = {m: self.model(m) for m in names}
            return {"protocol": kind, "curves": _rates(probe(models))}

        return self.record(self._key(kind, self._ids(names), levels), compute)

    def _declared(self, name: str) -> list[str]:
        """The attack surface a trained model declares (a thermometer encoding: BPDA), for
        the keys of cells that attack through it; empty for the rest (a defended model's
        surface is part of its defense's identity already)."""
        training = self.spec.models[name].training
        return [
            f"surface:bpda:thermometer{d.levels}" for d in training if isinstance(d, Thermometer)
        ]

    def _ids(self, models: list[str]) -> list[str]:
        """Models as what was made for them: a record is keyed by what was trained/prepared."""
        return [i for m in models for i in self.identity(m)]


# what a timing line says about the cell it timed
_CELL_FIELDS = ("protocol", "model", "target", "source", "attack")


def flag_rising_with_eps(cells: list[Record], group: Callable[[Record], Any]) -> list[Record]:
    """Add ``accuracy_rises_with_eps`` to cells of one model and attack kind where a larger ε
    left more images correctly classified than a smaller one (a broken attack's sign)."""
    flagged = [dict(c) for c in cells]
    for i, a in enumerate(flagged):
        for b in flagged[i + 1 :]:
            if group(a) != group(b):
                continue
            low, high = sorted((a, b), key=_eps_of)
            if _eps_of(high) > _eps_of(low) and high["accuracy"]["hits"] > low["accuracy"]["hits"]:
                for cell in (low, high):
                    if "accuracy_rises_with_eps" not in cell.setdefault("flags", []):
                        cell["flags"] = [*cell["flags"], "accuracy_rises_with_eps"]
    return flagged


def _eps_of(record: Record) -> float:
    eps = record.get("eps", record.get("params", {}).get("eps", 0.0))
    return float(eps)


def _absolute(path: str | None) -> str | None:
    return str(Path(path).resolve()) if path is not None else None


def _rates(table: dict[str, dict[Any, Any]]) -> dict[str, dict[str, Any]]:
    return {
        name: {str(k): rate.to_dict() for k, rate in row.items()} for name, row in table.items()
    }


def ms_per_image(model: nn.Module, x: torch.Tensor, count: int = 64) -> float:
    """Wall-clock milliseconds per image of a forward pass (batch of ``count``, after a
    warm-up on two images): measured where the run runs, so only ratios travel."""
    batch = x[:count].to(model_device(model))
    with torch.no_grad(), eval_mode(model):
        model(batch[:2])
        start = time.perf_counter()
        model(batch)
        return 1000 * (time.perf_counter() - start) / max(1, len(batch))


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
