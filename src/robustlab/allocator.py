r"""Keep freed memory in the process instead of handing it back to the kernel (glibc only).

PyTorch on the CPU allocates every operation's result afresh. glibc's ``malloc`` serves
blocks above its mmap threshold (128 KiB at first, raised as large blocks are freed, at most
32 MiB) from fresh mappings and gives the free top of its heap back to the kernel once it
exceeds the trim threshold (twice the mmap threshold); every page allocated again is then
zero-filled by the kernel on first touch. ``python benchmarks/allocator.py`` (fresh
processes, alternated): a training step of the specs' ResNet-8 (batch 128, 28 × 28) took
8,918 minor page faults (35 MB of pages) with glibc's defaults and 327 with the thresholds
below, and ran 1.17× faster; an attack's input gradient 1.22×.

:func:`keep_freed_memory` fixes both thresholds: blocks up to 64 MiB come from the heap, and
up to 128 MiB of free heap stay mapped, so a process's peak memory can grow by at most that
much (the spec's peak RSS stayed 1.17 GB, against 1.14-1.25 GB before; docs/results.md).
The command line calls it for every command. It is a process-wide setting, so a library
import never makes it: call it from your own program if you want it. It does nothing off
glibc (macOS, musl, Windows) or where the user already chose glibc's thresholds
(``MALLOC_MMAP_THRESHOLD_`` or ``MALLOC_TRIM_THRESHOLD_`` in the environment).
"""

from __future__ import annotations

import ctypes
import os
import platform

MMAP_THRESHOLD = 64 << 20  # bytes: larger blocks still get their own mapping
TRIM_THRESHOLD = 128 << 20  # bytes of free heap kept before glibc returns the top of it
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's <malloc.h> parameter numbers
USER_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")

_kept = False


def keep_freed_memory() -> bool:
    """Set glibc's mmap and trim thresholds for this process (see the module docstring).

    Returns whether they are set now; False where the C library is not glibc or the
    environment names glibc's own thresholds (the user's choice wins). Idempotent.
    """
    global _kept
    if _kept:
        return True
    if any(name in os.environ for name in USER_SETTINGS):
        return False
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    mallopt = getattr(ctypes.CDLL(None), "mallopt", None)  # the running process's C library
    if mallopt is None:
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    # mallopt returns 1 on success; the mmap threshold first, as glibc's tunables order them
    _kept = bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
        mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    )
    return _kept


def describe() -> str:
    """What this process's allocator does with freed memory, for records of where results
    were computed."""
    if _kept:
        return describe_kept()
    chosen = [f"{name}={os.environ[name]}" for name in USER_SETTINGS if name in os.environ]
    return "user's " + ", ".join(chosen) if chosen else "the C library's defaults"


def describe_kept() -> str:
    """:func:`describe` once :func:`keep_freed_memory` has set the thresholds."""
    mmap, trim = MMAP_THRESHOLD >> 20, TRIM_THRESHOLD >> 20
    return f"glibc, freed memory kept (mmap threshold {mmap} MiB, trim {trim} MiB)"
