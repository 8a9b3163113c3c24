"""The loss-function contract of the training loop, and the language-model loss used by pretraining and SFT.

``loss_fn(model, batch) -> (loss, metrics)`` (:data:`LossFn`):

* ``loss`` is a scalar **sum** over the batch's units (target tokens here; completion tokens for RL), not a mean;
* ``metrics`` maps names to detached tensors that are also **sums**; it must contain ``"tokens"``, the number of
  units, which is the normaliser. ``"positions"`` (input tokens processed) is used for throughput if present.

The loop adds ``loss`` over micro-batches and processes and divides by the total ``tokens`` of the whole global
batch, so the update is the gradient of the mean over every target token of the step, whatever the number of
micro-batches or processes. RL plugs in its own objective with the same contract.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from xinzhou.data.packing import IGNORE_INDEX, PackedBatch

LossFn = Callable[[nn.Module, Any], tuple[torch.Tensor, dict[str, torch.Tensor]]]


def packed_forward(model: nn.Module, batch: PackedBatch) -> tuple[Any, torch.Tensor]:
    """Run ``model`` on a packed batch as one ``[1, B*T]`` row with one ``cu_seqlens``: lightning layers reset
    their state and softmax layers mask at every document start, so documents never see each other. Returns the
    model output (a :class:`xinzhou.ModelOutput`) and the flattened ``[1, B*T]`` labels."""
    flat = batch.flatten()
    return model(flat.input_ids, cu_seqlens=flat.cu_seqlens[0], position_ids=flat.position_ids), flat.labels


def make_lm_loss(aux_loss_coef: float) -> LossFn:
    """Next-token cross-entropy summed over targets (``labels != -100``) plus ``aux_loss_coef`` × the MoE
    load-balance loss. The aux term is weighted by the micro-batch's target count, so after the loop's division
    it is the target-weighted mean of the per-micro-batch aux losses."""

    def lm_loss(model: nn.Module, batch: PackedBatch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        out, labels = packed_forward(model, batch)
        logits = out.logits
        ce_sum = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), labels.reshape(-1),
                                 ignore_index=IGNORE_INDEX, reduction="sum")
        n = (labels != IGNORE_INDEX).sum()
        aux = out.aux_loss.float() * n
        loss = ce_sum + aux_loss_coef * aux if aux_loss_coef else ce_sum
        metrics = {"tokens": n.detach(), "positions": torch.tensor(labels.numel()), "loss": ce_sum.detach(),
                   "aux_loss": aux.detach(), "expert_counts": out.expert_counts.detach()}
        return loss, metrics

    return lm_loss
