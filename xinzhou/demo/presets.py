"""Sizes of the `xinzhou demo` pipeline: one typed dataclass, three named presets.

``tiny`` is the README's main job (a ~2M-parameter hybrid, ≤ 15 minutes on 2 CPU cores), ``small`` a larger
model for a longer run, ``smoke`` a few steps of every stage for the test suite (< 2 minutes).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

# The demo model: hybrid lightning + softmax attention with MoE, in the Text-01 family. Two of the four layers are
# softmax (they copy numbers from the problem and the tool results), two are lightning (constant-size state).
TINY_MODEL: dict[str, Any] = dict(
    family="text01", hidden_size=128, num_layers=4, num_heads=4, num_kv_heads=2, head_dim=32, rotary_dim=16,
    num_experts=8, num_experts_per_tok=2, moe_intermediate_size=128, max_position_embeddings=4096,
    layer_types=("linear_attention", "full_attention", "linear_attention", "full_attention"),
)


@dataclass
class DemoPreset:
    """Every size and step count of one demo run."""

    name: str
    model: dict[str, Any] = field(default_factory=lambda: dict(TINY_MODEL))
    vocab_size: int = 1024
    task: str = "arithmetic"
    train_difficulties: tuple[int, ...] = (1, 2)  # 2 and 3 calculator calls per problem
    eval_difficulties: tuple[int, ...] = (1, 2, 3)  # the report's success-by-difficulty plot
    # pretraining on copy drills (see xinzhou/demo/drills.py) at a constant lr: a higher lr, or a cosine decay
    # that is already low when the circuit would form (~step 250), did not form the copying circuit
    pretrain_examples: int = 16000
    pretrain_steps: int = 400  # at least; then on until the drill loss shows the circuit formed (pipeline.py)
    pretrain_max_steps: int = 800
    pretrain_seq_len: int = 512
    pretrain_batch: int = 4
    pretrain_lr: float = 1e-3
    # SFT
    sft_examples: int = 3200
    # share of SFT traces whose demonstrator does the last step in its head (correctly) instead of calling the
    # calculator (`ArithmeticTask.sft_trace(mental_last=True)`): the model imitates the habit but cannot add
    # 5-digit numbers in its head, so SFT alone fails where it follows it, and RL has a choice to correct
    # (seeds 0-3 on an AVX2 machine with the earlier SFT warm-up: difficulty 2 31/67/2/0% after SFT,
    # 92/95/100/97% after RL; README, Demo)
    mental_last_frac: float = 0.5
    # rows of one whole trace each (traces are 480-600 tokens; pipeline.sft_seq_len raises the row length if one
    # is longer). 1024-token rows x 4 for 640 steps (the same compute) gave d2 78-100% over seeds 0-2, because
    # most rows were 40% padding; these rows gave 100% / 100% (d1 / d2) on seeds 0-2 with mental_last_frac 0
    # (README, Demo)
    sft_steps: int = 820
    sft_seq_len: int = 640
    sft_batch: int = 5
    sft_lr: float = 1e-3
    sft_attempts: int = 2  # SFT runs at most: a stalled run is redone with another data order (pipeline.py);
    # 1: a single run, not probed
    # RL (CISPO)
    rl_steps: int = 16
    rl_prompts: int = 8
    rl_group: int = 4
    rl_minibatches: int = 2
    rl_lr: float = 3e-5  # Adam (eps 1e-15) moves every weight ~lr per step: 2e-4 wrecked the SFT policy in one step
    # episodes (SFT traces use ~40 sampled tokens per turn; a random model would run to the budget)
    max_turn_tokens: int = 96
    max_tokens: int = 512  # one episode: sampled + tool-result tokens
    # evaluation
    eval_n: int = 64  # held-out problems per difficulty
    seed: int = 0

    def replace(self, **changes: Any) -> DemoPreset:
        return dataclasses.replace(self, **changes)


PRESETS: dict[str, DemoPreset] = {
    "tiny": DemoPreset(name="tiny"),
    "small": DemoPreset(name="small", model={**TINY_MODEL, "hidden_size": 256, "num_heads": 8, "num_layers": 8,
                                             "moe_intermediate_size": 256,
                                             "layer_types": ("linear_attention", "full_attention") * 4},
                        vocab_size=2048, sft_examples=6000, sft_steps=400, rl_steps=40, rl_prompts=16,
                        rl_group=8, eval_n=200),
    "smoke": DemoPreset(name="smoke", model={**TINY_MODEL, "hidden_size": 32, "num_heads": 2, "num_kv_heads": 1,
                                             "head_dim": 16, "rotary_dim": 8, "num_experts": 4,
                                             "moe_intermediate_size": 32},
                        vocab_size=512, pretrain_examples=64, pretrain_steps=2, pretrain_max_steps=2,
                        pretrain_seq_len=256, sft_examples=48, sft_steps=3, sft_batch=4, sft_seq_len=1024,
                        sft_attempts=1, rl_steps=1, rl_prompts=2, rl_group=2, rl_minibatches=1, eval_n=2,
                        eval_difficulties=(1, 2), max_turn_tokens=16, max_tokens=48),
}


def get_preset(name: str) -> DemoPreset:
    if name not in PRESETS:
        raise ValueError(f"unknown demo preset {name!r}; valid options: {', '.join(PRESETS)}")
    return dataclasses.replace(PRESETS[name])
