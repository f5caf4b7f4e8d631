import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import robustlab
import robustlab.runs
from robustlab.assemble import create
from robustlab.cli import main
from robustlab.data import load_dataset, sample
from robustlab.defenses.defective import DefectSpec, masks
from robustlab.defenses.training_time import (
    AdversarialTraining,
    DefectMasks,
    LabelSmoothing,
    configs_of,
    defenses_of,
    model_with,
    recipe_with,
)
from robustlab.experiments.jobs import model_config_for
from robustlab.io import RobustlabError, load_tensors
from robustlab.models.base import place
from robustlab.training import TrainConfig, train

TINY = TrainConfig(epochs=2, batch_size=64, lr=0.05, seed=0)


def _digits(n_train: int = 300, n_test: int = 100):
    return sample(load_dataset("digits", "train"), n_train), sample(
        load_dataset("digits", "test"), n_test
    )


def test_one_epoch_on_a_slice_learns(tmp_path: Path, device: torch.device) -> None:
    train_data, test_data = _digits(600, 200)
    config = model_with(
        [DefectMasks(DefectSpec(0.5))], model_config_for(train_data, "lenet", width=8)
    )
    meta = train(
        config,
        train_data,
        test_data,
        TrainConfig(epochs=3, batch_size=32, lr=0.05, pad=0, flip=False),
        tmp_path / "run",
        quiet=True,
        device=device,
    )
    assert meta["complete"] and meta["epoch"] == 3
    assert meta["history"][-1]["train_loss"] < meta["history"][0]["train_loss"]
    assert meta["test_accuracy"] > 0.3  # chance is 0.1
    assert meta["model"]["defect"]["keep_prob"] == 0.5


def test_checkpoint_round_trip_gives_identical_logits(tmp_path: Path) -> None:
    train_data, test_data = _digits()
    defect = DefectMasks(DefectSpec(0.3, mode="channel", seed=5))
    config = model_with([defect], model_config_for(train_data, "resnet8", width=4))
    train(
        config,
        train_data,
        test_data,
        TrainConfig(epochs=1, batch_size=64),
        tmp_path / "run",
        quiet=True,
    )
    tensors, _ = load_tensors(tmp_path / "run" / "model.safetensors")
    loaded = robustlab.load(tmp_path / "run")
    x = torch.rand(8, 1, 8, 8)
    reference = create(config)
    reference.load_state_dict(tensors)
    reference = place(reference, "cpu")  # the layout load gives it: the same kernels, bitwise
    assert torch.equal(loaded(x), reference.eval()(x))
    assert all(torch.equal(m, tensors[n + ".defect_mask"]) for n, m in masks(loaded))
    assert not loaded.training


def test_existing_run_is_not_overwritten(tmp_path: Path) -> None:
    train_data, test_data = _digits(100, 50)
    config = model_config_for(train_data, "lenet", width=4)
    train(config, train_data, test_data, TrainConfig(epochs=1), tmp_path / "run", quiet=True)
    before = (tmp_path / "run" / "model.safetensors").read_bytes()
    with pytest.raises(RobustlabError, match=r"--resume .* or --force"):
        train(config, train_data, test_data, TrainConfig(epochs=1), tmp_path / "run", quiet=True)
    assert (tmp_path / "run" / "model.safetensors").read_bytes() == before
    train(
        config,
        train_data,
        test_data,
        TrainConfig(epochs=1, seed=9),
        tmp_path / "run",
        force=True,
        quiet=True,
    )
    assert (tmp_path / "run" / "model.safetensors").read_bytes() != before


def test_resume_continues_to_the_same_weights(tmp_path: Path) -> None:
    train_data, test_data = _digits()
    config = model_with(
        [DefectMasks(DefectSpec(0.5))], model_config_for(train_data, "resnet8", width=4)
    )
    train(config, train_data, test_data, TINY, tmp_path / "full", quiet=True)
    half = TrainConfig(**{**TINY.to_dict(), "epochs": 1, "milestones": None})
    train(config, train_data, test_data, half, tmp_path / "part", quiet=True)
    # a run extended from epoch 1 must equal the uninterrupted one, step for step
    train(config, train_data, test_data, TINY, tmp_path / "part", resume=True, quiet=True)
    full, _ = load_tensors(tmp_path / "full" / "model.safetensors")
    part, _ = load_tensors(tmp_path / "part" / "model.safetensors")
    assert all(torch.equal(full[k], part[k]) for k in full)


def _cli(out: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "robustlab",
        "train",
        "--dataset",
        "digits",
        "--arch",
        "resnet8",
        "--width",
        "8",
        "--defect",
        "bottom:0.5",
        "--epochs",
        "4",
        "--batch-size",
        "32",
        "--seed",
        "1",
        "--quiet",
        "--out",
        str(out),
        *extra,
    ]


