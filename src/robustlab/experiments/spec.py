"""Experiment specs: a TOML file naming models, attacks and protocols, validated up front.

```toml
[experiment]
dataset = "fashion-mnist"   # any name of robustlab.data.available()
seed = 0
n = 500                     # test images per protocol (a seeded subset)

[train]                     # defaults for every model; each model may override any key
arch = "resnet8"
epochs = 5

[models.standard]
[models.defective]
defect = "bottom:0.1"
[models.source]
seed = 1
[models.en]                 # a logit-averaging ensemble of other models
members = ["defective", "standard"]

[attacks.pgd16]             # eps/step/sigma in 0-255 units, as on the command line
attack = "pgd"
eps = 16
step = 1
steps = 20

[[protocols]]
type = "transfer"           # transfer | ensemble_transfer | whitebox | decision | noise | shuffle
sources = ["source"]
targets = ["standard", "defective"]
attacks = ["pgd16"]
```

Every error names the spec entry and what to write instead.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

from robustlab.attacks import available as available_attacks
from robustlab.attacks.base import AttackConfig
from robustlab.attacks.registry import check as check_attack
from robustlab.data import available as available_datasets
from robustlab.defenses.base import Defense
from robustlab.defenses.registry import TABLES as DEFENSE_TABLES
from robustlab.defenses.registry import TRAINING_KEYS, defense_from_table, training_defenses
from robustlab.defenses.training_time import TrainingDefense, recipe_with
from robustlab.evaluation.protocols import Protocol, SpecView, parse_protocol
from robustlab.io import JSONObject, RobustlabError, check_name
from robustlab.models import available as available_archs
from robustlab.models.config import DefectSpec
from robustlab.models.external import FACTORY_HINT, is_external
from robustlab.training.config import TrainConfig
from robustlab.units import PIXEL_UNITS, pgd_budget, to_unit

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

MODEL_KEYS = {
    "arch",
    "width",
    "defect",
    "mask_seed",
    "regularizer",
    "thermometer",
    "train_limit",
    "weights",
    "mean",
    "std",
    "factory_args",
    "defect_layers",
}
TRAIN_KEYS = {
    "epochs",
    "batch_size",
    "lr",
    "momentum",
    "weight_decay",
    "milestones",
    "gamma",
    "label_smoothing",
    "pad",
    "flip",
    "seed",
    "adv_train",
    "schedule",
}


@dataclass(frozen=True)
class ModelEntry:
    """One trainable model (or, with ``members``, an ensemble of other entries)."""

    name: str
    arch: str = "resnet8"
    options: dict[str, object] = field(default_factory=dict)
    training: tuple[TrainingDefense, ...] = ()  # built into the model or its recipe
    train_limit: int | None = None
    train: TrainConfig = field(default_factory=TrainConfig)  # the recipe before ``training``
    members: tuple[str, ...] = ()
    base: str | None = None  # a defended entry: the defense wraps this trained model
    defense: Defense | None = None
    defense_table: tuple[str, JSONObject] | None = None  # as the spec wrote it (0-255)
    weights: str | None = None  # trained elsewhere: imported from this file, not trained
    mean: tuple[float, ...] | None = None  # input normalisation (default: the data's)
    std: tuple[float, ...] | None = None

    def defense_text(self) -> str:
        """The entry's defense in a few words, for tables: a wrapping defense with its attack
        surface, or the training-time ones (ε in 0-255 units); "—" for none."""
        if self.defense is not None:
            return f"{self.defense.name} ({self.defense.surface.kind})"
        if self.members:
            return "ensemble"
        return ", ".join(d.text() for d in self.training) or "—"

    def recipe(self) -> TrainConfig:
        """The training recipe with the training-time defenses applied."""
        return recipe_with(self.training, self.train)

    @property
    def trained(self) -> bool:
        """A model trained by the spec itself (not an ensemble, not a defended wrapper)."""
        return not self.members and self.base is None


@dataclass(frozen=True)
class Spec:
    """A validated experiment."""

    name: str
    dataset: str
    data_dir: str | None
    seed: int
    n: int
    models: dict[str, ModelEntry]
    attacks: dict[str, AttackConfig]
    protocols: list[Protocol]  # typed configs, parsed once (robustlab.evaluation.protocols)
    source: JSONObject  # the parsed TOML, recorded with the results
    path: str | None = None


def load_spec(path: str | Path) -> Spec:
    """Read and validate a TOML spec; raise :class:`RobustlabError` naming the bad entry."""
    path = Path(path)
    try:
        # utf-8-sig: a byte-order mark (as some editors save) is not part of the spec
        raw = parse_toml(path.read_text(encoding="utf-8-sig"))
    except FileNotFoundError:
        raise RobustlabError(f"{path}: spec not found; see specs/ for examples") from None
    except UnicodeDecodeError as err:
        raise RobustlabError(
            f"{path}: not UTF-8 text (byte {err.object[err.start]:#04x} at offset {err.start}); "
            "save the spec as UTF-8"
        ) from None
    except tomllib.TOMLDecodeError as err:
        raise RobustlabError(f"{path}: not valid TOML ({err})") from None
    try:
        spec = replace(parse_spec(raw, default_name=path.stem), path=str(path))
    except (ValueError, KeyError, TypeError) as err:
        raise RobustlabError(f"{path}: {err}") from None
    if not spec.protocols:  # a spec file that would train and evaluate nothing
        raise RobustlabError(
            f"{path}: the spec has no [[protocols]]: nothing would be evaluated; add one, "
            'e.g. [[protocols]] type = "noise" (docs/experiments.md lists them)'
        )
    return spec


def parse_toml(text: str) -> JSONObject:
    """Parse TOML text (tomllib, or tomli before Python 3.11)."""
    return tomllib.loads(text)


SECTIONS = ("experiment", "train", "models", "attacks", "protocols")
EXPERIMENT_KEYS = ("name", "dataset", "data_dir", "seed", "n")


def parse_spec(raw: JSONObject, default_name: str = "experiment") -> Spec:
    """Validate a parsed spec (see the module docstring for the format)."""
    for section in raw:
        if section not in SECTIONS:
            raise ValueError(f"unknown section [{section}]; sections: {', '.join(SECTIONS)}")
    experiment = raw.get("experiment", {})
    for key in experiment:
        if key not in EXPERIMENT_KEYS:
            raise ValueError(
                f"[experiment] unknown key {key!r}; known: {', '.join(EXPERIMENT_KEYS)}"
            )
    for key in ("seed", "n"):
        if key in experiment and (type(experiment[key]) is not int or experiment[key] < 0):
            raise ValueError(
                f"[experiment] {key} must be a non-negative integer, got {experiment[key]!r}"
            )
    dataset = experiment.get("dataset")
    if dataset not in available_datasets():
        raise ValueError(
            f"[experiment] dataset {dataset!r} is missing or unknown; "
            f"use one of {', '.join(available_datasets())}"
        )
    defaults = raw.get("train", {})
    for section in ("models", "attacks"):
        for name in raw.get(section, {}):
            check_name(name, f"[{section}]")  # names become folder names and table cells
    if "name" in experiment:
        check_name(experiment["name"], "[experiment]")
    models = {
        name: _model(name, defaults, entry or {}) for name, entry in raw.get("models", {}).items()
    }
    for entry in models.values():
        for member in entry.members:
            if member not in models or not models[member].trained:
                raise ValueError(f"[models.{entry.name}] member {member!r} is not a trained model")
        if entry.base is not None and (entry.base not in models or not models[entry.base].trained):
            raise ValueError(
                f"[models.{entry.name}] base {entry.base!r} is not a trained model of this spec"
            )
    attacks = {
        name: parse_attack(f"[attacks.{name}]", entry)
        for name, entry in raw.get("attacks", {}).items()
    }
    n = int(experiment.get("n", 500))
    view = SpecView(
        models={name: entry.trained for name, entry in models.items()},
        attacks={name: kind for name, (kind, _) in attacks.items()},
        n=n,
    )
    protocols = [parse_protocol(i, p, view) for i, p in enumerate(raw.get("protocols", []))]
    return Spec(
        name=str(experiment.get("name", default_name)),
        dataset=dataset,
        data_dir=experiment.get("data_dir"),
        seed=int(experiment.get("seed", 0)),
        n=n,
        models=models,
        attacks=attacks,
        protocols=protocols,
        source=raw,
    )


def _model(name: str, defaults: JSONObject, entry: JSONObject) -> ModelEntry:
    if "members" in entry:
        members = entry["members"]
        if not isinstance(members, list) or not members:
            raise ValueError(
                f"[models.{name}] members = {members!r}: an ensemble needs a list of "
                'models, e.g. members = ["standard", "defective"]'
            )
        return ModelEntry(name=name, members=tuple(members))
    if "base" in entry or any(table in entry for table in DEFENSE_TABLES):
        return _defended(name, entry)
    merged = {**defaults, **entry}
    unknown = set(merged) - MODEL_KEYS - TRAIN_KEYS
    if unknown:
        raise ValueError(
            f"[models.{name}] unknown key {sorted(unknown)[0]!r}; "
            f"known: {', '.join(sorted(MODEL_KEYS | TRAIN_KEYS))}"
        )
    arch = merged.get("arch", "resnet8")
    if arch not in available_archs() and not is_external(arch):
        raise ValueError(
            f"[models.{name}] unknown arch {arch!r}; use one of {', '.join(available_archs())}, "
            f"or {FACTORY_HINT}"
        )
    options = _model_options(name, arch, merged)
    train = {k: v for k, v in merged.items() if k in TRAIN_KEYS and k not in TRAINING_KEYS}
    _check_types(f"[models.{name}]", train)
    if "milestones" in train:
        train["milestones"] = tuple(train["milestones"])
    try:
        config = TrainConfig(**train)
    except ValueError as err:
        raise ValueError(f"[models.{name}] {err}") from None
    return ModelEntry(
        name=name,
        arch=arch,
        options=options,
        training=_training_defenses(name, merged),
        train_limit=merged.get("train_limit"),
        train=config,
        weights=merged.get("weights"),
        mean=tuple(merged["mean"]) if "mean" in merged else None,
        std=tuple(merged["std"]) if "std" in merged else None,
    )


def _training_defenses(name: str, merged: JSONObject) -> tuple[TrainingDefense, ...]:
    """``defect`` (+ ``mask_seed``), ``regularizer``, ``thermometer``, ``label_smoothing``
    and ``adv_train = "EPS:STEP:STEPS"`` (0-255 units) of a trained entry."""
    where = f"[models.{name}]"
    _check_types(where, {k: merged[k] for k in ("label_smoothing",) if k in merged})
    try:
        defect = None
        if "defect" in merged:
            defect = DefectSpec.parse(merged["defect"], seed=int(merged.get("mask_seed", 0)))
    except ValueError as err:
        raise ValueError(f"{where} defect: {err}") from None
    adversarial = None
    if "adv_train" in merged:
        try:
            adversarial = pgd_budget(merged["adv_train"])
        except ValueError:
            raise ValueError(
                f'{where} adv_train must be "EPS:STEP:STEPS" in 0-255 units, '
                f'e.g. "8:2:7"; got {merged["adv_train"]!r}'
            ) from None
    try:
        return training_defenses(
            defect=defect,
            regularizer=merged.get("regularizer"),
            thermometer=merged.get("thermometer"),
            label_smoothing=float(merged.get("label_smoothing", 0.0)),
            adv_train=adversarial,
        )
    except ValueError as err:
        raise ValueError(f"{where} {err}") from None


def _model_options(name: str, arch: str, merged: JSONObject) -> dict[str, object]:
    """Architecture options: ``width`` for zoo models; ``factory_args`` and ``defect_layers``
    for factories; ``weights``, ``mean`` and ``std`` checked here, before any work."""
    where = f"[models.{name}]"
    external = {"factory_args", "defect_layers"} & set(merged)
    if external and not is_external(arch):
        raise ValueError(
            f"{where} {sorted(external)[0]} applies to factory architectures "
            "(torchvision:NAME, timm:NAME, package.module:function) only"
        )
    for key in ("mean", "std"):
        value = merged.get(key)
        if value is not None and (
            not isinstance(value, list)
            or not value
            or not all(type(v) in (int, float) for v in value)
        ):
            raise ValueError(f"{where} {key} must be a list of numbers, one per channel")
    weights = merged.get("weights")
    if weights is not None and not Path(weights).is_file():
        raise ValueError(f"{where} weights {weights!r}: no such file")
    if not isinstance(merged.get("factory_args", {}), dict):
        raise ValueError(f"{where} factory_args must be a table, e.g. {{ num_classes = 10 }}")
    width = merged.get("width")
    if width is not None and (type(width) is not int or width < 1):
        raise ValueError(f"{where} width = {width!r} must be a positive integer, e.g. 16")
    options: dict[str, object] = {"width": width} if width is not None else {}
    options.update({k: merged[k] for k in sorted(external)})
    return options


def _check_types(where: str, values: Mapping[str, object]) -> None:
    """TOML values against TrainConfig's field types, naming the key (no late TypeError)."""
    kinds = {f.name: str(f.type) for f in fields(TrainConfig)}
    for key, value in values.items():
        kind = kinds.get(key, "")
        if kind == "int" and type(value) is not int:
            raise ValueError(f"{where} {key} must be an integer, got {value!r}")
        if kind == "float" and (type(value) not in (int, float)):
            raise ValueError(f"{where} {key} must be a number, got {value!r}")
        if kind == "bool" and type(value) is not bool:
            raise ValueError(f"{where} {key} must be true or false, got {value!r}")
        if kind == "str" and type(value) is not str:
            raise ValueError(f"{where} {key} must be a string, got {value!r}")
        if kind.startswith("tuple") and not (
            isinstance(value, list) and all(type(v) is int for v in value)
        ):
            raise ValueError(f"{where} {key} must be a list of integers, got {value!r}")


