"""Universal perturbations from other code, into robustlab's format.

The SFR release ships perturbations in several layouts, all on the 0-255 scale unless said
(docs/sfr.md gives the command for each of its files, as its scripts read them):

=============  ==========================================  ==========================
layout         array                                        release
=============  ==========================================  ==========================
``matlab``     ``.h5`` dataset (3, H, W), saved by MATLAB   UAP files; BGR
               column-major: apply transpose(0, 2, 1)
``h5``         ``.h5`` dataset (3, H, W) or (1, 3, H, W),   sPGD and Singular Fool
               as stored (no transpose)                     (BGR), GAP (RGB, [−1, 1]:
                                                            scale 16, crop at 30, 30)
``hwc``        ``.npy`` (H, W, 3) or (1, H, W, 3)           NAG, FFF (crop at 0, 0),
                                                            GUAP (scale 1.5); RGB
``chw``        ``.npy`` (3, H, W) or (1, 3, H, W)           channels-first arrays
=============  ==========================================  ==========================

:func:`import_perturbation` applies, in this order: the layout's reshaping, the channel
order (to RGB), the scale (to 0-255 units), a centre crop, and the division by 255 to
robustlab's [0, 1] pixel units. Every step is recorded in the result's config. Whether an
``.h5`` file is transposed is not written in it: import it both ways and look at the result
(a transposed natural-looking pattern is the wrong one), or follow the release's script.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
import torch

from robustlab.attacks.universal.base import HDF5_HINT, UniversalPerturbation
from robustlab.io import RobustlabError, check_array, is_hdf5, load_npy

Layout = Literal["matlab", "h5", "hwc", "chw"]
LAYOUTS: tuple[Layout, ...] = ("matlab", "h5", "hwc", "chw")


def import_perturbation(
    path: str | Path,
    layout: Layout,
    *,
    channel_order: Literal["bgr", "rgb"],
    scale: float = 1.0,
    crop: int | None = None,
    crop_at: tuple[int, int] | None = None,
    dataset: str | None = None,
) -> UniversalPerturbation:
    """Read ``path`` as ``layout`` (module docstring) into a (C, H, W) RGB perturbation in
    [0, 1] pixel units; ``dataset``: the HDF5 dataset name (default: the only one);
    ``crop_at``: the crop's (top, left) corner instead of the centre (a release whose crop
    is shifted by a pixel)."""
    path = Path(path)
    if layout not in LAYOUTS:
        raise RobustlabError(f"layout {layout!r} must be one of {', '.join(LAYOUTS)}")
    if channel_order not in ("bgr", "rgb") or scale <= 0:
        raise RobustlabError("channel order must be bgr or rgb, and the scale positive")
    raw = _read_h5(path, dataset) if layout in ("matlab", "h5") else _read_npy(path)
    found = f"found shape {raw.shape} in {path}"
    array = raw[0] if raw.ndim == 4 and raw.shape[0] == 1 else raw
    if array.ndim != 3:
        raise RobustlabError(
            f"a perturbation is one image (3 axes, or 4 with a batch of 1); {found}"
        )
    if layout == "matlab":
        array = array.transpose(0, 2, 1)  # MATLAB writes column-major: (C, W, H) as read
    elif layout == "hwc":
        array = array.transpose(2, 0, 1)
    if array.shape[0] not in (1, 3):
        raise RobustlabError(
            f"expected 1 or 3 channels for layout {layout!r}; {found} (is it another layout?)"
        )
    if channel_order == "bgr":
        array = array[::-1]
    array = array * float(scale)
    if crop_at is not None and crop is None:
        raise RobustlabError("a crop corner needs a crop size: give --crop too")
    if crop is not None:
        array = _crop(array, crop, found, crop_at)
    delta = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32)) / 255
    config: dict[str, object] = {
        "attack": "imported",
        "source": str(path),
        "layout": layout,
        "channel_order": channel_order,
        "scale": scale,
        "crop": crop,
        **({"crop_at": list(crop_at)} if crop_at is not None else {}),
        "source_shape": list(raw.shape),
        "xi": float(delta.abs().max()),
    }
    check_array(
        delta,
        f"{path}",
        kinds="f",
        low=-1,
        high=1,
        fix="check --scale (to 0-255 units) and the file's values",
    )
    return UniversalPerturbation(delta, config)


def _crop(array: np.ndarray, size: int, found: str, corner: tuple[int, int] | None) -> np.ndarray:
    height, width = array.shape[1:]
    if not 0 < size <= min(height, width):
        raise RobustlabError(f"cannot crop {size} × {size} from {height} × {width}; {found}")
    top, left = corner if corner is not None else ((height - size) // 2, (width - size) // 2)
    if not (0 <= top <= height - size and 0 <= left <= width - size):
        raise RobustlabError(
            f"a {size} × {size} crop at ({top}, {left}) leaves the {height} × {width} "
            f"perturbation; corners run to ({height - size}, {width - size})"
        )
    return array[:, top : top + size, left : left + size]


def _read_npy(path: Path) -> np.ndarray:
    if is_hdf5(path):  # numpy would say "pickled data": the file is an .h5 under another name
        raise RobustlabError(f"{path}: an HDF5 file, not .npy; import it with {HDF5_HINT}")
    array = load_npy(path)
    if array.dtype.kind not in "fiu":
        raise RobustlabError(f"{path}: expected a numeric array")
    return np.asarray(array, dtype=np.float64)


def _read_h5(path: Path, name: str | None) -> np.ndarray:
    try:
        import h5py
    except ImportError:
        raise RobustlabError(
            ".h5 perturbations need h5py: pip install 'robustlab[h5]' (or h5py)"
        ) from None
    if not path.is_file():
        raise RobustlabError(f"{path}: file not found; check the path")
    try:
        with h5py.File(path, "r") as handle:
            names = [k for k in handle if isinstance(handle[k], h5py.Dataset)]
            if name is None and len(names) != 1:
                raise RobustlabError(f"{path}: holds datasets {names}; name one with --dataset")
            chosen = name if name is not None else names[0]
            if chosen not in handle:
                raise RobustlabError(f"{path}: no dataset {chosen!r}; it holds {names}")
            return np.asarray(handle[chosen], dtype=np.float64)
    except OSError as err:
        raise RobustlabError(f"{path}: not a readable HDF5 file ({err})") from None
