"""xinzhou.chat: the MiniMax-M2 chat protocol layer (pure Python, no torch).

Types and rendering (prompt text, SFT ids + loss mask, the Jinja template for checkpoints), streaming parsers
for M2 (and legacy M1) output, tools, and the interleaved-thinking agent loop. See docs/chat.md.

    from xinzhou.chat import render, to_ids, parse_m2, M2StreamParser, Agent, ToolRegistry, builtin_tools
"""

from xinzhou.chat.agent import (
    LLM,
    Agent,
    AgentResult,
    AgentStep,
    GenerationOutput,
    ToolResultEvent,
)
from xinzhou.chat.jinja_template import chat_template, render_jinja, save_chat_template
from xinzhou.chat.parsers.events import (
    ContentDelta,
    ParseIssue,
    ParseResult,
    ReasoningDelta,
    ToolCallEvent,
    coalesce,
    collect,
)
from xinzhou.chat.parsers.m1 import M1StreamParser, parse_m1
from xinzhou.chat.parsers.m2 import M2StreamParser, parse_m2
from xinzhou.chat.template import (
    GENERATION_PROMPT,
    SPECIAL_TOKENS,
    TokenizedChat,
    render,
    render_completion,
    render_segments,
    to_ids,
)
from xinzhou.chat.tools import (
    Tool,
    ToolRegistry,
    ToolResult,
    builtin_tools,
    calculator,
    make_python_tool,
    run_python,
)
from xinzhou.chat.types import (
    AssistantMessage,
    Message,
    SystemMessage,
    ToolCall,
    ToolMessage,
    ToolSpec,
    UserMessage,
    message_to_dict,
    messages_to_dicts,
    to_message,
    to_messages,
)

__all__ = [
    "GENERATION_PROMPT", "LLM", "SPECIAL_TOKENS", "Agent", "AgentResult", "AgentStep", "AssistantMessage",
    "ContentDelta", "GenerationOutput", "M1StreamParser", "M2StreamParser", "Message", "ParseIssue", "ParseResult",
    "ReasoningDelta", "SystemMessage", "TokenizedChat", "Tool", "ToolCall", "ToolCallEvent", "ToolMessage",
    "ToolRegistry", "ToolResult", "ToolResultEvent", "ToolSpec", "UserMessage", "builtin_tools", "calculator",
    "chat_template", "coalesce", "collect", "make_python_tool", "message_to_dict", "messages_to_dicts", "parse_m1",
    "parse_m2", "render", "render_completion", "render_jinja", "render_segments", "run_python", "save_chat_template",
    "to_ids", "to_message", "to_messages",
]
