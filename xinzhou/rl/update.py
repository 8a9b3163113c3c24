"""k minibatch updates on one rollout batch through the shared trainer, exact under data parallelism.

Why a separate piece: this is where the objectives differ (the first update is on-policy, later ones off-policy)
and where the bookkeeping bugs of RL trainers live (normalisers under gradient accumulation and several processes,
TRL #5619, ms-swift #10117). Each update is one `Trainer.train_step`: the trainer divides the summed loss by the
summed `"tokens"` of all processes, so every process returns `Σ w·loss × T_global`, `w` being the aggregation
weights of the *global* minibatch (local weights rescaled by local/global counts of tokens, sequences or prompt
groups, all-reduced). One process and N processes make the same update, up to summation order. Processes with
fewer rows run zero-weight dummy forwards so that all take part in every gradient all-reduce.

The trainer's logprobs come from the model's own forward with its fp32 LM head (`fp32_lm_head`), the same head
the engine samples with. The first update also measures the rollout-vs-trainer probability correlation (M1
Fig. 3) from sums, before it changes the weights. A non-finite loss stops every process before backward (one tiny
all-reduce), with the offending rows saved (`check_finite`).

Letters: B samples, T tokens.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from xinzhou.parallel.dist import DistInfo, all_gather_object, all_reduce_sum
from xinzhou.rl.advantages import group_advantages
from xinzhou.rl.aggregation import aggregation_weights
from xinzhou.rl.logprobs import token_entropy, token_logprobs
from xinzhou.rl.loss import NonFiniteLossError, check_finite, policy_loss
from xinzhou.rl.rollout import RolloutBatch
from xinzhou.rl.rollout_engine import mix_seed
from xinzhou.train.loop import Trainer

CORR_KEYS = ("pb", "pt", "pb2", "pt2", "pbpt", "logp_absdiff")


def _all_max(value: int) -> int:
    if dist.is_initialized() and dist.get_world_size() > 1:
        t = torch.tensor([value])
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return int(t)
    return value


def batch_advantages(batch: RolloutBatch | None, scale: str) -> torch.Tensor | None:
    """Group-relative advantages; `scale="batch"` divides by the std of all advantages of *all* processes
    (ScaleRL), computed from all-reduced sums (a process without samples contributes none)."""
    if scale != "batch":
        return None if batch is None else group_advantages(batch.rewards_B, batch.group_ids_B, scale=scale)
    adv = None if batch is None else group_advantages(batch.rewards_B, batch.group_ids_B, scale="none").double()
    s = torch.zeros(3, dtype=torch.float64)
    if adv is not None:
        s += torch.stack([torch.tensor(float(adv.numel()), dtype=torch.float64), adv.sum(), adv.square().sum()])
    n, total, squares = all_reduce_sum(s).tolist()
    if adv is None:
        return None
    std = math.sqrt(max(squares - total * total / n, 0.0) / (n - 1)) if n > 1 else 0.0
    return (adv / (std + 1e-6) if std > 0 else adv).float()


def global_weights(mode: str, mask_BT: torch.Tensor, group_ids_B: torch.Tensor) -> tuple[torch.Tensor, float]:
    """Aggregation weights of this process's rows as part of the global minibatch, and the global token count.

    Local weights are rescaled by local/global counts of what the mode averages over (tokens, sequences or prompt
    groups, which never span processes), so Σ over every process's rows is the single-process value."""
    local = torch.tensor([float(mask_BT.sum()), float(mask_BT.shape[0]), float(torch.unique(group_ids_B).numel())],
                         dtype=torch.float64)
    tokens, seqs, groups = all_reduce_sum(local.clone()).tolist()
    if mask_BT.shape[0] == 0:
        return mask_BT.float(), tokens
    ratio = {"token": local[0] / max(tokens, 1), "sequence": local[1] / max(seqs, 1),
             "prompt": local[2] / max(groups, 1)}[mode]
    return aggregation_weights(mode, mask_BT, group_ids_B) * float(ratio), tokens


@dataclass
class _Micro:
    """One forward's rows: the minibatch slice, its weights, and whether the rows are only padding for DDP."""

    batch: RolloutBatch
    weights_BT: torch.Tensor
    total_tokens: float
    first: bool


