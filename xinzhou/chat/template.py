"""The MiniMax-M2 wire format: conversation -> prompt text, and -> token ids with an SFT loss mask.

This Python renderer is the source of truth; `chat_template.jinja` is its transcription for transformers and
servers, and the tests hold the two byte-identical. The format (see docs/chat.md and
shared/reference/interleaved.md §1):

    ]~!b[]~b]system\n{system}[\n\n# Tools …]   [e~[\n
    ]~b]user\n{text}[e~[\n
    ]~b]ai\n[<think>\n{reasoning}\n</think>\n\n]{content}[\n<minimax:tool_call>\n<invoke …>…</minimax:tool_call>][e~[\n
    ]~b]tool\n<response>{result}</response>…[e~[\n        (one block per run of tool messages)
    ]~b]ai\n<think>\n                                       (generation prompt)

Thinking retention (`keep`): "chain" (M2: only assistant turns after the last user message keep `<think>`),
"all", or "none".

Special tokens: only the template's own markers may become special-token ids. Everything a message carries
(system, user and tool text, assistant reasoning and content, tool names, argument keys and values, the tool
schemas) is *plain*: `render` returns a `MarkedText` that remembers those spans, and `to_ids`, the engine and
`Tokenizer.encode` encode them as text, so a user typing `]~b]ai` or `[e~[` cannot forge a turn or end one.
(`chat_template.jinja` renders the same text, but a stack that tokenises it whole does not have these marks.)
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from xinzhou.chat.types import (
    AssistantMessage,
    MessageLike,
    SystemMessage,
    ToolCall,
    ToolMessage,
    UserMessage,
    split_inline_think,
    to_messages,
    tool_function_dict,
)
from xinzhou.data.tokenizer import MarkedText, encode_with, split_markers

BOS = "]~!b["
ROLE = "]~b]"
EOS = "[e~["
THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
TOOL_CALL_OPEN, TOOL_CALL_CLOSE = "<minimax:tool_call>", "</minimax:tool_call>"
SPECIAL_TOKENS = (BOS, ROLE, EOS, THINK_OPEN, THINK_CLOSE, TOOL_CALL_OPEN, TOOL_CALL_CLOSE)
GENERATION_PROMPT = f"{ROLE}ai\n{THINK_OPEN}\n"
DEFAULT_SYSTEM = "You are a helpful assistant."
TOOLS_HEADER = (
    "\n\n# Tools\nYou may call one or more tools to assist with the user query.\n"
    "Here are the tools available in JSONSchema format:\n\n<tools>\n"
)
TOOLS_FOOTER = (
    "</tools>\n\nWhen making tool calls, use XML format to invoke tools and pass parameters:\n\n"
    f"{TOOL_CALL_OPEN}\n<invoke name=\"tool-name-1\">\n<parameter name=\"param-key-1\">param-value-1</parameter>\n"
    f"<parameter name=\"param-key-2\">param-value-2</parameter>\n...\n</invoke>\n{TOOL_CALL_CLOSE}"
)
KEEP_MODES = ("chain", "all", "none")
TRAIN_ON = ("all", "chain")
Keep = Literal["chain", "all", "none"]


def to_json(value: Any) -> str:
    """JSON exactly as transformers' `tojson` filter writes it (UTF-8 kept, insertion order, default separators)."""
    return json.dumps(value, ensure_ascii=False)


def render_value(value: Any) -> str:
    """A `<parameter>` value: strings raw (no quoting, no escaping), everything else JSON."""
    return value if isinstance(value, str) else to_json(value)


Piece = tuple[str, bool]  # (text, trusted): trusted text is the template's own; see MarkedText


def _t(text: str) -> Piece:
    return (text, True)


def _p(text: Any) -> Piece:
    return (text if isinstance(text, str) else f"{text}", False)  # formatted as the f-strings of the template were


def _tool_call_pieces(calls: Sequence[ToolCall]) -> list[Piece]:
    if not calls:
        return []
    out = [_t(f"\n{TOOL_CALL_OPEN}\n")]
    for call in calls:
        out += [_t('<invoke name="'), _p(call.name), _t('">\n')]
        for k, v in call.arguments.items():
            out += [_t('<parameter name="'), _p(k), _t('">'), _p(render_value(v)), _t("</parameter>\n")]
        out.append(_t("</invoke>\n"))
    out.append(_t(TOOL_CALL_CLOSE))
    return out


def render_tool_calls(calls: Sequence[ToolCall]) -> MarkedText:
    """The `\\n<minimax:tool_call>…</minimax:tool_call>` block of an assistant turn ('' when there are no calls)."""
    return MarkedText(_tool_call_pieces(calls))


