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
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from robustlab.attacks import available as available_attacks
from robustlab.attacks.universal import UNIVERSAL_ATTACKS, build_universal
from robustlab.data import available as available_datasets
from robustlab.defenses.base import Defense
from robustlab.defenses.defective import DefectSpec
from robustlab.defenses.registry import TABLES as DEFENSE_TABLES
from robustlab.defenses.registry import TRAINING_KEYS, defense_from_table, training_defenses
from robustlab.defenses.training_time import TrainingDefense, recipe_with
from robustlab.evaluation.curve import EpsilonSearch
from robustlab.evaluation.strong import STANDARD_ATTACKS, StrongConfig
from robustlab.io import RobustlabError, check_name, check_title
from robustlab.models import available as available_archs
from robustlab.models.external import FACTORY_HINT, is_external
from robustlab.training import TrainConfig
from robustlab.units import PIXEL_UNITS, pgd_budget, to_unit

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

MODEL_KEYS = {"arch", "width", "defect", "mask_seed", "regularizer", "thermometer", "train_limit",
              "weights", "mean", "std", "factory_args", "defect_layers"}  # fmt: skip
TRAIN_KEYS = {"epochs", "batch_size", "lr", "momentum", "weight_decay", "milestones", "gamma",
              "label_smoothing", "pad", "flip", "seed", "adv_train", "schedule"}  # fmt: skip
PROTOCOLS = {
    "transfer": {"sources", "targets", "attacks"},
    "ensemble_transfer": {"models", "attacks"},
    "whitebox": {"models", "attacks"},
    "adaptive": {"models", "attacks"},
    "universal": {
        "models",
        "attacks",
        "xis",
        "against",
        "attack_images",
        "options",
        "perturbations",
    },
    "curve": {"models", "eps_max", "search_steps", "eps", "steps", "n"},
    "strong": {
        "models",
        "eps",
        "norm",
        "steps",
        "target_classes",
        "queries",
        "restarts",
        "attacks",
        "n",
    },
    "decision": {"models", "steps", "candidates", "max_queries", "n"},
    "noise": {"models", "sigmas"},
    "shuffle": {"models", "ks"},
}
GRADIENT_ATTACKS = ("fgsm", "pgd", "mifgsm", "cw")


@dataclass(frozen=True)
class ModelEntry:
    """One trainable model (or, with ``members``, an ensemble of other entries)."""

    name: str
    arch: str = "resnet8"
    options: dict[str, Any] = field(default_factory=dict)
    training: tuple[TrainingDefense, ...] = ()  # built into the model or its recipe
    train_limit: int | None = None
    train: TrainConfig = field(default_factory=TrainConfig)  # the recipe before ``training``
    members: tuple[str, ...] = ()
    base: str | None = None  # a defended entry: the defense wraps this trained model
    defense: Defense | None = None
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
    attacks: dict[str, tuple[str, dict[str, Any]]]
    protocols: list[dict[str, Any]]
    source: dict[str, Any]  # the parsed TOML, recorded with the results
    path: str | None = None


def load_spec(path: str | Path) -> Spec:
    """Read and validate a TOML spec; raise :class:`RobustlabError` naming the bad entry."""
    path = Path(path)
    try:
        raw = parse_toml(path.read_text())
    except FileNotFoundError:
        raise RobustlabError(f"{path}: spec not found; see specs/ for examples") from None
    except tomllib.TOMLDecodeError as err:
        raise RobustlabError(f"{path}: not valid TOML ({err})") from None
    try:
        return replace(parse_spec(raw, default_name=path.stem), path=str(path))
    except (ValueError, KeyError, TypeError) as err:
        raise RobustlabError(f"{path}: {err}") from None


def parse_toml(text: str) -> dict[str, Any]:
    """Parse TOML text (tomllib, or tomli before Python 3.11)."""
    return tomllib.loads(text)


SECTIONS = ("experiment", "train", "models", "attacks", "protocols")
EXPERIMENT_KEYS = ("name", "dataset", "data_dir", "seed", "n")


