"""Held-out evaluation of a policy on a task: greedy episodes on the engine, success rate with a Wilson interval.

Why a Wilson interval: held-out sets on a CPU are small (64-256 problems), and a success rate of 0.1 on 64
problems has a 95% interval of roughly [0.05, 0.2]. Curves compared without it over-read noise, and the normal
approximation breaks near 0 and 1 where RL runs start and end. Problems come from seeds no training run uses
(`start_seed`, default 10^6; training draws below it), so the number is held out.

`keep` chooses what earlier turns' thinking the prompt keeps ("chain": interleaved, the M2 default; "none": dropped
between tool calls), which is the interleaved-thinking ablation.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from xinzhou.engine import LLM, SamplingParams
from xinzhou.rl.rollout_engine import EnvSource, env_factory, run_episodes


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval of a binomial proportion (95% for z = 1.96); (0, 1) when n = 0."""
    if n <= 0:
        return 0.0, 1.0
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclass
class EvalResult:
    """Counts over `n` held-out episodes; properties give the rates. Episodes whose verifier failed (`skipped`)
    count as failures."""

    n: int
    successes: int
    reward_sum: float
    tool_calls: int
    turns: int
    truncated: int
    skipped: int

    @property
    def success(self) -> float:
        return self.successes / self.n if self.n else math.nan

    @property
    def ci95(self) -> tuple[float, float]:
        return wilson_interval(self.successes, self.n)

    @property
    def mean_tool_calls(self) -> float:
        return self.tool_calls / self.n if self.n else math.nan

    def to_dict(self) -> dict[str, Any]:
        lo, hi = self.ci95
        n = max(self.n, 1)
        return {**asdict(self), "success": self.success, "ci_low": lo, "ci_high": hi,
                "mean_reward": self.reward_sum / n, "mean_tool_calls": self.mean_tool_calls,
                "mean_turns": self.turns / n, "truncation_rate": self.truncated / n}

    @classmethod
    def merge(cls, results: Sequence[EvalResult]) -> EvalResult:
        """Counts added up (the shares of several processes)."""
        return cls(*(sum(getattr(r, f) for r in results) for f in ("n", "successes", "reward_sum", "tool_calls",
                                                                    "turns", "truncated", "skipped")))

    def __str__(self) -> str:
        lo, hi = self.ci95
        return (f"success {self.success:.3f} [95% CI {lo:.3f}, {hi:.3f}] on {self.n} held-out problems, "
                f"{self.mean_tool_calls:.2f} tool calls per episode")


def evaluate(
    llm: LLM,
    task: EnvSource = "arithmetic",
    n: int = 64,
    difficulty: int | Sequence[int] = 1,
    *,
    keep: str = "chain",
    start_seed: int = 1_000_000,
    seeds: Sequence[int] | None = None,
    max_turns: int = 8,
    max_tokens: int = 1024,
    max_turn_tokens: int = 256,
    success_threshold: float = 1.0,
    tokenizer: Any = None,
    temperature: float = 0.0,
    sample_seed: int = 0,
) -> EvalResult:
    """Episodes on problems `start_seed .. start_seed + n - 1` (or `seeds`), all batched on the engine: greedy by
    default, or sampled at `temperature` (seeded by `sample_seed`, as RL's rollouts are).

    `task` is a task name, a `Task`, or a function returning a fresh `Env`; `difficulty` one or several (mixed as
    `env_factory` mixes them). An episode succeeds when its task reward is at least `success_threshold`;
    `mean_tool_calls` counts the calls the model made.
    """
    seeds = list(seeds) if seeds is not None else list(range(start_seed, start_seed + n))
    if not seeds:
        return EvalResult(0, 0, 0.0, 0, 0, 0, 0)
    make = env_factory(task, difficulty, max_turns=max_turns)
    trajs = run_episodes(llm, [make() for _ in seeds], seeds, SamplingParams(temperature=temperature), keep=keep,
                         max_turns=max_turns, max_tokens=max_tokens, max_turn_tokens=max_turn_tokens,
                         sample_seed=sample_seed, tokenizer=tokenizer)
    rewards = [t.reward for t in trajs]
    return EvalResult(
        n=len(trajs),
        successes=sum(r is not None and r >= success_threshold for r in rewards),
        reward_sum=float(sum(r for r in rewards if r is not None)),
        tool_calls=sum(t.info["tool_calls"] for t in trajs),
        turns=sum(t.info["turns"] for t in trajs),
        truncated=sum(t.truncated for t in trajs),
        skipped=sum(r is None for r in rewards),
    )
