"""torch.distributed, when robustlab runs under ``torchrun``; a no-op otherwise.

Work is split by *batches*: with W processes, process r handles global batches
r, r + W, r + 2W, … and the results are gathered in batch order on every
process. Attacks seed each batch from its global position, so a sharded run
produces exactly what one process would. Only rank 0 writes files.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    """True on rank 0 (and in a single process): the process that writes files."""
    return rank() == 0


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def init_from_env() -> bool:
    """Join the process group that ``torchrun`` describes in the environment, if any.

    The backend is NCCL when CUDA is available, else gloo; each process uses the
    GPU of its LOCAL_RANK. Returns whether robustlab now runs distributed.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or is_distributed():
        return is_distributed()
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group("nccl" if cuda else "gloo")
    return True


def local_device(default: torch.device) -> torch.device:
    """This process's device: its own GPU under torchrun with CUDA, else ``default``."""
    if is_distributed() and default.type == "cuda":
        return torch.device("cuda", torch.cuda.current_device())
    return default


def sum_over_processes(*values: float) -> tuple[float, ...]:
    """Each value summed over all processes (unchanged in a single process)."""
    if not is_distributed():
        return values
    device = (
        torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else None
    )
    total = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(total)
    return tuple(float(v) for v in total.cpu())


def batch_starts(total: int, batch_size: int) -> list[int]:
    """The global batch starts this process handles."""
    return list(range(0, total, batch_size))[rank() :: world_size()]


def map_batches(
    total: int, batch_size: int, fn: Callable[[int, int], torch.Tensor]
) -> torch.Tensor:
    """``cat([fn(start, stop) for every batch])`` computed across processes.

    Each process evaluates its own batches; the outputs (same trailing shape and
    dtype everywhere) are gathered and concatenated in batch order.
    """
    starts = list(range(0, total, batch_size))
    if not is_distributed():
        return torch.cat([fn(s, min(s + batch_size, total)) for s in starts])
    mine = [fn(s, min(s + batch_size, total)).cpu() for s in batch_starts(total, batch_size)]
    if not mine:  # more processes than batches: send an empty piece of the right shape
        probe = fn(0, min(batch_size, total)).cpu()
        mine = [probe[:0]]
    pieces = gather_pieces(torch.cat(mine))
    lengths = [min(batch_size, total - s) for s in starts]
    by_rank = [
        list(torch.split(piece, [lengths[i] for i in range(r, len(starts), world_size())]))
        for r, piece in enumerate(pieces)
    ]
    ordered = [by_rank[i % world_size()][i // world_size()] for i in range(len(starts))]
    return torch.cat(ordered)


def gather_pieces(tensor: torch.Tensor) -> list[torch.Tensor]:
    """All processes' tensors (same trailing shape, any length), in rank order."""
    device = (
        torch.device("cuda", torch.cuda.current_device())
        if dist.get_backend() == "nccl"
        else torch.device("cpu")
    )
    local = tensor.to(device).contiguous()
    length = torch.tensor([local.shape[0]], device=device)
    lengths = [torch.zeros_like(length) for _ in range(world_size())]
    dist.all_gather(lengths, length)
    longest = int(max(int(n) for n in lengths))
    padded = torch.zeros((longest, *local.shape[1:]), dtype=local.dtype, device=device)
    padded[: local.shape[0]] = local
    gathered = [torch.zeros_like(padded) for _ in range(world_size())]
    dist.all_gather(gathered, padded)
    return [g[: int(n)].cpu() for g, n in zip(gathered, lengths, strict=True)]
