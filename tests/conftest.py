"""Shared fixtures: an isolated cache, and small dataset files in the standard formats."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from robustlab import allocator
from tests.files import cifar_batch, write_idx_dataset, write_image_folder


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--device",
        default=os.environ.get("ROBUSTLAB_TEST_DEVICE", "cpu"),
        help="device of the tests that take the `device` fixture: cpu (default), cuda, cuda:N "
        "(or $ROBUSTLAB_TEST_DEVICE; `make test DEVICE=cuda`)",
    )


@pytest.fixture(scope="session")
def device(request: pytest.FixtureRequest) -> torch.device:
    """The device under test. Tests that take it run their models and attacks there; tests
    that do not are CPU-only by nature (file formats, data readers, gloo processes, CLI
    parsing) or go through `--device auto`, which picks CUDA when there is one."""
    return torch.device(request.config.getoption("--device"))


def pytest_configure(config: pytest.Config) -> None:
    allocator.keep_freed_memory()  # as the command line does: no page faults per op (glibc)
    chosen = torch.device(config.getoption("--device"))
    if chosen.type == "cuda" and not torch.cuda.is_available():
        raise pytest.UsageError(f"--device {chosen} asked for, but torch sees no GPU")


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
