"""Readers for the standard on-disk formats, each returning uint8 NCHW images and int64 labels.

Every reader validates what it reads and raises :class:`~robustlab.io.RobustlabError`
with one line naming the file and the fix when a file is missing, truncated or corrupt.
"""

from __future__ import annotations

import io
import pickle
import tarfile
import zlib
from collections.abc import Iterable
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from PIL import Image, UnidentifiedImageError

from robustlab.io import RobustlabError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".ppm", ".tif", ".tiff", ".webp")


# the largest file a reader decompresses: MNIST-format training images are 47 MB; a gzip
# that inflates past this is refused before it fills memory (a "zip bomb")
MAX_DECOMPRESSED = 1 << 30


def open_maybe_gzip(path: Path, limit: int = MAX_DECOMPRESSED) -> bytes:
    """The bytes of ``path``, gunzipped if it is a gzip file, at most ``limit`` of them."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise RobustlabError(
            f"{path}: file not found; check --data-dir or use --download"
        ) from None
    if raw[:2] != b"\x1f\x8b":
        return raw
    inflater, parts, size, rest = zlib.decompressobj(16 + zlib.MAX_WBITS), [], 0, raw
    corrupt = False
    try:
        while rest and not inflater.eof:
            part = inflater.decompress(rest, 1 << 24)  # at most 16 MiB per step
            rest = inflater.unconsumed_tail
            size += len(part)
            if size > limit:
                raise RobustlabError(
                    f"{path}: inflates to more than {limit >> 20} MiB, more than any dataset "
                    "file it stands for; delete it and fetch it again (--download)"
                )
            parts.append(part)
    except zlib.error:
        corrupt = True
    if corrupt or not inflater.eof:
        raise RobustlabError(
            f"{path}: truncated or corrupt gzip file; delete it and fetch it again (--download)"
        )
    return b"".join(parts)


def read_idx(path: Path, limit: int = MAX_DECOMPRESSED) -> np.ndarray:
    """Read an IDX file (MNIST format), gzipped or not, into a uint8 array.

    The header is a magic number ``0x0000 08 NDIM`` (unsigned bytes) followed by
    NDIM big-endian int32 sizes; the payload must hold exactly prod(sizes) bytes.
    """
    data = open_maybe_gzip(path, limit)
    if len(data) < 4 or data[:3] != b"\x00\x00\x08":
        raise RobustlabError(f"{path}: not an IDX file of unsigned bytes; re-download it")
    ndim = data[3]
    header_end = 4 + 4 * ndim
    shape = tuple(int(v) for v in np.frombuffer(data[4:header_end], dtype=">i4"))
    expected = int(np.prod(shape)) + header_end
    if len(shape) != ndim or len(data) != expected:
        raise RobustlabError(
            f"{path}: truncated IDX file ({len(data)} bytes, expected {expected}); re-download it"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header_end).reshape(shape).copy()


class _CifarUnpickler(pickle.Unpickler):
    """Unpickler for CIFAR batches that refuses every global except numpy's array rebuilders.

    The official CIFAR-10 python batches are pickles; this keeps reading them
    from ever executing code a tampered file could smuggle in.
    """

    _ALLOWED: ClassVar[set[tuple[str, str]]] = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),  # how Python 3 pickles bytes at protocol 2; encodes text only
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a CIFAR batch")


def read_cifar_batch(blob: bytes, source: str) -> tuple[np.ndarray, np.ndarray]:
    """Decode one CIFAR-10 python batch: images (N, 3, 32, 32) uint8, labels (N,) int64."""
    try:
        batch = _CifarUnpickler(io.BytesIO(blob), encoding="bytes").load()
        data = np.asarray(batch[b"data"], dtype=np.uint8)
        labels = np.asarray(batch[b"labels"], dtype=np.int64)
    except (pickle.UnpicklingError, EOFError, KeyError, TypeError, ValueError) as err:
        raise RobustlabError(
            f"{source}: not a valid CIFAR-10 batch ({err}); re-download cifar-10-python.tar.gz"
        ) from None
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(labels) != len(data):
        raise RobustlabError(f"{source}: CIFAR-10 batch has shape {data.shape}; re-download it")
    return data.reshape(-1, 3, 32, 32), labels


def read_cifar10(root: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Read the official CIFAR-10 python distribution from its folder or its .tar.gz."""
    names = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}
    blobs = _cifar_blobs(root, [n for group in names.values() for n in group])
    splits = {}
    for split, members in names.items():
        parts = [read_cifar_batch(blobs[m], f"{root}:{m}") for m in members]
        splits[split] = (
            np.concatenate([p[0] for p in parts]),
            np.concatenate([p[1] for p in parts]),
        )
    return splits


