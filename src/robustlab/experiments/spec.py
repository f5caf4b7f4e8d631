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
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from robustlab.attacks import available as available_attacks
from robustlab.data import available as available_datasets
from robustlab.defenses.defective import DefectSpec
from robustlab.io import RobustlabError
from robustlab.models import available as available_archs
from robustlab.training import TrainConfig

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

MODEL_KEYS = {"arch", "width", "defect", "mask_seed", "regularizer", "thermometer", "train_limit"}
TRAIN_KEYS = {"epochs", "batch_size", "lr", "momentum", "weight_decay", "milestones", "gamma",
              "label_smoothing", "pad", "flip", "seed", "adv_train", "schedule"}  # fmt: skip
PROTOCOLS = {
    "transfer": {"sources", "targets", "attacks"},
    "ensemble_transfer": {"models", "attacks"},
    "whitebox": {"models", "attacks"},
    "decision": {"models", "steps", "candidates", "max_queries", "n"},
    "noise": {"models", "sigmas"},
    "shuffle": {"models", "ks"},
}
PIXEL_UNITS = ("eps", "step")  # converted from 0-255 to [0, 1]; sigma stays in 0-255


@dataclass(frozen=True)
class ModelEntry:
    """One trainable model (or, with ``members``, an ensemble of other entries)."""

    name: str
    arch: str = "resnet8"
    options: dict[str, Any] = field(default_factory=dict)
    defect: DefectSpec | None = None
    regularizer: str | None = None
    thermometer: int | None = None
    train_limit: int | None = None
    train: TrainConfig = field(default_factory=TrainConfig)
    members: tuple[str, ...] = ()


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


def parse_spec(raw: dict[str, Any], default_name: str = "experiment") -> Spec:
    """Validate a parsed spec (see the module docstring for the format)."""
    experiment = raw.get("experiment", {})
    dataset = experiment.get("dataset")
    if dataset not in available_datasets():
        raise ValueError(f"[experiment] dataset {dataset!r} is missing or unknown; "
                         f"use one of {', '.join(available_datasets())}")  # fmt: skip
    defaults = raw.get("train", {})
    models = {
        name: _model(name, defaults, entry or {}) for name, entry in raw.get("models", {}).items()
    }
    for entry in models.values():
        for member in entry.members:
            if member not in models or models[member].members:
                raise ValueError(f"[models.{entry.name}] member {member!r} is not a trained model")
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
    merged = {**defaults, **entry}
    unknown = set(merged) - MODEL_KEYS - TRAIN_KEYS
    if unknown:
        raise ValueError(f"[models.{name}] unknown key {sorted(unknown)[0]!r}; "
                         f"known: {', '.join(sorted(MODEL_KEYS | TRAIN_KEYS))}")  # fmt: skip
    arch = merged.get("arch", "resnet8")
    if arch not in available_archs():
        raise ValueError(
            f"[models.{name}] unknown arch {arch!r}; use one of {', '.join(available_archs())}"
        )
    defect = None
    if "defect" in merged:
        try:
            defect = DefectSpec.parse(merged["defect"], seed=int(merged.get("mask_seed", 0)))
        except ValueError as err:
            raise ValueError(f"[models.{name}] defect: {err}") from None
    train = {k: v for k, v in merged.items() if k in TRAIN_KEYS and k != "adv_train"}
    if "milestones" in train:
        train["milestones"] = tuple(train["milestones"])
    if "adv_train" in merged:
        eps, step, steps = str(merged["adv_train"]).split(":")
        train.update(adv_eps=float(eps) / 255, adv_step=float(step) / 255, adv_steps=int(steps))
    try:
        config = TrainConfig(**train)
    except ValueError as err:
        raise ValueError(f"[models.{name}] {err}") from None
    return ModelEntry(
        name=name,
        arch=arch,
        options={"width": merged["width"]} if "width" in merged else {},
        defect=defect,
        regularizer=merged.get("regularizer"),
        thermometer=merged.get("thermometer"),
        train_limit=merged.get("train_limit"),
        train=config,
    )


def _attack(name: str, entry: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    attack = entry.get("attack")
    if attack not in available_attacks():
        raise ValueError(f"[attacks.{name}] attack {attack!r} is missing or unknown; "
                         f"use one of {', '.join(available_attacks())}")  # fmt: skip
    params = {k: (v / 255 if k in PIXEL_UNITS else v) for k, v in entry.items() if k != "attack"}
    from torch import nn

    from robustlab.attacks import build

    try:
        build(attack, nn.Identity(), **params)  # validates the parameters now, not mid-run
    except ValueError as err:
        raise ValueError(f"[attacks.{name}] {err}") from None
    return attack, params


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
    for key in ("sources", "targets", "models"):
        for model in entry.get(key, []):
            if model not in models:
                raise ValueError(f"{where}: {key} names unknown model {model!r}")
    for attack in entry.get("attacks", []):
        if attack not in attacks:
            raise ValueError(f"{where}: unknown attack {attack!r}; declare it under [attacks]")
    required = {"sources", "targets", "models", "attacks"} & PROTOCOLS[kind]
    missing = [k for k in sorted(required) if not entry.get(k)]
    if missing:
        raise ValueError(f"{where}: needs a non-empty {missing[0]!r} list")
    return dict(entry)
