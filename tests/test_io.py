from pathlib import Path

import pytest
import torch

from robustlab.io import (
    RobustlabError,
    atomic_write,
    load_tensors,
    read_json,
    save_tensors,
    write_json,
)


def test_atomic_write_keeps_old_file_when_writer_fails(tmp_path: Path) -> None:
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_write(target, "w") as handle:
        handle.write("half of the new")
        raise RuntimeError("killed")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]  # no temp file left


def test_tensors_and_metadata_round_trip(tmp_path: Path) -> None:
    tensors = {"a": torch.arange(6).view(2, 3), "b": torch.rand(4)}
    save_tensors(tmp_path / "t.safetensors", tensors, {"epoch": 3, "names": ["x"]})
    loaded, meta = load_tensors(tmp_path / "t.safetensors")
    assert torch.equal(loaded["a"], tensors["a"]) and torch.equal(loaded["b"], tensors["b"])
    assert meta == {"epoch": 3, "names": ["x"]}


def test_corrupt_safetensors_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "bad.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(RobustlabError, match="not a readable safetensors file"):
        load_tensors(tmp_path / "bad.safetensors")


def test_json_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(RobustlabError, match="file not found"):
        read_json(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(RobustlabError, match=r"bad\.json: not valid JSON"):
        read_json(tmp_path / "bad.json")
    write_json(tmp_path / "ok.json", {"b": 1})
    assert read_json(tmp_path / "ok.json") == {"b": 1}


def test_atomic_write_gives_normal_permissions(tmp_path: Path) -> None:
    import os

    with atomic_write(tmp_path / "f.txt", "w") as handle:
        handle.write("x")
    mask = os.umask(0)
    os.umask(mask)
    assert (tmp_path / "f.txt").stat().st_mode & 0o777 == 0o666 & ~mask