def parse_spec(raw: dict[str, Any], default_name: str = "experiment") -> Spec:
    """Validate a parsed spec (see the module docstring for the format)."""
    for section in raw:
        if section not in SECTIONS:
            raise ValueError(f"unknown section [{section}]; sections: {', '.join(SECTIONS)}")
    experiment = raw.get("experiment", {})
    for key in experiment:
        if key not in EXPERIMENT_KEYS:
            raise ValueError(f"[experiment] unknown key {key!r}; known: "
                             f"{', '.join(EXPERIMENT_KEYS)}")  # fmt: skip
    for key in ("seed", "n"):
        if key in experiment and (type(experiment[key]) is not int or experiment[key] < 0):
            raise ValueError(f"[experiment] {key} must be a non-negative integer, "
                             f"got {experiment[key]!r}")  # fmt: skip
    dataset = experiment.get("dataset")
    if dataset not in available_datasets():
        raise ValueError(f"[experiment] dataset {dataset!r} is missing or unknown; "
                         f"use one of {', '.join(available_datasets())}")  # fmt: skip
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
    attacks = {name: _attack(name, entry) for name, entry in raw.get("attacks", {}).items()}
    protocols = [_protocol(i, p, models, attacks) for i, p in enumerate(raw.get("protocols", []))]
    return Spec(
        name=str(experiment.get("name", default_name)),
        dataset=dataset,
        data_dir=experiment.get("data_dir"),
        seed=int(experiment.get("seed", 0)),
        n=int(experiment.get("n", 500)),
        models=models,
        attacks=attacks,
        protocols=protocols,
        source=raw,
    )


def _model(name: str, defaults: dict[str, Any], entry: dict[str, Any]) -> ModelEntry:
    if "members" in entry:
        return ModelEntry(name=name, members=tuple(entry["members"]))
    if "base" in entry or any(table in entry for table in DEFENSE_TABLES):
        return _defended(name, entry)
    merged = {**defaults, **entry}
    unknown = set(merged) - MODEL_KEYS - TRAIN_KEYS
    if unknown:
        raise ValueError(f"[models.{name}] unknown key {sorted(unknown)[0]!r}; "
                         f"known: {', '.join(sorted(MODEL_KEYS | TRAIN_KEYS))}")  # fmt: skip
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


def _training_defenses(name: str, merged: dict[str, Any]) -> tuple[TrainingDefense, ...]:
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
            raise ValueError(f"{where} adv_train must be \"EPS:STEP:STEPS\" in 0-255 units, "
                             f"e.g. \"8:2:7\"; got {merged['adv_train']!r}") from None  # fmt: skip
    try:
        return training_defenses(
            defect=defect, regularizer=merged.get("regularizer"),
            thermometer=merged.get("thermometer"),
            label_smoothing=float(merged.get("label_smoothing", 0.0)), adv_train=adversarial,
        )  # fmt: skip
    except ValueError as err:
        raise ValueError(f"{where} {err}") from None


def _model_options(name: str, arch: str, merged: dict[str, Any]) -> dict[str, Any]:
    """Architecture options: ``width`` for zoo models; ``factory_args`` and ``defect_layers``
    for factories; ``weights``, ``mean`` and ``std`` checked here, before any work."""
    where = f"[models.{name}]"
    external = {"factory_args", "defect_layers"} & set(merged)
    if external and not is_external(arch):
        raise ValueError(f"{where} {sorted(external)[0]} applies to factory architectures "
                         "(torchvision:NAME, timm:NAME, package.module:function) only")  # fmt: skip
    for key in ("mean", "std"):
        value = merged.get(key)
        if value is not None and (not isinstance(value, list) or not value
                                  or not all(type(v) in (int, float) for v in value)):  # fmt: skip
            raise ValueError(f"{where} {key} must be a list of numbers, one per channel")
    weights = merged.get("weights")
    if weights is not None and not Path(weights).is_file():
        raise ValueError(f"{where} weights {weights!r}: no such file")
    if not isinstance(merged.get("factory_args", {}), dict):
        raise ValueError(f"{where} factory_args must be a table, e.g. {{ num_classes = 10 }}")
    options: dict[str, Any] = {"width": merged["width"]} if "width" in merged else {}
    options.update({k: merged[k] for k in sorted(external)})
    return options


def _check_types(where: str, values: dict[str, Any]) -> None:
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


def _defended(name: str, entry: dict[str, Any]) -> ModelEntry:
    """``base = "standard"`` and one table: ``purify = {...}`` or ``regenerate = {...}``."""
    where = f"[models.{name}]"
    tables = [t for t in DEFENSE_TABLES if t in entry]
    if "base" not in entry or len(tables) != 1:
        raise ValueError(f"{where} a defended model needs base = \"<model>\" and one of "
                         f"{' or '.join(DEFENSE_TABLES)} = {{...}}")  # fmt: skip
    unknown = set(entry) - {"base", *tables}
    if unknown:
        raise ValueError(f"{where} unknown key {sorted(unknown)[0]!r} beside base and "
                         f"{tables[0]}; training keys belong to the base model")  # fmt: skip
    table = entry[tables[0]]
    if not isinstance(table, dict):
        raise ValueError(f"{where} {tables[0]} must be a table, e.g. {tables[0]} = {{ ... }}")
    try:
        defense = defense_from_table(tables[0], to_unit(table))
    except (ValueError, RobustlabError) as err:
        raise ValueError(f"{where} {err}") from None
    return ModelEntry(name=name, base=str(entry["base"]), defense=defense)


