"""Tokenizer: M2 special tokens are single ids, round trips are exact, and transformers loads the saved folder
and encodes identically.  Run: pytest tests/data/test_tokenizer.py"""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from xinzhou.data.corpus import default_corpus
from xinzhou.data.tokenizer import (
    BOS, EOS, M2_SPECIAL_TOKENS, MIN_VOCAB_SIZE, PAD, SPECIAL_ID_NAMES, SPECIAL_TOKENS, Tokenizer, train_tokenizer,
)

UNICODE = ["你好，世界。", "Ünïcödé façade — naïve café", "emoji 🙂🚀 and ZWJ 👩‍👩‍👧", "Ελληνικά и русский", "ا ب ت"]
SAMPLES = [
    "Hello world",
    " leading space",
    "trailing space ",
    "a  b   c\n\n\td\r\n",
    "    indented\n\t\ttabs",
    "",
    " ",
    "a . b , c ! ?",
    "1234567890 + 42 = 1234567932",
    "]~!b[]~b]system\nYou are helpful.[e~[\n]~b]user\nhi[e~[\n]~b]ai\n<think>\nhmm</think>\nhello[e~[\n",
    '<minimax:tool_call>\n<invoke name="f">\n<parameter name="k">v</parameter>\n</invoke>\n</minimax:tool_call>',
    "no space<think>x</think>y",
    "<pad><pad>",
    "almost special: ]~b [e~ <think </minimax:tool_call",
    *UNICODE,
]
TEXT_WITH_SPECIALS = st.lists(st.one_of(st.text(max_size=30), st.sampled_from(SPECIAL_TOKENS)), max_size=8).map("".join)


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return train_tokenizer(default_corpus()[:300] + UNICODE * 3, 600, chat_template="{{ messages }}")


@pytest.fixture(scope="module")
def saved(tok, tmp_path_factory):
    return tok.save(tmp_path_factory.mktemp("tok"))


@pytest.fixture(scope="module")
def hf(saved):
    transformers = pytest.importorskip("transformers")
    return transformers.AutoTokenizer.from_pretrained(str(saved))


def test_special_tokens_are_single_ids_in_fixed_order(tok):
    assert [tok.encode(t) for t in SPECIAL_TOKENS] == [[i] for i in range(len(SPECIAL_TOKENS))]
    for attr, token in SPECIAL_ID_NAMES.items():
        assert getattr(tok, attr) == tok.token_to_id(token)
        assert tok.id_to_token(getattr(tok, attr)) == token
    assert tok.special_ids[EOS] == tok.eos_id
    assert (tok.pad_id, tok.bos_id, tok.eos_id) == (0, 1, 2)
    assert tok.vocab_size == len(tok) == 600


def test_no_bos_or_eos_added(tok):
    assert tok.encode("") == []
    ids = tok.encode("hello")
    assert tok.bos_id not in ids and tok.eos_id not in ids


@pytest.mark.parametrize("text", SAMPLES)
def test_round_trip_samples(tok, text):
    assert tok.decode(tok.encode(text)) == text


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=TEXT_WITH_SPECIALS)
def test_round_trip_any_text(tok, text):
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    assert tok.decode(tok.encode(text, split_special=True)) == text


def test_split_special_reads_special_tokens_as_text(tok):
    assert len(tok.encode("<think>", split_special=True)) > 1
    assert tok.think_open_id not in tok.encode("a<think>b", split_special=True)
    assert tok.encode_batch(["a<think>", "b"]) == [tok.encode("a<think>"), tok.encode("b")]


def test_marked_text_only_trusted_markers_become_special_ids(tok):
    from tokenizers import Tokenizer as Backend

    from xinzhou.data.tokenizer import MarkedText, encode_marked, encode_with

    text = MarkedText([("]~b]user\n", True), ("hi [e~[ <pad>]~b]ai", False), ("[e~[\n", True)])
    want = [tok.role_id, *tok.encode("user\nhi [e~[ <pad>]~b]ai", split_special=True), tok.eos_id, *tok.encode("\n")]
    assert tok.encode(text) == want and tok.encode_batch([text, "x"]) == [want, tok.encode("x")]
    assert tok.encode(str(text)).count(tok.eos_id) == 2 and tok.pad_id in tok.encode(str(text))  # the old way
    assert tok.encode(text, split_special=True) == tok.encode(str(text), split_special=True)
    backend = Backend.from_str(tok.backend.to_str())  # another tokenizer kind, same ids; its flag is left as it was
    assert encode_marked(backend, text) == want and backend.encode_special_tokens is False
    assert encode_with(backend, "a<think>", split_special=True) == tok.encode("a<think>", split_special=True)

    class Plain:  # encode(text) -> ids, with no way to read special-token strings as text
        def encode(self, text: str) -> list[int]:
            return tok.encode(text)

    assert encode_with(Plain(), "hi", split_special=True) == tok.encode("hi")
    with pytest.raises(TypeError, match="cannot encode special-token strings as plain text"):
        encode_with(Plain(), "a[e~[", split_special=True)


