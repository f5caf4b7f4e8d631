"""`robustlab csc learn` and `robustlab purify` from the command line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from robustlab.cli import main
from robustlab.defenses.csc import (
    LearnedDictionary,
    StratifiedDictionary,
    load_dictionary,
    save_dictionary,
)


@pytest.fixture(scope="module")
def dictionary(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dicts") / "digits"
    args = ["csc", "learn", "--dataset", "digits", "--filters", "4", "--size", "3"]
    args += ["--lmbda", "0.1", "--images", "24", "--iterations", "3", "--out", str(out)]
    assert main([*args, "--device", "cpu"]) == 0
    return out


def test_learn_writes_a_dictionary_with_its_provenance(dictionary: Path) -> None:
    learned = load_dictionary(dictionary)
    assert isinstance(learned, LearnedDictionary)
    assert tuple(learned.filters.shape) == (4, 1, 3, 3)
    meta = learned.metadata
    assert meta["dataset"] == "digits" and meta["images"] == 24 and meta["seed"] == 0
    assert meta["lmbda"] == 0.1 and len(meta["history"][0]) == 3
    assert "csc" in meta["command"] or "robustlab" in meta["command"]


def test_learn_refuses_to_overwrite(dictionary: Path, capsys: pytest.CaptureFixture) -> None:
    args = ["csc", "learn", "--dataset", "digits", "--images", "8", "--out", str(dictionary)]
    assert main(args) == 2
    assert "--force" in capsys.readouterr().err


def test_learn_stratified(tmp_path: Path) -> None:
    args = ["csc", "learn", "--dataset", "digits", "--filters", "3", "--size", "3"]
    args += ["--images", "30", "--iterations", "1", "--clusters", "2", "--out", str(tmp_path)]
    assert main([*args, "--device", "cpu"]) == 0
    learned = load_dictionary(tmp_path)
    assert isinstance(learned, StratifiedDictionary) and len(learned.members) == 2
    assert sum(learned.members[0].metadata["cluster_sizes"]) == 30


def _write_images(folder: Path, count: int) -> list[Path]:
    rng = np.random.default_rng(0)
    paths = []
    for i in range(count):
        path = folder / ("sub" if i % 2 else "") / f"img{i}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (10, 12), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


def test_purify_folder_to_folder_resumes_and_keeps_inputs(
    dictionary: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    inputs = _write_images(tmp_path / "in", 5)
    before = {p: p.read_bytes() for p in inputs}
    out = tmp_path / "out"
    args = ["purify", str(tmp_path / "in"), str(out), "--dict", str(dictionary), "--size", "8"]
    assert main([*args, "--device", "cpu", "--quiet"]) == 0
    assert "purified 5 images" in capsys.readouterr().out
    written = sorted(p.relative_to(out) for p in out.rglob("*.png"))
    assert written == sorted(p.relative_to(tmp_path / "in") for p in inputs)
    assert Image.open(out / "sub" / "img1.png").size == (8, 8)
    assert all(p.read_bytes() == data for p, data in before.items())
    (out / "img0.png").unlink()
    assert main([*args, "--device", "cpu", "--quiet"]) == 0
    assert "purified 1 images into" in capsys.readouterr().out
    assert not list(out.rglob(".*.tmp"))


def test_purify_refuses_output_inside_input(
    dictionary: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    _write_images(tmp_path / "in", 1)
    args = ["purify", str(tmp_path / "in"), str(tmp_path / "in" / "x"), "--dict", str(dictionary)]
    assert main(args) == 2
    assert "must not be inside" in capsys.readouterr().err
    missing = ["purify", str(tmp_path / "nope"), str(tmp_path / "o"), "--dict", str(dictionary)]
    assert main(missing) == 2
    assert "no such folder" in capsys.readouterr().err


def test_purify_keeps_each_finished_chunk(tmp_path: Path) -> None:
    """A run stopped after its first chunk keeps that chunk's outputs (resumes from there)."""
    from robustlab.experiments.csc import purify_folder

    source = tmp_path / "in"
    source.mkdir()
    for k in range(40):
        Image.new("L", (8, 8), color=k).save(source / f"{k:02d}.png")

    class Purifier(torch.nn.Module):  # the identity, interrupted after ``chunks`` chunks
        channels = 1

        def __init__(self, chunks: int) -> None:
            super().__init__()
            self.chunks, self.calls = chunks, 0

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            self.calls += 1
            if self.calls > self.chunks:
                raise KeyboardInterrupt
            return x

    with pytest.raises(KeyboardInterrupt):
        purify_folder(source, tmp_path / "out", Purifier(1), quiet=True)  # type: ignore[arg-type]
    assert len(list((tmp_path / "out").glob("*.png"))) == 32
    (tmp_path / "out" / "00.png").write_bytes(b"")  # an empty output is redone, not trusted
    done, skipped = purify_folder(source, tmp_path / "out", Purifier(9), quiet=True)  # type: ignore[arg-type]
    assert (done, skipped) == (9, 31)


