"""Fixtures for the chat tests: a tiny byte-level BPE tokenizer with the M2 special tokens, and its HF wrapper."""

from __future__ import annotations

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from xinzhou.chat import chat_template
from xinzhou.chat.template import SPECIAL_TOKENS

CORPUS = [
    "You are a helpful assistant. What is the weather in Paris? Let me check the weather tool.",
    '<invoke name="get_weather">\n<parameter name="location">Paris</parameter>\n</invoke>\n',
    "The answer is 42. def f(x):\n    return x * 2\n\n  indented  text\t tabs é 中文 🙂",
    '{"name": "calculator", "description": "Evaluate", "parameters": {"type": "object"}}',
]


@pytest.fixture(scope="session")
def tokenizer() -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=700, special_tokens=list(SPECIAL_TOKENS), initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(CORPUS * 4, trainer)
    return tok


@pytest.fixture(scope="session")
def hf_tokenizer(tokenizer: Tokenizer):
    transformers = pytest.importorskip("transformers")
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tokenizer, chat_template=chat_template())

