"""SFT starts from a pretraining export, trains only the assistant's tokens of M2-format chats (bundled Q/A pairs
or a JSONL of messages), keeps the tokenizer, and exports again.
Run: pytest tests/train/test_sft.py"""

from __future__ import annotations

import json

import pytest
from train_helpers import debug_config

from xinzhou.configs.train import resolve
from xinzhou.data.corpus import default_corpus
from xinzhou.train.metrics import read_jsonl
from xinzhou.train.pretrain import pretrain
from xinzhou.train.sft import load_examples, qa_conversations, sft


@pytest.fixture(scope="module")
def base(tmp_path_factory, small_corpus):
    out = tmp_path_factory.mktemp("base")
    return pretrain(debug_config(out, small_corpus, max_steps=4, eval_every=0)).export_dir


def _sft_config(out, init_from, **kw):
    return resolve("sft-tiny", {"out_dir": str(out), "init_from": str(init_from), "seq_len": 512, "batch_size": 4,
                                "micro_batch_size": 2, "max_steps": 6, "eval_every": 3, "save_every": 6,
                                "truncate": True,
                                "eval_tokens": 2048, "progress": False, **kw})


def test_qa_conversations():
    chats = qa_conversations(["Intro.\nQ: Who?\nA: Me.\nQ: Where?\nA: Here.", "No questions."])
    assert chats == [[{"role": "user", "content": "Who?"}, {"role": "assistant", "content": "Me."},
                      {"role": "user", "content": "Where?"}, {"role": "assistant", "content": "Here."}]]
    assert len(qa_conversations(default_corpus())) > 300


def test_sft_on_bundled_chats(tmp_path, base):
    result = sft(_sft_config(tmp_path / "sft", base))
    records = read_jsonl(tmp_path / "sft" / "metrics.jsonl")
    evals = [r["eval_loss"] for r in records if "eval_loss" in r]
    assert len(evals) == 2 and evals[1] < evals[0]
    steps = [r for r in records if "loss" in r]
    assert all(r["tokens"] < r["positions"] for r in steps)  # only assistant tokens are targets
    assert (result.export_dir / "tokenizer.json").read_text() == (base / "tokenizer.json").read_text()


def test_sft_on_a_jsonl_of_messages(tmp_path, base):
    data = tmp_path / "chats.jsonl"
    rows = [{"messages": [{"role": "user", "content": f"What is {i} + 1?"},
                          {"role": "assistant", "content": f"{i} + 1 = {i + 1}."}]} for i in range(24)]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = _sft_config(tmp_path / "sft", base, data=str(data), max_steps=2, eval_every=0, export=False)
    from xinzhou.data.tokenizer import Tokenizer

    examples = load_examples(cfg, Tokenizer.from_dir(base))
    assert len(examples) == 24 and all(0 < sum(m) < len(ids) for ids, m in examples)
    assert sft(cfg).steps == 2


def test_sft_rejects_examples_longer_than_seq_len(tmp_path, base):
    with pytest.raises(ValueError, match="more than seq_len=64; raise seq_len, drop the example, or pass "
                                         "truncate=True"):
        sft(_sft_config(tmp_path / "sft", base, seq_len=64, truncate=False))
    assert not (tmp_path / "sft").exists()
