"""Data parallelism under ``torchrun``: gloo on CPU, NCCL on CUDA.

Every rank holds the same model and walks the same global batch order; each takes a contiguous
slice of every global batch, and gradients are summed across ranks in one flat all-reduce
per step with the loss normalised by the *global* batch size — so N processes compute the
same update as one process with the same global batch (up to float summation order).
A manual all-reduce (rather than the DDP wrapper) lets Heart-LoRA replace parameters
mid-run when it deactivates heads.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class World:
    """This process's place among the data-parallel workers."""

    rank: int = 0
    size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.size > 1

    @classmethod
    def from_launcher(cls) -> World:
        """The place ``torchrun`` gave this process (``RANK``, ``WORLD_SIZE``; one process
        without them), known before the process group is joined."""
        return cls(int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1")))


def init_world(device: torch.device) -> World:
    """Join the process group when started by ``torchrun`` (WORLD_SIZE > 1)."""
    size = World.from_launcher().size
    if size <= 1:
        return World()
    if device.type == "cuda":
        torch.cuda.set_device(device)  # NCCL's object collectives use the current device
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return World(dist.get_rank(), dist.get_world_size())


def leave_world(world: World) -> None:
    """Leave the process group after a completed run (every rank, after the run's last
    barrier), so that no gloo or NCCL thread outlives it: without this a rank could abort at
    interpreter exit ("terminate called without an active exception") after a finished run."""
    if world.active and dist.is_initialized():
        dist.destroy_process_group()


def shard(indices: list[int], world: World) -> list[int]:
    """This rank's contiguous slice of a global batch (sizes differ by at most one)."""
    if not world.active:
        return indices
    per_rank, extra = divmod(len(indices), world.size)
    start = world.rank * per_rank + min(world.rank, extra)
    return indices[start : start + per_rank + (1 if world.rank < extra else 0)]


def all_reduce_gradients(params: list[torch.nn.Parameter], world: World) -> None:
    """Sum the gradients of ``params`` over all ranks (one flat all-reduce)."""
    if not world.active:
        return
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.flatten() for g in grads])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    offset = 0
    for grad in grads:
        grad.copy_(flat[offset : offset + grad.numel()].view_as(grad))
        offset += grad.numel()


def all_reduce_tensor(tensor: torch.Tensor, world: World) -> torch.Tensor:
    """Sum ``tensor`` over all ranks in place, on its device (queued: no host read)."""
    if world.active:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_reduce_sum(values: list[float], world: World, device: torch.device) -> list[float]:
    """Element-wise sum of a few numbers over all ranks."""
    if not world.active:
        return values
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor.tolist()


def all_gather_objects(value: Any, world: World) -> list[Any]:
    """Every rank's ``value`` (picklable), in rank order; a collective: every rank calls it."""
    if not world.active:
        return [value]
    gathered: list[Any] = [None] * world.size
    dist.all_gather_object(gathered, value)
    return gathered


def barrier(world: World) -> None:
    """Wait for every rank."""
    if world.active:
        dist.barrier()