def _cifar_blobs(root: Path, members: list[str]) -> dict[str, bytes]:
    if root.is_file():
        try:
            with tarfile.open(root, "r:gz") as tar:
                found = {Path(m.name).name: m for m in tar.getmembers() if m.isfile()}
                missing = [m for m in members if m not in found]
                if missing:
                    raise RobustlabError(f"{root}: archive lacks {missing[0]}; re-download it")
                return {m: _extract(tar, found[m]) for m in members}
        except (tarfile.TarError, OSError, EOFError, zlib.error):
            raise RobustlabError(f"{root}: truncated or corrupt archive; re-download it") from None
    folder = root / "cifar-10-batches-py" if (root / "cifar-10-batches-py").is_dir() else root
    blobs = {}
    for m in members:
        path = folder / m
        if not path.is_file():
            raise RobustlabError(f"{path}: file not found; point --data-dir at cifar-10-batches-py")
        blobs[m] = path.read_bytes()
    return blobs


def _extract(tar: tarfile.TarFile, member: tarfile.TarInfo) -> bytes:
    handle = tar.extractfile(member)
    if handle is None:
        raise RobustlabError(f"{member.name}: unreadable archive member; re-download the archive")
    return handle.read()


def decode_image(blob: bytes, source: str, channels: int, *, grey_ok: bool = True) -> np.ndarray:
    """Decode one image file to uint8 (C, H, W) with ``channels`` = 1 (grey) or 3 (RGB).

    ``grey_ok=False``: a colour image asked for as grey is refused instead of converted
    (a grey dictionary would otherwise turn colour images into grey outputs silently)."""
    try:
        with Image.open(io.BytesIO(blob)) as img:
            if channels == 1 and not grey_ok and _has_colour(img):
                raise RobustlabError(
                    f"{source}: a colour image, but the images are read as grey (a grey "
                    "dictionary); use a colour dictionary, or convert the images to grey "
                    "on purpose (purify --grey)"
                )
            pixels = np.asarray(img.convert("L" if channels == 1 else "RGB"), dtype=np.uint8)
    except (UnidentifiedImageError, OSError, SyntaxError, Image.DecompressionBombError) as err:
        raise RobustlabError(
            f"{source}: cannot decode image ({err}); replace or delete it"
        ) from None
    return pixels[None] if channels == 1 else pixels.transpose(2, 0, 1)


def _has_colour(img: Image.Image) -> bool:
    """Whether an image's pixels differ between its red, green and blue planes."""
    if img.mode in ("1", "L", "LA", "I", "I;16", "F"):
        return False
    rgb = np.asarray(img.convert("RGB"))
    return bool((rgb[..., 0] != rgb[..., 1]).any() or (rgb[..., 1] != rgb[..., 2]).any())


def read_image_folder(
    root: Path, channels: int = 3
) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], tuple[str, ...]]:
    """Read ``train/<class>/*`` and ``test/<class>/*`` from a folder or a .tar(.gz) archive.

    Classes are the sorted folder names of the train split (for CIFAR-10 this is
    the standard class order). Files are read in sorted order, so the result is
    deterministic.
    """
    entries = list(_archive_entries(root) if root.is_file() else _folder_entries(root))
    by_split: dict[str, list[tuple[str, str, bytes | Path]]] = {"train": [], "test": []}
    for split, cls, name, payload in entries:
        if split in by_split:
            by_split[split].append((cls, name, payload))
    if not by_split["train"] or not by_split["test"]:
        raise RobustlabError(f"{root}: expected train/<class>/<image> and test/<class>/<image>")
    classes = tuple(sorted({cls for cls, _, _ in by_split["train"]}))
    index = {c: i for i, c in enumerate(classes)}
    splits = {}
    for split, items in by_split.items():
        items.sort(key=lambda item: (item[0], item[1]))
        unknown = [cls for cls, _, _ in items if cls not in index]
        if unknown:
            raise RobustlabError(f"{root}: test class {unknown[0]!r} has no train folder")
        decoded = [_decode_entry(root, split, c, n, p, channels) for c, n, p in items]
        for (cls, name, _), pixels in zip(items, decoded, strict=True):
            if pixels.shape != decoded[0].shape:
                size, first = pixels.shape, decoded[0].shape
                raise RobustlabError(
                    f"{root}/{split}/{cls}/{name}: {size[2]}×{size[1]} pixels, others "
                    f"{first[2]}×{first[1]}; resize the images to one size"
                )
        images = np.stack(decoded)
        labels = np.array([index[c] for c, _, _ in items], dtype=np.int64)
        splits[split] = (images, labels)
    shapes = {splits[s][0].shape[1:] for s in splits}
    if len(shapes) != 1:
        raise RobustlabError(f"{root}: train and test images differ in size {shapes}; resize them")
    return splits, classes


def _decode_entry(
    root: Path, split: str, cls: str, name: str, payload: bytes | Path, channels: int
) -> np.ndarray:
    source = f"{root}:{split}/{cls}/{name}"
    blob = payload.read_bytes() if isinstance(payload, Path) else payload
    return decode_image(blob, source, channels)


