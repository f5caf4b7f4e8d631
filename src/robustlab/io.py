"""Files on disk: atomic writes, tensors as safetensors, metadata as JSON.

Every file robustlab writes goes through :func:`atomic_write`, so a kill at any
moment leaves either the old file or the new one, never half of one. Nothing
here unpickles: checkpoints and adversarial sets are safetensors plus JSON.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import inspect
import io
import json
import os
import re
import socket
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import IO, Any, TypeVar

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load as _st_load
from safetensors.torch import save as _st_save

from robustlab import distributed

# A JSON object as it crosses the file boundary: a record, meta.json, results.json, a spec's
# TOML table, a file's metadata header. Only readers, writers and ``to_dict``/``from_dict``
# take or give one; inside the library values are typed (configs, records' dataclasses).
JSONObject = dict[str, Any]


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


def config_hash(data: Any) -> str:
    """A short stable hash of JSON-able data: the cache key of runs, sets and records."""
    text = json.dumps(data, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


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
        with open(path, "rb") as handle:
            magic = handle.read(6)
    except FileNotFoundError:
        raise RobustlabError(f"{path}: file not found; check the path") from None
    if magic != b"\x93NUMPY":  # numpy would try to unpickle it and speak of pickles
        raise RobustlabError(f"{path}: not a .npy file (no NumPy header); save it with numpy.save")
    try:
        array = np.load(path, allow_pickle=False)
    except ValueError as err:
        if "pickle" in str(err):  # numpy's message suggests allow_pickle: never do that
            raise RobustlabError(
                f"{path}: holds pickled objects, not a plain numeric array; robustlab never "
                "unpickles: save the array with numpy.save of a numeric array"
            ) from None
        raise RobustlabError(f"{path}: not a readable .npy array ({err})") from None
    if not isinstance(array, np.ndarray):
        raise RobustlabError(f"{path}: expected one array (.npy), not an archive")
    return array


HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"  # the first 8 bytes of every HDF5 file


def is_hdf5(path: str | Path) -> bool:
    """Whether ``path`` is an HDF5 file (by its signature; False when it cannot be read)."""
    try:
        with open(path, "rb") as handle:
            return handle.read(len(HDF5_SIGNATURE)) == HDF5_SIGNATURE
    except OSError:
        return False


def arrays_digest(arrays: Mapping[str, np.ndarray]) -> str:
    """SHA-256 of named arrays (names, dtypes, shapes and bytes): the checksum robustlab
    writes beside the arrays of every file it saves and checks whenever it reads one, so an
    edit between runs is caught instead of read as data."""
    digest = hashlib.sha256()
    for name in sorted(arrays):
        array = np.ascontiguousarray(arrays[name])
        digest.update(f"{name}:{array.dtype.str}:{array.shape};".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def tensors_digest(tensors: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 of named tensors, as :func:`arrays_digest` is of arrays (names, torch dtypes,
    shapes and the bytes as stored, read through a uint8 view, which every dtype allows:
    bfloat16 has no numpy dtype, so the tensors are not converted to arrays first)."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name].detach().contiguous().cpu()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)};".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def save_tensors(
    path: str | Path, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, Any] | None = None
) -> None:
    """Save tensors as safetensors, atomically; ``metadata`` is stored as JSON in the header,
    with the tensors' checksum (:func:`tensors_digest`), which :func:`load_tensors` checks."""
    flat = {name: t.detach().contiguous().cpu() for name, t in tensors.items()}
    header = {"sha256": tensors_digest(flat)}
    if metadata is not None:
        header["json"] = json.dumps(metadata, sort_keys=True)
    blob = _st_save(flat, metadata=header)
    with atomic_write(path, "wb") as handle:
        handle.write(blob)


def load_tensors(path: str | Path) -> tuple[dict[str, torch.Tensor], JSONObject]:
    """Load a safetensors file written by :func:`save_tensors`: (tensors, metadata)."""
    path = Path(path)
    try:
        blob = path.read_bytes()
    except FileNotFoundError:
        raise RobustlabError(f"{path}: file not found; check the path") from None
    try:
        tensors = _st_load(blob)
        header, digest = _read_header(blob)
    except (SafetensorError, ValueError, json.JSONDecodeError) as err:
        raise RobustlabError(
            f"{path}: not a readable safetensors file ({err}); re-create it"
        ) from None
    if digest is not None and digest != tensors_digest(tensors):  # older files carry none
        raise RobustlabError(
            f"{path}: its tensors do not match the checksum robustlab wrote with them (edited "
            "or damaged since); re-create the file"
        )
    return tensors, header