def _dummy_batch(pad_id: int) -> RolloutBatch:
    z = torch.zeros(1, 2)
    return RolloutBatch(torch.full((1, 2), pad_id, dtype=torch.long), torch.ones(1, 2, dtype=torch.bool), z, z,
                        torch.zeros(1), torch.zeros(1, dtype=torch.long), torch.zeros(1, dtype=torch.bool),
                        torch.zeros(1))


def _columns(batch: RolloutBatch, t: int) -> RolloutBatch:
    """The first `t` columns of every `[B, T]` tensor."""
    tensors = {k: (v[:, :t] if k.endswith("_BT") else v) for k, v in batch._tensors().items()}
    return RolloutBatch(**tensors, info=batch.info)


class PolicyUpdate:
    """`update(batch, step)`: k = `minibatches` optimizer updates on this process's share of a rollout batch.

    `options` are the objective's (e.g. `eps_high`); `aggregation` one of "token", "sequence", "prompt";
    `temperature` the rollouts' sampling temperature (their behaviour logprobs are under softmax(logits / T));
    `kl_coef` > 0 adds the KL penalty to `reference` (a frozen model, scored at the same temperature)."""

    def __init__(self, trainer: Trainer, info: DistInfo, *, objective: str, options: dict[str, float],
                 aggregation: str, minibatches: int, micro_batch_size: int, aux_loss_coef: float, seed: int,
                 pad_id: int, save_dir: str | Path, temperature: float = 1.0, kl_coef: float = 0.0,
                 reference: torch.nn.Module | None = None) -> None:
        self.trainer, self.info = trainer, info
        self.objective, self.options, self.aggregation = objective, options, aggregation
        self.minibatches, self.micro_batch_size = minibatches, micro_batch_size
        self.aux_loss_coef, self.seed, self.pad_id, self.save_dir = aux_loss_coef, seed, pad_id, Path(save_dir)
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.temperature = temperature
        if kl_coef and reference is None:
            raise ValueError("kl_coef > 0 needs a reference model (the frozen starting policy)")
        self.kl_coef, self.reference = kl_coef, reference
        self.step = 0
        self._maxdiff: list[float] = []

    def loss_fn(self, model: torch.nn.Module, micro: _Micro) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The trainer's LossFn: fp32-head logprobs of the rows, the objective, metric sums (see module doc)."""
        b, dev = micro.batch, self.info.device
        ids = b.input_ids_BT.to(dev)
        mask = b.loss_mask_BT.to(dev)
        behaviour = b.behaviour_logp_BT.to(dev)
        out = model(ids)
        # the policy that sampled the rollouts is softmax(logits / T): the ratio and gradient are taken under it
        logits = out.logits if self.temperature == 1.0 else out.logits.float() / self.temperature
        logp = token_logprobs(logits, ids)
        ref_logp = None
        with torch.no_grad():
            entropy = token_entropy(logits.detach())
            if self.kl_coef:
                ref_logits = self.reference(ids).logits
                ref_logp = token_logprobs(ref_logits if self.temperature == 1.0
                                          else ref_logits.float() / self.temperature, ids)
        loss_w, sums = policy_loss(self.objective, logp, behaviour, b.advantages_B.to(dev), mask,
                                   weights_BT=micro.weights_BT.to(dev), entropy_BT=entropy,
                                   ref_logp_BT=ref_logp, kl_coef=self.kl_coef, **self.options)
        loss = loss_w * micro.total_tokens
        if self.aux_loss_coef:
            loss = loss + self.aux_loss_coef * out.aux_loss.float() * mask.sum()
        self._guard(loss, b)
        sums["loss"] = loss.detach()
        sums["positions"] = b.attention_mask_BT.sum()
        if micro.first:
            m = mask.bool()
            pb, pt = behaviour[m].double().exp(), logp.detach()[m].double().exp()
            diff = (logp.detach() - behaviour)[m].abs()
            sums.update(pb=pb.sum(), pt=pt.sum(), pb2=pb.square().sum(), pt2=pt.square().sum(),
                        pbpt=(pb * pt).sum(), logp_absdiff=diff.double().sum())
            if diff.numel():
                self._maxdiff.append(float(diff.max()))
        return loss, sums

    def _guard(self, loss: torch.Tensor, batch: RolloutBatch) -> None:
        """Stop every process before backward if any has a non-finite loss; the offending rows are saved."""
        bad = torch.tensor([0.0 if bool(torch.isfinite(loss.detach())) else 1.0], dtype=torch.float64)
        if float(all_reduce_sum(bad)) == 0:
            return
        check_finite(loss, batch, step=self.step, save_dir=self.save_dir)  # raises here on the offending process
        raise NonFiniteLossError(f"non-finite loss on another process at step {self.step}", None)

    def update(self, batch: RolloutBatch | None, step: int) -> dict[str, float]:
        """k minibatch updates on this process's `batch`; returns token-weighted metric means over all updates."""
        self.step = step
        n = 0 if batch is None else len(batch)
        gen = torch.Generator().manual_seed(mix_seed(self.seed, step, self.info.rank, 7))
        parts = torch.tensor_split(torch.randperm(n, generator=gen), self.minibatches)
        totals: dict[str, float] = {}
        grad_norms, lrs, updates = [], [], 0
        self._maxdiff = []
        for j, idx in enumerate(parts):
            mb = batch.select(idx) if batch is not None and len(idx) else None
            mask = mb.loss_mask_BT if mb is not None else torch.zeros(0, 1)
            groups = mb.group_ids_B if mb is not None else torch.zeros(0, dtype=torch.long)
            weights, total = global_weights(self.aggregation, mask, groups)
            if total == 0:
                continue  # no process has a token to train on in this slice
            micros = []
            if mb is not None:
                for rows in torch.arange(len(mb)).split(self.micro_batch_size):
                    sub = mb.select(rows)
                    t = max(int(sub.attention_mask_BT.sum(-1).max()), 2)  # drop padding no row uses
                    micros.append(_Micro(_columns(sub, t), weights[rows][:, :t], total, j == 0))
            dummy = _Micro(_dummy_batch(self.pad_id), torch.zeros(1, 2), total, j == 0)
            micros += [dummy] * (_all_max(len(micros)) - len(micros))  # every process runs as many forwards
            res = self.trainer.train_step(micros, self.loss_fn)
            if not math.isfinite(res.grad_norm):
                check_finite(res.grad_norm, mb, step=step, save_dir=self.save_dir)
            updates += 1
            grad_norms.append(res.grad_norm)
            lrs.append(res.lr)
            tokens = res.metrics["tokens"]
            for k, v in res.metrics.items():
                if isinstance(v, float) and k not in ("tokens", "positions"):
                    key = f"first_{k}" if k in CORR_KEYS else k
                    totals[key] = totals.get(key, 0.0) + v * tokens
            totals["tokens"] = totals.get("tokens", 0.0) + tokens
            if j == 0:
                totals["first_tokens"] = tokens
            totals["positions"] = totals.get("positions", 0.0) + res.metrics.get("positions", 0)
        out = {k: v / totals["tokens"] for k, v in totals.items()
               if k not in ("tokens", "positions", "first_tokens") and not k.startswith("first_")}
        out.update(updates=updates, train_tokens=totals.get("tokens", 0.0), positions=totals.get("positions", 0.0),
                   grad_norm=sum(grad_norms) / len(grad_norms) if grad_norms else math.nan,
                   lr=lrs[-1] if lrs else self.trainer.schedule(self.trainer.step))
        out.update(_correlation(totals))
        local_max = max(self._maxdiff) if self._maxdiff else 0.0
        out["logp_maxdiff"] = max(all_gather_object(local_max))
        return out


def _correlation(totals: dict[str, float]) -> dict[str, float]:
    """Pearson correlation of rollout and trainer token probabilities from the first update's sums (M1 Fig. 3)."""
    n = totals.get("first_tokens", 0.0)
    if not n or "first_pb" not in totals:
        return {"prob_corr": math.nan, "logp_absdiff": math.nan}
    e = {k: totals[f"first_{k}"] / n for k in CORR_KEYS}
    cov = e["pbpt"] - e["pb"] * e["pt"]
    var = (e["pb2"] - e["pb"] ** 2) * (e["pt2"] - e["pt"] ** 2)
    return {"prob_corr": cov / math.sqrt(var) if var > 0 else math.nan, "logp_absdiff": e["logp_absdiff"]}
