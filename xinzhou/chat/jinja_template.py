"""Our M2 chat template as Jinja, for checkpoints: transformers, vLLM and SGLang render prompts with it.

The template lives in `chat_template.jinja` beside this file and renders byte-identically to
`xinzhou.chat.template.render` (tests compare both through transformers' `apply_chat_template`).
`save_chat_template(dir)` writes it as `chat_template.jinja`, the file transformers 5 loads from a checkpoint.
`render_jinja` renders it in a sandbox configured like transformers', for callers without transformers.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

from xinzhou.fileio import atomic_write_text

TEMPLATE_FILE = "chat_template.jinja"


@lru_cache(maxsize=1)
def chat_template() -> str:
    """The template text."""
    return resources.files("xinzhou.chat").joinpath(TEMPLATE_FILE).read_text(encoding="utf-8")


def save_chat_template(directory: str | os.PathLike[str]) -> Path:
    """Write the template into a checkpoint directory as `chat_template.jinja` (atomically); returns the path."""
    path = Path(directory) / TEMPLATE_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, chat_template())
    return path


@lru_cache(maxsize=1)
def _compiled() -> Any:
    from jinja2 import TemplateError
    from jinja2.ext import loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str) -> None:
        raise TemplateError(message)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.filters["tojson"] = lambda x, ensure_ascii=False, indent=None, separators=None, sort_keys=False: json.dumps(
        x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )
    env.globals["raise_exception"] = raise_exception
    return env.from_string(chat_template())


def render_jinja(
    messages: Sequence[Mapping[str, Any]],
    tools: Sequence[Mapping[str, Any]] | None = None,
    *,
    add_generation_prompt: bool = False,
    keep: str = "chain",
) -> str:
    """Render OpenAI-style message dicts with the Jinja template (raises `jinja2.TemplateError` on bad input)."""
    return _compiled().render(
        messages=list(messages), tools=list(tools) if tools else None, add_generation_prompt=add_generation_prompt,
        keep=keep,
    )
