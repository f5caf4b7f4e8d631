"""Shared fixtures: an isolated cache, and small dataset files in the standard formats."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.files import cifar_batch, write_idx_dataset, write_image_folder


@pytest.fixture(autouse=True, scope="session")
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Keep the suite's decoded-data cache out of the user's ~/.cache."""
    mp = pytest.MonkeyPatch()
    mp.setenv("ROBUSTLAB_CACHE", str(tmp_path_factory.mktemp("cache")))
    yield
    mp.undo()


@pytest.fixture
def idx_dir(tmp_path: Path) -> tuple[Path, dict]:
    return tmp_path / "mnist", write_idx_dataset(tmp_path / "mnist")


@pytest.fixture
def cifar_dir(tmp_path: Path) -> tuple[Path, dict]:
    folder = tmp_path / "cifar" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    expected = {}
    for i, name in enumerate([*(f"data_batch_{k}" for k in range(1, 6)), "test_batch"]):
        blob, data, labels = cifar_batch(4, i)
        (folder / name).write_bytes(blob)
        expected[name] = (data, labels)
    return tmp_path / "cifar", expected


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    root = tmp_path / "folder"
    write_image_folder(root)
    return root


@pytest.fixture(scope="session")
def digits_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A LeNet (width 8) trained for two epochs on 300 digits: a small real model to attack."""
    from robustlab.data import load_dataset, sample
    from robustlab.experiments.jobs import model_config_for
    from robustlab.training import TrainConfig, train

    train_data = sample(load_dataset("digits", "train"), 300)
    run = tmp_path_factory.mktemp("runs") / "digits-lenet"
    config = model_config_for(train_data, "lenet", width=8)
    settings = TrainConfig(epochs=2, batch_size=32, lr=0.05, pad=0)
    train(config, train_data, load_dataset("digits", "test"), settings, run, quiet=True)
    return run
