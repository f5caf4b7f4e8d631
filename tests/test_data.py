import gzip
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from robustlab.data import Augment, augment, batches, load_dataset
from robustlab.data.readers import read_cifar_batch, read_idx
from robustlab.io import RobustlabError
from tests.files import idx_bytes, tar_folder, write_idx_dataset

FASHION = Path("/usr/share/datasets/fashion-mnist")


def test_idx_reader_gz_and_raw(tmp_path: Path) -> None:
    arr = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    (tmp_path / "a").write_bytes(idx_bytes(arr))
    (tmp_path / "a.gz").write_bytes(gzip.compress(idx_bytes(arr)))
    assert np.array_equal(read_idx(tmp_path / "a"), arr)
    assert np.array_equal(read_idx(tmp_path / "a.gz"), arr)


def test_idx_truncated_and_corrupt_files_name_the_file(tmp_path: Path) -> None:
    blob = idx_bytes(np.zeros((5, 4, 4), np.uint8))
    (tmp_path / "short").write_bytes(blob[:-3])
    with pytest.raises(RobustlabError, match=r"short: truncated IDX file .*re-download"):
        read_idx(tmp_path / "short")
    (tmp_path / "broken.gz").write_bytes(gzip.compress(blob)[:30])
    with pytest.raises(RobustlabError, match=r"broken.gz: truncated or corrupt gzip"):
        read_idx(tmp_path / "broken.gz")
    (tmp_path / "notidx").write_bytes(b"hello world")
    with pytest.raises(RobustlabError, match="not an IDX file"):
        read_idx(tmp_path / "notidx")


def test_a_gzip_that_inflates_past_the_limit_is_refused_before_it_fills_memory(
    tmp_path: Path,
) -> None:
    # 64 MiB of zeros compress to 64 KiB: a small bomb against a 16 MiB limit
    (tmp_path / "bomb.gz").write_bytes(gzip.compress(bytes(64 << 20), compresslevel=1))
    with pytest.raises(RobustlabError, match=r"bomb.gz: inflates to more than 16 MiB"):
        read_idx(tmp_path / "bomb.gz", limit=16 << 20)


