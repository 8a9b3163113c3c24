"""vLLM's tokenizer endpoints: ``GET /tokenizer_info``, ``POST /tokenize``, ``POST /detokenize``.

Why: clients that count or build token sequences themselves ask the server for its tokenizer instead of loading
one. lm-evaluation-harness, for one, probes exactly these (``tokenizer_backend="auto"`` picks its remote tokenizer
when ``/tokenizer_info`` has an ``eos_token`` and ``/tokenize`` answers), so
``lm_eval --model local-completions --model_args base_url=.../v1/completions,model=NAME`` needs no local copy of
the tokenizer. Shapes follow vLLM: ``/tokenize`` takes a ``prompt`` (or chat ``messages``, rendered with the
served template exactly as ``/v1/chat/completions`` renders them) and returns ``count``, ``max_model_len`` and
``tokens``; ``/detokenize`` takes ``tokens`` and returns ``prompt``. The tokenizer never adds special tokens (no BOS
in the M2 format), so ``add_special_tokens`` is accepted and has no effect.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from xinzhou.chat import chat_template, render
from xinzhou.chat.types import to_messages
from xinzhou.serve.generation import ChatJob
from xinzhou.serve.openai_protocol import ChatMessage, message_dicts


class TokenizeRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str | None = None
    prompt: str | None = None
    messages: list[ChatMessage] | None = Field(None, min_length=1)
    add_generation_prompt: bool = True
    add_special_tokens: bool = Field(True, description="accepted; the tokenizer adds no special tokens anyway")


class DetokenizeRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str | None = None
    tokens: list[int]


def text_of(req: TokenizeRequest) -> str:
    """The text to tokenize: the prompt, or the messages rendered as a chat request would be (``ValueError``)."""
    if (req.prompt is None) == (req.messages is None):
        raise ValueError("give exactly one of 'prompt' (text) or 'messages' (a chat to render)")
    if req.prompt is not None:
        return req.prompt
    job = ChatJob(to_messages(message_dicts(req.messages or [])))
    if req.add_generation_prompt:
        return job.prompt()
    return render(job.messages, None, add_generation_prompt=False, keep="chain")


def info(engine_info: dict[str, Any], max_model_len: int) -> dict[str, Any]:
    return {**engine_info, "bos_token": None, "pad_token": None, "chat_template": chat_template(),
            "model_max_length": max_model_len, "add_bos_token": False}