def test_purify_outputs_of_other_settings_are_not_reused(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from robustlab.defenses.csc.dictionary import random_dictionary

    source = tmp_path / "in"
    source.mkdir()
    Image.new("L", (8, 8), color=90).save(source / "a.png")
    for seed in (0, 1):
        save_dictionary(
            tmp_path / f"d{seed}", LearnedDictionary(random_dictionary(4, 1, 3, seed=seed), 0.1)
        )
    run = [
        "purify",
        str(source),
        str(tmp_path / "out"),
        "--max-iter",
        "5",
        "--device",
        "cpu",
        "--quiet",
    ]
    assert main([*run, "--dict", str(tmp_path / "d0")]) == 0
    assert main([*run, "--dict", str(tmp_path / "d1")]) == 2  # not silently "already there"
    assert "purified with other settings (filters_sha256)" in capsys.readouterr().err
    assert main([*run, "--dict", str(tmp_path / "d1"), "--force"]) == 0
    assert "purified 1 images" in capsys.readouterr().out


def _released(path: Path, filters: torch.Tensor, *, bgr: bool = True) -> Path:
    """Write robustlab filters (M, C, P, P, RGB) as the CSC release ships dictionaries:
    .npy, float32, (P, P, C, M), BGR; grey ones as (P, P, M)."""
    array = filters.flip(1) if bgr else filters
    array = array.numpy().transpose(2, 3, 1, 0)
    np.save(path, array[:, :, 0, :] if filters.shape[1] == 1 else array.astype(np.float32))
    return path


def test_released_npy_dictionaries_load_in_their_layout(tmp_path: Path) -> None:
    from robustlab.defenses.csc.dictionary import random_dictionary

    colour = random_dictionary(6, 3, 5, seed=0)
    loaded = load_dictionary(_released(tmp_path / "6_p5_lm0.15.npy", colour))
    assert isinstance(loaded, LearnedDictionary)
    torch.testing.assert_close(loaded.filters, colour)  # BGR file -> RGB filters
    assert loaded.lmbda == 0.15 and loaded.metadata["channel_order"] == "bgr"
    as_rgb = load_dictionary(tmp_path / "6_p5_lm0.15.npy", "rgb")
    torch.testing.assert_close(as_rgb.filters, colour.flip(1))  # read as it is: channels kept
    grey = random_dictionary(4, 1, 3, seed=1)
    loaded = load_dictionary(_released(tmp_path / "grey.npy", grey))
    torch.testing.assert_close(loaded.filters, grey)
    assert loaded.lmbda == 0.2  # the release's λ when the name does not say


@pytest.mark.parametrize(
    "array, message",
    [
        (np.zeros((8, 8, 3, 4, 2), np.float32), r"expected float filters \(P, P, C, M\)"),
        (np.zeros((8, 6, 3, 4), np.float32), r"found shape \(8, 6, 3, 4\)"),
        (np.zeros((8, 8, 2, 4), np.float32), "1 or 3 channels"),
        (np.ones((4, 4, 3, 2), np.float32), "not zero-mean and unit-norm"),
        (np.zeros((4, 4, 3, 2), np.int64), "float filters"),
    ],
)
def test_released_dictionaries_that_do_not_fit_say_what_was_found(
    tmp_path: Path, array: np.ndarray, message: str
) -> None:
    from robustlab.io import RobustlabError

    np.save(tmp_path / "d.npy", array)
    with pytest.raises(RobustlabError, match=message):
        load_dictionary(tmp_path / "d.npy")


def test_purify_with_a_released_dictionary(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from robustlab.defenses.csc.dictionary import random_dictionary

    rng = np.random.default_rng(0)
    (tmp_path / "in").mkdir()
    for i in range(2):
        image = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
        Image.fromarray(image).save(tmp_path / "in" / f"c{i}.png")
    npy = _released(tmp_path / "64_p3_lm0.2.npy", random_dictionary(4, 3, 3, seed=0))
    outputs = {}
    for order in ("bgr", "rgb"):
        out = tmp_path / order
        args = [
            "purify",
            str(tmp_path / "in"),
            str(out),
            "--dict",
            str(npy),
            "--channel-order",
            order,
            "--max-iter",
            "5",
            "--device",
            "cpu",
            "--quiet",
        ]
        assert main(args) == 0
        outputs[order] = np.asarray(Image.open(out / "c0.png"))
    assert "purified 2 images" in capsys.readouterr().out
    assert not np.array_equal(outputs["bgr"], outputs["rgb"])  # the order matters, and is used
    folder = [
        "purify",
        str(tmp_path / "in"),
        str(tmp_path / "x"),
        "--dict",
        str(tmp_path),
        "--channel-order",
        "rgb",
    ]
    assert main(folder) == 2
    assert "--channel-order applies to .npy dictionaries only" in capsys.readouterr().err


def test_spec_purify_accepts_a_released_dictionary(tmp_path: Path) -> None:
    from robustlab.defenses.csc.dictionary import random_dictionary
    from robustlab.defenses.registry import defense_from_table

    npy = _released(tmp_path / "d.npy", random_dictionary(4, 1, 3, seed=0))
    defense = defense_from_table("purify", {"dict": str(npy), "channel_order": "rgb"})
    assert defense.describe()["channel_order"] == "rgb"
    assert defense.purifier().dictionary.metadata["channel_order"] == "rgb"
    with pytest.raises(ValueError, match="channel_order 'grb'"):
        defense_from_table("purify", {"dict": str(npy), "channel_order": "grb"})


def test_spec_warm_start_false_runs_every_attack_solve_cold(tmp_path: Path) -> None:
    """``warm_start = false``: the purifier remembers nothing under attack, and the key
    names another defense (its folder and cells); the default keeps the old names."""
    from robustlab.attacks.registry import build
    from robustlab.defenses.csc.dictionary import random_dictionary
    from robustlab.defenses.registry import defense_from_table

    npy = _released(tmp_path / "d.npy", random_dictionary(4, 1, 3, seed=0))
    table = {"dict": str(npy), "max_iter": 200, "auto_rho": False}
    warm = defense_from_table("purify", table)
    cold = defense_from_table("purify", {**table, "warm_start": False})
    assert "warm_start" not in warm.describe() and cold.describe()["warm_start"] is False
    assert warm.key() != cold.key()  # the key names the defense's folder
    torch.manual_seed(0)
    classifier = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 3)).eval()
    x, y = torch.rand(3, 1, 8, 8), torch.tensor([0, 1, 2])
    solves = {}
    for name, defense in (("warm", warm), ("cold", cold)):
        purifier = defense.purifier()
        build("square", torch.nn.Sequential(purifier, classifier), eps=8 / 255, queries=10)(x, y)
        solves[name] = purifier.counts
    assert solves["warm"].warm_solves > 0 and solves["cold"].warm_solves == 0
    assert solves["cold"].solves == solves["warm"].solves  # the same queries, all cold
    with pytest.raises(ValueError, match="warm_start must be true or false"):
        defense_from_table("purify", {**table, "warm_start": "no"})


