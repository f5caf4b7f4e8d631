"""Defenses from spec tables: ``purify = {...}`` and ``regenerate = {...}``.

Units are already converted at the spec boundary (ξ in [0, 1] here). Every error names the
key at fault and what to write instead.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from robustlab.defenses.base import Defense
from robustlab.defenses.csc.defense import CSCDefense
from robustlab.defenses.regeneration import RegenerationDefense
from robustlab.defenses.transforms import BitDepthDefense, JPEGDefense, MedianDefense

# purify = { <selector> = value, ... }: the selector names the transform and gives its main
# parameter; the other keys are that defense's fields
PURIFIERS: dict[str, tuple[type[Defense], str]] = {
    "dict": (CSCDefense, "dictionary"),
    "jpeg": (JPEGDefense, "quality"),
    "bits": (BitDepthDefense, "bits"),
    "median": (MedianDefense, "size"),
}
TABLES = ("purify", "regenerate")


def defense_from_table(table_name: str, table: dict[str, Any]) -> Defense:
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
    cls, field = PURIFIERS[selectors[0]]
    params = {k: v for k, v in table.items() if k != selectors[0]}
    return _build(cls, {field: table[selectors[0]], **params}, "purify")


def _build(cls: type[Defense], params: dict[str, Any], where: str) -> Defense:
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
    if text == "str" and not isinstance(value, str):
        raise ValueError(f"{where}: {key} must be a string, got {value!r}")
