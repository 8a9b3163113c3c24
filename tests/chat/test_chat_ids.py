"""`to_ids`: segment-wise ids equal encoding the whole text, and the loss mask covers exactly the model's output."""

from __future__ import annotations

import pytest
from chat_strategies import conversation
from hypothesis import given, settings
from hypothesis import strategies as st

from xinzhou.chat import AssistantMessage, ToolCall, UserMessage, render, render_segments, to_ids
from xinzhou.chat.template import encode_text

CONV = [
    UserMessage("What is 2+2?"),
    AssistantMessage("Let me compute.", "simple sum", [ToolCall("calculator", {"expression": "2+2"})]),
    {"role": "tool", "content": "4"},
    AssistantMessage("It is 4.", "the tool said 4"),
    UserMessage("Thanks"),
    AssistantMessage("  You're welcome.", None),
]


def masked_text(tok, ids: list[int], mask: list[int]) -> list[str]:
    """The decoded runs of consecutive masked tokens."""
    runs, cur = [], []
    for i, m in zip(ids, mask, strict=True):
        if m:
            cur.append(i)
        elif cur:
            runs.append(cur)
            cur = []
    if cur:
        runs.append(cur)
    return [tok.decode(r, skip_special_tokens=False) for r in runs]


def test_mask_covers_assistant_output(tokenizer) -> None:
    out = to_ids(CONV, tokenizer, keep="all")
    assert out.text == render(CONV, keep="all")
    assert out.ids == tokenizer.encode(out.text).ids
    assert masked_text(tokenizer, out.ids, out.loss_mask) == [
        "<think>\nsimple sum\n</think>\n\nLet me compute.\n<minimax:tool_call>\n<invoke name=\"calculator\">\n"
        "<parameter name=\"expression\">2+2</parameter>\n</invoke>\n</minimax:tool_call>[e~[",
        "<think>\nthe tool said 4\n</think>\n\nIt is 4.[e~[",
        "\n  You're welcome.[e~[",  # GPT-2 pre-tokenizer: "\n " straddles the header/content boundary
    ]


def test_train_on_chain_masks_only_the_current_chain(tokenizer) -> None:
    out = to_ids(CONV, tokenizer, train_on="chain")
    assert masked_text(tokenizer, out.ids, out.loss_mask) == ["\n  You're welcome.[e~["]
    with pytest.raises(ValueError, match="train_on must be one of 'all', 'chain'"):
        to_ids(CONV, tokenizer, train_on="last")


def test_transformers_tokenizer_and_plain_encode(tokenizer, hf_tokenizer) -> None:
    ref = to_ids(CONV, tokenizer, add_generation_prompt=True)
    assert to_ids(CONV, hf_tokenizer, add_generation_prompt=True).ids == ref.ids

    class ListTokenizer:  # encode(text) -> list[int], no keyword arguments
        def encode(self, text: str) -> list[int]:
            return tokenizer.encode(text).ids

    assert to_ids(CONV, ListTokenizer(), add_generation_prompt=True) == ref
    with pytest.raises(TypeError, match="must return a list of ids"):
        encode_text(type("Bad", (), {"encode": lambda self, t: 3})(), "x")


@settings(max_examples=60, deadline=None, derandomize=True)
@given(conv=conversation(), gen=st.booleans(), keep=st.sampled_from(["chain", "all", "none"]))
def test_ids_equal_whole_text_encoding(conv, gen, keep, tokenizer) -> None:
    messages, tools = conv
    out = to_ids(messages, tokenizer, tools, add_generation_prompt=gen, keep=keep)
    assert out.text == render(messages, tools, add_generation_prompt=gen, keep=keep)
    assert out.ids == tokenizer.encode(out.text).ids
    assert len(out.loss_mask) == len(out.ids)
    # the masked tokens decode to exactly the model-output pieces of the rendering (plus at most the header's
    # newline, when a token straddles the boundary)
    pieces = [t for t, is_out in render_segments(messages, tools, add_generation_prompt=gen, keep=keep) if is_out]
    runs = masked_text(tokenizer, out.ids, out.loss_mask)
    assert len(runs) == len([p for p in pieces if p])
    for run, piece in zip(runs, [p for p in pieces if p], strict=True):
        assert run == piece or (run == "\n" + piece and piece[:1] in " \t\r\u2028")


def test_mask_is_exact_with_a_gpt4_style_pre_tokenizer(tokenizer) -> None:
    from tokenizers import Regex, Tokenizer, pre_tokenizers

    tok = Tokenizer.from_str(tokenizer.to_str())
    split = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
             r"""|\s*[\r\n]+|\s+(?!\S)|\s+""")
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Split(Regex(split), behavior="isolated"), pre_tokenizers.ByteLevel(use_regex=False)]
    )
    out = to_ids(CONV, tok)
    assert out.ids == tok.encode(out.text).ids
    want = tok.encode("  You're welcome.[e~[").ids
    masked = [i for i, m in zip(out.ids, out.loss_mask, strict=True) if m]
    # exactly the content is masked: the token before it is the previous turn's end marker, not a newline
    assert masked[-len(want) :] == want and masked[-len(want) - 1] == tok.token_to_id("[e~[")
