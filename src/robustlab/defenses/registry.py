"""Defenses from spec entries and command-line options: ``purify = {...}`` and
``regenerate = {...}`` tables (wrapping defenses) and the training-time keys of a trained
model (``defect``, ``regularizer``, ``thermometer``, ``label_smoothing``, ``adv_train``).

Units are already converted at the spec and command-line boundary (ξ, ε in [0, 1] here).
Every error names the key at fault and what to write instead.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from robustlab.defenses import transforms  # each registers its purifiers
from robustlab.defenses.base import PURIFIERS, Defense
from robustlab.defenses.csc import defense as csc_defense
from robustlab.defenses.regeneration import RegenerationDefense
from robustlab.defenses.training_time import (
    TRAINING_DEFENSES,
    AdversarialTraining,
    DefectMasks,
    LabelSmoothing,
    SpatialDropout,
    Thermometer,
    TrainingDefense,
)
from robustlab.io import JSONObject
from robustlab.models.config import DefectSpec

MODULES = (csc_defense, transforms)
TABLES = ("purify", "regenerate")
TRAINING_KEYS = TRAINING_DEFENSES  # the spec keys of the training-time defenses


def available() -> dict[str, list[str]]:
    """The spec spellings of every defense, by kind (``robustlab list``)."""
    return {
        "training": sorted(TRAINING_KEYS),
        "input": [f"purify.{k}" for k in PURIFIERS],
        "regeneration": ["regenerate"],
    }


def defense_from_table(table_name: str, table: JSONObject) -> Defense:
    """The defense a spec table describes (``purify`` or ``regenerate``)."""
    if table_name == "regenerate":
        params = dict(table)
        if isinstance(params.get("layers"), str):
            params["layers"] = (params["layers"],)
        elif "layers" in params:
            params["layers"] = tuple(params["layers"])
        return _build(RegenerationDefense, params, "regenerate")
    selectors = [key for key in PURIFIERS if key in table]
    if len(selectors) != 1:
        raise ValueError(
            f"purify needs exactly one of {', '.join(PURIFIERS)} (e.g. purify = {{ jpeg = 75 }}), "
            f"got {', '.join(selectors) or 'none'}"
        )
    cls = PURIFIERS.get(selectors[0])
    params = {k: v for k, v in table.items() if k != selectors[0]}
    return _build(cls, {cls.main: table[selectors[0]], **params}, "purify")


def _build(cls: type[Defense], params: JSONObject, where: str) -> Defense:
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    for key, value in params.items():
        if key not in fields:
            known = ", ".join(k for k in fields if k != "dictionary")
            raise ValueError(f"{where}: unknown key {key!r}; known: {known}")
        _check_type(where, key, value, fields[key].type)
    defense: Defense = cls(**params)
    return defense


def _check_type(where: str, key: str, value: Any, annotation: Any) -> None:
    text = str(annotation)
    if "float" in text and not isinstance(value, int | float) and value is not None:
        raise ValueError(f"{where}: {key} must be a number, got {value!r}")
    if text == "int" and (not isinstance(value, int) or isinstance(value, bool)):
        raise ValueError(f"{where}: {key} must be an integer, got {value!r}")
    if text == "bool" and not isinstance(value, bool):
        raise ValueError(f"{where}: {key} must be true or false, got {value!r}")
    if text == "str" and not isinstance(value, str):
        raise ValueError(f"{where}: {key} must be a string, got {value!r}")


def training_defenses(
    *,
    defect: DefectSpec | None = None,
    regularizer: str | None = None,
    thermometer: int | None = None,
    label_smoothing: float = 0.0,
    adv_train: tuple[float, float, int] | None = None,
) -> tuple[TrainingDefense, ...]:
    """The training-time defenses of a spec entry or of ``robustlab train``'s options, in
    the order they are applied (``adv_train`` is ε, step, steps in [0, 1] units)."""
    found: list[TrainingDefense] = []
    if defect is not None:
        found.append(DefectMasks(defect))
    if regularizer is not None:
        found.append(SpatialDropout(regularizer))
    if thermometer is not None:  # 0 is an error, not "off"
        if type(thermometer) is not int:
            raise ValueError(
                f"thermometer must be an integer number of levels, got {thermometer!r}"
            )
        found.append(Thermometer(thermometer))
    if label_smoothing:
        found.append(LabelSmoothing(label_smoothing))
    if adv_train is not None:
        found.append(AdversarialTraining(*adv_train))
    return tuple(found)