def _read_header(blob: bytes) -> tuple[JSONObject, str | None]:
    """The metadata robustlab wrote in a safetensors header, and the tensors' checksum."""
    size = int.from_bytes(blob[:8], "little")
    header = json.loads(blob[8 : 8 + size])
    meta = header.get("__metadata__") or {}
    found = json.loads(meta["json"]) if "json" in meta else {}
    return found, meta.get("sha256")


def check_array(
    value: np.ndarray | torch.Tensor,
    what: str,
    *,
    kinds: str,
    ndim: int | None = None,
    length: int | None = None,
    low: float | None = None,
    high: float | None = None,
    fix: str = "re-create it",
) -> None:
    """Refuse an array read from a file unless it is what its reader needs, one line naming
    ``what`` (the file and the field) and the ``fix``: dtype kind (numpy's ``kinds``: "u"
    unsigned, "i" signed, "f" float, "b" bool), dimensions, length, a finite range."""
    array = value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
    problem = ""
    if array.dtype.kind not in kinds:
        problem = f"dtype {array.dtype}"
    elif ndim is not None and array.ndim != ndim:
        problem = f"{array.ndim} dimensions (shape {array.shape}), not {ndim}"
    elif length is not None and len(array) != length:
        problem = f"{len(array)} entries, not {length}"
    elif array.dtype.kind == "f" and array.size and not np.isfinite(array).all():
        problem = "NaN or infinite values"
    elif array.size and low is not None and float(array.min()) < low:
        problem = f"values down to {float(array.min()):g}, below {low:g}"
    elif array.size and high is not None and float(array.max()) > high:
        problem = f"values up to {float(array.max()):g}, above {high:g}"
    if problem:
        raise RobustlabError(f"{what} has {problem}; {fix}")


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


def prepare_output(path: str | Path, force: bool, *, inputs: Iterable[str | Path] = ()) -> Path:
    """Check that ``path`` may be written: refuse to replace an existing one without ``force``,
    and refuse always when it is, or lies inside, one of the command's ``inputs``."""
    path = Path(path)
    for source in inputs:
        if is_within(path, source):
            raise RobustlabError(
                f"{path} would overwrite the input {source}; choose another output path"
            )
    if path.exists() and not force:
        raise RobustlabError(f"{path} already exists; pass --force to overwrite it")
    check_writable(path.parent)
    return path


def absolute(path: str | Path | None) -> str | None:
    """``path`` made absolute (recorded in files other commands read from elsewhere)."""
    return str(Path(path).resolve()) if path is not None else None


def is_within(path: str | Path, root: str | Path) -> bool:
    """True when ``path`` is ``root`` or inside it (links resolved)."""
    path, root = Path(path).resolve(), Path(root).resolve()
    return path == root or root in path.parents


# Names from specs (models, attacks, protocols, experiments) become file and folder names and
# table cells: identifiers only, so none is a path (no "/", no ".." or leading "."), a
# formula (leading "=", "+", "-", "@"), a markdown cell break ("|") or a control character.
NAME_PATTERN = r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}"
_NAME = re.compile(NAME_PATTERN)


