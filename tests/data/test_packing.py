"""Packing: hand-checked rows, hypothesis invariants (every token once and in order, targets never cross a
document, cu_seqlens and position_ids agree), SFT masks, and exact per-document losses from a packed batch.
Run: pytest tests/data/test_packing.py"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from xinzhou.data.packing import IGNORE_INDEX, PackedBatch, check_seq_len, pack_documents, pack_sft, wrap_document

PAD = 99
DOCS = st.lists(st.lists(st.integers(0, 50), max_size=12), min_size=1, max_size=8)
ENDS = st.sampled_from([(None, None), (None, 98), (97, 98), (97, None)])


def _check_structure(batch: PackedBatch) -> None:
    """cu_seqlens int32 from 0 to T, strictly increasing; positions restart at each segment; flatten agrees."""
    B, T = batch.input_ids.shape
    assert batch.labels.shape == batch.position_ids.shape == (B, T) and len(batch.cu_seqlens) == B
    for b, cu in enumerate(batch.cu_seqlens):
        assert cu.dtype == torch.int32 and cu[0] == 0 and cu[-1] == T and bool((cu[1:] > cu[:-1]).all())
        expected = torch.cat([torch.arange(int(e - s)) for s, e in zip(cu[:-1], cu[1:])])
        assert torch.equal(batch.position_ids[b], expected)
        # a label is set only where the next position continues the segment (or at the row end, see below)
        starts = set(cu[1:-1].tolist())
        for t in range(T - 1):
            if t + 1 in starts:
                assert batch.labels[b, t] == IGNORE_INDEX
    flat = batch.flatten()
    assert flat.input_ids.shape == (1, B * T) and len(flat.cu_seqlens) == 1
    assert flat.cu_seqlens[0].dtype == torch.int32
    assert flat.cu_seqlens[0].tolist() == sorted({b * T + int(c) for b, cu in enumerate(batch.cu_seqlens) for c in cu})
    assert flat.max_seqlen == batch.max_seqlen == max(int((cu[1:] - cu[:-1]).max()) for cu in batch.cu_seqlens)


def test_hand_example():
    batch = pack_documents([[1, 2, 3], [4, 5]], 4, bos_id=None, eos_id=9, pad_id=PAD)
    assert batch.input_ids.tolist() == [[1, 2, 3, 9], [4, 5, 9, PAD]]
    assert batch.labels.tolist() == [[2, 3, 9, -100], [5, 9, -100, -100]]
    assert [cu.tolist() for cu in batch.cu_seqlens] == [[0, 4], [0, 3, 4]]
    assert batch.position_ids.tolist() == [[0, 1, 2, 3], [0, 1, 2, 0]]
    assert batch.num_targets == 5
    assert batch.flatten().cu_seqlens[0].tolist() == [0, 4, 7, 8]


def test_split_document_continues_as_new_segment():
    # stream: 7 1 2 3 4 5 8 | 7 6 8 ; rows of 4: [7 1 2 3] [4 5 8 7] [6 8 pad pad]
    batch = pack_documents([[1, 2, 3, 4, 5], [6]], 4, bos_id=7, eos_id=8, pad_id=PAD)
    assert batch.input_ids.tolist() == [[7, 1, 2, 3], [4, 5, 8, 7], [6, 8, PAD, PAD]]
    # row 0's last target is row 1's first token (same document); BOS is never a target
    assert batch.labels.tolist() == [[1, 2, 3, 4], [5, 8, -100, 6], [8, -100, -100, -100]]
    assert [cu.tolist() for cu in batch.cu_seqlens] == [[0, 4], [0, 3, 4], [0, 2, 4]]
    assert batch.position_ids.tolist() == [[0, 1, 2, 3], [0, 1, 2, 0], [0, 1, 0, 1]]


@settings(max_examples=100, deadline=None)
@given(docs=DOCS, seq_len=st.integers(2, 16), ends=ENDS)
def test_pretrain_packing_invariants(docs, seq_len, ends):
    bos, eos = ends
    wrapped = [w.tolist() for d in docs if len(w := wrap_document(d, bos, eos))]
    if not wrapped:
        with pytest.raises(ValueError, match="empty"):
            pack_documents(docs, seq_len, bos_id=bos, eos_id=eos, pad_id=PAD)
        return
    batch = pack_documents(docs, seq_len, bos_id=bos, eos_id=eos, pad_id=PAD)
    _check_structure(batch)
    stream = [t for w in wrapped for t in w]
    doc_of = [i for i, w in enumerate(wrapped) for _ in w]
    n = len(stream)
    assert batch.batch_size == -(-n // seq_len)
    # every token of every document appears exactly once, in order, then only padding
    flat_ids = batch.input_ids.flatten().tolist()
    assert flat_ids[:n] == stream and set(flat_ids[n:]) <= {PAD}
    # targets: exactly each document's tokens after its first, in order, and never across documents
    flat_labels = batch.labels.flatten().tolist()
    assert [x for x in flat_labels if x != IGNORE_INDEX] == [t for w in wrapped for t in w[1:]]
    for p, label in enumerate(flat_labels):
        if label != IGNORE_INDEX:
            assert p + 1 < n and doc_of[p] == doc_of[p + 1] and label == stream[p + 1]
    # segment starts are exactly the row starts and the document starts (plus the padding start)
    T = seq_len
    for b, cu in enumerate(batch.cu_seqlens):
        expected = {0} | {p - b * T for p in range(b * T, min(n, (b + 1) * T)) if p > 0 and doc_of[p] != doc_of[p - 1]}
        if (b + 1) * T > n > b * T:
            expected.add(n - b * T)
        assert set(cu[:-1].tolist()) == expected


@settings(max_examples=100, deadline=None)
@given(
    examples=st.lists(st.lists(st.tuples(st.integers(0, 50), st.booleans()), min_size=1, max_size=10),
                      min_size=1, max_size=8),
    seq_len=st.integers(10, 24),
)
def test_sft_packing_invariants(examples, seq_len):
    pairs = [([t for t, _ in ex], [int(m) for _, m in ex]) for ex in examples]
    batch = pack_sft(pairs, seq_len, pad_id=PAD)
    _check_structure(batch)
    ids, labels = batch.input_ids.tolist(), batch.labels.tolist()
    k = 0
    for b, cu in enumerate(batch.cu_seqlens):
        bounds = cu.tolist()
        for s, e in zip(bounds[:-1], bounds[1:]):
            if k < len(pairs) and ids[b][s:e] == pairs[k][0] and (e - s) == len(pairs[k][0]):
                ex_ids, ex_mask = pairs[k]
                # loss exactly on masked tokens after the first, predicted from the previous position
                want = [ex_ids[i + 1] if ex_mask[i + 1] else IGNORE_INDEX for i in range(e - s - 1)] + [IGNORE_INDEX]
                assert labels[b][s:e] == want
                k += 1
            else:  # the padding at the end of the row
                assert e == seq_len and set(ids[b][s:e]) == {PAD} and set(labels[b][s:e]) == {IGNORE_INDEX}
    assert k == len(pairs)  # every example appears whole, in order, in one row


def test_sft_labels_hand_example():
    batch = pack_sft([([5, 6, 7, 8], [0, 0, 1, 1]), ([9, 10], [1, 1])], 8, pad_id=0)
    assert batch.input_ids.tolist() == [[5, 6, 7, 8, 9, 10, 0, 0]]
    assert batch.labels.tolist() == [[-100, 7, 8, -100, 10, -100, -100, -100]]
    assert batch.cu_seqlens[0].tolist() == [0, 4, 6, 8]


def test_sft_errors_and_truncation():
    with pytest.raises(ValueError, match="example 1 has 5 tokens, more than seq_len=4"):
        pack_sft([([1, 2], [0, 1]), ([1, 2, 3, 4, 5], [1] * 5)], 4)
    batch = pack_sft([([1, 2, 3, 4, 5], [1] * 5)], 4, truncate=True)
    assert batch.input_ids.tolist() == [[1, 2, 3, 4]]
    with pytest.raises(ValueError, match="example 0: input_ids and loss_mask"):
        pack_sft([([1, 2], [1])], 4)
    with pytest.raises(ValueError, match="loss_mask must hold only 0 and 1"):
        pack_sft([([1, 2], [1, 2])], 4)
    with pytest.raises(ValueError, match="non-negative ints"):
        pack_sft([([1, -2], [1, 1])], 4)
    with pytest.raises(ValueError, match="empty"):
        pack_sft([([], [])], 4)
    with pytest.raises(ValueError, match="dataset is empty"):
        pack_sft([], 4)


@pytest.mark.parametrize("seq_len", [1, 0, -3, 2.0, "8", True])
def test_bad_seq_len(seq_len):
    with pytest.raises(ValueError, match="seq_len must be an int >= 2"):
        check_seq_len(seq_len)
    with pytest.raises(ValueError, match="seq_len"):
        pack_documents([[1, 2]], seq_len, bos_id=None, eos_id=None)


def _segment_cumsum_logits(batch: PackedBatch, emb: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """A toy causal model that resets its state at every cu_seqlens boundary (like a lightning layer) and
    reads position_ids: h_t = sum of embeddings since the segment start, plus a position term."""
    rows = []
    for b, cu in enumerate(batch.cu_seqlens):
        x = emb[batch.input_ids[b]] + 0.1 * batch.position_ids[b, :, None]
        rows.append(torch.cat([x[s:e].cumsum(0) for s, e in zip(cu[:-1].tolist(), cu[1:].tolist())]))
    return torch.stack(rows) @ out


def test_packed_batch_gives_exact_per_document_losses():
    gen = torch.Generator().manual_seed(0)
    emb, out = torch.randn(20, 8, generator=gen, dtype=torch.float64), torch.randn(8, 20, generator=gen,
                                                                                   dtype=torch.float64)
    docs = [torch.randint(0, 17, (n,), generator=gen).tolist() for n in (3, 9, 1, 5, 7, 2, 4)]
    examples = [(wrap_document(d, 17, 18).tolist(), [1] * (len(d) + 2)) for d in docs]

    def loss_sum(batch: PackedBatch) -> torch.Tensor:
        logits = _segment_cumsum_logits(batch, emb, out)
        return torch.nn.functional.cross_entropy(logits.flatten(0, 1), batch.labels.flatten(), reduction="sum")

    one_by_one = sum(loss_sum(pack_sft([ex], 16, pad_id=19)) for ex in examples)
    packed = pack_sft(examples, 16, pad_id=19)
    assert packed.batch_size < len(examples)
    torch.testing.assert_close(loss_sum(packed), one_by_one, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(loss_sum(packed.flatten()), one_by_one, rtol=1e-12, atol=1e-12)
    # pretraining packing of documents that fit gives the same targets as SFT packing with an all-ones mask
    assert packed.num_targets == pack_documents(docs, 16, bos_id=17, eos_id=18).num_targets == sum(
        len(d) + 1 for d in docs)


def test_split_rows_and_to():
    batch = pack_documents([list(range(30))], 4, bos_id=None, eos_id=None)
    parts = batch.split(3)
    assert [p.batch_size for p in parts] == [3, 3, 2]
    assert torch.equal(torch.cat([p.input_ids for p in parts]), batch.input_ids)
    assert batch.to("cpu").input_ids.equal(batch.input_ids)
    with pytest.raises(ValueError, match="batch_size"):
        batch.split(0)


def test_sft_row_fill_and_best_seq_len_by_hand():
    from xinzhou.data.packing import best_sft_seq_len, sft_row_fill

    # rows of 10: [6 | 6, 3 | 3, 4] -> 22 tokens in 30 positions; a 12 is cut to 10 and fills its row alone
    assert sft_row_fill([6, 6, 3, 3, 4], 10) == pytest.approx(22 / 30)
    assert sft_row_fill([12], 10) == 1.0 and sft_row_fill([], 10) == 1.0
    # 5 and 6 never pair in rows of 10, so every row is one example; rows of 11 pair them
    assert sft_row_fill([5, 6] * 4, 10) == pytest.approx(44 / 80)
    assert best_sft_seq_len([5, 6] * 4, 12, multiple=1) == (11, 1.0)
    assert best_sft_seq_len([500, 590] * 4, 1024) == (640, pytest.approx(1090 / 1280))


def test_sft_warns_when_rows_are_mostly_padding():
    import warnings

    from xinzhou.train.sft import warn_about_padding

    with pytest.warns(UserWarning, match=r"SFT rows are 47% padding at --seq_len=1024.*--seq_len=640 would be 15%"):
        warn_about_padding([500, 590] * 4, 1024)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warn_about_padding([500, 500] * 4, 1024)  # two per row: 2% padding, no warning
        warn_about_padding([], 1024)
