"""Files on disk: atomic writes, tensors as safetensors, metadata as JSON.

Every file robustlab writes goes through :func:`atomic_write`, so a kill at any
moment leaves either the old file or the new one, never half of one. Nothing
here unpickles: checkpoints and adversarial sets are safetensors plus JSON.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load as _st_load
from safetensors.torch import save as _st_save

from robustlab import distributed


class RobustlabError(Exception):
    """A user-facing error: its message is one line naming the problem and the fix."""


@contextlib.contextmanager
def atomic_write(path: str | Path, mode: str = "wb") -> Iterator[IO[Any]]:
    """Open a temporary file next to ``path``; rename it over ``path`` on success.

    The temporary file is fsynced before the rename, so after a crash the path
    holds either its previous content or the complete new one. Under
    torch.distributed only rank 0 writes; the other ranks write into memory and
    wait until rank 0's file is in place.
    """
    if not distributed.is_main():
        with io.BytesIO() if "b" in mode else io.StringIO() as sink:
            yield sink
        distributed.barrier()
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give what open() would give
    try:
        with os.fdopen(fd, mode) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    distributed.barrier()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_json(path: str | Path, data: Any) -> None:
    """Write ``data`` as indented JSON, atomically."""
    with atomic_write(path, "w") as handle:
        json.dump(data, handle, indent=2, sort_keys=True)
        handle.write("\n")


def read_json(path: str | Path) -> Any:
    """Read a JSON file, with a one-line error if it is missing or malformed."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise RobustlabError(f"{path}: file not found; check the path") from None
    except json.JSONDecodeError as err:
        raise RobustlabError(f"{path}: not valid JSON ({err.msg}); re-create the file") from None


def load_npy(path: str | Path) -> np.ndarray:
    """A ``.npy`` array, read with ``allow_pickle=False``; missing or unreadable files are one
    clear line."""
    try:
        array = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise RobustlabError(f"{path}: file not found; check the path") from None
    except ValueError as err:
        raise RobustlabError(f"{path}: not a readable .npy array ({err})") from None
    if not isinstance(array, np.ndarray):
        raise RobustlabError(f"{path}: expected one array (.npy), not an archive")
    return array


def save_tensors(
    path: str | Path, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, Any] | None = None
) -> None:
    """Save tensors as safetensors, atomically; ``metadata`` is stored as JSON in the header."""
    flat = {name: t.detach().contiguous().cpu() for name, t in tensors.items()}
    header = {"json": json.dumps(metadata, sort_keys=True)} if metadata is not None else None
    blob = _st_save(flat, metadata=header)
    with atomic_write(path, "wb") as handle:
        handle.write(blob)


def load_tensors(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Load a safetensors file written by :func:`save_tensors`: (tensors, metadata)."""
    path = Path(path)
    try:
        blob = path.read_bytes()
    except FileNotFoundError:
        raise RobustlabError(f"{path}: file not found; check the path") from None
    try:
        tensors = _st_load(blob)
        header = _read_header(blob)
    except (SafetensorError, ValueError, json.JSONDecodeError) as err:
        raise RobustlabError(
            f"{path}: not a readable safetensors file ({err}); re-create it"
        ) from None
    return tensors, header


def _read_header(blob: bytes) -> dict[str, Any]:
    size = int.from_bytes(blob[:8], "little")
    header = json.loads(blob[8 : 8 + size])
    meta = header.get("__metadata__") or {}
    return json.loads(meta["json"]) if "json" in meta else {}


def check_writable(directory: str | Path) -> None:
    """Fail now, with one line, when files cannot be written into ``directory`` (read-only,
    a path through a file, no space): not after the work whose result would be lost.

    Nothing is left behind: the probe goes into the nearest folder that exists.
    """
    directory = Path(directory).absolute()
    existing = directory
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    try:
        if not existing.is_dir():
            raise NotADirectoryError(20, "a file is in the way", str(existing))
        with tempfile.NamedTemporaryFile(dir=existing, prefix=".robustlab-probe-") as probe:
            probe.write(b"\0" * 4096)
            probe.flush()
            os.fsync(probe.fileno())
    except OSError as err:
        raise RobustlabError(
            f"{directory}: cannot write here ({err.strerror or err}: {existing}); choose "
            "another output location or free some space"
        ) from None


def prepare_output(path: str | Path, force: bool) -> Path:
    """Check that ``path`` may be written: refuse to replace an existing one without ``force``."""
    path = Path(path)
    if path.exists() and not force:
        raise RobustlabError(f"{path} already exists; pass --force to overwrite it")
    check_writable(path.parent)
    return path