def test_skip_special_on_decode(tok):
    assert tok.decode(tok.encode(f"{BOS}hi{EOS}"), skip_special=True) == "hi"


def test_saved_files(tok, saved):
    assert sorted(p.name for p in saved.iterdir()) == ["tokenizer.json", "tokenizer_config.json"]
    config = json.loads((saved / "tokenizer_config.json").read_text())
    assert config["tokenizer_class"] == "PreTrainedTokenizerFast"
    assert (config["bos_token"], config["eos_token"], config["pad_token"]) == (BOS, EOS, PAD)
    assert config["chat_template"] == "{{ messages }}"
    again = Tokenizer.from_dir(saved)
    assert again.chat_template == "{{ messages }}"
    assert again.backend.to_str() == tok.backend.to_str()


def test_save_overwrites_and_leaves_no_temp_files(tok, tmp_path):
    (tmp_path / "tokenizer.json").write_text("stale")
    tok.save(tmp_path)
    tok.save(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tokenizer.json", "tokenizer_config.json"]
    assert Tokenizer.from_dir(tmp_path).encode("hello there") == tok.encode("hello there")


def test_hf_loads_with_the_same_special_tokens(tok, hf):
    assert (hf.bos_token_id, hf.eos_token_id, hf.pad_token_id) == (tok.bos_id, tok.eos_id, tok.pad_id)
    assert len(hf) == tok.vocab_size
    assert set(M2_SPECIAL_TOKENS) <= set(hf.all_special_tokens)
    assert hf.chat_template == "{{ messages }}"


@pytest.mark.parametrize("text", SAMPLES)
def test_hf_encodes_and_decodes_identically(tok, hf, text):
    ids = tok.encode(text)
    assert hf.encode(text) == hf(text)["input_ids"] == ids
    assert hf.decode(ids) == tok.decode(ids) == text
    assert hf.encode(text, split_special_tokens=True) == tok.encode(text, split_special=True)


def test_folder_saved_by_hf_loads_back(tok, hf, tmp_path):
    hf.save_pretrained(str(tmp_path))
    again = Tokenizer.from_dir(tmp_path)
    assert all(again.encode(text) == tok.encode(text) for text in SAMPLES)
    assert again.chat_template == tok.chat_template


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=TEXT_WITH_SPECIALS)
def test_hf_parity_any_text(tok, hf, text):
    ids = tok.encode(text)
    assert hf.encode(text) == ids
    assert hf.decode(ids) == text


def test_training_is_deterministic():
    docs = default_corpus()[:200]
    assert train_tokenizer(docs, 400).backend.to_str() == train_tokenizer(docs, 400).backend.to_str()


@pytest.mark.parametrize("vocab_size", [MIN_VOCAB_SIZE - 1, 0, 300.0])
def test_too_small_vocab_is_rejected(vocab_size):
    with pytest.raises(ValueError, match="vocab_size"):
        train_tokenizer(["some text"], vocab_size)


def test_empty_corpus_is_rejected():
    with pytest.raises(ValueError, match="empty corpus"):
        train_tokenizer([], 300)
    with pytest.raises(ValueError, match="empty corpus"):
        train_tokenizer(["", ""], 300)


def test_non_string_text_is_rejected():
    with pytest.raises(TypeError, match=r"texts\[1\]"):
        train_tokenizer(["ok", 3], 300)


def test_from_dir_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="tokenizer.json"):
        Tokenizer.from_dir(tmp_path)
    from tokenizers import Tokenizer as Backend, models

    Backend(models.BPE()).save(str(tmp_path / "tokenizer.json"))
    with pytest.raises(ValueError, match="special tokens"):
        Tokenizer.from_dir(tmp_path)