def check_name(name: object, where: str) -> str:
    """``name`` if it is an identifier (:data:`NAME_PATTERN`), else a one-line error."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ValueError(
            f"{where}: name {name!r} is not an identifier; use letters, digits, '_', '.' and "
            f"'-' (not first), at most 64 characters ({NAME_PATTERN})"
        )
    return name


def check_title(title: object, where: str) -> str:
    """``title`` (a protocol's heading: free text, never a path) if it is one line of printable
    text of at most 200 characters, else a one-line error."""
    if not isinstance(title, str) or not title.isprintable() or not 0 < len(title) <= 200:
        raise ValueError(
            f"{where}: name {title!r} must be one line of printable text, at most 200 characters"
        )
    return title


def under(root: str | Path, *parts: str) -> Path:
    """``root / part / ...``, refused when a part is absolute, holds a separator or ``..``,
    or the result (links resolved) leaves ``root``: every path built from a name goes here."""
    root = Path(root)
    for part in parts:
        if not part or part in (".", "..") or "/" in part or "\\" in part or "\0" in part:
            raise RobustlabError(
                f"{part!r}: not a plain file name; names in specs and records "
                f"must match {NAME_PATTERN}"
            )
    path = root.joinpath(*parts)
    if not is_within(path, root):
        raise RobustlabError(
            f"{path}: leaves {root} (a link?); remove it or choose another output folder"
        )
    return path


LOCK_FILE = ".robustlab.lock"


class FolderLock:
    """One writer per output folder: an advisory ``flock`` on ``folder/.robustlab.lock``.

    A second writer stops with one line naming the holder's PID and command (or, with
    ``wait=True``, waits for it: cache entries that many may build). The kernel drops the
    lock of a process that dies, so a stale lock file is simply taken over. Under
    torch.distributed only rank 0 writes, so only rank 0 locks.

    Examples
    --------
    >>> with FolderLock("runs/a", "robustlab train"):  # doctest: +SKIP
    ...     ...
    """

    def __init__(
        self, folder: str | Path, command: str = "", *, wait: bool = False, name: str = LOCK_FILE
    ) -> None:
        self.path = Path(folder) / name
        self.command, self.wait = command or " ".join(sys.argv[:3]), wait
        self._fd: int | None = None
        self._created: list[Path] = []  # folders made for the lock, removed again if empty

    def __enter__(self) -> FolderLock:
        if not distributed.is_main():
            return self
        folder = self.path.parent.absolute()
        self._created = [p for p in (folder, *folder.parents) if not p.exists()]
        while True:
            try:
                folder.mkdir(parents=True, exist_ok=True)
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666 & ~_umask())
            except OSError:
                if self.wait:  # a read-only cache: readers need no lock, a builder fails later
                    return self
                raise
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | (0 if self.wait else fcntl.LOCK_NB))
            except BlockingIOError:
                holder = _lock_holder(fd)
                os.close(fd)
                self._created = []  # the holder's folder now
                raise RobustlabError(
                    f"{self.path.parent} is being written by {holder}; wait for it to "
                    "finish or choose another output folder"
                ) from None
            # the holder before us may have removed the file after we opened it: retry on
            # the file that is there now, or two writers would hold two different locks
            if _same_file(fd, self.path):
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        info = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "command": self.command,
            "since": time.time(),
        }
        os.write(fd, json.dumps(info).encode())
        self._fd = fd
        return self

    def __exit__(self, *exc: object) -> None:
        if self._fd is None:
            return
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)  # while locked: a waiter then retries on a fresh file
        os.close(self._fd)
        self._fd = None
        for folder in self._created:  # innermost first: nothing left behind by a refusal
            try:
                folder.rmdir()
            except OSError:
                break


def _same_file(fd: int, path: Path) -> bool:
    try:
        return os.fstat(fd).st_ino == os.stat(path).st_ino
    except FileNotFoundError:
        return False


def _lock_holder(fd: int) -> str:
    """'process PID (command) on HOST' from a lock file, as far as it can be read."""
    try:
        info = json.loads(os.pread(fd, 4096, 0) or b"{}")
        return f"process {int(info['pid'])} ({info.get('command', '?')}) on {info['host']}"
    except (ValueError, KeyError, TypeError, OSError):
        return "another process (it is just starting)"


F = TypeVar("F", bound=Callable[..., Any])


def writes_output(param: str, command: str, *, file: bool = False) -> Callable[[F], F]:
    """Decorator: the call holds the :class:`FolderLock` of its argument ``param`` (a folder;
    with ``file``, a file, locked as ``.NAME.lock`` beside it), checked writable first, so a
    second writer of the same output stops before any work."""

    def decorate(function: F) -> F:
        signature = inspect.signature(function)

        @functools.wraps(function)
        def locked(*args: Any, **kwargs: Any) -> Any:
            target = Path(signature.bind(*args, **kwargs).arguments[param])
            folder, name = (target.parent, f".{target.name}.lock") if file else (target, LOCK_FILE)
            check_writable(folder)
            with FolderLock(folder, command, name=name):
                return function(*args, **kwargs)

        return locked  # type: ignore[return-value]

    return decorate
