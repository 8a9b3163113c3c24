"""The agent loop with a real (tiny, random) MiniMax-M2 model from transformers, until xinzhou's engine exists.

Marked slow: importing torch and transformers' model code costs ~10 s on the CI machine. Run with `-m slow`.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from xinzhou.chat import Agent, AssistantMessage, UserMessage, builtin_tools

pytestmark = pytest.mark.slow


@dataclass
class Output:
    text: str
    finish_reason: str


class TransformersLLM:
    """The agent's LLM interface over `model.generate`: whole-text prompt encoding, stop at `[e~[`."""

    def __init__(self, model, tokenizer, max_new_tokens: int = 12) -> None:
        self.model, self.tok, self.max_new_tokens = model, tokenizer, max_new_tokens
        self.eos = tokenizer.token_to_id("[e~[")
        self.prompts: list[str] = []

    def generate(self, prompts: list[str], params: object = None) -> list[Output]:
        import torch

        outs = []
        for prompt in prompts:
            self.prompts.append(prompt)
            ids = self.tok.encode(prompt).ids
            assert self.tok.decode(ids, skip_special_tokens=False) == prompt  # lossless byte-level round trip
            seq = self.model.generate(torch.tensor([ids]), max_new_tokens=self.max_new_tokens, do_sample=False,
                                      eos_token_id=self.eos, pad_token_id=self.eos)[0, len(ids) :].tolist()
            reason = "stop" if seq and seq[-1] == self.eos else "length"
            outs.append(Output(self.tok.decode(seq, skip_special_tokens=False), reason))
        return outs


def test_agent_runs_a_real_tiny_model(tokenizer) -> None:
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    cfg = transformers.MiniMaxM2Config(
        vocab_size=tokenizer.get_vocab_size(), hidden_size=32, intermediate_size=32, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, head_dim=16, num_local_experts=2, num_experts_per_tok=1,
        bos_token_id=None, eos_token_id=tokenizer.token_to_id("[e~["),
    )
    torch.manual_seed(0)
    model = transformers.MiniMaxM2ForCausalLM(cfg).eval()
    llm = TransformersLLM(model, tokenizer)
    result = Agent(llm, builtin_tools(), max_steps=2).run([UserMessage("What is 2+2?")])
    assert result.stop_reason in ("final", "length", "max_steps")
    assert isinstance(result.messages[1], AssistantMessage)
    assert llm.prompts[0].endswith("]~b]ai\n<think>\n") and "<tools>" in llm.prompts[0]
