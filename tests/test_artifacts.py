"""Every artifact robustlab reads is checked against what its reader needs (dtype, shape,
range, finiteness, labels, agreement with the data): a damaged file is one line naming the
file and the fix, never a silently wrong number."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

import robustlab
from robustlab.attacks import load_set
from robustlab.attacks.universal import UniversalPerturbation
from robustlab.attacks.universal.base import PERTURBATION_FORMAT
from robustlab.cli import main
from robustlab.defenses.csc.dictionary import (
    LearnedDictionary,
    load_dictionary,
    random_dictionary,
    save_dictionary,
)
from robustlab.evaluation.transfer import transfer
from robustlab.experiments.executor import run_spec
from robustlab.experiments.spec import parse_spec, parse_toml
from robustlab.io import RobustlabError, load_tensors, save_tensors
from tests.files import TRANSFER_SPEC

SPEC = TRANSFER_SPEC.replace("n = 16", "n = 12")


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("artifacts") / "results"
    run_spec(parse_spec(parse_toml(SPEC)), out, device="cpu", quiet=True)
    return out


def _resave(
    path: Path, edit: Callable[[dict[str, np.ndarray]], None], *, keep_checksum: bool = False
) -> None:
    """Edit a set's arrays; without its checksum (as a set written before checksums, or by
    hand), so that the checks of the arrays themselves are what answers."""
    with np.load(path, allow_pickle=False) as data:
        arrays = {name: data[name] for name in data.files if keep_checksum or name != "sha256"}
    edit(arrays)
    np.savez_compressed(path, **arrays)


def test_an_edit_between_runs_is_caught_by_the_checksum(results: Path, tmp_path: Path) -> None:
    """Sets and safetensors files carry the checksum of their arrays: an edit that passes
    every other check (labels shifted, one weight changed) is refused when read."""
    (path,) = (results / "advs").glob("*.npz")
    edited = tmp_path / "edited.npz"
    shutil.copy(path, edited)
    _resave(edited, lambda a: a.update(labels=(a["labels"] + 1) % 10), keep_checksum=True)
    with pytest.raises(RobustlabError, match="do not match the checksum robustlab wrote"):
        load_set(edited)
    (run,) = (results / "runs").glob("standard-*")
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    weights = copy / "model.safetensors"
    blob = bytearray(weights.read_bytes())
    blob[-1] ^= 1  # one bit of the last weight
    weights.write_bytes(bytes(blob))
    with pytest.raises(RobustlabError, match=r"model\.safetensors: its tensors do not match"):
        robustlab.load(copy)
    assert robustlab.load(run) is not None  # the original reads


SET_EDITS: dict[str, tuple[Callable[[dict[str, np.ndarray]], None], str]] = {
    "float64 on a 0-255 scale": (
        lambda a: a.update(images=a["images"].astype(np.float64)),
        "images has dtype float64",
    ),
    "float32 on a 0-255 scale": (
        lambda a: a.update(images=a["images"].astype(np.float32)),
        "images has values up to",
    ),
    "all NaN": (
        lambda a: a.update(images=np.full(a["images"].shape, np.nan, np.float32)),
        "NaN or infinite",
    ),
    "flattened": (
        lambda a: a.update(images=a["images"].reshape(len(a["images"]), -1)),
        "2 dimensions",
    ),
    "int16": (lambda a: a.update(images=a["images"].astype(np.int16)), "dtype int16"),
    "labels as floats": (lambda a: a.update(labels=a["labels"].astype(float)), "labels has dtype"),
    "labels cut short": (lambda a: a.update(labels=a["labels"][:-1]), "labels has 11 entries"),
    "negative norms": (lambda a: a.update(linf=-a["linf"] - 1), "linf has values down to"),
}


@pytest.mark.parametrize("case", sorted(SET_EDITS))
def test_a_damaged_adversarial_set_is_refused_when_read(
    case: str, results: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    copy = tmp_path / "results"
    shutil.copytree(results, copy)
    (path,) = (copy / "advs").glob("*.npz")
    edit, message = SET_EDITS[case]
    _resave(path, edit)
    with pytest.raises(RobustlabError, match="re-generate it") as caught:
        load_set(path)
    assert message in str(caught.value) and str(path) in str(caught.value)
    shutil.rmtree(copy / "records")  # the transfer cell is recomputed from the damaged set
    spec = tmp_path / "spec.toml"
    spec.write_text(SPEC)
    assert main(["run", str(spec), "--out", str(copy), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]


def test_a_set_that_does_not_fit_its_data_is_refused(results: Path, tmp_path: Path) -> None:
    (path,) = (results / "advs").glob("*.npz")
    good = load_set(path)
    model = robustlab.load(next((results / "runs").glob("standard-*")))
    x = torch.from_numpy(good.images).float() / 255  # the stored adversarials stand in
    labels = torch.from_numpy(good.labels)
    transfer(model, good, x, labels=labels)  # fits
    with pytest.raises(RobustlabError, match="labels are not those of its images"):
        transfer(model, good, x, labels=(labels + 1) % 10)  # e.g. labels edited to 99
    small = tmp_path / "small.npz"
    shutil.copy(path, small)
    _resave(small, lambda a: a.update(images=a["images"][:, :, :4, :4]))
    with pytest.raises(RobustlabError, match=r"images of shape \(1, 4, 4\), the data"):
        transfer(model, load_set(small), x, labels=labels)


@pytest.mark.parametrize(
    "delta, message",
    [
        (torch.full((1, 8, 8), float("nan")), "NaN or infinite"),
        (torch.full((1, 8, 8), float("inf")), "NaN or infinite"),
        (torch.full((1, 8, 8), 10.0), "values up to 10"),
        (torch.zeros(8, 8), "2 dimensions"),
    ],
)
def test_a_damaged_perturbation_is_refused(
    delta: torch.Tensor, message: str, tmp_path: Path
) -> None:
    path = tmp_path / "p.safetensors"
    save_tensors(path, {"delta": delta}, {"format": PERTURBATION_FORMAT})
    with pytest.raises(RobustlabError, match=message):
        UniversalPerturbation.load(path)


def test_importing_nan_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    source = tmp_path / "uap.npy"
    np.save(source, np.full((8, 8, 3), np.nan))
    out = tmp_path / "out.safetensors"
    args = [
        "universal",
        "import",
        str(source),
        "--layout",
        "hwc",
        "--channel-order",
        "rgb",
        "--out",
        str(out),
    ]
    assert main(args) == 2
    assert "NaN or infinite values" in capsys.readouterr().err and not out.exists()


@pytest.mark.parametrize("damage", ["nan", "zero filter", "lmbda nan"])
def test_a_damaged_dictionary_is_refused(damage: str, tmp_path: Path) -> None:
    filters = random_dictionary(8, 1, 3, seed=0)
    lmbda = 0.1
    if damage == "nan":
        filters[2, 0, 1, 1] = float("nan")
    elif damage == "zero filter":
        filters[3] = 0
    else:
        lmbda = float("nan")
    save_dictionary(tmp_path / "d", LearnedDictionary(filters, lmbda))
    with pytest.raises(RobustlabError, match="re-learn it"):
        load_dictionary(tmp_path / "d")


@pytest.mark.parametrize("damage", ["nan", "int"])
def test_damaged_weights_are_refused(damage: str, digits_run: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(digits_run, run)
    tensors, meta = load_tensors(run / "model.safetensors")
    name = next(k for k, v in tensors.items() if v.is_floating_point())
    tensors[name] = tensors[name] * float("nan") if damage == "nan" else tensors[name].int()
    save_tensors(run / "model.safetensors", tensors, meta or None)
    message = "NaN or infinite values" if damage == "nan" else "torch.int32, the model's is"
    with pytest.raises(RobustlabError, match=message):
        robustlab.load(run)
    assert json.loads((run / "meta.json").read_text())["complete"]
