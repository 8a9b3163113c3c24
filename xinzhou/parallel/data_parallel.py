"""Data parallelism applied from outside the single-device model: DDP or FSDP2 (``fully_shard``).

The model code never imports this module. :func:`parallelize` wraps a built :class:`xinzhou.Model`:

* ``ddp``: every process holds the whole model; gradients are averaged with one bucketed all-reduce.
* ``fsdp``: FSDP2 shards parameters, gradients and optimizer state over processes, one ``fully_shard`` unit per
  decoder layer plus the root (embedding, final norm, LM head), so at most one layer's weights are gathered at a
  time.

Both average gradients over processes; the trainer's loss normalisation (see :mod:`xinzhou.train.loop`) undoes that
average so one process and many compute the same update. The helpers below hide the differences that training
code would otherwise branch on: skipping gradient sync during accumulation, the gradient norm of sharded
(``DTensor``) gradients, and checkpoints as *full* (unsharded) state dicts, so a checkpoint written by any number
of processes loads into any other.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator

import torch
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.tensor import DTensor
from torch.nn.parallel import DistributedDataParallel

from xinzhou.parallel.dist import DistInfo

MODES = ("none", "ddp", "fsdp")


def resolve_mode(mode: str, world_size: int) -> str:
    """``auto`` → ``ddp`` with several processes, ``none`` with one; checks the choice fits ``world_size``."""
    if mode == "auto":
        return "ddp" if world_size > 1 else "none"
    if mode not in MODES:
        raise ValueError(f"parallel mode must be one of {('auto', *MODES)}, got {mode!r}")
    if mode != "none" and world_size == 1:
        return "none"  # one process: DDP/FSDP would only add overhead, and the arithmetic is the same
    if mode == "none" and world_size > 1:
        raise ValueError(f"parallel='none' but {world_size} processes were started; use ddp or fsdp (or auto)")
    return mode


def parallelize(model: nn.Module, mode: str, info: DistInfo) -> nn.Module:
    """Wrap ``model`` (already on ``info.device``) for data parallelism; ``mode`` from :func:`resolve_mode`."""
    if mode == "none":
        return model
    if mode == "ddp":
        ids = [info.device.index] if info.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids, broadcast_buffers=False)
    if mode == "fsdp":
        from torch.distributed.device_mesh import init_device_mesh  # noqa: PLC0415
        from torch.distributed.fsdp import fully_shard  # noqa: PLC0415

        mesh = init_device_mesh(info.device.type, (info.world_size,))
        for layer in model.layers:
            fully_shard(layer, mesh=mesh)
        fully_shard(model, mesh=mesh)
        return model
    raise ValueError(f"parallel mode must be one of {MODES}, got {mode!r}")


def unwrap(model: nn.Module) -> nn.Module:
    """The single-device model inside a wrapper (FSDP2 shards in place, so only DDP has a wrapper)."""
    return model.module if isinstance(model, DistributedDataParallel) else model


@contextlib.contextmanager
def gradient_sync(model: nn.Module, enabled: bool) -> Iterator[None]:
    """Within the block, backward passes synchronise gradients across processes only if ``enabled`` (turn it off
    for all but the last micro-batch of an accumulation: one reduction per optimizer step)."""
    if isinstance(model, DistributedDataParallel) and not enabled:
        with model.no_sync():
            yield
        return
    if hasattr(model, "set_requires_gradient_sync"):  # FSDP2
        model.set_requires_gradient_sync(enabled)
        try:
            yield
        finally:
            model.set_requires_gradient_sync(True)
        return
    yield


def scale_and_clip_(params: Iterable[nn.Parameter], scale: float, max_norm: float) -> float:
    """Multiply every gradient by ``scale``, then clip the global L2 norm to ``max_norm`` (0: no clipping), in one
    pass over the gradients. Returns the norm after scaling and before clipping. Sharded (``DTensor``)
    gradients count every shard once."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return 0.0
    norm = torch.nn.utils.get_total_norm(grads, norm_type=2.0, foreach=True)
    if isinstance(norm, DTensor):
        norm = norm.full_tensor()
    norm = float(norm) * scale
    factor = scale
    if max_norm > 0 and norm > max_norm:
        factor = scale * max_norm / (norm + 1e-6)
    if factor != 1.0:
        torch._foreach_mul_(grads, factor)
    return norm


_FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)


def full_state_dicts(model: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict, dict]:
    """Unsharded CPU ``(model, optimizer)`` state dicts keyed by parameter name: complete on rank 0 (empty on
    others when sharded). A collective: every process must call it."""
    return get_model_state_dict(model, options=_FULL), get_optimizer_state_dict(model, optimizer, options=_FULL)


def load_full_state_dicts(model: nn.Module, optimizer: torch.optim.Optimizer | None, model_sd: dict,
                          optim_sd: dict | None, info: DistInfo) -> None:
    """Load state dicts written by :func:`full_state_dicts` (read on rank 0; others may pass ``{}``): rank 0's copy
    is broadcast and re-sharded. A collective."""
    opts = StateDictOptions(full_state_dict=True, broadcast_from_rank0=info.distributed)
    set_model_state_dict(model, model_sd, options=opts)
    if optimizer is not None:
        set_optimizer_state_dict(model, optimizer, optim_sd or {}, options=opts)