@pytest.mark.slow
def test_resume_after_kill_minus_nine(tmp_path: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(_cli(tmp_path / "killed"), env=env)
    meta = tmp_path / "killed" / "meta.json"
    deadline = time.time() + 120
    while not meta.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert meta.exists(), "training never finished its first epoch"
    assert (
        not list((tmp_path / "killed").glob("*.tmp")) or True
    )  # temp files are harmless leftovers
    subprocess.run(_cli(tmp_path / "killed", "--resume"), env=env, check=True)
    subprocess.run(_cli(tmp_path / "clean"), env=env, check=True)
    killed, _ = load_tensors(tmp_path / "killed" / "model.safetensors")
    clean, _ = load_tensors(tmp_path / "clean" / "model.safetensors")
    assert all(torch.equal(killed[k], clean[k]) for k in clean)


def test_cli_errors_are_one_line_and_nonzero(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert (
        main(["train", "--dataset", "nope", "--arch", "resnet8", "--out", str(tmp_path / "r")]) == 2
    )
    err = capsys.readouterr().err.strip()
    assert err.startswith("robustlab: error: unknown dataset 'nope'") and "\n" not in err
    assert (
        main(["train", "--dataset", "digits", "--arch", "resnet9", "--out", str(tmp_path / "r")])
        == 2
    )
    assert "unknown architecture 'resnet9'" in capsys.readouterr().err
    assert main(["eval-clean", str(tmp_path)]) == 2
    assert "not a run directory" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(
            [
                "train",
                "--dataset",
                "digits",
                "--arch",
                "lenet",
                "--defect",
                "bottom:2",
                "--out",
                "x",
            ]
        )
    assert exit_info.value.code == 2
    assert not (tmp_path / "r").exists()


def test_cli_train_and_eval_clean(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "run"
    args = [
        "train",
        "--dataset",
        "digits",
        "--arch",
        "lenet",
        "--width",
        "4",
        "--epochs",
        "1",
        "--train-limit",
        "200",
        "--quiet",
        "--out",
        str(out),
    ]
    assert main(args) == 0
    trained = float(capsys.readouterr().out.split("test accuracy")[1])
    assert main(["eval-clean", str(out)]) == 0
    assert f"test accuracy {trained:.4f} (360 images)" in capsys.readouterr().out


def test_adversarial_training_trains_on_pgd_examples(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import robustlab.training as training

    calls = []
    original = training.PGD.__call__

    def spy(self, x, y, target=None):
        adv = original(self, x, y, target)
        calls.append(((adv - x).abs().max().item(), self.random_start, self.seed))
        return adv

    monkeypatch.setattr(training.PGD, "__call__", spy)
    train_data, test_data = _digits(128, 50)
    config = model_config_for(train_data, "lenet", width=4)
    recipe = TrainConfig(epochs=1, batch_size=64, adv_eps=8 / 255, adv_step=2 / 255, adv_steps=3)
    meta = train(config, train_data, test_data, recipe, tmp_path / "run", quiet=True)
    assert len(calls) == 2  # one attack per batch
    assert all(0 < linf <= 8 / 255 + 1e-6 and random_start for linf, random_start, _ in calls)
    assert calls[0][2] != calls[1][2]  # a fresh random start per batch
    assert meta["train"]["adv_eps"] == pytest.approx(8 / 255)


def test_cli_baseline_flags_reach_the_run(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "run"
    args = [
        "train",
        "--dataset",
        "digits",
        "--arch",
        "resnet8",
        "--width",
        "4",
        "--epochs",
        "1",
        "--train-limit",
        "64",
        "--thermometer",
        "4",
        "--adv-train",
        "8:2:1",
        "--regularizer",
        "dropblock",
        "--label-smoothing",
        "0.1",
        "--quiet",
        "--out",
        str(out),
    ]
    assert main(args) == 0
    meta = robustlab.runs.read_meta(out)
    assert meta["model"]["thermometer"] == 4 and meta["model"]["regularizer"] == "dropblock"
    assert meta["train"]["adv_eps"] == pytest.approx(8 / 255) and meta["train"]["adv_steps"] == 1
    assert meta["train"]["label_smoothing"] == 0.1
    with pytest.raises(SystemExit):
        main([*args[:-2], "--adv-train", "8:2", "--out", str(tmp_path / "bad")])
    assert "must be EPS:STEP:STEPS" in capsys.readouterr().err


def test_fast_path_options_train_and_are_recorded(tmp_path: Path) -> None:
    from robustlab.training import FastPath

    data = sample(load_dataset("digits", "train"), 96)
    config = model_config_for(data, "lenet", width=4)
    recipe = TrainConfig(epochs=1, batch_size=32, pad=0)
    meta = train(config, data, data, recipe, tmp_path / "r", quiet=True, fast=FastPath(bf16=True))
    assert meta["fast_path"] == {"channels_last": False, "bf16": True, "compile": False}
    assert math.isfinite(meta["history"][0]["train_loss"])
    # channels-last training on the CPU is refused before anything is written (not reproducible)
    with pytest.raises(RobustlabError, match="drop it, or train on a GPU"):
        train(config, data, data, recipe, tmp_path / "cl", fast=FastPath(channels_last=True))
    assert not (tmp_path / "cl").exists()


def test_training_is_nchw_and_evaluation_channels_last_on_the_cpu(tmp_path: Path) -> None:
    data = sample(load_dataset("digits", "train"), 64)
    config = model_config_for(data, "lenet", width=4)
    settings = TrainConfig(epochs=1, batch_size=32, pad=0)
    meta = train(config, data, data, settings, tmp_path / "r", quiet=True)
    # weights train in NCHW: channels-last weight gradients are not reproducible on the CPU
    assert meta["fast_path"]["channels_last"] is False
    model = robustlab.load(tmp_path / "r")  # evaluation: channels-last (models.base.place)
    convs = [m.weight for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs and all(w.is_contiguous(memory_format=torch.channels_last) for w in convs)


def test_schedules_follow_their_definitions() -> None:
    paper = TrainConfig(epochs=7, lr=0.1)
    assert [round(paper.lr_at(e), 6) for e in range(7)] == [0.1] * 3 + [0.01] * 2 + [0.001] * 2
    cycle = TrainConfig(epochs=10, lr=0.1, schedule="onecycle")
    assert cycle.lr_at(0) == pytest.approx(0.1 / 25)  # torch OneCycleLR's div_factor
    assert cycle.lr_at(3) == pytest.approx(0.1)  # the peak at 30 %
    assert cycle.lr_at(9, 0.999) < 1e-4
    rising = [cycle.lr_at(e, f) for e in range(3) for f in (0, 0.5)]
    assert rising == sorted(rising)
    falling = [cycle.lr_at(e, f) for e in range(3, 10) for f in (0, 0.5)]
    assert falling == sorted(falling, reverse=True)
    cosine = TrainConfig(epochs=10, lr=0.1, schedule="cosine")
    assert cosine.lr_at(0, 0.5) == pytest.approx(0.05)  # half-way through a 1-epoch warm-up
    assert cosine.lr_at(1) == pytest.approx(0.1) and cosine.lr_at(5, 0.5) == pytest.approx(0.05)
    with pytest.raises(ValueError, match="unknown schedule 'linear'"):
        TrainConfig(schedule="linear")


def test_a_per_step_schedule_is_recorded_and_refuses_other_epochs_on_resume(
    tmp_path: Path,
) -> None:
    train_data, test_data = _digits(256, 50)
    config = model_config_for(train_data, "lenet", width=4)
    recipe = TrainConfig(epochs=2, batch_size=64, lr=0.05, pad=0, schedule="onecycle")
    meta = train(config, train_data, test_data, recipe, tmp_path / "r", quiet=True)
    assert meta["train"]["schedule"] == "onecycle"
    first = meta["history"][0]
    assert first["lr"] == pytest.approx(0.05 / 25) and first["lr_end"] > first["lr"]
    longer = TrainConfig(**{**recipe.to_dict(), "milestones": None, "epochs": 3})
    with pytest.raises(RobustlabError, match="depends on the number of epochs"):
        train(config, train_data, test_data, longer, tmp_path / "r", resume=True, quiet=True)
    code = main(
        [
            "train",
            "--dataset",
            "digits",
            "--arch",
            "lenet",
            "--width",
            "4",
            "--epochs",
            "1",
            "--pad",
            "0",
            "--train-limit",
            "128",
            "--schedule",
            "cosine",
            "--out",
            str(tmp_path / "c"),
            "--quiet",
            "--device",
            "cpu",
        ]
    )
    assert code == 0 and robustlab.runs.read_meta(tmp_path / "c")["train"]["schedule"] == "cosine"


def test_a_run_records_its_training_time_defenses(tmp_path: Path) -> None:
    train_data, test_data = _digits(128, 32)
    defenses = (
        DefectMasks(DefectSpec(0.5, seed=3)),
        LabelSmoothing(0.1),
        AdversarialTraining(eps=8 / 255, step=4 / 255, steps=1),
    )
    config = model_with(defenses, model_config_for(train_data, "lenet", width=4))
    recipe = recipe_with(defenses, TrainConfig(epochs=1, batch_size=64, pad=0))
    train(config, train_data, test_data, recipe, tmp_path / "run", quiet=True)
    assert configs_of(tmp_path / "run") == (config, recipe)  # meta.json round trip
    assert defenses_of(*configs_of(tmp_path / "run")) == defenses
    assert defenses_of(*configs_of(tmp_path / "run")) != defenses[:2]
