"""Bad inputs through the real CLI: exit code, one clear line, nothing written or changed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from robustlab.cli import main
from robustlab.data import load_dataset, sample
from robustlab.experiments.jobs import model_config_for
from robustlab.training import TrainConfig, train

TINY_SPEC = """
[experiment]
dataset = "digits"
n = 8
[train]
arch = "lenet"
width = 4
epochs = 1
pad = 0
[models.standard]
[attacks.fgsm]
attack = "fgsm"
eps = 8
[[protocols]]
type = "whitebox"
models = ["standard"]
attacks = ["fgsm"]
"""


def _spec(tmp_path: Path, text: str) -> str:
    path = tmp_path / "spec.toml"
    path.write_text(text)
    return str(path)


TRAIN = ["train", "--dataset", "digits", "--arch", "lenet", "--epochs", "1"]
CASES = {
    # spec: each is a variation of TINY_SPEC
    "misspelt section": (
        lambda t: ["run", _spec(t, TINY_SPEC + "[trian]\nepochs = 3\n")],
        "unknown section [trian]",
    ),
    "unknown experiment key": (
        lambda t: ["run", _spec(t, TINY_SPEC.replace("n = 8", "n = 8\nsamples = 3"))],
        "[experiment] unknown key 'samples'",
    ),
    "epochs as text": (
        lambda t: ["run", _spec(t, TINY_SPEC.replace("epochs = 1", 'epochs = "three"'))],
        "epochs must be an integer, got 'three'",
    ),
    "negative eps in 0-255 units": (
        lambda t: ["run", _spec(t, TINY_SPEC.replace("eps = 8", "eps = -16"))],
        "eps = -16 must be a number in 0..255",
    ),
    "seed as a float": (
        lambda t: ["run", _spec(t, TINY_SPEC.replace("n = 8", "n = 8\nseed = 1.5"))],
        "seed must be a non-negative integer",
    ),
    # train
    "output below a file": (
        lambda t: [
            "train",
            "--dataset",
            "digits",
            "--arch",
            "lenet",
            "--epochs",
            "1",
            "--out",
            str(t / "file" / "run"),
        ],
        "cannot write here",
    ),
    "unknown device": (
        lambda t: [
            "train",
            "--dataset",
            "digits",
            "--arch",
            "lenet",
            "--device",
            "tpu",
            "--out",
            str(t / "run"),
        ],
        "unknown device 'tpu'",
    ),
    "bad adversarial training": (
        lambda t: [
            "train",
            "--dataset",
            "digits",
            "--arch",
            "lenet",
            "--adv-train",
            "0:2:5",
            "--out",
            str(t / "run"),
        ],
        "adversarial training needs 0 < eps",
    ),
    "timings of a folder without a run": (lambda t: ["timings", str(t)], "no timing log"),
    # non-finite and out-of-range numbers: refused at the boundary, before any work
    "spec lr = inf": (
        lambda t: ["run", _spec(t, TINY_SPEC.replace("epochs = 1", "epochs = 1\nlr = inf"))],
        "lr = inf must be a finite number",
    ),
    "spec weight_decay = nan": (
        lambda t: [
            "run",
            _spec(t, TINY_SPEC.replace("epochs = 1", "epochs = 1\nweight_decay = nan")),
        ],
        "weight_decay = nan must be a finite number",
    ),
    "train --pad -3": (
        lambda t: [*TRAIN, "--pad", "-3", "--out", str(t / "run")],
        "pad = -3 must be 0",
    ),
    "train --milestones 5,3": (
        lambda t: [*TRAIN, "--milestones", "5,3", "--out", str(t / "run")],
        "must be increasing positive epochs",
    ),
    "train --thermometer 0": (
        lambda t: [*TRAIN, "--thermometer", "0", "--out", str(t / "run")],
        "thermometer levels 0 must be at least 2",
    ),
    # late checks and misleading messages (#26 classes 2-4): refused before any work
    "spec without protocols": (
        lambda t: ["run", _spec(t, TINY_SPEC.split("[[protocols]]")[0])],
        "the spec has no [[protocols]]",
    ),
    "width 4.5": (
        lambda t: ["run", _spec(t, TINY_SPEC.replace("width = 4", "width = 4.5"))],
        "width = 4.5 must be a positive integer",
    ),
    "an empty ensemble": (
        lambda t: ["run", _spec(t, TINY_SPEC + "[models.en]\nmembers = []\n")],
        "an ensemble needs a list of models",
    ),
    "a protocol's n beyond the experiment's": (
        lambda t: [
            "run",
            _spec(
                t, TINY_SPEC + '[[protocols]]\ntype = "verdict"\nmodels = ["standard"]\nn = 100\n'
            ),
        ],
        "n = 100 exceeds the experiment's n = 8",
    ),
    "shuffle ks = [0]": (
        lambda t: [
            "run",
            _spec(
                t, TINY_SPEC + '[[protocols]]\ntype = "shuffle"\nmodels = ["standard"]\nks = [0]\n'
            ),
        ],
        "ks = [0] must be positive integers",
    ),
    "fgsm --steps": (
        lambda t: [
            "attack",
            "--source",
            str(t),
            "--attack",
            "fgsm",
            "--steps",
            "3",
            "--out",
            str(t / "a.npz"),
        ],
        "attack 'fgsm' takes no 'steps'; its parameters: eps",
    ),
    "train --momentum 1.5": (
        lambda t: [*TRAIN, "--momentum", "1.5", "--out", str(t / "run")],
        "need 0 <= momentum < 1",
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_is_one_line_and_writes_nothing(
    case: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    (tmp_path / "file").write_text("a file, not a folder")
    make_args, message = CASES[case]
    args = make_args(tmp_path)
    before = sorted(p.name for p in tmp_path.rglob("*"))
    if args[0] == "run":
        args += ["--out", str(tmp_path / "out"), "--quiet"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("robustlab: error:"), err
    assert message in err[0]
    assert sorted(p.name for p in tmp_path.rglob("*")) == before  # nothing written
    assert (tmp_path / "file").read_text() == "a file, not a folder"


def test_a_spec_that_is_not_utf8_is_named_and_a_bom_is_fine(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from robustlab.experiments.spec import load_spec

    path = tmp_path / "latin.toml"
    path.write_bytes(TINY_SPEC.replace("digits", 'digits"\nname = "caf\xe9').encode("latin-1"))
    assert main(["run", str(path), "--out", str(tmp_path / "out"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert f"{path}: not UTF-8 text (byte 0xe9" in err and "save the spec as UTF-8" in err
    bom = tmp_path / "bom.toml"
    bom.write_bytes(b"\xef\xbb\xbf" + TINY_SPEC.encode())
    assert load_spec(bom).dataset == "digits"


def test_late_checks_come_before_training(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """What the data cannot give is refused before the first model trains: an explicit n
    beyond the test split, a patch grid larger than the images, too many target classes, a
    dictionary for other images, a model too large for the machine's memory."""
    too_many = TINY_SPEC.replace("n = 8", "n = 100000")
    assert main(["run", _spec(tmp_path, too_many), "--out", str(tmp_path / "a"), "--quiet"]) == 2
    assert (
        "[experiment] n = 100000, but digits's test split has 360 images" in capsys.readouterr().err
    )
    grid = TINY_SPEC + '[[protocols]]\ntype = "shuffle"\nmodels = ["standard"]\nks = [100]\n'
    assert main(["run", _spec(tmp_path, grid), "--out", str(tmp_path / "b"), "--quiet"]) == 2
    assert "a 100 × 100 grid does not fit 8 × 8 images" in capsys.readouterr().err
    targets = (
        TINY_SPEC + '[[protocols]]\ntype = "strong"\nmodels = ["standard"]\ntarget_classes = 99\n'
    )
    assert main(["run", _spec(tmp_path, targets), "--out", str(tmp_path / "c"), "--quiet"]) == 2
    assert "target_classes = 99, but the data has 10 classes" in capsys.readouterr().err
    # a colour dictionary on grey digits: named before the standard model trains
    from robustlab.defenses.csc.dictionary import (
        LearnedDictionary,
        random_dictionary,
        save_dictionary,
    )

    save_dictionary(tmp_path / "rgb", LearnedDictionary(random_dictionary(4, 3, 3, seed=0), 0.2))
    csc = (
        TINY_SPEC + f'[models.csc]\nbase = "standard"\npurify = {{ dict = "{tmp_path / "rgb"}" }}\n'
    )
    assert main(["run", _spec(tmp_path, csc), "--out", str(tmp_path / "d"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "[models.csc] dictionary" in err and "3-channel filters, the data 1-channel" in err
    huge = TINY_SPEC.replace("width = 4", "width = 1000000")  # ~10^13 bytes: not on any machine
    assert main(["run", _spec(tmp_path, huge), "--out", str(tmp_path / "e"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "[models.standard] training lenet of width 1000000 at batch size" in err
    assert "GiB, more than the" in err and "use a smaller width or batch size" in err
    blocks = TINY_SPEC.replace("[models.standard]", '[models.standard]\ndefect = "7,8:0.5"')
    assert main(["run", _spec(tmp_path, blocks), "--out", str(tmp_path / "f"), "--quiet"]) == 2
    assert "[models.standard] block index 7 out of range" in capsys.readouterr().err
    string = TINY_SPEC + (
        '[models.source]\nseed = 1\n[[protocols]]\ntype = "transfer"\nsources = "source"\n'
        'targets = ["standard"]\nattacks = ["fgsm"]\n'
    )
    assert main(["run", _spec(tmp_path, string), "--out", str(tmp_path / "g"), "--quiet"]) == 2
    assert 'sources must be a list of model names, e.g. sources = ["source"]' in (
        capsys.readouterr().err
    )
    assert not list(tmp_path.rglob("model.safetensors"))  # nothing trained


@pytest.mark.parametrize(
    "content, message",
    [
        ("[]", "expected a JSON object, found list"),
        ("{}", "'records' must be a list, found nothing"),
        ('{"records": 5, "spec": {}}', "'records' must be a list, found int"),
        ('{"records": [1], "spec": {}}', "every record must be a JSON object"),
    ],
)
def test_a_malformed_results_json_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture, content: str, message: str
) -> None:
    (tmp_path / "results.json").write_text(content)
    assert main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]
    assert not (tmp_path / "report.html").exists()


@pytest.mark.parametrize("device", ["meta", "mps", "xla"])
def test_devices_robustlab_does_not_run_on_are_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture, device: str
) -> None:
    assert main([*TRAIN, "--device", device, "--out", str(tmp_path / "run")]) == 2
    assert f"unknown device {device!r}; use auto, cpu, cuda or cuda:N" in capsys.readouterr().err


def test_zero_width_is_refused_by_the_parser(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--dataset", "digits", "--arch", "lenet", "--width", "0", "--out", "x"])
    assert exit_info.value.code == 2
    assert "0 must be a positive integer" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_cuda_without_a_gpu(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    args = [
        "train",
        "--dataset",
        "digits",
        "--arch",
        "lenet",
        "--device",
        "cuda",
        "--out",
        str(tmp_path / "r"),
    ]
    assert main(args) == 2
    assert "torch sees no GPU; use --device cpu" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_an_interrupted_run_is_not_evaluated(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    data = sample(load_dataset("digits", "train"), 64)
    config = model_config_for(data, "lenet", width=4)
    train(config, data, data, TrainConfig(epochs=1, pad=0), tmp_path / "run", quiet=True)
    meta = (tmp_path / "run" / "meta.json").read_text()
    # as a run killed after epoch 1 of 3 leaves it
    (tmp_path / "run" / "meta.json").write_text(
        meta.replace('"complete": true', '"complete": false').replace('"epochs": 1', '"epochs": 3')
    )
    assert main(["eval-clean", str(tmp_path / "run"), "--device", "cpu"]) == 2
    assert "training stopped at epoch 1 of 3" in capsys.readouterr().err


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    args = [sys.executable, "-m", "robustlab", "eval-clean", str(tmp_path / "missing")]
    plain = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert plain.returncode == 2 and "Traceback" not in plain.stderr
    debug = subprocess.run([*args, "--debug"], capture_output=True, text=True, timeout=120)
    assert debug.returncode == 1 and "Traceback" in debug.stderr


def test_sources_must_match_each_other_and_the_dataset(
    digits_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    other = tmp_path / "fmnist-like"
    data = sample(load_dataset("digits", "train"), 64)
    config = model_config_for(data, "lenet", width=4)
    train(config, data, data, TrainConfig(epochs=1, pad=0), other, quiet=True)
    meta = (other / "meta.json").read_text().replace('"name": "digits"', '"name": "mnist"')
    (other / "meta.json").write_text(meta)
    out = tmp_path / "set.npz"
    both = [
        "attack",
        "--source",
        str(digits_run),
        "--source",
        str(other),
        "--attack",
        "fgsm",
        "--eps",
        "8",
        "--out",
        str(out),
        "--device",
        "cpu",
    ]
    assert main(both) == 2
    assert "trained on different data" in capsys.readouterr().err
    wrong = [
        "attack",
        "--source",
        str(digits_run),
        "--dataset",
        "mnist",
        "--attack",
        "fgsm",
        "--eps",
        "8",
        "--out",
        str(out),
        "--device",
        "cpu",
    ]
    assert main(wrong) == 2
    assert "differs from the one the source was trained on" in capsys.readouterr().err
    assert not out.exists()


def test_image_folders_with_an_empty_class_or_mixed_sizes_are_refused(
    image_folder: Path, capsys: pytest.CaptureFixture
) -> None:
    from PIL import Image

    (image_folder / "train" / "bird").mkdir()  # a class with no images
    args = [
        "train",
        "--dataset",
        "imagefolder",
        "--data-dir",
        str(image_folder),
        "--arch",
        "lenet",
        "--epochs",
        "1",
        "--out",
        str(image_folder.parent / "run"),
    ]
    assert main(args) == 2
    assert "train/bird: a class folder with no images" in capsys.readouterr().err
    (image_folder / "train" / "bird").rmdir()
    Image.new("RGB", (9, 9)).save(image_folder / "train" / "dog" / "big.png")
    assert main(args) == 2
    assert "train/dog/big.png: 9×9 pixels, others 8×8" in capsys.readouterr().err
    assert not (image_folder.parent / "run").exists()


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda meta: meta.pop("model"), "model.arch missing"),
        (lambda meta: meta["model"].update(widht=3), "malformed model config"),
        (lambda meta: meta.update(format="robustlab-run/9"), "unknown run format"),
    ],
)
def test_malformed_run_metadata_is_one_line(
    digits_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture, edit, message: str
) -> None:
    import json
    import shutil

    run = tmp_path / "run"
    shutil.copytree(digits_run, run)
    meta = json.loads((run / "meta.json").read_text())
    edit(meta)
    (run / "meta.json").write_text(json.dumps(meta))
    assert main(["eval-clean", str(run), "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]


def test_a_dictionary_with_wrong_shaped_filters_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from robustlab.defenses.csc.dictionary import DICTIONARY_FILE
    from robustlab.io import load_tensors, save_tensors

    good = Path(__file__).parents[1] / "dicts" / "fashion-mnist-64x8" / DICTIONARY_FILE
    tensors, meta = load_tensors(good)
    save_tensors(tmp_path / "bad.safetensors", {"filters": tensors["filters"][:, :, :, :5]}, meta)
    (tmp_path / "in").mkdir()
    args = [
        "purify",
        str(tmp_path / "in"),
        str(tmp_path / "out"),
        "--dict",
        str(tmp_path / "bad.safetensors"),
    ]
    assert main(args) == 2
    assert "filters is shape (64, 1, 8, 5), not (M, C, P, P)" in capsys.readouterr().err


def test_broken_set_files_are_one_line(tmp_path: Path) -> None:
    import numpy as np

    from robustlab.attacks import load_set
    from robustlab.io import RobustlabError

    (tmp_path / "zip.npz").write_bytes(b"PK\x03\x04 not really a zip file")
    with pytest.raises(RobustlabError, match="not a readable adversarial set"):
        load_set(tmp_path / "zip.npz")
    arrays = {
        name: np.zeros(1)
        for name in ("images", "labels", "indices", "clean_pred", "adv_pred", "linf", "l2")
    }
    np.savez(tmp_path / "json.npz", config_json=np.array("{not json"), **arrays)
    with pytest.raises(RobustlabError, match="its config is not JSON"):
        load_set(tmp_path / "json.npz")


def test_tables_are_byte_identical_when_read_back(tmp_path: Path) -> None:
    from robustlab.experiments.executor import run_spec
    from robustlab.experiments.spec import load_spec

    spec = load_spec(Path(__file__).parent / "specs" / "tiny.toml")
    run_spec(spec, tmp_path, device="cpu", quiet=True)  # computed cells
    first = (tmp_path / "results.md").read_bytes(), (tmp_path / "results.csv").read_bytes()
    run_spec(spec, tmp_path, device="cpu", quiet=True)  # every cell read from disk
    again = (tmp_path / "results.md").read_bytes(), (tmp_path / "results.csv").read_bytes()
    assert again == first


@pytest.mark.parametrize(
    "args",
    [
        ["train", "--dataset", "digits", "--arch", "lenet", "--lr", "nan", "--out", "x"],
        ["train", "--dataset", "digits", "--arch", "lenet", "--momentum", "inf", "--out", "x"],
        ["attack", "--source", "r", "--attack", "cw", "--kappa", "nan", "--out", "x.npz"],
        ["attack", "--source", "r", "--attack", "mifgsm", "--decay=-inf", "--out", "x.npz"],
        ["sfr", "eval", "r", "--xi", "nan"],
        [
            "universal",
            "import",
            "f",
            "--layout",
            "hwc",
            "--channel-order",
            "rgb",
            "--scale",
            "nan",
            "--out",
            "x",
        ],
    ],
)
def test_non_finite_numbers_are_refused_by_the_parser(
    args: list[str], capsys: pytest.CaptureFixture
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2
    assert "is not a finite number" in capsys.readouterr().err


def test_a_killed_timing_line_does_not_break_the_log(tmp_path: Path) -> None:
    from robustlab.experiments.timings import LOG_FILE, TimingLog, summarize
    from robustlab.io import RobustlabError

    log = tmp_path / LOG_FILE
    log.write_text('{"kind": "train", "name": "a", "seconds": 2.0}\n{"kind": "rec')  # killed
    with TimingLog(log).timed("record", "b"):
        pass
    assert summarize(tmp_path).by_kind.keys() == {"train", "record"}  # the cut line is gone
    log.write_text('{"kind": "train", "name": "a", "seconds": 2.0}\n[1, 2]\n')
    with pytest.raises(RobustlabError, match=r"timings.jsonl:2: not a timing line"):
        summarize(tmp_path)


def test_a_pickled_npy_is_refused_without_suggesting_pickle(tmp_path: Path) -> None:
    import numpy as np

    from robustlab.io import RobustlabError, load_npy

    np.save(tmp_path / "objects.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(RobustlabError, match="robustlab never unpickles") as caught:
        load_npy(tmp_path / "objects.npy")
    assert "allow_pickle" not in str(caught.value)
    (tmp_path / "text.npy").write_text("not an array\n")  # numpy would call it pickled data
    with pytest.raises(RobustlabError, match=r"not a \.npy file") as caught:
        load_npy(tmp_path / "text.npy")
    assert "pickled objects" not in str(caught.value)  # the path holds the test's name


def test_a_layer_named_twice_is_refused(digits_run: Path, capsys: pytest.CaptureFixture) -> None:
    layers = "blocks.0.unit.conv,blocks.0.unit.conv"
    args = ["sfr", "train", str(digits_run), "--layers", layers, "--out", "/nonexistent/sfr"]
    assert main(args) == 2
    assert "layer 'blocks.0.unit.conv' is named twice" in capsys.readouterr().err


@pytest.mark.parametrize(
    "command, advice",
    [("train", "with --resume"), ("run", "continues from the files"), ("list", "nothing half")],
)
def test_an_interrupt_says_how_each_command_continues(
    command: str, advice: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    import robustlab.cli as cli

    def interrupted(args: object) -> int:
        raise KeyboardInterrupt

    parser = cli.build_parser()
    real_parse = parser.parse_args

    def parse(argv: list[str]) -> object:
        args = real_parse(argv)
        args.handler = interrupted
        return args

    monkeypatch.setattr(parser, "parse_args", parse)
    monkeypatch.setattr(cli, "build_parser", lambda: parser)
    argv = {
        "train": ["train", "--dataset", "digits", "--arch", "lenet", "--out", "x"],
        "run": ["run", "spec.toml", "--out", "x"],
        "list": ["list"],
    }[command]
    assert cli.main(argv) == 130
    assert advice in capsys.readouterr().err


def test_the_python_api_takes_arrays_lists_float64_and_empty_batches(digits_run: Path) -> None:
    """Attacks and `robustlab.evaluate` take numpy arrays, label lists and float64 images
    (converted to the model's dtype), attack an empty batch as itself, and refuse images of
    another size than the run's network was built for, in one line."""
    import numpy as np

    import robustlab
    from robustlab.attacks import build

    model = robustlab.load(digits_run)
    data = load_dataset("digits", "test")
    x = data.images[:4].astype(np.float64) / 255  # numpy, float64
    y = [int(label) for label in data.labels[:4]]  # a list
    attack = build("pgd", model, eps=8 / 255, step=2 / 255, steps=2)
    adv = attack(x, y)
    assert adv.dtype == torch.float32 and adv.shape == (4, 1, 8, 8)
    assert attack(x[:0], []).shape == (0, 1, 8, 8)
    cases = [
        (lambda: attack(torch.rand(4, 1, 4, 4), y), r"images of shape \(1, 4, 4\), but the model"),
        (lambda: attack(data.images[:4], y), "divide uint8 images by 255"),
        (lambda: attack(x, [0.5] * 4), "labels must be integers"),
        (lambda: robustlab.evaluate(model, x[:0], []), "a verdict needs at least one image"),
        (lambda: robustlab.evaluate(model, torch.rand(2, 1, 4, 4), [0, 1]), "resize them"),
    ]
    for call, message in cases:
        with pytest.raises(ValueError, match=message) as err:
            call()
        assert "\n" not in str(err.value)


def test_resuming_with_fewer_epochs_than_done_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """It used to print "epoch 3/2" and return the 3-epoch run as if it were asked for."""
    args = ["train", "--dataset", "digits", "--arch", "lenet", "--width", "4", "--quiet"]
    args += ["--out", str(tmp_path / "run"), "--device", "cpu"]
    assert main([*args, "--epochs", "2"]) == 0
    capsys.readouterr()
    assert main([*args, "--epochs", "1", "--resume"]) == 2
    assert "has trained 2 epochs already, more than the 1 asked" in capsys.readouterr().err


def test_a_set_whose_config_lacks_its_names_is_one_line(tmp_path: Path) -> None:
    """The report reads a set's attack, dataset, split and sources: a file without them (or
    with other types there) is refused when read, not deep in a gallery."""
    import json

    import numpy as np

    from robustlab.attacks import AdversarialSet, load_set, save_set
    from robustlab.io import RobustlabError

    ints, norms = np.zeros(2, dtype=np.int64), np.zeros(2, dtype=np.float32)
    config = {"attack": "pgd", "dataset": "digits", "split": "test", "sources": ["run"]}
    adv_set = AdversarialSet(
        images=np.zeros((2, 1, 4, 4), dtype=np.uint8),
        **dict.fromkeys(("labels", "indices", "clean_pred", "adv_pred"), ints),
        linf=norms,
        l2=norms,
        config=config,
    )
    save_set(tmp_path / "good.npz", adv_set)
    assert load_set(tmp_path / "good.npz").config["sources"] == ["run"]
    for edit in ({"dataset": None}, {"sources": "run"}, {"attack": 3}):
        with np.load(tmp_path / "good.npz") as data:
            arrays = {name: data[name] for name in data.files}
        stored = json.loads(str(arrays["config_json"]))
        arrays["config_json"] = np.array(json.dumps({**stored, **edit}))
        np.savez(tmp_path / "bad.npz", **arrays)
        with pytest.raises(RobustlabError, match="lacks the attack, data or sources"):
            load_set(tmp_path / "bad.npz")


def test_model_options_read_from_a_file_are_checked(tmp_path: Path) -> None:
    """Options are data: a factory's arguments must be a table, defect layers a list of
    names (one-line errors, not a TypeError inside the factory)."""
    from robustlab.assemble import create
    from robustlab.models.config import DefectSpec, ModelConfig

    factory = "tests.factories:tiny_cnn"
    with pytest.raises(ValueError, match="factory_args must be a table"):
        create(ModelConfig(factory, options={"factory_args": [1, 2]}))
    defect = DefectSpec(0.5)
    with pytest.raises(ValueError, match="must be a list of layer names"):
        options = {"defect_layers": "conv1"}
        create(ModelConfig(factory, in_channels=1, image_size=8, defect=defect, options=options))


def test_an_sfr_folder_without_its_layers_is_one_line(tmp_path: Path) -> None:
    from robustlab.experiments.sfr import SFR_FORMAT, load_sfr
    from robustlab.io import RobustlabError, write_json
    from robustlab.models.config import ModelConfig

    model = ModelConfig("lenet", in_channels=1, image_size=8).to_dict()
    meta = {"format": SFR_FORMAT, "model": model, "dataset": {"name": "digits"}}
    for layers in (None, "conv1", [1]):
        write_json(tmp_path / "meta.json", {**meta, "layers": layers, "fraction": 0.5})
        with pytest.raises(RobustlabError, match=r"malformed \(layers, fraction, dataset\)"):
            load_sfr(tmp_path)
