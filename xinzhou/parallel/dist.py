"""Process-group setup and the few collectives the trainer needs, identical for one process and many.

`torchrun` (or any launcher that sets ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``) starts several copies of the same
entry point; :func:`init_distributed` turns the environment into a :class:`DistInfo` and, with more than one
process, a process group (``gloo`` on CPU, so everything is testable without GPUs; ``nccl`` on CUDA). A single
process needs no process group: every helper here then degrades to a no-op, so training code has no
``if distributed`` branches.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits: ``rank`` of ``world_size``, its ``device`` and the process-group ``backend``
    (``None`` for a single process)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    backend: str | None = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None:
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name} must be an integer, got {value!r}") from None


def init_distributed(device: str | None = None) -> DistInfo:
    """Read the launcher's environment and join (or reuse) the process group.

    ``device``: ``"cpu"``/``"cuda"``; default CUDA when available. On CUDA each process takes GPU ``LOCAL_RANK``.
    Calling it again in the same process returns the same answer (the group is created once).
    """
    world = _env_int("WORLD_SIZE", 1)
    rank, local_rank = _env_int("RANK", 0), _env_int("LOCAL_RANK", 0)
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"inconsistent launcher environment: RANK={rank}, WORLD_SIZE={world}")
    kind = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if kind not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'cpu' or 'cuda', got {kind!r}")
    if kind == "cuda":
        dev = torch.device("cuda", local_rank)
        torch.cuda.set_device(dev)
    else:
        dev = torch.device("cpu")
    if world == 1:
        return DistInfo(device=dev)
    backend = "nccl" if kind == "cuda" else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, **({"device_id": dev} if kind == "cuda" else {}))
    if dist.get_world_size() != world:
        raise RuntimeError(f"process group has {dist.get_world_size()} ranks but WORLD_SIZE={world}")
    return DistInfo(rank=rank, world_size=world, local_rank=local_rank, device=dev, backend=backend)


def destroy_distributed() -> None:
    """Leave the process group, if any (call once at the end of a launched program)."""
    if dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum of ``t`` over all processes (``t`` itself with one process); reduced in place and returned."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def barrier() -> None:
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def broadcast_object(obj: object, src: int = 0) -> object:
    """``obj`` of rank ``src`` on every rank (e.g. an error message, so all ranks fail together)."""
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_gather_object(obj: object) -> list[object]:
    """Every rank's ``obj``, in rank order (``[obj]`` with one process)."""
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return [obj]
    out: list[object] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out
