"""results.json as the report reads it: checked once, then typed.

``robustlab run`` writes what the report needs beside the records: each model's run folders,
defense and training-time defenses (``models``), the experiment's data and seed, the
protocols' titles. The report reads those and never interprets the spec (the copy in
results.json is shown verbatim in the page's Spec section, nothing more) or guesses folders.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from robustlab.evaluation.protocols.base import Record
from robustlab.io import JSONObject, RobustlabError, read_json
from robustlab.models.config import DefectSpec
from robustlab.report.records import record_problem

FIX = "re-run `robustlab run` on its spec to rewrite it"


@dataclass(frozen=True)
class ModelInfo:
    """One model of the run as ``Executor`` describes it (``ModelStore.describe``)."""

    runs: tuple[str, ...] = ()  # its run folders, relative to the results directory
    members: tuple[str, ...] = ()  # an ensemble's models
    base: str | None = None  # a defended model: the trained model it wraps
    defense_table: str | None = None  # the defense's spec table (``purify``, ``regenerate``)
    defense_config: JSONObject | None = None  # its config as the spec wrote it (0-255 units)
    folder: str | None = None  # where the defense was prepared
    training: tuple[JSONObject, ...] = ()  # training-time defenses, described

    @property
    def defect(self) -> DefectSpec | None:
        """The defective-CNN masks it was trained with, if any."""
        for described in self.training:
            if described.get("defense") == "defect":
                return DefectSpec.from_dict(described["spec"])
        return None

    @property
    def plain(self) -> bool:
        """Trained as it is: no defense of any kind, no ensemble."""
        return not (self.training or self.members or self.base)


@dataclass(frozen=True)
class Experiment:
    dataset: str
    data_dir: str | None
    n: int
    seed: int


@dataclass(frozen=True)
class Results:
    """A results directory's results.json (older files: the parts they lack are empty)."""

    records: list[Record]
    command: str
    name: str
    spec_path: str | None
    environment: dict[str, str]
    experiment: Experiment | None
    models: dict[str, ModelInfo]
    protocols: tuple[str, ...]  # titles, by the records' protocol_index
    spec: JSONObject  # shown in the Spec section, never interpreted

    def protocol_title(self, index: int | None, default: str) -> str:
        if index is None or not 0 <= index < len(self.protocols):
            return default
        return self.protocols[index]


def read_results(results_dir: Path) -> Results:
    """The checked results.json of ``results_dir`` (one-line errors naming the fix)."""
    path = results_dir / "results.json"
    if not path.is_file():
        raise RobustlabError(
            f"{results_dir}: no results.json; run `robustlab run SPEC --out {results_dir}` first"
        )
    raw = read_json(path)
    _check_layout(raw, path)
    for index, record in enumerate(raw["records"]):
        problem = record_problem(record)
        if problem is not None:
            raise RobustlabError(
                f"{path} record {index}: {problem}; re-run "
                "`robustlab run` with this robustlab to rewrite it"
            )
    try:
        return _typed(raw, results_dir)
    except (KeyError, TypeError, ValueError) as err:
        raise RobustlabError(f"{path}: malformed ({err}); {FIX}") from None


def _typed(raw: JSONObject, results_dir: Path) -> Results:
    experiment = raw.get("experiment")
    models = raw.get("models")
    protocols = raw.get("protocols")
    return Results(
        records=raw["records"],
        command=str(raw.get("command") or "robustlab run SPEC"),
        name=str((experiment or {}).get("name") or results_dir.name),
        spec_path=raw.get("spec_path"),
        environment={str(k): str(v) for k, v in (raw.get("environment") or {}).items()},
        experiment=_experiment(experiment) if isinstance(experiment, dict) else None,
        models={str(k): _model(v) for k, v in models.items()} if isinstance(models, dict) else {},
        protocols=tuple(str(p["name"]) for p in protocols) if isinstance(protocols, list) else (),
        spec=raw["spec"],
    )


def _experiment(raw: JSONObject) -> Experiment:
    return Experiment(
        dataset=str(raw["dataset"]),
        data_dir=raw.get("data_dir"),
        n=int(raw["n"]),
        seed=int(raw["seed"]),
    )


def _model(raw: object) -> ModelInfo:
    if not isinstance(raw, dict):
        raise ValueError("a model entry is not a JSON object")
    defense = raw.get("defense")
    return ModelInfo(
        runs=tuple(str(r) for r in raw.get("runs") or ()),
        members=tuple(str(m) for m in raw.get("members") or ()),
        base=raw.get("base"),
        defense_table=defense["table"] if isinstance(defense, dict) else None,
        defense_config=defense["config"] if isinstance(defense, dict) else None,
        folder=raw.get("folder"),
        training=tuple(t for t in raw.get("training") or () if isinstance(t, dict)),
    )


# what a results.json must hold before any record is read (records are checked one by one)
LAYOUT = {"records": list, "spec": dict}


def _check_layout(results: object, path: Path) -> None:
    """One line for a results.json that is not what `robustlab run` writes."""
    if not isinstance(results, dict):
        raise RobustlabError(
            f"{path}: expected a JSON object, found {type(results).__name__}; {FIX}"
        )
    for key, kind in LAYOUT.items():
        if not isinstance(results.get(key), kind):
            found = type(results.get(key)).__name__ if key in results else "nothing"
            raise RobustlabError(f"{path}: {key!r} must be a {kind.__name__}, found {found}; {FIX}")
    if not all(isinstance(record, dict) for record in results["records"]):
        raise RobustlabError(f"{path}: every record must be a JSON object; {FIX}")