def test_mnist_loader_on_fixture(idx_dir) -> None:
    folder, arrays = idx_dir
    train = load_dataset("mnist", "train", data_dir=folder)
    test = load_dataset("mnist", "test", data_dir=folder)
    assert train.images.shape == (40, 1, 28, 28) and train.images.dtype == np.uint8
    assert np.array_equal(train.images[:, 0], arrays["train-images-idx3-ubyte"])
    assert np.array_equal(test.labels, arrays["t10k-labels-idx1-ubyte"].astype(np.int64))
    expected_mean = arrays["train-images-idx3-ubyte"].mean() / 255
    assert train.mean[0] == pytest.approx(expected_mean, abs=1e-5)
    assert test.mean == train.mean  # statistics always come from the train split


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    write_idx_dataset(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(RobustlabError, match=r"t10k-labels-idx1-ubyte.gz: file not found"):
        load_dataset("mnist", "test", data_dir=tmp_path)


def test_checksum_mismatch_is_reported(tmp_path: Path) -> None:
    write_idx_dataset(tmp_path)  # random data cannot match Fashion-MNIST's published content
    with pytest.raises(RobustlabError, match="checksum mismatch"):
        load_dataset("fashion-mnist", "train", data_dir=tmp_path)


def test_unknown_dataset_and_split() -> None:
    with pytest.raises(RobustlabError, match="unknown dataset 'nope'"):
        load_dataset("nope")
    with pytest.raises(RobustlabError, match="unknown split"):
        load_dataset("digits", "val")


def test_cifar_pickle_loader(cifar_dir) -> None:
    root, expected = cifar_dir
    train = load_dataset("cifar10", "train", data_dir=root)
    test = load_dataset("cifar10", "test", data_dir=root)
    assert train.images.shape == (20, 3, 32, 32) and len(test) == 4
    data, labels = expected["test_batch"]
    assert np.array_equal(test.images.reshape(4, -1), data)
    assert test.labels.tolist() == labels
    assert train.classes[0] == "airplane" and len(train.classes) == 10


def test_cifar_archive_loader(cifar_dir, tmp_path: Path) -> None:
    root, _ = cifar_dir
    archive = tar_folder(root, tmp_path / "cifar-10-python.tar.gz")
    from_archive = load_dataset("cifar10", "test", data_dir=archive.parent)
    from_folder = load_dataset("cifar10", "test", data_dir=root)
    assert np.array_equal(from_archive.images, from_folder.images)


def test_cifar_unpickler_refuses_code() -> None:
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    with pytest.raises(RobustlabError, match="not a valid CIFAR-10 batch"):
        read_cifar_batch(pickle.dumps({b"data": Evil()}), "evil")


def test_corrupt_cifar_batch(cifar_dir) -> None:
    root, _ = cifar_dir
    (root / "cifar-10-batches-py" / "data_batch_3").write_bytes(b"\x80\x02garbage")
    with pytest.raises(RobustlabError, match="data_batch_3: not a valid CIFAR-10 batch"):
        load_dataset("cifar10", "train", data_dir=root)


def test_image_folder_from_folder_and_archive(image_folder: Path, tmp_path: Path) -> None:
    train = load_dataset("imagefolder", "train", data_dir=image_folder)
    assert train.classes == ("cat", "dog")
    assert train.images.shape == (6, 3, 8, 8)
    assert train.labels.tolist() == [0, 0, 0, 1, 1, 1]
    archive = tar_folder(image_folder, tmp_path / "copy.tar.gz")
    packed = load_dataset("imagefolder", "train", data_dir=archive)
    assert np.array_equal(packed.images, train.images)


def test_corrupt_image_names_the_file(image_folder: Path) -> None:
    (image_folder / "test" / "dog" / "0001.png").write_bytes(b"not a png")
    with pytest.raises(RobustlabError, match=r"test/dog/0001.png: cannot decode image"):
        load_dataset("imagefolder", "test", data_dir=image_folder)


def test_digits_split_is_fixed() -> None:
    train, test = load_dataset("digits", "train"), load_dataset("digits", "test")
    assert len(train) + len(test) == 1797 and len(test) == 360
    assert train.images.max() == 255 and train.images.shape[1:] == (1, 8, 8)


@pytest.mark.skipif(not FASHION.is_dir(), reason="Debian's dataset-fashion-mnist is not installed")
def test_real_fashion_mnist() -> None:
    test = load_dataset("fashion-mnist", "test")
    assert test.images.shape == (10000, 1, 28, 28)
    assert np.bincount(test.labels).tolist() == [1000] * 10
    assert test.mean[0] == pytest.approx(0.2860, abs=1e-3)  # published statistics
    assert test.std[0] == pytest.approx(0.3530, abs=1e-3)


def test_batches_are_seeded_and_cover_the_data() -> None:
    data = load_dataset("digits", "test")
    first = [y for _, y in batches(data, 64, shuffle=True, seed=3)]
    again = [y for _, y in batches(data, 64, shuffle=True, seed=3)]
    other = [y for _, y in batches(data, 64, shuffle=True, seed=4)]
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert not torch.equal(first[0], other[0])
    assert sorted(torch.cat(first).tolist()) == sorted(data.labels.tolist())
    x, _ = next(batches(data, 8))
    assert x.dtype == torch.float32 and x.min() >= 0 and x.max() <= 1


def test_augment_is_a_shifted_crop_or_flip() -> None:
    x = torch.rand(16, 3, 10, 10)
    out = augment(x, Augment(pad=2, flip=False), torch.Generator().manual_seed(0))
    padded = torch.nn.functional.pad(x, (2,) * 4)
    for i in range(16):
        windows = [padded[i, :, r : r + 10, c : c + 10] for r in range(5) for c in range(5)]
        assert any(torch.equal(out[i], w) for w in windows)
    flipped = augment(x, Augment(pad=0, flip=True), torch.Generator().manual_seed(0))
    same = [torch.equal(flipped[i], x[i]) for i in range(16)]
    mirrored = [torch.equal(flipped[i], x[i].flip(2)) for i in range(16)]
    assert all(s or m for s, m in zip(same, mirrored, strict=True)) and any(mirrored) and any(same)


def test_download_checks_md5_and_writes_atomically(tmp_path: Path) -> None:
    import hashlib

    from robustlab.data.datasets import RemoteFile, fetch

    served = tmp_path / "server"
    served.mkdir()
    (served / "file.bin").write_bytes(b"payload" * 100)
    md5 = hashlib.md5(b"payload" * 100).hexdigest()
    target = tmp_path / "downloads" / "file.bin"
    fetch(RemoteFile("file.bin", served.as_uri() + "/", md5), target)
    assert target.read_bytes() == b"payload" * 100
    target.unlink()
    with pytest.raises(RobustlabError, match="checksum mismatch after download"):
        fetch(RemoteFile("file.bin", served.as_uri() + "/", "0" * 32), target)
    assert not target.exists()  # a bad download is not left behind
    with pytest.raises(RobustlabError, match="cannot download"):
        fetch(RemoteFile("missing.bin", served.as_uri() + "/", md5), tmp_path / "m.bin")


def _imagenet_layout(root: Path) -> None:
    """val/ flat + val.txt, train/<wnid>/: the usual ImageNet layout, in miniature."""
    from PIL import Image

    (root / "val").mkdir(parents=True)
    halves = np.zeros((256, 512, 3), np.uint8)
    halves[:, 256:] = 255  # left half black, right half white
    Image.fromarray(halves).save(root / "val" / "a.png")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (300, 260, 3), dtype=np.uint8)).save(
        root / "val" / "b.jpg"
    )
    (root / "val.txt").write_text("a.png 1\nb.jpg 0\n")
    for wnid in ("n01", "n02"):
        (root / "train" / wnid).mkdir(parents=True)
        Image.fromarray(rng.integers(0, 256, (240, 320, 3), dtype=np.uint8)).save(
            root / "train" / wnid / "x.png"
        )