def _attack(name: str, entry: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    attack = entry.get("attack")
    if attack not in available_attacks():
        raise ValueError(f"[attacks.{name}] attack {attack!r} is missing or unknown; "
                         f"use one of {', '.join(available_attacks())}")  # fmt: skip
    for key in PIXEL_UNITS:
        value = entry.get(key)
        if value is not None and (type(value) not in (int, float) or not 0 <= value <= 255):
            raise ValueError(f"[attacks.{name}] {key} = {value!r} must be a number in 0..255 "
                             f"(spec units are 0-255, e.g. {key} = 16)")  # fmt: skip
    params = to_unit({k: v for k, v in entry.items() if k != "attack"})
    from torch import nn

    from robustlab.attacks import build

    try:
        build(attack, nn.Identity(), **params)  # validates the parameters now, not mid-run
    except ValueError as err:
        raise ValueError(f"[attacks.{name}] {err}") from None
    return attack, params


def _universal_protocol(where: str, entry: dict[str, Any]) -> None:
    """attacks: universal attack names; xis: strengths in 0-255 (the first is the training
    strength); against: "base", "defended" or both; options: per-attack parameters;
    perturbations: files in robustlab's format (``robustlab universal import``), scored as
    they are."""
    from torch import nn

    from robustlab.attacks.universal import UniversalPerturbation

    files = entry.get("perturbations", [])
    if not isinstance(files, list) or not all(isinstance(f, str) for f in files):
        raise ValueError(f"{where}: perturbations must be a list of file names")
    for name in files:
        try:
            UniversalPerturbation.load(name)
        except RobustlabError as err:
            raise ValueError(f"{where}: perturbations: {err}") from None
    if not entry.get("attacks") and not files:
        raise ValueError(f"{where}: needs 'attacks' or 'perturbations'")

    for attack in entry.get("attacks", []):
        if attack not in UNIVERSAL_ATTACKS:
            raise ValueError(f"{where}: unknown universal attack {attack!r}; use one of "
                             f"{', '.join(UNIVERSAL_ATTACKS)}")  # fmt: skip
    xis = entry.get("xis", [10])
    if not xis or not all(isinstance(v, int | float) and 0 < v <= 255 for v in xis):
        raise ValueError(f"{where}: xis must be strengths in 0-255 units, e.g. [10, 16]")
    options = entry.get("options", {})
    for attack, params in options.items():
        if attack not in entry.get("attacks", []):
            raise ValueError(f"{where}: options for {attack!r}, which attacks does not list")
        try:
            build_universal(attack, nn.Identity(), **to_unit(params))
        except ValueError as err:
            raise ValueError(f"{where}: options.{attack}: {err}") from None
    against = entry.get("against", ["base", "defended"])
    if not against or set(against) - {"base", "defended"}:
        raise ValueError(f"{where}: against must list 'base' and/or 'defended'")


def strong_configs(entry: dict[str, Any]) -> list[StrongConfig]:
    """The strong protocol's budgets, one per ε (spec units 0-255 converted here), the
    headline ε first."""
    eps = entry.get("eps", 8)
    values = eps if isinstance(eps, list) else [eps]
    options = {k: entry[k] for k in ("norm", "steps", "target_classes", "queries", "restarts")
               if k in entry}  # fmt: skip
    attacks = tuple(entry.get("attacks", STANDARD_ATTACKS))
    return [StrongConfig(eps=to_unit({"eps": v})["eps"], attacks=attacks, **options)
            for v in values]  # fmt: skip


def _strong_protocol(where: str, entry: dict[str, Any]) -> None:
    """eps: one strength or a list in 0-255 (the first is the headline); attacks: some of
    apgd-ce, apgd-dlr, apgd-t, square, run in that order of listing."""
    from torch import nn

    from robustlab.attacks import build

    eps = entry.get("eps", 8)
    values = eps if isinstance(eps, list) else [eps]
    if not values or not all(type(v) in (int, float) and 0 < v <= 255 for v in values):
        raise ValueError(f"{where}: eps must be a strength in 0-255 units or a list of them, "
                         "e.g. eps = 8 or eps = [2, 4, 8]")  # fmt: skip
    if not entry.get("models"):
        raise ValueError(f"{where}: needs a non-empty 'models' list")
    n = entry.get("n", 1)
    if type(n) is not int or n < 1:
        raise ValueError(f"{where}: n = {n!r} must be a positive integer")
    try:
        for config in strong_configs(entry):
            for name in config.attacks:
                kind, params = config.attack(name)
                build(kind, nn.Identity(), **params)
    except (ValueError, TypeError) as err:
        raise ValueError(f"{where}: {err}") from None


def curve_settings(entry: dict[str, Any]) -> tuple[EpsilonSearch, list[float]]:
    """The curve protocol's bisection settings ([0, 1] units) and its ε levels (0-255)."""
    eps_max = entry.get("eps_max", 32)
    levels = entry.get("eps", [e for e in (1, 2, 4, 8, 16, 32) if e <= eps_max])
    search = EpsilonSearch(eps_max=to_unit({"eps": eps_max})["eps"],
                           search_steps=int(entry.get("search_steps", 5)),
                           steps=int(entry.get("steps", 20)))  # fmt: skip
    return search, [float(v) for v in levels]


def _curve_protocol(where: str, entry: dict[str, Any]) -> None:
    """eps_max (0-255), search_steps bisections, eps: the curve's levels, multiples of
    eps_max / 2**search_steps (where the bisection makes the curve exact)."""
    if not entry.get("models"):
        raise ValueError(f"{where}: needs a non-empty 'models' list")
    eps_max = entry.get("eps_max", 32)
    if type(eps_max) not in (int, float) or not 0 < eps_max <= 255:
        raise ValueError(f"{where}: eps_max = {eps_max!r} must be in 0-255 units, e.g. 32")
    for key in ("search_steps", "steps", "n"):
        value = entry.get(key, 1)
        if type(value) is not int or value < 1 or (key == "search_steps" and value > 20):
            raise ValueError(f"{where}: {key} = {value!r} must be a positive integer"
                             + (" up to 20" if key == "search_steps" else ""))  # fmt: skip
    resolution = eps_max / 2 ** entry.get("search_steps", 5)
    levels = entry.get("eps", [1])
    if not isinstance(levels, list) or not levels or not all(
        type(v) in (int, float) and 0 < v <= eps_max
        and abs(v / resolution - round(v / resolution)) < 1e-9
        for v in levels
    ):  # fmt: skip
        raise ValueError(
            f"{where}: eps = {levels!r}: each level must be in (0, eps_max] and a multiple "
            f"of eps_max / 2**search_steps = {resolution:g}, where the bisection is exact"
        )


def _protocol(
    index: int, entry: dict[str, Any], models: dict[str, ModelEntry], attacks: dict[str, Any]
) -> dict[str, Any]:
    kind = entry.get("type")
    where = f"[[protocols]] #{index + 1} ({kind})"
    if kind not in PROTOCOLS:
        raise ValueError(f"{where}: unknown type; use one of {', '.join(PROTOCOLS)}")
    unknown = set(entry) - PROTOCOLS[kind] - {"type", "name"}
    if unknown:
        raise ValueError(f"{where}: unknown key {sorted(unknown)[0]!r}")
    if "name" in entry:
        check_title(entry["name"], where)
    for key in ("sources", "targets", "models"):
        for model in entry.get(key, []):
            if model not in models:
                raise ValueError(f"{where}: {key} names unknown model {model!r}")
    if kind == "universal":
        _universal_protocol(where, entry)
        return dict(entry)
    if kind == "strong":
        _strong_protocol(where, entry)
        return dict(entry)
    if kind == "curve":
        _curve_protocol(where, entry)
        return dict(entry)
    for attack in entry.get("attacks", []):
        if attack not in attacks:
            raise ValueError(f"{where}: unknown attack {attack!r}; declare it under [attacks]")
    required = {"sources", "targets", "models", "attacks"} & PROTOCOLS[kind]
    missing = [k for k in sorted(required) if not entry.get(k)]
    if missing:
        raise ValueError(f"{where}: needs a non-empty {missing[0]!r} list")
    for key in ("sources", "models") if kind in ("transfer", "ensemble_transfer") else ():
        for model in entry.get(key, []):
            if models[model].base is not None:
                raise ValueError(f"{where}: {key} may not name defended model {model!r}: "
                                 "adversarial sets are made on trained models")  # fmt: skip
    if kind == "adaptive":
        for attack in entry["attacks"]:
            if attacks[attack][0] not in GRADIENT_ATTACKS:
                raise ValueError(f"{where}: attack {attack!r} is not a gradient attack; use one "
                                 f"of {', '.join(GRADIENT_ATTACKS)}")  # fmt: skip
    return dict(entry)
