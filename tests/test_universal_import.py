"""`robustlab universal import`: the SFR release's perturbation layouts, generated here."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from robustlab.attacks.universal import UniversalPerturbation
from robustlab.attacks.universal.importing import import_perturbation
from robustlab.cli import main
from robustlab.io import RobustlabError

h5py = pytest.importorskip("h5py")


@pytest.fixture
def rgb() -> np.ndarray:
    """A (3, 12, 12) perturbation in 0-255 units, RGB, with distinct channels and axes."""
    rng = np.random.default_rng(0)
    return rng.uniform(-10, 10, (3, 12, 12)).round(3)


def expected(rgb: np.ndarray, crop: int | None = None) -> torch.Tensor:
    out = rgb if crop is None else rgb[:, (12 - crop) // 2 :, (12 - crop) // 2 :][:, :crop, :crop]
    return torch.from_numpy(np.ascontiguousarray(out, dtype=np.float32)) / 255


def test_matlab_h5_is_transposed_and_bgr(rgb: np.ndarray, tmp_path: Path) -> None:
    path = tmp_path / "uap.h5"
    with h5py.File(path, "w") as handle:  # MATLAB: BGR, rows and columns swapped on disk
        handle["perturbation"] = rgb[::-1].transpose(0, 2, 1)
    found = import_perturbation(path, "matlab", channel_order="bgr")
    torch.testing.assert_close(found.delta, expected(rgb))
    assert found.config["layout"] == "matlab" and found.config["xi"] == pytest.approx(
        10 / 255, 0.01
    )


@pytest.mark.parametrize("batch", [False, True])
def test_npy_hwc_with_and_without_a_batch_axis(rgb: np.ndarray, tmp_path: Path, batch) -> None:
    array = rgb.transpose(1, 2, 0)
    np.save(tmp_path / "p.npy", array[None] if batch else array)
    found = import_perturbation(tmp_path / "p.npy", "hwc", channel_order="rgb", crop=8)
    torch.testing.assert_close(found.delta, expected(rgb, crop=8))


def test_gap_chw_scaled_and_cropped(rgb: np.ndarray, tmp_path: Path) -> None:
    np.save(tmp_path / "gap.npy", (rgb / 16)[None])  # GAP: [-1, 1] scale, times 16 to 0-255
    found = import_perturbation(tmp_path / "gap.npy", "chw", channel_order="rgb", scale=16, crop=10)
    torch.testing.assert_close(found.delta, expected(rgb, crop=10))


def test_layouts_that_do_not_fit_are_named(rgb: np.ndarray, tmp_path: Path) -> None:
    np.save(tmp_path / "p.npy", rgb)  # CHW saved, HWC claimed: 12 channels
    with pytest.raises(
        RobustlabError, match=r"expected 1 or 3 channels .*found shape \(3, 12, 12\)"
    ):
        import_perturbation(tmp_path / "p.npy", "hwc", channel_order="rgb")
    with pytest.raises(RobustlabError, match="cannot crop 20 × 20 from 12 × 12"):
        import_perturbation(tmp_path / "p.npy", "chw", channel_order="rgb", crop=20)
    with h5py.File(tmp_path / "two.h5", "w") as handle:
        handle["a"], handle["b"] = rgb, rgb
    with pytest.raises(RobustlabError, match="name one with --dataset"):
        import_perturbation(tmp_path / "two.h5", "matlab", channel_order="bgr")


def test_cli_import_then_sfr_style_use(rgb: np.ndarray, tmp_path: Path, capsys) -> None:
    np.save(tmp_path / "p.npy", rgb.transpose(1, 2, 0))
    out = tmp_path / "p.safetensors"
    args = [
        "universal",
        "import",
        str(tmp_path / "p.npy"),
        "--layout",
        "hwc",
        "--channel-order",
        "rgb",
        "--out",
        str(out),
    ]
    assert main(args) == 0
    assert "3x12x12" in capsys.readouterr().out
    loaded = UniversalPerturbation.load(out)
    torch.testing.assert_close(loaded.delta, expected(rgb))
    assert main(args) == 2 and "--force" in capsys.readouterr().err  # never overwritten silently
    with pytest.raises(RobustlabError, match=r"the images are \(1, 8, 8\); re-import"):
        loaded.check_fits((1, 8, 8), "p.safetensors")


def test_h5_as_stored_and_a_shifted_crop(rgb: np.ndarray, tmp_path: Path) -> None:
    """sPGD, Singular Fool and GAP .h5 files of the SFR release are stored as they are
    (--layout h5, no transpose); a crop may start at a given corner (a 1-pixel shift)."""
    path = tmp_path / "spgd.h5"
    with h5py.File(path, "w") as handle:
        handle["perturbation"] = rgb[None]  # (1, 3, H, W), RGB, not transposed
    found = import_perturbation(path, "h5", channel_order="rgb", crop=10, crop_at=(1, 2))
    want = torch.from_numpy(np.ascontiguousarray(rgb[:, 1:11, 2:12], dtype=np.float32)) / 255
    torch.testing.assert_close(found.delta, want)
    assert found.config["crop_at"] == [1, 2] and found.config["layout"] == "h5"
    with pytest.raises(RobustlabError, match=r"crop at \(3, 3\) leaves"):
        import_perturbation(path, "h5", channel_order="rgb", crop=10, crop_at=(3, 3))


def test_an_h5_file_read_as_npy_or_as_a_perturbation_names_the_import(
    rgb: np.ndarray, tmp_path: Path, capsys
) -> None:
    """A released .h5 (even named .npy) never gets numpy's pickle advice: the message names
    the layouts, and `sfr eval --perturbation` of a raw .h5 names `universal import`."""
    path = tmp_path / "gap.npy"
    with h5py.File(path, "w") as handle:
        handle["perturbation"] = rgb
    with pytest.raises(RobustlabError, match=r"an HDF5 file, not \.npy; import it with --layout"):
        import_perturbation(path, "chw", channel_order="rgb")
    with pytest.raises(RobustlabError, match="import it first: robustlab universal import"):
        UniversalPerturbation.load(path)
    args = ["universal", "import", str(path), "--layout", "chw", "--channel-order", "rgb"]
    assert main([*args, "--out", str(tmp_path / "p.safetensors")]) == 2
    err = capsys.readouterr().err
    assert "--layout h5" in err and "pickle" not in err
