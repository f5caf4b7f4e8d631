"""torch.distributed, when robustlab runs under ``torchrun``; a no-op otherwise.

Work is split by *batches*: with W processes, process r handles global batches
r, r + W, r + 2W, … and the results are gathered in batch order on every
process. Attacks seed each batch from its global position, so a sharded run
produces exactly what one process would. Only rank 0 writes files.
"""

from __future__ import annotations

import os

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


def my_batches(total: int, batch_size: int) -> list[tuple[int, int]]:
    """The ``(start, stop)`` of the batches this process computes, in order.

    One process computes every batch. Under torchrun a process with no batch of its own
    (more processes than batches) gets the first one: :func:`in_batch_order` uses its
    output only for its shape and dtype, and sends none of it.
    """
    starts = batch_starts(total, batch_size) or ([0] if total else [])
    return [(s, min(s + batch_size, total)) for s in starts]


def in_batch_order(pieces: list[torch.Tensor], total: int, batch_size: int) -> torch.Tensor:
    """The outputs of every process's :func:`my_batches` (same trailing shape and dtype),
    gathered and concatenated in global batch order; ``cat(pieces)`` in one process.

    The caller loops over its own batches, so the work (an attack, a forward pass) stays
    on the caller's stack rather than behind a callback.
    """
    if not is_distributed():
        return torch.cat(pieces)
    mine = torch.cat([p.cpu() for p in pieces])
    if not batch_starts(total, batch_size):  # the first batch was only a probe of the shape
        mine = mine[:0]
    starts = list(range(0, total, batch_size))
    lengths = [min(batch_size, total - s) for s in starts]
    by_rank = [
        list(torch.split(piece, [lengths[i] for i in range(r, len(starts), world_size())]))
        for r, piece in enumerate(gather_pieces(mine))
    ]
    return torch.cat([by_rank[i % world_size()][i // world_size()] for i in range(len(starts))])


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
