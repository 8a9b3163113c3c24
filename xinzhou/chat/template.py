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
"""

from __future__ import annotations

import json
import re
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
_SPECIAL_RE = re.compile("(" + "|".join(re.escape(t) for t in SPECIAL_TOKENS) + ")")


def to_json(value: Any) -> str:
    """JSON exactly as transformers' `tojson` filter writes it (UTF-8 kept, insertion order, default separators)."""
    return json.dumps(value, ensure_ascii=False)


def render_value(value: Any) -> str:
    """A `<parameter>` value: strings raw (no quoting, no escaping), everything else JSON."""
    return value if isinstance(value, str) else to_json(value)


def render_tool_calls(calls: Sequence[ToolCall]) -> str:
    """The `\\n<minimax:tool_call>…</minimax:tool_call>` block of an assistant turn ('' when there are no calls)."""
    if not calls:
        return ""
    out = [f"\n{TOOL_CALL_OPEN}\n"]
    for call in calls:
        out.append(f'<invoke name="{call.name}">\n')
        out.extend(f'<parameter name="{k}">{render_value(v)}</parameter>\n' for k, v in call.arguments.items())
        out.append("</invoke>\n")
    out.append(TOOL_CALL_CLOSE)
    return "".join(out)


def render_completion(message: AssistantMessage, *, end: bool = True) -> str:
    """What the model emits for `message` after the generation prompt (it starts inside `<think>`)."""
    calls = render_tool_calls(message.tool_calls)
    return f"{message.reasoning_content or ''}\n{THINK_CLOSE}\n\n{message.content}{calls}" + (EOS if end else "")


def render_tool_results(results: Sequence[ToolMessage]) -> str:
    """One `]~b]tool` block for a run of tool messages."""
    out = [f"{ROLE}tool"]
    for r in results:
        if isinstance(r.content, str):
            out.append(f"\n<response>{r.content}</response>")
        else:
            out.extend(f"\n<response>{item}\n</response>" for item in r.content)
    out.append(f"{EOS}\n")
    return "".join(out)


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
    _check_option("keep", keep, KEEP_MODES)
    _check_option("train_on", train_on, TRAIN_ON)
    msgs = to_messages(messages)
    system = msgs[0] if msgs and isinstance(msgs[0], SystemMessage) else None
    rest = msgs[1:] if system is not None else msgs
    segs: list[tuple[str, bool]] = []

    head = [BOS, ROLE, "system\n", (system.content if system else "") or DEFAULT_SYSTEM]
    if system is not None and system.current_date:
        head.append(f"\nCurrent date: {system.current_date}")
    if system is not None and system.current_location:
        head.append(f"\nCurrent location: {system.current_location}")
    if tools:
        head.append(TOOLS_HEADER)
        head.extend(f"<tool>{to_json(tool_function_dict(t))}</tool>\n" for t in tools)
        head.append(TOOLS_FOOTER)
    head.append(f"{EOS}\n")
    segs.append(("".join(head), False))

    last_user = max((i for i, m in enumerate(rest) if isinstance(m, UserMessage)), default=-1)
    offset = int(system is not None)  # to report positions in the caller's list
    i = 0
    while i < len(rest):
        m = rest[i]
        if isinstance(m, UserMessage):
            segs.append((f"{ROLE}user\n{m.content}{EOS}\n", False))
        elif isinstance(m, AssistantMessage):
            out = train_on == "all" or i > last_user
            kept = keep == "all" or (keep == "chain" and i > last_user)
            reasoning, content = (m.reasoning_content, m.content)
            if reasoning is None:  # as the M2 template: inline <think> is split out of the content
                reasoning, content = split_inline_think(content)
            think = f"{THINK_OPEN}\n{reasoning}\n{THINK_CLOSE}\n\n" if kept and reasoning else ""
            segs.append((f"{ROLE}ai\n", False))
            segs.append((think + content + render_tool_calls(m.tool_calls) + EOS, out))
            segs.append(("\n", False))
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
            segs.append((render_tool_results(run), False))
        else:
            raise ValueError(f"message {i + offset} is a system message: only the first message may be one")
        i += 1
    if add_generation_prompt:
        segs.append((GENERATION_PROMPT, False))
    return segs


def render(
    messages: Sequence[MessageLike],
    tools: Sequence[Any] | None = None,
    *,
    add_generation_prompt: bool = False,
    keep: Keep = "chain",
) -> str:
    """Render a conversation (+ tools, + generation prompt) to M2 prompt text."""
    segs = render_segments(messages, tools, add_generation_prompt=add_generation_prompt, keep=keep)
    return "".join(text for text, _ in segs)


# ---------------------------------------------------------------------------------------------- token ids


@dataclass
class TokenizedChat:
    """`ids[i]` is trained on iff `loss_mask[i]` (1 = model output)."""

    ids: list[int]
    loss_mask: list[int]
    text: str


def encode_text(tokenizer: Any, text: str) -> list[int]:
    """Ids of `text` without added BOS/EOS, from a `tokenizers.Tokenizer` or a transformers-style tokenizer."""
    try:
        enc = tokenizer.encode(text, add_special_tokens=False)
    except TypeError:
        enc = tokenizer.encode(text)
    ids = getattr(enc, "ids", enc)
    if not isinstance(ids, (list, tuple)):
        raise TypeError(f"tokenizer.encode must return a list of ids or an object with .ids, got {type(enc).__name__}")
    return list(ids)


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

    The text is encoded run by run between special markers, so the ids always equal encoding the whole text.
    Mask boundaries fall at special markers (`<think>`, `[e~[`) except where an assistant turn without kept
    thinking starts (after `]~b]ai\n`). There the run is encoded whole and the boundary is the first token that
    differs from encoding the header alone: exact whenever the tokenizer splits after the newline (GPT-4-style
    pre-tokenizers always do; GPT-2-style byte-level ones unless the content starts with two whitespace
    characters), and otherwise the one token straddling the boundary counts as output.
    """
    segs = render_segments(
        messages, tools, add_generation_prompt=add_generation_prompt, keep=keep, train_on=train_on
    )
    ids: list[int] = []
    mask: list[int] = []
    run: list[tuple[str, bool]] = []  # text between special markers, as (piece, is_output)

    def flush() -> None:
        whole = encode_text(tokenizer, "".join(t for t, _ in run))
        start, prefix = 0, ""
        for k, (text, out) in enumerate(run):
            prefix += text
            if k == len(run) - 1:
                end = len(whole)
            elif run[k + 1][1] == out:
                continue
            else:
                head = encode_text(tokenizer, prefix)
                pairs = enumerate(zip(head, whole, strict=False))
                end = next((j for j, (a, b) in pairs if a != b), min(len(head), len(whole)))
            mask.extend([int(out)] * (end - start))
            start = end
        ids.extend(whole)
        run.clear()

    for text, out in segs:
        for part in _SPECIAL_RE.split(text):
            if part in SPECIAL_TOKENS:
                if run:
                    flush()
                ids.extend(encode_text(tokenizer, part))
                mask.extend([int(out)] * (len(ids) - len(mask)))
            elif part:
                run.append((part, out))
    if run:
        flush()
    return TokenizedChat(ids=ids, loss_mask=mask, text="".join(t for t, _ in segs))
