"""Named datasets: where they live, how they are read, checked, cached and downloaded.

``load_dataset(name, split)`` returns a :class:`Dataset` of uint8 NCHW images.
Decoding happens once; the result is cached as a safetensors file keyed by the
source files' paths, sizes and modification times.
"""

from __future__ import annotations

import hashlib
import os
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from robustlab.data.readers import (
    open_maybe_gzip,
    read_cifar10,
    read_idx,
    read_image_folder,
    read_imagenet_layout,
)
from robustlab.io import (
    FolderLock,
    JSONObject,
    RobustlabError,
    atomic_write,
    load_tensors,
    save_tensors,
)
from robustlab.registry import Registry

Splits = dict[str, tuple[np.ndarray, np.ndarray]]

FASHION_CLASSES = (
    "t-shirt/top",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle boot",
)
MNIST_CLASSES = tuple(str(d) for d in range(10))
CIFAR10_CLASSES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)


@dataclass(frozen=True)
class Dataset:
    """One split of a dataset: uint8 images (N, C, H, W), int64 labels, class names, statistics.

    ``mean`` and ``std`` are per-channel statistics of the *train* split in
    [0, 1] pixel units, the values a model's normalisation layer uses.
    """

    name: str
    split: str
    images: np.ndarray
    labels: np.ndarray
    classes: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def channels(self) -> int:
        return int(self.images.shape[1])

    @property
    def image_size(self) -> int:
        return int(self.images.shape[2])

    def subset(self, indices: Sequence[int] | np.ndarray) -> Dataset:
        """The examples at ``indices``, in that order."""
        idx = np.asarray(indices, dtype=np.int64)
        return Dataset(
            self.name,
            self.split,
            self.images[idx],
            self.labels[idx],
            self.classes,
            self.mean,
            self.std,
        )

    def tensors(self, device: str | torch.device = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
        """All examples as float pixels in [0, 1] and int64 labels on ``device``."""
        x = torch.from_numpy(self.images).to(device).float().div_(255)
        return x, torch.from_numpy(self.labels).to(device)


@dataclass(frozen=True)
class RemoteFile:
    """A file of a dataset's download: its name, address and the MD5 its publisher gives."""

    name: str
    url: str
    md5: str


@dataclass(frozen=True)
class DatasetSource:
    """How to find and read one named dataset."""

    reader: Callable[[Path], tuple[Splits, tuple[str, ...]]]
    candidates: Callable[[Path | None], list[Path]]
    remote: tuple[RemoteFile, ...] = ()
    # SHA-256 of the decompressed content of local files, checked when known.
    content_sha256: dict[str, str] = field(default_factory=dict)
    # fixed normalisation statistics (mean, std), instead of the train split's
    stats: tuple[tuple[float, ...], tuple[float, ...]] | None = None


IMAGENET_STATS = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def cache_dir() -> Path:
    """Where robustlab caches decoded data and downloads: $ROBUSTLAB_CACHE or ~/.cache/robustlab."""
    if "ROBUSTLAB_CACHE" in os.environ:
        return Path(os.environ["ROBUSTLAB_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "robustlab"


def shared_data_dirs() -> list[Path]:
    """Folders named ``shared/data`` beside the working directory or this checkout."""
    here = Path(__file__).resolve()
    roots = [Path.cwd(), *here.parents[2:4]]
    return [root.parent / "shared" / "data" for root in roots]


def _idx_reader(
    classes: tuple[str, ...], sha: dict[str, str]
) -> Callable[[Path], tuple[Splits, tuple[str, ...]]]:
    def read(folder: Path) -> tuple[Splits, tuple[str, ...]]:
        splits = {}
        for split, prefix in (("train", "train"), ("test", "t10k")):
            images = read_idx(_find(folder, f"{prefix}-images-idx3-ubyte", sha))
            labels = read_idx(_find(folder, f"{prefix}-labels-idx1-ubyte", sha)).astype(np.int64)
            if images.ndim != 3 or len(images) != len(labels):
                raise RobustlabError(
                    f"{folder}: {prefix} images {images.shape} do not match labels {labels.shape}; "
                    "re-download them"
                )
            if labels.max(initial=0) >= len(classes):
                raise RobustlabError(f"{folder}: {prefix} labels exceed {len(classes)} classes")
            splits[split] = (images[:, None], labels)
        return splits, classes

    return read


def _find(folder: Path, stem: str, sha: dict[str, str]) -> Path:
    for name in (stem + ".gz", stem):
        path = folder / name
        if path.is_file():
            if stem in sha:
                _check_content(path, sha[stem])
            return path
    raise RobustlabError(
        f"{folder / (stem + '.gz')}: file not found; check --data-dir or --download"
    )


def _check_content(path: Path, expected: str) -> None:
    digest = hashlib.sha256(open_maybe_gzip(path)).hexdigest()
    if digest != expected:
        raise RobustlabError(f"{path}: checksum mismatch (corrupt or wrong file); re-download it")


def _digits_reader(_: Path) -> tuple[Splits, tuple[str, ...]]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    # 8x8 values in 0..16 -> uint8 0..255; every fifth image is a test image.
    images = np.round(bunch.images * (255 / 16)).astype(np.uint8)[:, None]
    labels = bunch.target.astype(np.int64)
    test = np.arange(len(labels)) % 5 == 0
    return {"train": (images[~test], labels[~test]), "test": (images[test], labels[test])}, (
        MNIST_CLASSES
    )


def _folders(*defaults: Path) -> Callable[[Path | None], list[Path]]:
    def candidates(data_dir: Path | None) -> list[Path]:
        return [data_dir] if data_dir is not None else list(defaults)

    return candidates


def _cifar_jpeg_candidates(data_dir: Path | None) -> list[Path]:
    if data_dir is not None:
        return [data_dir / "cifar10-jpeg.tar.gz", data_dir]
    archives = [d / "cifar10-jpeg.tar.gz" for d in shared_data_dirs()]
    return [*archives, cache_dir() / "downloads" / "cifar10-jpeg"]


def _cifar_candidates(data_dir: Path | None) -> list[Path]:
    folders = [data_dir] if data_dir is not None else [cache_dir() / "downloads" / "cifar10"]
    return [p for d in folders for p in (d / "cifar-10-python.tar.gz", d)]


def _image_folder(path: Path) -> tuple[Splits, tuple[str, ...]]:
    return read_image_folder(path, channels=3)


_FMNIST_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
_MNIST_URL = "https://ossci-datasets.s3.amazonaws.com/mnist/"
_FMNIST_SHA = {
    "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
}

# Every dataset robustlab reads, by name (``robustlab list``).
DATASETS: Registry[DatasetSource] = Registry("dataset")

DATASETS.add(
    "fashion-mnist",
    DatasetSource(
        reader=_idx_reader(FASHION_CLASSES, _FMNIST_SHA),
        candidates=_folders(
            Path("/usr/share/datasets/fashion-mnist"), cache_dir() / "downloads" / "fashion-mnist"
        ),
        remote=(
            RemoteFile(
                "train-images-idx3-ubyte.gz", _FMNIST_URL, "8d4fb7e6c68d591d4c3dfef9ec88bf0d"
            ),
            RemoteFile(
                "train-labels-idx1-ubyte.gz", _FMNIST_URL, "25c81989df183df01b3e8a0aad5dffbe"
            ),
            RemoteFile(
                "t10k-images-idx3-ubyte.gz", _FMNIST_URL, "bef4ecab320f06d8554ea6380940ec79"
            ),
            RemoteFile(
                "t10k-labels-idx1-ubyte.gz", _FMNIST_URL, "bb300cfdad3c16e7a12a480ee83cd310"
            ),
        ),
        content_sha256=_FMNIST_SHA,
    ),
)
DATASETS.add(
    "mnist",
    DatasetSource(
        reader=_idx_reader(MNIST_CLASSES, {}),
        candidates=_folders(Path("/usr/share/datasets/mnist"), cache_dir() / "downloads" / "mnist"),
        remote=(
            RemoteFile(
                "train-images-idx3-ubyte.gz", _MNIST_URL, "f68b3c2dcbeaaa9fbdd348bbdeb94873"
            ),
            RemoteFile(
                "train-labels-idx1-ubyte.gz", _MNIST_URL, "d53e105ee54ea40749a09fcbcd1e9432"
            ),
            RemoteFile("t10k-images-idx3-ubyte.gz", _MNIST_URL, "9fb629c4189551a2d022fa330f9573f3"),
            RemoteFile("t10k-labels-idx1-ubyte.gz", _MNIST_URL, "ec29112dd5afa0611ce80d1b7f02629c"),
        ),
    ),
)
DATASETS.add(
    "cifar10",
    DatasetSource(
        reader=lambda p: (read_cifar10(p), CIFAR10_CLASSES),
        candidates=_cifar_candidates,
        remote=(
            RemoteFile(
                "cifar-10-python.tar.gz",
                "https://www.cs.toronto.edu/~kriz/",
                "c58f30108f718f92721af3b95e74349a",
            ),
        ),
    ),
)
DATASETS.add("cifar10-jpeg", DatasetSource(reader=_image_folder, candidates=_cifar_jpeg_candidates))
DATASETS.add("imagefolder", DatasetSource(reader=_image_folder, candidates=_folders()))
DATASETS.add(
    "imagenet",
    DatasetSource(reader=read_imagenet_layout, candidates=_folders(), stats=IMAGENET_STATS),
)
DATASETS.add(
    "digits", DatasetSource(reader=_digits_reader, candidates=lambda _: [Path("<scikit-learn>")])
)


def available(pattern: str = "*") -> list[str]:
    """Names accepted by :func:`load_dataset` that match the shell ``pattern``."""
    return DATASETS.names(pattern)


def load_dataset(
    name: str, split: str = "train", data_dir: str | Path | None = None, download: bool = False
) -> Dataset:
    """Load one split (``train`` or ``test``) of a named dataset, decoding it once into the cache.

    Parameters
    ----------
    name : one of :func:`available`.
    split : ``"train"`` or ``"test"``.
    data_dir : where the files are; default places are searched when omitted.
    download : fetch the files (checking their MD5) when they are not found.
    """
    if name not in DATASETS:
        raise RobustlabError(f"unknown dataset {name!r}; choose one of {', '.join(available())}")
    if split not in ("train", "test"):
        raise RobustlabError(f"unknown split {split!r}; use 'train' or 'test'")
    source = DATASETS.get(name)
    if name == "imagefolder" and data_dir is None:
        raise RobustlabError("dataset 'imagefolder' needs --data-dir pointing at train/ and test/")
    if name == "imagenet" and data_dir is None:
        raise RobustlabError("dataset 'imagenet' needs --data-dir pointing at val/ and val.txt")
    root = _locate(name, source, Path(data_dir) if data_dir else None, download)
    tensors, info = _cached(name, source, root)
    return Dataset(
        name=name,
        split=split,
        images=tensors[f"{split}_images"].numpy(),
        labels=tensors[f"{split}_labels"].numpy(),
        classes=tuple(info["classes"]),
        mean=tuple(info["mean"]),
        std=tuple(info["std"]),
    )


def _locate(name: str, source: DatasetSource, data_dir: Path | None, download: bool) -> Path:
    candidates = source.candidates(data_dir)
    for path in candidates:
        if name == "digits" or _looks_present(path):
            return path
    if download and source.remote:
        target = data_dir or cache_dir() / "downloads" / name
        for remote in source.remote:
            fetch(remote, target / remote.name)
        return target / source.remote[0].name if name == "cifar10" else target
    hint = "use --download" if source.remote else "point --data-dir at it"
    tried = ", ".join(str(p) for p in candidates)
    raise RobustlabError(f"dataset {name!r} not found (looked in {tried}); {hint}")


def _looks_present(path: Path) -> bool:
    return path.is_file() or (path.is_dir() and any(path.iterdir()))


def fetch(remote: RemoteFile, path: Path) -> None:
    """Download one file to ``path`` (atomically) and check its MD5; skip it if already good."""
    if path.is_file() and _md5(path) == remote.md5:
        return
    url = remote.url + remote.name
    try:
        with urllib.request.urlopen(url, timeout=60) as response, atomic_write(path) as out:
            while chunk := response.read(1 << 20):
                out.write(chunk)
    except OSError as err:
        raise RobustlabError(
            f"cannot download {url} ({err}); check the network or copy the file to {path}"
        ) from None
    if _md5(path) != remote.md5:
        path.unlink()
        raise RobustlabError(f"{url}: checksum mismatch after download; try again later")


def _md5(path: Path) -> str:
    digest = hashlib.md5()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _cache_key(name: str, root: Path) -> str:
    """Hash of the source files' paths, sizes and times (and of the folders: an added, even
    empty, class folder is a change too): a changed file means a new cache."""
    files = sorted(root.rglob("*")) if root.is_dir() else [root]
    stats = [
        (str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns) for p in files if p.exists()
    ]
    return hashlib.sha256(repr((name, stats)).encode()).hexdigest()[:16]


def _cached(
    name: str, source: DatasetSource, root: Path
) -> tuple[dict[str, torch.Tensor], JSONObject]:
    path = cache_dir() / f"{name}-{_cache_key(name, root)}.safetensors"
    # one builder per cache entry: a second process waits for it, then reads its file
    with FolderLock(path.parent, "dataset cache", wait=True, name=f".{path.name}.lock"):
        if path.is_file():
            try:
                return load_tensors(path)
            except RobustlabError:
                path.unlink()  # a corrupt cache is rebuilt rather than reported
        return _build_cache(path, source, root)


def _build_cache(
    path: Path, source: DatasetSource, root: Path
) -> tuple[dict[str, torch.Tensor], JSONObject]:
    splits, classes = source.reader(root)
    if source.stats is not None:
        mean, std = (list(v) for v in source.stats)
    else:
        train = splits["train"][0].astype(np.float64) / 255
        mean = train.mean(axis=(0, 2, 3)).round(6).tolist()
        std = train.std(axis=(0, 2, 3)).round(6).tolist()
    info = {"classes": list(classes), "mean": mean, "std": std, "source": str(root)}
    tensors = {
        f"{split}_{kind}": torch.from_numpy(np.ascontiguousarray(arr))
        for split, (images, labels) in splits.items()
        for kind, arr in (("images", images), ("labels", labels))
    }
    save_tensors(path, tensors, info)
    return tensors, info


def sample_indices(size: int, limit: int | None, seed: int = 0) -> np.ndarray:
    """Indices of a seeded random subset of ``limit`` of ``size`` examples, in ascending order."""
    if limit is None or limit >= size:
        return np.arange(size)
    if limit < 1:
        raise ValueError(f"limit {limit} must be at least 1")
    return np.sort(np.random.default_rng(seed).choice(size, size=limit, replace=False))


def sample(data: Dataset, limit: int | None, seed: int = 0) -> Dataset:
    """A seeded random subset of ``limit`` examples (kept in dataset order), or all of them."""
    if limit is None or limit >= len(data):
        return data
    return data.subset(sample_indices(len(data), limit, seed))
