"""Readers fail early with file and line; the endless batch streams are deterministic, visit every document once
per epoch, shard across ranks, and resume bit-identically from a small JSON state.
Run: pytest tests/data/test_loaders.py"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from xinzhou.data.loaders import (
    PretrainBatches, SFTBatches, TokenizedCorpus, load_documents, read_documents, read_jsonl, read_sft_jsonl,
    read_text, split_documents,
)
from xinzhou.data.packing import IGNORE_INDEX, PackedBatch


def _write(path, text: str):
    path.write_text(text, encoding="utf-8")
    return path


def _corpus(num_docs: int = 23, seed: int = 0) -> TokenizedCorpus:
    rng = np.random.RandomState(seed)
    return TokenizedCorpus.from_ids([rng.randint(3, 100, size=rng.randint(1, 30)) for _ in range(num_docs)])


def _pretrain(corpus: TokenizedCorpus | None = None, **kw) -> PretrainBatches:
    args = dict(seq_len=16, batch_size=3, bos_id=1, eos_id=2, pad_id=0, seed=7) | kw
    return PretrainBatches(_corpus() if corpus is None else corpus, **args)


def _sft(**kw) -> SFTBatches:
    rng = np.random.RandomState(1)
    examples = [(rng.randint(3, 100, size=n), rng.randint(0, 2, size=n)) for n in rng.randint(1, 16, size=19)]
    return SFTBatches(examples, **(dict(seq_len=16, batch_size=3, seed=7) | kw))


def _same(a: PackedBatch, b: PackedBatch) -> bool:
    return (torch.equal(a.input_ids, b.input_ids) and torch.equal(a.labels, b.labels)
            and torch.equal(a.position_ids, b.position_ids)
            and all(torch.equal(x, y) for x, y in zip(a.cu_seqlens, b.cu_seqlens, strict=True)))


# --- readers ------------------------------------------------------------------------------------------------------
def test_read_text_splits_on_blank_lines(tmp_path):
    path = _write(tmp_path / "c.txt", "\n\nfirst line\nsecond line\n\n \t \nthird  doc \n\n\n  indented\n")
    assert list(read_text(path)) == ["first line\nsecond line", "third  doc ", "  indented"]
    assert list(read_documents(path)) == list(read_text(path))


def test_read_jsonl(tmp_path):
    path = _write(tmp_path / "c.jsonl", '{"text": "a"}\n\n{"text": "b\\n\\nc", "id": 2}\n{"body": "x", "text": ""}\n')
    assert list(read_jsonl(path)) == ["a", "b\n\nc", ""]
    assert list(read_documents(path)) == ["a", "b\n\nc", ""]
    assert load_documents(path) == ["a", "b\n\nc"]
    assert list(read_jsonl(_write(tmp_path / "d.jsonl", '{"body": "x"}\n'), field="body")) == ["x"]
    with pytest.raises(ValueError, match="JSON lines"):
        read_documents(_write(tmp_path / "c.json", '[{"text": "a"}]'))


@pytest.mark.parametrize("reader", [read_text, read_jsonl, read_documents, load_documents, read_sft_jsonl])
def test_missing_file_fails_at_call(tmp_path, reader):
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        reader(tmp_path / "nope.jsonl")  # not only when iterated
    with pytest.raises(ValueError, match="not a file"):
        reader(tmp_path)


@pytest.mark.parametrize("content, message", [
    ('{"text": "a"}\n{"text": "b"\n', r"c.jsonl:2: not valid JSON"),
    ('{"text": "a"}\n\n[1, 2]\n', r"c.jsonl:3: expected a JSON object, got list"),
    ('{"text": "a"}\n{"body": "b"}\n', r"c.jsonl:2: no field 'text' \(fields: \['body'\]\)"),
    ('{"text": 5}\n', r"c.jsonl:1: field 'text' is a int"),
])
def test_bad_jsonl_names_file_and_line(tmp_path, content, message):
    with pytest.raises(ValueError, match=message):
        list(read_jsonl(_write(tmp_path / "c.jsonl", content)))


@pytest.mark.parametrize("name, content", [("e.txt", ""), ("e.txt", "\n \n\n"), ("e.jsonl", '{"text": ""}\n')])
def test_empty_corpus(tmp_path, name, content):
    with pytest.raises(ValueError, match=f"corpus .*{name} is empty"):
        load_documents(_write(tmp_path / name, content))


def test_read_sft_jsonl(tmp_path):
    lines = [{"input_ids": [1, 2, 3], "loss_mask": [0, 1, 1]}, {"messages": [{"role": "user", "content": "hi"}]}]
    path = _write(tmp_path / "s.jsonl", "\n".join(json.dumps(x) for x in lines))
    with pytest.raises(ValueError, match=r"s.jsonl:2: has 'messages'.*chat renderer"):
        list(read_sft_jsonl(path))
    render = lambda record: ([7] * len(record["messages"]), [True])  # noqa: E731
    assert list(read_sft_jsonl(path, render=render)) == [([1, 2, 3], [0, 1, 1]), ([7], [1])]
    bad = _write(tmp_path / "b.jsonl", '{"input_ids": [1, 2], "loss_mask": [1]}\n')
    with pytest.raises(ValueError, match="b.jsonl:1: input_ids and loss_mask"):
        list(read_sft_jsonl(bad))
    other = _write(tmp_path / "o.jsonl", '{"prompt": "x"}\n')
    with pytest.raises(ValueError, match=r"o.jsonl:1: expected 'input_ids' and 'loss_mask', or 'messages'"):
        list(read_sft_jsonl(other))


def test_split_documents():
    docs = [f"doc {i}" for i in range(100)]
    train, held_out = split_documents(docs, 0.1, seed=3)
    assert len(held_out) == 10 and sorted(train + held_out, key=docs.index) == docs
    assert train == [d for d in docs if d in train] and held_out == [d for d in docs if d in held_out]
    assert split_documents(docs, 0.1, seed=3) == (train, held_out) != split_documents(docs, 0.1, seed=4)
    assert [len(x) for x in split_documents(["a", "b"], 0.01)] == [1, 1]
    with pytest.raises(ValueError, match="at least 2 documents"):
        split_documents(["a"])
    with pytest.raises(ValueError, match="eval_fraction"):
        split_documents(docs, 1.0)


def test_tokenized_corpus():
    corpus = TokenizedCorpus.from_ids([[1, 2], [], [3]])
    assert len(corpus) == 2 and corpus.num_tokens == 3 and corpus[1].tolist() == [3]
    assert corpus.tokens.dtype == np.int32
    assert corpus.fingerprint() != TokenizedCorpus.from_ids([[1], [2, 3]]).fingerprint()
    with pytest.raises(ValueError, match="corpus is empty"):
        TokenizedCorpus.from_ids([[], []])


# --- batch streams --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("make", [_pretrain, _sft, lambda **kw: _pretrain(shuffle=False, **kw)])
@pytest.mark.parametrize("k", [0, 1, 5, 17])
def test_resume_gives_the_same_next_batches(make, k):
    """Consume k batches, save the state through JSON, and a new iterator continues exactly like the original
    (k=17 crosses several epochs)."""
    original = make()
    for _ in range(k):
        next(original)
    state = json.loads(json.dumps(original.state_dict()))
    assert len(state) <= 4
    resumed = make()
    resumed.load_state_dict(state)
    for _ in range(6):
        assert _same(next(resumed), next(original))


def test_batches_are_deterministic_and_seeded():
    a, b, c = _pretrain(), _pretrain(), _pretrain(seed=8)
    first = [next(a) for _ in range(4)]
    assert all(_same(x, next(b)) for x in first)
    assert not all(_same(x, next(c)) for x in first)


def test_each_epoch_visits_every_document_once():
    corpus = _corpus(num_docs=10)
    it = _pretrain(corpus, seq_len=8, batch_size=1, bos_id=None, eos_id=None)
    # without BOS/EOS the rows are the shuffled documents end to end: read two epochs' worth of tokens
    tokens = []
    while len(tokens) < 2 * corpus.num_tokens:
        tokens += next(it).input_ids[0].tolist()
    epochs = [tokens[: corpus.num_tokens], tokens[corpus.num_tokens : 2 * corpus.num_tokens]]
    assert all(sorted(e) == sorted(corpus.tokens.tolist()) for e in epochs)
    assert epochs[0] != epochs[1]  # reshuffled
    orders = [[it._index(k) for k in range(e * 10, (e + 1) * 10)] for e in range(3)]
    assert all(sorted(o) == list(range(10)) for o in orders) and orders[0] != orders[1]


def test_rows_are_well_formed():
    it = _pretrain()
    for _ in range(10):
        batch = next(it)
        assert batch.input_ids.shape == (3, 16)
        assert (batch.labels != IGNORE_INDEX).any() and batch.num_targets <= 48
        assert all(cu[0] == 0 and cu[-1] == 16 for cu in batch.cu_seqlens)


@pytest.mark.parametrize("make", [_pretrain, _sft])
def test_sharding_splits_one_global_batch(make):
    world = make(batch_size=6)
    ranks = [make(batch_size=2, rank=r, world_size=3) for r in range(3)]
    for _ in range(3):
        full = next(world)
        parts = [next(r) for r in ranks]
        assert all(_same(p, full.rows(2 * i, 2 * i + 2)) for i, p in enumerate(parts))
        assert len({json.dumps(r.state_dict()) for r in ranks}) == 1


def test_state_from_other_data_is_rejected():
    it = _pretrain()
    next(it)
    with pytest.raises(ValueError, match="different corpus or seed"):
        _pretrain(_corpus(seed=1)).load_state_dict(it.state_dict())
    with pytest.raises(ValueError, match="different corpus or seed"):
        _pretrain(seed=8).load_state_dict(it.state_dict())


@pytest.mark.parametrize("kw, message", [
    (dict(seq_len=1), "seq_len"), (dict(batch_size=0), "batch_size"), (dict(rank=2, world_size=2), "rank"),
    (dict(seed=-1), "seed"),
])
def test_bad_arguments_fail_at_construction(kw, message):
    for make in (_pretrain, _sft):
        with pytest.raises(ValueError, match=message):
            make(**kw)


def test_sft_stream_validates_examples_up_front():
    with pytest.raises(ValueError, match="example 1 has 20 tokens"):
        SFTBatches([([1], [1]), (list(range(20)), [1] * 20)], seq_len=8, batch_size=1)
    it = SFTBatches([(list(range(20)), [1] * 20)], seq_len=8, batch_size=2, truncate=True)
    assert next(it).input_ids.tolist() == [list(range(8))] * 2


def test_package_exports_resolve():
    import xinzhou.data as data

    assert all(getattr(data, name) is not None for name in data.__all__)
    with pytest.raises(AttributeError):
        data.not_a_name  # noqa: B018
