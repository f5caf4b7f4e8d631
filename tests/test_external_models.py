"""Models from outside robustlab: factories by name, local weights, defects by layer name."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from robustlab.assemble import ModelConfig, create
from robustlab.evaluation.protocols import PROTOCOLS
from robustlab.experiments.executor import run_spec
from robustlab.experiments.spec import load_spec, parse_spec
from robustlab.io import RobustlabError
from robustlab.models.external import (
    ExternalNet,
    defect_layers,
    read_state_dict,
    resolve_factory,
    trusting,
)
from robustlab.runs import load, read_meta
from tests.factories import tiny_cnn

SPEC = Path(__file__).parent / "specs" / "external.toml"


def test_a_factory_runs_through_a_whole_spec(tmp_path: Path) -> None:
    torch.manual_seed(3)
    weights = tmp_path / "user.pt"
    torch.save(tiny_cnn().state_dict(), weights)  # a user's checkpoint of the bare network
    spec = tmp_path / "spec.toml"
    spec.write_text(SPEC.read_text().replace("WEIGHTS", str(weights)))
    records = run_spec(load_spec(spec), tmp_path / "results", device="cpu", quiet=True)
    seen = {(r["protocol"], r.get("target")) for r in records}
    for target in ("user", "user_defective", "user_pretrained", "user_jpeg", "user_sfr"):
        assert ("transfer", target) in seen and ("summary", target) in seen
    assert {
        ("strong", "user"),
        ("adaptive", "user_sfr"),
        ("universal", "user_sfr"),
        ("whitebox", "user_pretrained"),
        ("decision", "user"),
        ("ensemble_transfer", "user"),
    } <= seen
    protocols = {r["protocol"] for r in records}
    assert set(PROTOCOLS) <= protocols  # every protocol type ran on the user's models
    runs = tmp_path / "results" / "runs"
    pretrained = next(runs.glob("user_pretrained-*"))
    meta = read_meta(pretrained)
    assert meta["imported"]["weights"] == str(weights.resolve()) and "train" not in meta
    assert meta["model"]["arch"] == "tests.factories:tiny_cnn" and meta["model"]["std"] == [0.25]
    with pytest.raises(RobustlabError, match=r"--trust-factory tests\.factories:tiny_cnn"):
        load(pretrained)  # outside the spec that named it, the factory is not trusted
    with trusting(["tests.factories:tiny_cnn"]):
        model = load(pretrained)
        defective = load(next(runs.glob("user_defective-*")))
    assert isinstance(model, ExternalNet)
    expected = torch.load(weights, weights_only=True)
    torch.testing.assert_close(model.net[0].weight, expected["0.weight"])  # the user's weights
    # a factory's network keeps the layout its code built (zoo networks go channels-last)
    assert not model.net[3].weight.is_contiguous(memory_format=torch.channels_last)
    masked = [n for n, m in defective.named_modules() if hasattr(m, "defect_mask")]
    assert masked == ["net.1", "net.4", "net.7"]  # the first three BatchNorm layers


def test_factories_by_name_and_their_errors() -> None:
    assert resolve_factory("tests.factories:tiny_cnn") is tiny_cnn
    with pytest.raises(RobustlabError, match="has no function 'nope'"):
        resolve_factory("tests.factories:nope")
    with pytest.raises(RobustlabError, match=r"needs no_such_pkg\.models .*PYTHONPATH"):
        resolve_factory("no_such_pkg.models:net")
    try:
        import torchvision  # noqa: F401
    except ImportError:
        with pytest.raises(RobustlabError, match="pip install torchvision"):
            resolve_factory("torchvision:resnet50")
    config = ModelConfig(
        arch="tests.factories:tiny_cnn", num_classes=3, in_channels=1, image_size=8
    )
    with pytest.raises(RobustlabError, match=r"outputs of shape \(1, 10\).*3 classes"):
        create(config)
    with pytest.raises(ValueError, match="regularizer and thermometer need a zoo"):
        create(
            ModelConfig(
                arch="tests.factories:tiny_cnn",
                in_channels=1,
                image_size=8,
                regularizer="dropout2d",
            )
        )


def test_defect_layers_of_a_plain_network() -> None:
    model = ExternalNet(tiny_cnn(), (0.5,), (0.5,))
    assert defect_layers(model, "bottom") == ["net.1", "net.4", "net.7"]
    assert defect_layers(model, (0, 2)) == ["net.1", "net.7"]
    convs_only = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Conv2d(2, 2, 3))
    assert defect_layers(convs_only, "top") == ["0", "1"]


def test_weights_files_are_read_without_unpickling_code(tmp_path: Path) -> None:
    state = tiny_cnn().state_dict()
    save_file(dict(state), tmp_path / "w.safetensors")
    assert read_state_dict(tmp_path / "w.safetensors").keys() == state.keys()
    torch.save({"state_dict": state, "epoch": 3}, tmp_path / "wrapped.pt")
    assert read_state_dict(tmp_path / "wrapped.pt").keys() == state.keys()
    torch.save(tiny_cnn(), tmp_path / "whole_model.pt")  # a pickled module: refused
    with pytest.raises(RobustlabError, match="weights_only=True"):
        read_state_dict(tmp_path / "whole_model.pt")
    (tmp_path / "evil.pt").write_bytes(pickle.dumps(print, protocol=2))
    with pytest.raises(RobustlabError, match="weights_only=True"):
        read_state_dict(tmp_path / "evil.pt")


@pytest.mark.parametrize(
    "entry, message",
    [
        ({"arch": "tests.factories:tiny_cnn", "weights": "missing.pt"}, "no such file"),
        ({"arch": "resnet8", "factory_args": {"width": 4}}, "applies to factory architectures"),
        ({"arch": "tests.factories:tiny_cnn", "mean": 0.5}, "mean must be a list of numbers"),
        ({"arch": "nothing"}, "or a factory: torchvision:NAME"),
    ],
)
def test_external_spec_errors_name_the_key(entry: dict, message: str) -> None:
    source = {
        "experiment": {"dataset": "digits"},
        "models": {"m": entry},
        "protocols": [{"type": "noise", "models": ["m"], "sigmas": [8]}],
    }
    with pytest.raises(ValueError, match=message):
        parse_spec(source)
