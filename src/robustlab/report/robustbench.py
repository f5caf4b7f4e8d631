"""RobustBench-style model cards: one JSON per evaluated model, next to results.json.

RobustBench's ``model_info`` files (github.com/RobustBench/robustbench) describe each model
with strings for the numbers; robustlab writes the same fields, and its own beside them:

====================== ======= ==========================================================
field                  type    meaning
====================== ======= ==========================================================
name                   str     the spec's model name
architecture           str     zoo name, factory (``torchvision:resnet50``), or
                               ``<defense> on <base architecture>``
dataset                str     the spec's dataset
threat_model           str     ``Linf`` or ``L2`` (of the strong protocol; ``Linf`` if none)
eps                    str     the strong protocol's headline ε, e.g. ``8/255`` (or null)
clean_acc              str     clean top-1 accuracy in percent, two decimals
autoattack_acc         str     robust accuracy under the strong protocol (null if not run)
number_forward_passes  int     forward passes per prediction (EOT samples if randomized)
robustlab              object  n, intervals, the strong protocol's per-attack accuracies
                               and flags, the defense's config, the command
====================== ======= ==========================================================
"""

from __future__ import annotations

from pathlib import Path

from robustlab.evaluation.protocols.base import Record
from robustlab.io import under, write_json

FIELDS: dict[str, type | tuple[type, ...]] = {
    "name": str,
    "architecture": str,
    "dataset": str,
    "threat_model": str,
    "eps": (str, type(None)),
    "clean_acc": str,
    "autoattack_acc": (str, type(None)),
    "number_forward_passes": int,
    "robustlab": dict,
}


def model_card(
    name: str,
    records: list[Record],
    *,
    architecture: str,
    dataset: str,
    forward_passes: int,
    extra: dict[str, object],
) -> dict[str, object]:
    """The card of model ``name`` from the run's records (its summary and strong cells)."""
    summary = next(r for r in records if r["protocol"] == "summary" and r["target"] == name)
    mine = [r for r in records if r["protocol"] == "strong" and r["target"] == name]
    headline = next((r for r in mine if r.get("headline")), None)
    norm = headline["params"]["norm"] if headline else "linf"
    strong = None
    if headline is not None:
        strong = {k: headline[k] for k in ("accuracy", "after", "broken", "flags", "params")}
    return {
        "name": name,
        "architecture": architecture,
        "dataset": dataset,
        "threat_model": "Linf" if norm == "linf" else "L2",
        "eps": f"{headline['eps']:g}/255" if headline else None,
        "clean_acc": f"{100 * summary['clean_accuracy']['rate']:.2f}",
        "autoattack_acc": f"{100 * headline['accuracy']['rate']:.2f}" if headline else None,
        "number_forward_passes": forward_passes,
        "robustlab": {
            "clean_accuracy": summary["clean_accuracy"],
            "strong": strong,
            "ms_per_image": summary["ms_per_image"],
            **extra,
        },
    }


def check_card(card: dict[str, object]) -> None:
    """Raise ValueError unless ``card`` has every field of :data:`FIELDS` with its type."""
    for key, kind in FIELDS.items():
        if key not in card or not isinstance(card[key], kind):
            raise ValueError(f"model card field {key!r}: missing or not {kind}")


def write_cards(out: Path, cards: list[dict[str, object]]) -> None:
    """``out/robustbench/<name>.json`` for every card (checked first, written atomically)."""
    for card in cards:
        check_card(card)
    for card in cards:
        write_json(under(out, "robustbench", f"{card['name']}.json"), card)
