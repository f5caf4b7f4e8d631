"""Small dataset files in the standard formats, generated for the tests."""

from __future__ import annotations

import gzip
import io
import pickle
import shutil
import subprocess
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image


def idx_bytes(array: np.ndarray) -> bytes:
    """Encode a uint8 array in the IDX format (magic 0x0000 08 NDIM, big-endian sizes)."""
    header = bytes([0, 0, 8, array.ndim]) + np.asarray(array.shape, dtype=">i4").tobytes()
    return header + array.astype(np.uint8).tobytes()


def write_idx_dataset(
    folder: Path, n_train: int = 40, n_test: int = 20, compress: bool = True
) -> dict:
    rng = np.random.default_rng(0)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": rng.integers(0, 10, n_train, dtype=np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, n_test, dtype=np.uint8),
    }
    folder.mkdir(parents=True, exist_ok=True)
    for name, arr in arrays.items():
        blob = idx_bytes(arr)
        if compress:
            (folder / f"{name}.gz").write_bytes(gzip.compress(blob))
        else:
            (folder / name).write_bytes(blob)
    return arrays


def cifar_batch(n: int, seed: int) -> tuple[bytes, np.ndarray, list[int]]:
    rng = np.random.default_rng(seed)
    data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
    labels = [int(v) for v in rng.integers(0, 10, n)]
    blob = pickle.dumps({b"batch_label": b"x", b"labels": labels, b"data": data}, protocol=2)
    return blob, data, labels


def write_image_folder(
    root: Path, classes=("cat", "dog"), per_class: int = 3, size: int = 8
) -> None:
    rng = np.random.default_rng(1)
    for split in ("train", "test"):
        for cls in classes:
            (root / split / cls).mkdir(parents=True, exist_ok=True)
            for k in range(per_class):
                pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / cls / f"{k:04d}.png")


def tar_folder(root: Path, archive: Path) -> Path:
    with tarfile.open(archive, "w:gz") as tar:
        for path in sorted(root.rglob("*")):
            tar.add(path, arcname=str(path.relative_to(root)), recursive=False)
    return archive


def png_bytes(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


# wall-clock measurements and what was counted with them (seconds and memory in each cost)
TIMING = (
    "seconds",
    "command",
    "ms_per_image",
    "cost_ratio",
    "cost",
    "cost_by_attack",
    "cost_by_model",
    "shared_cost",
)


def without_timing(records: list[dict]) -> list[dict]:
    """Records less their wall-clock measurements, which differ between any two runs."""
    return [{k: v for k, v in r.items() if k not in TIMING} for r in records]


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def chromium(url: str, profile: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Headless Chromium on ``url`` (e.g. ``--dump-dom`` or ``--screenshot=FILE``)."""
    assert CHROMIUM is not None
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        "--enable-logging=stderr",
        "--v=0",
    ]
    return subprocess.run(
        [CHROMIUM, *flags, *args, url], capture_output=True, text=True, timeout=120
    )


# a spec that trains two tiny digits models and makes one adversarial set (a transfer cell)
TRANSFER_SPEC = """
[experiment]
dataset = "digits"
n = 16
[train]
arch = "lenet"
width = 4
epochs = 1
pad = 0
train_limit = 200
[models.standard]
[models.source]
seed = 1
[attacks.fgsm]
attack = "fgsm"
eps = 8
[[protocols]]
type = "transfer"
sources = ["source"]
targets = ["standard"]
attacks = ["fgsm"]
"""