def test_the_authors_resize_is_opencvs_and_shrinks_differently(
    tmp_path: Path, dictionary: Path, capsys: pytest.CaptureFixture
) -> None:
    """`purify --resize authors` resizes as the CSC release does (OpenCV's INTER_LINEAR on
    uint8, no antialiasing); robustlab's default antialiases, which only matters when an
    image shrinks. The choice is part of the output folder's settings."""
    cv2 = pytest.importorskip("cv2")
    from robustlab.experiments.csc import MANIFEST, authors_resize

    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (37, 45, 3), dtype=np.uint8)
    pixels = torch.from_numpy(image).permute(2, 0, 1).contiguous()
    for size in (16, 64):  # shrink and grow
        theirs = cv2.resize(image, (size, size), interpolation=cv2.INTER_LINEAR)
        ours = authors_resize(pixels, size).permute(1, 2, 0).numpy()
        # OpenCV weighs with 11-bit fixed-point coefficients: a pixel may round one level off
        assert np.abs(ours.astype(int) - theirs.astype(int)).max() <= 1
    source = tmp_path / "in"
    source.mkdir()
    Image.fromarray(image[..., 0]).save(source / "a.png")
    run = ["purify", str(source), "--dict", str(dictionary), "--size", "16", "--max-iter", "3"]
    run += ["--device", "cpu", "--quiet"]
    assert main([*run, str(tmp_path / "plain")]) == 0
    assert main([*run, str(tmp_path / "authors"), "--resize", "authors"]) == 0
    manifests = [json.loads((tmp_path / d / MANIFEST).read_text()) for d in ("plain", "authors")]
    assert "resize" not in manifests[0] and manifests[1]["resize"] == "authors"
    outputs = [np.asarray(Image.open(tmp_path / d / "a.png")) for d in ("plain", "authors")]
    assert not np.array_equal(*outputs)  # shrinking 37 × 45 to 16 × 16: they differ
    assert main([*run, str(tmp_path / "plain"), "--resize", "authors"]) == 2
    assert "other settings (resize)" in capsys.readouterr().err


