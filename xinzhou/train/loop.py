"""The training loop shared by pretraining, SFT and RL: one optimizer step from micro-batches and a loss function.

:meth:`Trainer.train_step` takes the micro-batches of one step and a :data:`~xinzhou.train.loss.LossFn` and does
forward/backward per micro-batch (bf16 autocast when enabled; gradient sync across processes only on the last
one), normalises, clips, sets the scheduled learning rate and steps AdamW. :func:`fit` is the outer loop of a
run: fetch, step, log, evaluate, checkpoint, draw progress. RL calls ``train_step`` directly with its own batches
and objective.

**Loss normalisation.** Each micro-batch's backward uses the *sum* of its per-token losses. After the last one, the
token counts of every micro-batch on every process are all-reduced, and gradients are scaled by
``world_size / total_tokens`` (DDP and FSDP2 have already averaged over the ``world_size`` processes). The update
is therefore the gradient of the mean loss over all target tokens of the global batch, exactly as one process
computing the whole batch at once, so runs with the same global batch agree across micro-batch sizes and
process counts up to float summation order (a document split across micro-batches still counts each of its
tokens once). The logged ``loss`` is the same global token mean.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from xinzhou.parallel.data_parallel import gradient_sync, scale_and_clip_
from xinzhou.parallel.dist import DistInfo, all_reduce_sum
from xinzhou.train.checkpoint import Checkpointer
from xinzhou.train.loss import LossFn
from xinzhou.train.metrics import MetricsLogger, ProgressBar
from xinzhou.train.optim import Schedule, set_lr

RAW_SUMS = ("tokens", "positions")


def reduce_sums(sums: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """All-reduce (sum) every metric over processes in one flat fp64 collective; same keys and shapes back."""
    keys = sorted(sums)
    flat = torch.cat([sums[k].detach().double().reshape(-1).cpu() for k in keys])
    all_reduce_sum(flat)
    out, i = {}, 0
    for k in keys:
        n = sums[k].numel()
        out[k] = flat[i : i + n].reshape(sums[k].shape)
        i += n
    return out


def summarize(sums: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Reported values from reduced sums: ``tokens``/``positions`` as counts, scalar metrics as per-token means,
    tensor metrics (e.g. ``expert_counts [L, E]``) as fractions along their last dim (``expert_counts`` becomes
    ``expert_load``: each layer's share of routed tokens per expert)."""
    tokens = float(sums["tokens"])
    out: dict[str, Any] = {}
    for k, v in sums.items():
        if k in RAW_SUMS:
            out[k] = int(v)
        elif v.dim() == 0:
            out[k] = float(v) / tokens if tokens else math.nan
        else:
            frac = v / v.sum(-1, keepdim=True).clamp_min(1)
            out["expert_load" if k == "expert_counts" else k] = [[round(x, 5) for x in row]
                                                                 for row in frac.reshape(-1, v.shape[-1]).tolist()]
    if "expert_load" in out:  # max share relative to a uniform router: 1.0 = perfectly balanced
        E = len(out["expert_load"][0])
        out["expert_load_max"] = max(max(row) for row in out["expert_load"]) * E
    return out


def _add(acc: dict[str, torch.Tensor], new: dict[str, torch.Tensor]) -> None:
    for k, v in new.items():
        v = v.detach().double().cpu()
        acc[k] = acc[k] + v if k in acc else v


@dataclass
class StepResult:
    """One optimizer step: ``metrics`` from :func:`summarize`, the lr used, the gradient norm before clipping."""

    step: int
    metrics: dict[str, Any]
    lr: float
    grad_norm: float
    seconds: float