def _defended(name: str, entry: JSONObject) -> ModelEntry:
    """``base = "standard"`` and one table: ``purify = {...}`` or ``regenerate = {...}``."""
    where = f"[models.{name}]"
    tables = [t for t in DEFENSE_TABLES if t in entry]
    if "base" not in entry or len(tables) != 1:
        raise ValueError(
            f'{where} a defended model needs base = "<model>" and one of '
            f"{' or '.join(DEFENSE_TABLES)} = {{...}}"
        )
    unknown = set(entry) - {"base", *tables}
    if unknown:
        raise ValueError(
            f"{where} unknown key {sorted(unknown)[0]!r} beside base and "
            f"{tables[0]}; training keys belong to the base model"
        )
    table = entry[tables[0]]
    if not isinstance(table, dict):
        raise ValueError(f"{where} {tables[0]} must be a table, e.g. {tables[0]} = {{ ... }}")
    try:
        defense = defense_from_table(tables[0], to_unit(table))
    except (ValueError, RobustlabError) as err:
        raise ValueError(f"{where} {err}") from None
    return ModelEntry(
        name=name, base=str(entry["base"]), defense=defense, defense_table=(tables[0], table)
    )


def parse_attack(where: str, entry: JSONObject) -> AttackConfig:
    """An attack table (``attack = "pgd"``, parameters with ε, step and ξ in 0-255 units)
    as the attack's name and its parameters in [0, 1] units, checked now, not mid-run. The
    spec's ``[attacks.NAME]`` tables and ``robustlab attack``'s options both come here."""
    attack = entry.get("attack")
    if attack not in available_attacks():
        raise ValueError(
            f"{where} attack {attack!r} is missing or unknown; "
            f"use one of {', '.join(available_attacks())}"
        )
    for key in PIXEL_UNITS:
        value = entry.get(key)
        if value is not None and (type(value) not in (int, float) or not 0 <= value <= 255):
            raise ValueError(
                f"{where} {key} = {value!r} must be a number in 0..255 "
                f"(pixel units are 0-255, e.g. {key} = 16)"
            )
    params = to_unit({k: v for k, v in entry.items() if k != "attack"})
    try:
        check_attack(attack, **params)
    except ValueError as err:
        raise ValueError(f"{where} {err}") from None
    return AttackConfig(attack, params)