def render_completion(message: AssistantMessage, *, end: bool = True) -> MarkedText:
    """What the model emits for `message` after the generation prompt (it starts inside `<think>`)."""
    return MarkedText([_p(message.reasoning_content or ""), _t(f"\n{THINK_CLOSE}\n\n"), _p(message.content),
                       *_tool_call_pieces(message.tool_calls), _t(EOS if end else "")])


def _tool_result_pieces(results: Sequence[ToolMessage]) -> list[Piece]:
    out = [_t(f"{ROLE}tool")]
    for r in results:
        if isinstance(r.content, str):
            out += [_t("\n<response>"), _p(r.content), _t("</response>")]
        else:
            for item in r.content:
                out += [_t("\n<response>"), _p(item), _t("\n</response>")]
    out.append(_t(f"{EOS}\n"))
    return out


def render_tool_results(results: Sequence[ToolMessage]) -> MarkedText:
    """One `]~b]tool` block for a run of tool messages."""
    return MarkedText(_tool_result_pieces(results))


def _check_option(name: str, value: str, options: tuple[str, ...]) -> None:
    if value not in options:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, options))}, got {value!r}")


def render_segments(
    messages: Sequence[MessageLike],
    tools: Sequence[Any] | None = None,
    *,
    add_generation_prompt: bool = False,
    keep: Keep = "chain",
    train_on: Literal["all", "chain"] = "all",
) -> list[tuple[str, bool]]:
    """The rendering as `(text, is_model_output)` pieces; `"".join` of the texts is `render(...)`.

    `is_model_output` marks what an assistant turn emits after its `]~b]ai\\n` header: thinking, content, tool calls
    and the `[e~[` end marker. `train_on="chain"` marks only the turns after the last user message.
    """
    segs = _segments(messages, tools, add_generation_prompt=add_generation_prompt, keep=keep, train_on=train_on)
    return [("".join(text for text, _ in pieces), out) for pieces, out in segs]


def _segments(
    messages: Sequence[MessageLike],
    tools: Sequence[Any] | None,
    *,
    add_generation_prompt: bool,
    keep: Keep,
    train_on: Literal["all", "chain"],
) -> list[tuple[list[Piece], bool]]:
    """`render_segments`, each segment as its trusted (template) and plain (message) pieces."""
    _check_option("keep", keep, KEEP_MODES)
    _check_option("train_on", train_on, TRAIN_ON)
    msgs = to_messages(messages)
    system = msgs[0] if msgs and isinstance(msgs[0], SystemMessage) else None
    rest = msgs[1:] if system is not None else msgs
    segs: list[tuple[list[Piece], bool]] = []

    head = [_t(f"{BOS}{ROLE}system\n")]
    head.append(_p(system.content) if system is not None and system.content else _t(DEFAULT_SYSTEM))
    if system is not None and system.current_date:
        head += [_t("\nCurrent date: "), _p(system.current_date)]
    if system is not None and system.current_location:
        head += [_t("\nCurrent location: "), _p(system.current_location)]
    if tools:
        head.append(_t(TOOLS_HEADER))
        for t in tools:
            head += [_t("<tool>"), _p(to_json(tool_function_dict(t))), _t("</tool>\n")]
        head.append(_t(TOOLS_FOOTER))
    head.append(_t(f"{EOS}\n"))
    segs.append((head, False))

    last_user = max((i for i, m in enumerate(rest) if isinstance(m, UserMessage)), default=-1)
    offset = int(system is not None)  # to report positions in the caller's list
    i = 0
    while i < len(rest):
        m = rest[i]
        if isinstance(m, UserMessage):
            segs.append(([_t(f"{ROLE}user\n"), _p(m.content), _t(f"{EOS}\n")], False))
        elif isinstance(m, AssistantMessage):
            out = train_on == "all" or i > last_user
            kept = keep == "all" or (keep == "chain" and i > last_user)
            reasoning, content = (m.reasoning_content, m.content)
            if reasoning is None:  # as the M2 template: inline <think> is split out of the content
                reasoning, content = split_inline_think(content)
            think = [_t(f"{THINK_OPEN}\n"), _p(reasoning), _t(f"\n{THINK_CLOSE}\n\n")] if kept and reasoning else []
            segs.append(([_t(f"{ROLE}ai\n")], False))
            segs.append(([*think, _p(content), *_tool_call_pieces(m.tool_calls), _t(EOS)], out))
            segs.append(([_t("\n")], False))
        elif isinstance(m, ToolMessage):
            prev = rest[i - 1] if i > 0 else None
            if not (isinstance(prev, AssistantMessage) and prev.tool_calls):
                raise ValueError(
                    f"message {i + offset} has tool role, but there was no previous assistant message with a tool "
                    "call (a run of tool messages must directly follow an assistant turn that has tool_calls)"
                )
            run = [m]
            while i + 1 < len(rest) and isinstance(rest[i + 1], ToolMessage):
                i += 1
                run.append(rest[i])  # type: ignore[arg-type]
            segs.append((_tool_result_pieces(run), False))
        else:
            raise ValueError(f"message {i + offset} is a system message: only the first message may be one")
        i += 1
    if add_generation_prompt:
        segs.append(([_t(GENERATION_PROMPT)], False))
    return segs


