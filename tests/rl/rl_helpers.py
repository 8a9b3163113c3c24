"""Helpers for the RL loop tests: a tiny tokenizer, a tiny policy checkpoint that ends turns often, a scripted
two-turn environment with reward variance (imported by name, like tests/train/train_helpers.py)."""

from __future__ import annotations

import functools
import re
import warnings
from pathlib import Path
from typing import Any

import torch

import xinzhou
from xinzhou.chat import AssistantMessage, Message, SystemMessage, ToolMessage, ToolSpec, UserMessage, render
from xinzhou.configs.rl import RLConfig
from xinzhou.data.tokenizer import Tokenizer, train_tokenizer
from xinzhou.rl import StepResult
from xinzhou.tasks import get_task
from xinzhou.train.export import export_checkpoint


@functools.lru_cache(maxsize=1)
def tiny_tokenizer() -> Tokenizer:
    """A byte-level BPE trained on arithmetic traces with the digits removed (so numbers stay one digit a token)."""
    task = get_task("arithmetic")
    texts = [re.sub(r"\d", "", render(r["messages"], r["tools"]))
             for r in (task.sft_record(p) for p in task.dataset(60, 1))]
    return train_tokenizer(texts, 384)


def save_policy(path: Path, *, eos_rate: float = 25.0, seed: int = 0) -> Path:
    """A random 2-layer hybrid policy whose end-of-turn token is likely (turns of a few tokens), exported with the
    tokenizer. The final norm keeps one channel, and only the `[e~[` row of the head reads it, so p(eos) swings
    with the input while every other token stays near-uniform."""
    tok = tiny_tokenizer()
    cfg = xinzhou.get_config("debug-text01", vocab_size=tok.vocab_size, hidden_size=32, num_layers=2, num_heads=2,
                             num_kv_heads=1, head_dim=16, rotary_dim=8, num_experts=4, num_experts_per_tok=2,
                             moe_intermediate_size=32, max_position_embeddings=2048,
                             layer_types=("linear_attention", "full_attention"), eos_token_id=tok.eos_id)
    model = xinzhou.Model(cfg)
    model.reset_parameters(seed=seed)
    with torch.no_grad():
        model.norm.weight.fill_(0.3)
        model.lm_head.weight[:, 0] = 0.0
        model.lm_head.weight[tok.eos_id, 0] = eos_rate
    with warnings.catch_warnings():  # the transformers-compatibility note about partial RoPE
        warnings.simplefilter("ignore", UserWarning)
        export_checkpoint(model, cfg, tok, path)
    return path


class TwoTurnEnv:
    """Turn 1: whatever the model says, a tool result is shown. Turn 2: done, reward 1 when the turn's text has an
    even number of characters (a coin the policy can learn to bias). `raise_every` > 0 makes the reward function
    raise on every such problem seed."""

    def __init__(self, raise_every: int = 0) -> None:
        self.turn = 0
        self.seed = 0
        self.raise_every = raise_every

    @property
    def tools(self) -> list[ToolSpec]:
        return [ToolSpec("lookup", "Look something up.", {"type": "object", "properties": {}})]

    def reset(self, seed: int) -> list[Message]:
        self.turn, self.seed = 0, seed
        return [SystemMessage("Answer."), UserMessage(f"Problem {seed % 97}?")]

    def step(self, message: AssistantMessage) -> StepResult:
        self.turn += 1
        if self.turn == 1:
            return StepResult(observation=[ToolMessage("42", tool_call_id="call_0", name="lookup")])
        if self.raise_every and self.seed % self.raise_every == 0:
            raise RuntimeError("reward function failed")
        text = (message.reasoning_content or "") + message.content
        return StepResult(reward=float(len(text) % 2 == 0), done=True)


def rl_config(model: Path, out: Path, **overrides: Any) -> RLConfig:
    """A seconds-long RL config over `model`, quiet, writing to `out`."""
    base = dict(model=str(model), out_dir=str(out), group_size=4, prompts_per_batch=4, max_steps=2, max_turns=3,
                max_tokens=64, max_turn_tokens=16, lr=1e-2, eval_every=0, eval_n=4, progress=False, export=False,
                micro_batch_size=8)
    return RLConfig(**{**base, **overrides})
