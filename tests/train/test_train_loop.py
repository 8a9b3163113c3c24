"""The shared step: gradient accumulation gives the update of the whole batch at once (loss normalised by the
global target count), gradients are scaled and clipped in one pass, a batch without targets changes nothing,
and evaluation reports the token-mean loss.
Run: pytest tests/train/test_train_loop.py"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from xinzhou import Model, ModelConfig
from xinzhou.data.packing import IGNORE_INDEX, PackedBatch, pack_documents
from xinzhou.parallel.data_parallel import scale_and_clip_
from xinzhou.train.loop import Trainer, summarize
from xinzhou.train.loss import make_lm_loss
from xinzhou.train.optim import Schedule, build_optimizer


def _setup(seed: int = 0) -> Trainer:
    torch.manual_seed(seed)
    cfg = ModelConfig(vocab_size=64, hidden_size=32, num_layers=2, num_heads=2, num_kv_heads=1, head_dim=16,
                      rotary_dim=16, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32,
                      layer_types=("linear_attention", "full_attention"))
    model = Model(cfg)
    opt = build_optimizer(model, lr=1e-2, weight_decay=0.1)
    return Trainer(model, opt, Schedule("constant", lr=1e-2, max_steps=10), grad_clip=1.0)


def _batch(rows: int = 4, seq_len: int = 24, seed: int = 0) -> PackedBatch:
    g = torch.Generator().manual_seed(seed)
    docs = [torch.randint(3, 64, (int(n),), generator=g).tolist() for n in torch.randint(3, 30, (12,), generator=g)]
    return pack_documents(docs, seq_len, bos_id=1, eos_id=2).rows(0, rows)


def test_accumulation_equals_one_big_batch():
    a, b = _setup(), _setup()
    batch = _batch()
    loss_fn = make_lm_loss(0.0)  # the aux loss is per micro-batch by definition; the LM loss must match exactly
    ra = a.train_step([batch], loss_fn)
    rb = b.train_step(batch.split(1), loss_fn)
    assert ra.metrics["tokens"] == rb.metrics["tokens"] == batch.num_targets
    assert rb.metrics["loss"] == pytest.approx(ra.metrics["loss"], rel=1e-6)
    assert rb.grad_norm == pytest.approx(ra.grad_norm, rel=1e-5)
    for pa, pb in zip(a.model.parameters(), b.model.parameters()):
        assert torch.allclose(pa, pb, rtol=0, atol=1e-6)
    assert a.step == b.step == 1 and a.tokens_seen == batch.input_ids.numel()


def test_logged_loss_is_the_token_mean():
    t = _setup()
    batch = _batch()
    flat = batch.flatten()
    with torch.no_grad():
        logits = t.model(flat.input_ids, cu_seqlens=flat.cu_seqlens[0]).logits
        expected = F.cross_entropy(logits[0], flat.labels[0], ignore_index=IGNORE_INDEX).item()
    assert t.evaluate(batch.split(2), make_lm_loss(0.0))["loss"] == pytest.approx(expected, rel=1e-6)
    res = t.train_step(batch.split(2), make_lm_loss(0.0))
    assert res.metrics["loss"] == pytest.approx(expected, rel=1e-6)


def test_a_batch_without_targets_changes_nothing():
    t = _setup()
    batch = _batch()
    empty = PackedBatch(batch.input_ids, torch.full_like(batch.labels, IGNORE_INDEX), batch.position_ids,
                        batch.cu_seqlens)
    before = copy.deepcopy(t.model.state_dict())
    res = t.train_step([empty], make_lm_loss(0.001))
    assert res.metrics["tokens"] == 0 and t.step == 1
    assert all(torch.equal(before[k], v) for k, v in t.model.state_dict().items())


def test_scale_and_clip():
    p = [torch.nn.Parameter(torch.zeros(3)), torch.nn.Parameter(torch.zeros(4))]
    p[0].grad, p[1].grad = torch.tensor([3.0, 0.0, 0.0]), torch.tensor([0.0, 4.0, 0.0, 0.0])
    assert scale_and_clip_(p, 2.0, 0.0) == pytest.approx(10.0)  # scaled only
    assert p[0].grad[0] == 6.0
    assert scale_and_clip_(p, 0.5, 1.0) == pytest.approx(5.0)
    assert torch.cat([q.grad for q in p]).norm() == pytest.approx(1.0, rel=1e-5)


def test_summarize_expert_load():
    sums = {"tokens": torch.tensor(4.0), "loss": torch.tensor(8.0),
            "expert_counts": torch.tensor([[1.0, 3.0], [2.0, 2.0]])}
    out = summarize(sums)
    assert out["loss"] == 2.0 and out["tokens"] == 4
    assert out["expert_load"] == [[0.25, 0.75], [0.5, 0.5]] and out["expert_load_max"] == 1.5


def test_activation_checkpointing_gives_the_same_step():
    a, b = _setup(), _setup()
    b.model.gradient_checkpointing = True
    batch = _batch()
    ra, rb = (t.train_step(batch.split(2), make_lm_loss(0.01)) for t in (a, b))
    assert ra.metrics["loss"] == rb.metrics["loss"] and ra.grad_norm == pytest.approx(rb.grad_norm, rel=1e-6)
    for pa, pb in zip(a.model.parameters(), b.model.parameters()):
        assert torch.allclose(pa, pb, rtol=0, atol=1e-7)


def test_bf16_autocast_step():
    a, b = _setup(), _setup()
    b.autocast_dtype = torch.bfloat16
    batch = _batch()
    ra, rb = (t.train_step([batch], make_lm_loss(0.01)) for t in (a, b))
    assert rb.metrics["loss"] == pytest.approx(ra.metrics["loss"], rel=2e-2)
    assert all(p.dtype == torch.float32 for p in b.model.parameters())  # fp32 master weights


class _Repeat:
    """The same batch forever (with the ``state_dict`` a checkpoint asks of the data)."""

    def __init__(self, batch):
        self.batch = batch

    def __next__(self):
        return self.batch

    def state_dict(self):
        return {}


class _Saves:
    def __init__(self):
        self.steps = []

    def save(self, step, model, optimizer, state):
        self.steps.append(step)


def test_fit_stops_early_at_the_first_eval_at_or_below_the_target_and_saves_there():
    from xinzhou.train.loop import LoopOptions, fit

    batch = _batch()
    loss = make_lm_loss(0.0)
    full = fit(_setup(), _Repeat(batch), loss, LoopOptions(max_steps=16, eval_every=2, progress=False),
               eval_batches=[batch])
    losses = {r["step"]: r["eval_loss"] for r in full}
    target = losses[10]  # memorising one batch: the loss at step 10 is reached at step 10 or before
    expect = min(s for s, v in losses.items() if s >= 6 and v <= target)
    saves = _Saves()
    early = fit(_setup(), _Repeat(batch), loss,
                LoopOptions(max_steps=16, eval_every=2, save_every=5, progress=False, stop_eval_loss=target,
                            stop_min_step=6), eval_batches=[batch], checkpointer=saves)
    assert early[-1]["step"] == expect < 16
    assert [r["eval_loss"] for r in early] == [losses[r["step"]] for r in early]  # same run until it stops
    assert saves.steps[-1] == expect and 5 in saves.steps
