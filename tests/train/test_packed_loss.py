"""Packed training is exact: the loss of a packed batch (documents laid end to end, flattened to one row with
`cu_seqlens`) equals the loss of every document run on its own, token by token, including documents whose
boundary falls inside a lightning block (block size 64) and batches of several rows; and so do the gradients.
Run: pytest tests/train/test_packed_loss.py"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from xinzhou import Model, ModelConfig
from xinzhou.data.packing import pack_documents, pack_sft
from xinzhou.train.loss import make_lm_loss

TOL = 1e-5


def _model(seed: int = 0) -> Model:
    torch.manual_seed(seed)
    cfg = ModelConfig(vocab_size=97, hidden_size=32, num_layers=4, num_heads=2, num_kv_heads=1, head_dim=16,
                      rotary_dim=8, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32,
                      layer_types=("linear_attention", "full_attention", "linear_attention", "full_attention"),
                      initializer_range=0.1)
    return Model(cfg).train()


def _docs(lengths: list[int], seed: int = 1) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(3, 97, (n,), generator=g).tolist() for n in lengths]


def _separate(model: Model, docs: list[list[int]]) -> tuple[torch.Tensor, int]:
    """Sum of next-token losses of each document run alone (no packing, no cu_seqlens), and the target count."""
    total, count = 0.0, 0
    for ids in docs:
        x = torch.tensor(ids)[None]
        logits = model(x).logits[0, :-1]
        total = total + F.cross_entropy(logits.float(), x[0, 1:], reduction="sum")
        count += len(ids) - 1
    return total, count


@pytest.mark.parametrize("lengths", [
    [37, 63, 28],          # boundaries at 37 and 100: inside lightning blocks 0 and 1
    [1, 64, 65, 2, 130],   # a one-token document, exact block multiples, a document spanning three blocks
])
def test_packed_loss_equals_separate_documents(lengths):
    model = _model()
    docs = _docs(lengths)
    # one row holding every document (no BOS/EOS added, so each document is exactly `ids`)
    batch = pack_documents(docs, sum(lengths), bos_id=None, eos_id=None)
    assert batch.batch_size == 1 and len(batch.cu_seqlens[0]) == len(lengths) + 1
    loss_sum, metrics = make_lm_loss(0.0)(model, batch)
    ref_sum, ref_count = _separate(model, docs)
    assert int(metrics["tokens"]) == ref_count
    assert abs(loss_sum.item() / ref_count - ref_sum.item() / ref_count) <= TOL * ref_sum.item() / ref_count
    # and the gradients agree
    loss_sum.backward()
    packed_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    ref_sum.backward()
    for g, r in zip(packed_grads, (p.grad for p in model.parameters())):
        assert (g - r).abs().max() <= TOL * max(r.abs().max().item(), 1e-3)


def test_per_token_losses_match_inside_a_block():
    """Stronger than the mean: every target's loss matches (a leak across the boundary at 37 would show at 37+)."""
    model = _model().eval()
    docs = _docs([37, 50, 40])
    batch = pack_documents(docs, 127, bos_id=None, eos_id=None).flatten()
    with torch.no_grad():
        logits = model(batch.input_ids, cu_seqlens=batch.cu_seqlens[0]).logits[0]
        packed = F.cross_entropy(logits, batch.labels[0].clamp_min(0), reduction="none")[batch.labels[0] >= 0]
        alone = torch.cat([F.cross_entropy(model(torch.tensor(d)[None]).logits[0, :-1], torch.tensor(d[1:]),
                                           reduction="none") for d in docs])
    assert (packed - alone).abs().max() <= TOL * alone.abs().max()


def test_several_rows_flattened_with_padding():
    """Rows of whole documents, padded, flattened to [1, B*T]: still each document alone."""
    model = _model(seed=3)
    docs = _docs([40, 20, 70, 9, 33], seed=5)
    examples = [(d, [0] + [1] * (len(d) - 1)) for d in docs]  # every next token is a target
    batch = pack_sft(examples, 80, pad_id=0)
    assert batch.batch_size >= 2
    loss_sum, metrics = make_lm_loss(0.0)(model, batch)
    ref_sum, ref_count = _separate(model, docs)
    assert int(metrics["tokens"]) == ref_count
    assert abs(loss_sum.item() - ref_sum.item()) <= TOL * ref_sum.item()


def test_lm_loss_reports_sums_and_expert_counts():
    model = _model()
    batch = pack_documents(_docs([30, 30]), 32, bos_id=1, eos_id=2)
    loss, m = make_lm_loss(0.5)(model, batch)
    assert set(m) == {"tokens", "positions", "loss", "aux_loss", "expert_counts"}
    assert int(m["positions"]) == batch.input_ids.numel()
    assert m["expert_counts"].shape == (4, 4) and int(m["expert_counts"][0].sum()) == 2 * batch.input_ids.numel()
    assert loss.item() == pytest.approx(m["loss"].item() + 0.5 * m["aux_loss"].item(), rel=1e-6)
