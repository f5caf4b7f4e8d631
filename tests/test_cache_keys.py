"""The cache keys of the shipped specs stay what they were: every run folder, prepared
defense and result cell of ``specs/three-defenses*.toml`` keeps its name, so existing results
directories are reused as they are (nothing recomputes after a refactor).

``tests/golden/keys-*.json`` were captured with the executor before the protocol modules
existed (commit ce718ba); the keys are hashes of configs, the same on every CPU. Changed by
design since: the 11 summary cells (they now count network passes per image, so their key
gained "passes" and older summary cells are recomputed, in seconds), and in
three-defenses.toml the CSC model and its 8 cells (its solver: a fixed ρ, at most 200
iterations, so that solves converge and can be warm-started under attack; docs/csc.md), and
both specs gained the 11 cells of their two verdict protocols (issue #25; added after
the other cells, whose keys and order stay; their keys carry the ladder's revision, bumped
when it gained `more_queries_do_not_help` and when a drop of exactly a check's tolerance
stopped depending on rounding). The run is planned, not carried out: cells and
models are stubbed, only their keys are recorded.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

import robustlab.experiments.executor as executor
from robustlab.evaluation.protocols import strong, whitebox
from robustlab.experiments.spec import load_spec
from robustlab.io import RobustlabError, config_hash

ROOT = Path(__file__).parents[1]
SPECS = ("three-defenses", "three-defenses-cifar10-jpeg")


def _planned_keys(spec_name: str, out: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    records: list[str] = []

    def record(self: executor.Executor, key: list[Any], compute: Any) -> dict[str, Any]:
        records.append(config_hash(key))
        fake: dict[str, Any] = {"accuracy": {"hits": 0}, "attack": "a", "params": {}, "cost": {}}
        if key[0] == "curve":
            fake["rates"] = [None] * len(key[5])  # one rate per level
        return fake

    monkeypatch.setattr(executor.Executor, "record", record)
    monkeypatch.setattr(executor.Executor, "model", lambda self, name: None)
    monkeypatch.setattr(executor.Executor, "_card", lambda self, *args: None)
    monkeypatch.setattr(executor.Executor, "_write", lambda self, records: None)
    monkeypatch.setattr(executor, "check_record", lambda record: None)
    for module in (strong, whitebox):
        monkeypatch.setattr(module, "flag_rising_with_eps", lambda cells, group: cells)
    spec = load_spec(ROOT / "specs" / f"{spec_name}.toml")
    run = executor.Executor(spec, out, "cpu", quiet=True)
    run.run()
    return {
        "runs": {
            name: [d.name for d in run.models.run_dirs(name)]
            for name, entry in spec.models.items()
            if entry.base is None
        },
        "identities": {name: run.models.identity(name) for name in spec.models},
        "records": records,
    }


@pytest.mark.parametrize("spec_name", SPECS)
def test_shipped_specs_keep_their_cache_keys(
    spec_name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    golden = json.loads((ROOT / "tests" / "golden" / f"keys-{spec_name}.json").read_text())
    try:
        planned = _planned_keys(spec_name, tmp_path, monkeypatch)
    except RobustlabError as err:  # the dataset is not on this machine
        pytest.skip(str(err))
    assert planned["runs"] == golden["runs"]
    assert planned["identities"] == golden["identities"]
    assert planned["records"] == golden["records"]  # every cell, in order
    assert len(golden["records"]) == 130