@dataclass
class Trainer:
    """Model (wrapped for DDP/FSDP or not), AdamW and schedule; ``step`` counts completed optimizer steps."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    schedule: Schedule
    info: DistInfo = field(default_factory=DistInfo)
    grad_clip: float = 1.0
    autocast_dtype: torch.dtype | None = None
    step: int = 0
    tokens_seen: int = 0

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.info.device.type, dtype=self.autocast_dtype)

    def train_step(self, micro_batches: Sequence[Any], loss_fn: LossFn) -> StepResult:
        """Forward/backward every micro-batch, then one normalised, clipped AdamW update (see module docstring).
        Every process must call it with the same number of micro-batches."""
        if not micro_batches:
            raise ValueError("train_step needs at least one micro-batch")
        t0 = time.perf_counter()
        self.model.train()
        sums: dict[str, torch.Tensor] = {}
        for i, batch in enumerate(micro_batches):
            with gradient_sync(self.model, i == len(micro_batches) - 1):
                with self._autocast():
                    loss, metrics = loss_fn(self.model, batch)
                loss.backward()
            _add(sums, metrics)
        sums = reduce_sums(sums)
        tokens = float(sums["tokens"])
        lr = self.schedule(self.step)
        grad_norm = math.nan
        if tokens > 0:
            grad_norm = scale_and_clip_(self.model.parameters(), self.info.world_size / tokens, self.grad_clip)
            set_lr(self.optimizer, lr)
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        self.tokens_seen += int(sums.get("positions", sums["tokens"]))
        return StepResult(self.step, summarize(sums), lr, grad_norm, time.perf_counter() - t0)

    @torch.no_grad()
    def evaluate(self, micro_batches: Sequence[Any], loss_fn: LossFn) -> dict[str, Any]:
        """Summed metrics over ``micro_batches`` (this process's share of the eval set) and all processes."""
        self.model.eval()
        sums: dict[str, torch.Tensor] = {}
        for batch in micro_batches:
            with self._autocast():
                _, metrics = loss_fn(self.model, batch)
            _add(sums, metrics)
        self.model.train()
        return summarize(reduce_sums(sums))

    def state_dict(self) -> dict[str, Any]:
        return {"step": self.step, "tokens_seen": self.tokens_seen}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step, self.tokens_seen = int(state["step"]), int(state["tokens_seen"])


@dataclass
class LoopOptions:
    """When :func:`fit` logs, evaluates and saves (0 = only at the last step)."""

    max_steps: int
    grad_accum: int = 1
    log_every: int = 1
    eval_every: int = 0
    save_every: int = 0
    progress: bool = True
    # stop early (after saving) at the first eval at step >= stop_min_step whose loss is <= stop_eval_loss (0: off)
    stop_eval_loss: float = 0.0
    stop_min_step: int = 0


def _due(step: int, every: int, last: int) -> bool:
    return step == last or (every > 0 and step % every == 0)


def fit(trainer: Trainer, data: Iterator[Any], loss_fn: LossFn, opts: LoopOptions, *,
        eval_batches: Sequence[Any] = (), checkpointer: Checkpointer | None = None,
        logger: MetricsLogger | None = None, extra_state: Callable[[], dict[str, Any]] | None = None,
        ) -> list[dict[str, Any]]:
    """Train from ``trainer.step`` to ``opts.max_steps``; returns the eval records. ``data`` yields this process's
    micro-batches and has ``state_dict()`` (saved in checkpoints). ``extra_state()`` adds entries to each
    checkpoint's trainer state (e.g. the config)."""
    info = trainer.info
    logger = logger or MetricsLogger("/dev/null", enabled=False)
    bar = ProgressBar(opts.max_steps, trainer.step, enabled=opts.progress and info.is_main, echo=info.is_main)
    evals: list[dict[str, Any]] = []
    window_tokens, window_time = 0, 0.0
    try:
        while trainer.step < opts.max_steps:
            t0 = time.perf_counter()
            micro = [next(data) for _ in range(opts.grad_accum)]
            res = trainer.train_step(micro, loss_fn)
            loss = res.metrics["loss"]
            if res.metrics["tokens"] == 0:
                bar.print(f"step {res.step}: no target tokens in the whole batch; no update")
            elif not math.isfinite(loss):
                raise FloatingPointError(f"loss is {loss} at step {res.step}; lower --lr or check the data")
            window_tokens += res.metrics.get("positions", res.metrics["tokens"])
            window_time += time.perf_counter() - t0  # data included
            tps = window_tokens / max(window_time, 1e-9)
            bar.update(res.step, loss, tps)
            if _due(res.step, opts.log_every, opts.max_steps):
                logger.log({"step": res.step, **res.metrics, "lr": res.lr, "grad_norm": res.grad_norm,
                            "tokens_seen": trainer.tokens_seen, "tokens_per_s": tps})
                window_tokens, window_time = 0, 0.0
            stop = False
            if eval_batches and _due(res.step, opts.eval_every, opts.max_steps):
                ev = trainer.evaluate(eval_batches, loss_fn)
                record = {"step": res.step, "eval_loss": ev["loss"], "eval_tokens": ev["tokens"]}
                logger.log(record)
                evals.append(record)
                bar.print(f"step {res.step}: eval loss {ev['loss']:.4f} (train {loss:.4f})")
                stop = 0 < opts.stop_eval_loss and res.step >= opts.stop_min_step and ev["loss"] <= opts.stop_eval_loss
            if checkpointer is not None and (stop or _due(res.step, opts.save_every, opts.max_steps)):
                state = {**trainer.state_dict(), "data": data.state_dict(), **(extra_state() if extra_state else {})}
                checkpointer.save(res.step, trainer.model, trainer.optimizer, state)
            if stop:
                bar.print(f"step {res.step}: eval loss {ev['loss']:.4f} <= {opts.stop_eval_loss}: stopping early")
                break
    finally:
        bar.close()
        logger.close()
    return evals