def _folder_entries(root: Path) -> Iterable[tuple[str, str, str, bytes | Path]]:
    if not root.is_dir():
        raise RobustlabError(f"{root}: no such folder or archive; check --data-dir")
    for folder in sorted(root.glob("t*/*")):
        if (
            folder.parent.name in ("train", "test")
            and folder.is_dir()
            and not any(p.suffix.lower() in IMAGE_SUFFIXES for p in folder.iterdir())
        ):
            raise RobustlabError(
                f"{folder}: a class folder with no images; add its images or remove the folder"
            )
    for path in root.glob("*/*/*"):
        if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file():
            yield path.parts[-3], path.parts[-2], path.name, path


def _archive_entries(root: Path) -> Iterable[tuple[str, str, str, bytes | Path]]:
    try:
        with tarfile.open(root, "r:*") as tar:
            for member in tar:
                parts = Path(member.name).parts
                if (
                    member.isfile()
                    and len(parts) >= 3
                    and parts[-1].lower().endswith(IMAGE_SUFFIXES)
                ):
                    yield parts[-3], parts[-2], parts[-1], _extract(tar, member)
    except (tarfile.TarError, OSError, EOFError, zlib.error):
        raise RobustlabError(f"{root}: truncated or corrupt archive; fetch it again") from None


# The SFR paper's (and torchvision's) ImageNet evaluation preprocessing.
IMAGENET_RESIZE, IMAGENET_CROP = 256, 224


def resize_and_crop(pixels: np.ndarray, resize: int, crop: int) -> np.ndarray:
    """Resize (C, H, W) uint8 so the shorter side is ``resize`` (bilinear, antialiased by
    PIL), then take the centre ``crop`` × ``crop``."""
    image = Image.fromarray(pixels.transpose(1, 2, 0) if pixels.shape[0] == 3 else pixels[0])
    width, height = image.size
    scale = resize / min(width, height)
    size = (max(crop, round(width * scale)), max(crop, round(height * scale)))
    image = image.resize(size, Image.Resampling.BILINEAR)
    left, top = (size[0] - crop) // 2, (size[1] - crop) // 2
    out = np.asarray(image.crop((left, top, left + crop, top + crop)), dtype=np.uint8)
    return out.transpose(2, 0, 1) if out.ndim == 3 else out[None]


def read_imagenet_layout(
    root: Path,
) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], tuple[str, ...]]:
    """ImageNet as it is usually kept: ``val/`` holds the images flat and ``val.txt`` lines
    ``FILE LABEL`` (0-based, the sorted-synset order of torchvision and Caffe); an optional
    ``train/<class>/*`` gives training images (class folders in sorted order), and an
    optional ``classes.txt`` one class name per line. Every image is resized (shorter side
    256) and centre-cropped to 224 × 224, the SFR paper's preprocessing."""
    labels_file, val = root / "val.txt", root / "val"
    if not root.is_dir() or not val.is_dir() or not labels_file.is_file():
        raise RobustlabError(
            f"{root}: expected val/ (images, flat) and val.txt (lines: FILE LABEL); see docs/sfr.md"
        )
    pairs = []
    for number, line in enumerate(labels_file.read_text().splitlines(), 1):
        if line.strip():
            parts = line.split()
            if len(parts) != 2 or not parts[1].isdigit():
                raise RobustlabError(f"{labels_file}:{number}: expected 'FILE LABEL', got {line!r}")
            pairs.append((parts[0], int(parts[1])))
    missing = [name for name, _ in pairs if not (val / name).is_file()]
    if missing or not pairs:
        raise RobustlabError(
            f"{labels_file}: {len(missing)} listed images missing from {val} "
            f"(first: {missing[:1]}); or no lines at all"
        )
    test = _decoded([val / name for name, _ in pairs], [label for _, label in pairs])
    folders = sorted(p for p in (root / "train").glob("*") if p.is_dir())
    files = [
        (f, i)
        for i, d in enumerate(folders)
        for f in sorted(d.iterdir())
        if f.suffix.lower() in IMAGE_SUFFIXES
    ]
    empty = np.zeros((0, 3, IMAGENET_CROP, IMAGENET_CROP), np.uint8), np.zeros(0, np.int64)
    train = _decoded([f for f, _ in files], [i for _, i in files]) if files else empty
    count = max(int(test[1].max()) + 1, len(folders))
    names_file = root / "classes.txt"
    if names_file.is_file():
        classes = tuple(
            line.strip() for line in names_file.read_text().splitlines() if line.strip()
        )
        if len(classes) < count:
            raise RobustlabError(f"{names_file}: {len(classes)} names for labels up to {count - 1}")
    else:
        classes = (
            tuple(d.name for d in folders)
            if len(folders) >= count
            else tuple(map(str, range(count)))
        )
    return {"train": train, "test": test}, classes


def _decoded(paths: list[Path], labels: list[int]) -> tuple[np.ndarray, np.ndarray]:
    images = [
        resize_and_crop(decode_image(p.read_bytes(), str(p), 3), IMAGENET_RESIZE, IMAGENET_CROP)
        for p in paths
    ]
    return np.stack(images), np.asarray(labels, dtype=np.int64)
