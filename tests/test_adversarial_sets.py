from pathlib import Path

import numpy as np
import pytest
import torch

from robustlab.attacks import load_set, save_set
from robustlab.attacks.adversarial_set import generate_set
from robustlab.cli import main
from robustlab.data import load_dataset, sample
from robustlab.experiments.jobs import model_config_for
from robustlab.io import RobustlabError
from robustlab.training import TrainConfig, train


@pytest.fixture(scope="module")
def source_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    train_data = sample(load_dataset("digits", "train"), 400)
    test_data = load_dataset("digits", "test")
    run = tmp_path_factory.mktemp("runs") / "source"
    config = model_config_for(train_data, "lenet", width=8)
    train(
        config,
        train_data,
        test_data,
        TrainConfig(epochs=2, batch_size=32, lr=0.05, pad=0),
        run,
        quiet=True,
    )
    return run


def _set(run: Path, attack: str = "pgd", **params):
    import robustlab

    model = robustlab.load(run)
    data = load_dataset("digits", "test")
    defaults = {"eps": 16 / 255, "step": 2 / 255, "steps": 5}
    return generate_set(
        model, data, np.arange(40), attack, params or defaults, seed=0, batch_size=16, quiet=True
    )


def test_set_round_trip_and_contents(source_run: Path, tmp_path: Path) -> None:
    adv_set = _set(source_run)
    save_set(tmp_path / "a.npz", adv_set)
    again = load_set(tmp_path / "a.npz")
    assert again.images.dtype == np.uint8 and again.images.shape == (40, 1, 8, 8)
    for name in ("images", "labels", "indices", "clean_pred", "adv_pred", "linf", "l2"):
        assert np.array_equal(getattr(again, name), getattr(adv_set, name))
    assert again.config["attack"] == "pgd" and again.config["params"]["steps"] == 5
    assert again.linf.max() <= 16 / 255 + 1e-6
    # the stored norms and predictions describe the stored (quantised) images
    clean = torch.from_numpy(load_dataset("digits", "test").images[:40]).float() / 255
    assert np.allclose(
        again.linf, (again.pixels() - clean).flatten(1).abs().amax(1).numpy(), atol=1e-6
    )
    assert again.fooled_source.mean() > 0.3


def test_sets_are_deterministic(source_run: Path) -> None:
    a = _set(source_run, "noise", sigma=8.0)
    b = _set(source_run, "noise", sigma=8.0)
    assert np.array_equal(a.images, b.images)
    # different batches get different noise (seeds derived per batch)
    delta = a.images.astype(int) - load_dataset("digits", "test").images[:40].astype(int)
    assert not np.array_equal(delta[:16], delta[16:32])


def test_query_counts_are_saved(source_run: Path, tmp_path: Path) -> None:
    adv_set = _set(source_run, "boundary", steps=20)
    save_set(tmp_path / "b.npz", adv_set)
    assert load_set(tmp_path / "b.npz").queries.shape == (40,)


def test_load_refuses_pickles_and_garbage(tmp_path: Path) -> None:
    np.savez(tmp_path / "evil.npz", images=np.array([object()], dtype=object))
    with pytest.raises(RobustlabError, match="not a readable adversarial set"):
        load_set(tmp_path / "evil.npz")
    np.savez(tmp_path / "partial.npz", images=np.zeros(3))
    with pytest.raises(RobustlabError, match="lacks"):
        load_set(tmp_path / "partial.npz")


def test_cli_attack(source_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "advs" / "pgd.npz"
    args = [
        "attack",
        "--source",
        str(source_run),
        "--source",
        str(source_run),
        "--attack",
        "pgd",
        "--eps",
        "16",
        "--step",
        "2",
        "--steps",
        "3",
        "--n",
        "30",
        "--quiet",
        "--out",
        str(out),
    ]
    assert main(args) == 0
    assert "30 images, fooled the source" in capsys.readouterr().out
    adv_set = load_set(out)
    assert (
        adv_set.config["sources"] == [str(source_run)] * 2 and adv_set.config["dataset"] == "digits"
    )
    assert adv_set.linf.max() * 255 == pytest.approx(6, abs=1e-3)  # 3 steps of 2/255
    before = out.read_bytes()
    assert main(args) == 2  # refuses to overwrite
    assert "pass --force" in capsys.readouterr().err and out.read_bytes() == before
    bad = [*args[:-1], str(tmp_path / "x.npz")]
    bad[bad.index("16")] = "300"
    assert main(bad) == 2
    assert "eps = 300.0 must be a number in 0..255" in capsys.readouterr().err
    assert main([*args[:-2], "--steps", "0", "--out", str(tmp_path / "y.npz")]) == 2
    assert "steps=0" in capsys.readouterr().err and not (tmp_path / "y.npz").exists()