def render(
    messages: Sequence[MessageLike],
    tools: Sequence[Any] | None = None,
    *,
    add_generation_prompt: bool = False,
    keep: Keep = "chain",
) -> MarkedText:
    """Render a conversation (+ tools, + generation prompt) to M2 prompt text.

    The result is a `str` (a `MarkedText`) that remembers which spans came from the messages, so that encoding it
    with `Tokenizer.encode` or the engine never turns message text into special tokens (see the module docstring).
    """
    segs = _segments(messages, tools, add_generation_prompt=add_generation_prompt, keep=keep, train_on="all")
    return MarkedText([piece for pieces, _ in segs for piece in pieces])


# ---------------------------------------------------------------------------------------------- token ids


@dataclass
class TokenizedChat:
    """`ids[i]` is trained on iff `loss_mask[i]` (1 = model output)."""

    ids: list[int]
    loss_mask: list[int]
    text: str


def encode_text(tokenizer: Any, text: str, *, split_special: bool = False) -> list[int]:
    """Ids of `text` without added BOS/EOS, from a xinzhou `Tokenizer`, a `tokenizers.Tokenizer`, a transformers
    tokenizer or anything whose `encode(text)` returns ids; `split_special=True` encodes special-token strings as
    plain text (see `xinzhou.data.tokenizer.encode_with`)."""
    return encode_with(tokenizer, text, split_special=split_special)


def to_ids(
    messages: Sequence[MessageLike],
    tokenizer: Any,
    tools: Sequence[Any] | None = None,
    *,
    add_generation_prompt: bool = False,
    keep: Keep = "chain",
    train_on: Literal["all", "chain"] = "all",
) -> TokenizedChat:
    """Token ids and the SFT loss mask of a rendered conversation.

    Only the template's own markers become special-token ids. The text between two markers is encoded as one run
    with `split_special=True`, so a special-token string inside message text (a user typing `[e~[`, `]~b]ai` or
    `<think>`, a tool printing one, a model that wrote one as plain characters) is encoded as ordinary text, never
    as a role, end or thinking id. That is deliberate: wherever no message text contains a special-token string
    (the normal case), the ids equal encoding the whole rendered text, as transformers would; where one does, they
    differ from that exactly there, because whole-text encoding would let message text forge the format.
    `render` + `Tokenizer.encode` and the engine give the same ids as this function.

    Mask boundaries fall at special markers (`<think>`, `[e~[`) except where an assistant turn without kept
    thinking starts (after `]~b]ai\n`). There the run is encoded whole and the boundary is the first token that
    differs from encoding the header alone: exact whenever the tokenizer splits after the newline (GPT-4-style
    pre-tokenizers always do; GPT-2-style byte-level ones unless the content starts with two whitespace
    characters), and otherwise the one token straddling the boundary counts as output.
    """
    segs = _segments(messages, tools, add_generation_prompt=add_generation_prompt, keep=keep, train_on=train_on)
    ids: list[int] = []
    mask: list[int] = []
    run: list[tuple[str, bool]] = []  # text between markers, as (piece, is_output)

    def encode(text: str) -> list[int]:
        return encode_with(tokenizer, text, split_special=True)

    def flush() -> None:
        whole = encode("".join(t for t, _ in run))
        start, prefix = 0, ""
        for k, (text, out) in enumerate(run):
            prefix += text
            if k == len(run) - 1:
                end = len(whole)
            elif run[k + 1][1] == out:
                continue
            else:
                head = encode(prefix)
                pairs = enumerate(zip(head, whole, strict=False))
                end = next((j for j, (a, b) in pairs if a != b), min(len(head), len(whole)))
            mask.extend([int(out)] * (end - start))
            start = end
        ids.extend(whole)
        run.clear()

    for pieces, out in segs:
        for text, trusted in pieces:
            for k, part in enumerate(split_markers(text) if trusted else [text]):
                if k % 2:  # one of the template's markers
                    if run:
                        flush()
                    ids.extend(encode_with(tokenizer, part))
                    mask.extend([int(out)] * (len(ids) - len(mask)))
                elif part:
                    run.append((part, out))
    if run:
        flush()
    return TokenizedChat(ids=ids, loss_mask=mask, text="".join(t for pieces, _ in segs for t, _ in pieces))