def test_imagenet_layout_is_resized_cropped_and_normalised_like_the_sfr_paper(
    tmp_path: Path,
) -> None:
    _imagenet_layout(tmp_path / "imagenet")
    test = load_dataset("imagenet", "test", tmp_path / "imagenet")
    train = load_dataset("imagenet", "train", tmp_path / "imagenet")
    assert test.images.shape == (2, 3, 224, 224) and train.images.shape == (2, 3, 224, 224)
    assert list(test.labels) == [1, 0] and list(train.labels) == [0, 1]
    assert test.classes == ("n01", "n02")
    assert test.mean == (0.485, 0.456, 0.406) and test.std == (0.229, 0.224, 0.225)
    # 512 × 256 keeps its size (shorter side 256); the centre 224 columns are half and half
    row = test.images[0, 0, 112]
    assert (row[:110] == 0).all() and (row[114:] == 255).all()


def test_imagenet_layout_errors_name_the_file(tmp_path: Path) -> None:
    _imagenet_layout(tmp_path / "i")
    (tmp_path / "i" / "val.txt").write_text("a.png 1\nmissing.png 3\n")
    with pytest.raises(RobustlabError, match=r"1 listed images missing .*missing\.png"):
        load_dataset("imagenet", "test", tmp_path / "i")
    (tmp_path / "i" / "val.txt").write_text("a.png one\n")
    with pytest.raises(RobustlabError, match=r"val\.txt:1: expected 'FILE LABEL'"):
        load_dataset("imagenet", "test", tmp_path / "i")
    with pytest.raises(RobustlabError, match="needs --data-dir"):
        load_dataset("imagenet", "test")