def test_a_grey_dictionary_refuses_colour_images_unless_asked(
    tmp_path: Path, dictionary: Path, capsys: pytest.CaptureFixture
) -> None:
    source = tmp_path / "in"
    source.mkdir()
    colour = np.zeros((8, 8, 3), dtype=np.uint8)
    colour[..., 0] = 200  # red: its grey conversion would lose the colour silently
    Image.fromarray(colour).save(source / "red.png")
    Image.fromarray(np.full((8, 8, 3), 90, dtype=np.uint8)).save(source / "grey-rgb.png")
    run = ["purify", str(source), "--dict", str(dictionary), "--max-iter", "3", "--quiet"]
    assert main([*run, str(tmp_path / "out"), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "red.png: a colour image" in err and "--grey" in err
    assert not (tmp_path / "out" / "red.png").exists()
    assert main([*run, str(tmp_path / "out"), "--grey", "--device", "cpu"]) == 0
    assert np.asarray(Image.open(tmp_path / "out" / "red.png")).ndim == 2  # grey, as asked


def test_a_dictionary_too_large_to_learn_is_refused_before_learning(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """The per-frequency Gram matrices grow with the square of the filter count: 200,000
    filters would need petabytes; refused up front, nothing written."""
    out = tmp_path / "huge"
    args = ["csc", "learn", "--dataset", "digits", "--filters", "200000", "--size", "3"]
    assert main([*args, "--images", "8", "--iterations", "1", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "learning 200000 filters on 8 images of 8 × 8 needs about" in err
    assert "use fewer filters or images" in err and not out.exists()
