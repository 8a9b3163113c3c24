"""The environment interface for multi-turn RL episodes, and `TaskEnv`, which turns any bundled task into one.

Why: an episode with tools alternates model turns and observations: reset -> the model acts -> tool results (or
the verifier's reward) -> the model acts again -> ... -> reward. The rollout loop only needs this protocol; it
inserts observations as forced tokens (`observation_text`), which are excluded from the loss. Everything here is
message-level (no tokens, no engine), so an episode can be replayed from an SFT trace or a scripted policy.

A verifier that raises does not crash the run: the episode ends with `reward=None` and the error in `info`, and
the rollout batch drops that sample with a warning.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from xinzhou.chat.template import GENERATION_PROMPT, render_tool_results
from xinzhou.chat.tools.registry import ToolRegistry
from xinzhou.chat.types import (
    AssistantMessage,
    Message,
    SystemMessage,
    ToolCall,
    ToolMessage,
    ToolSpec,
    UserMessage,
)
from xinzhou.tasks import Problem, Task, get_task

log = logging.getLogger(__name__)


@dataclass
class StepResult:
    """What the environment returns after a model turn.

    Not done: `observation` holds the tool results to show the model. Done: `reward` is the episode's reward, or
    None when it could not be computed (`info["error"]` says why; the sample is skipped)."""

    observation: list[ToolMessage] = field(default_factory=list)
    reward: float | None = None
    done: bool = False
    info: dict[str, Any] = field(default_factory=dict)


class Env(Protocol):
    """A multi-turn episode. `tools` are shown to the model (rendered into the system prompt)."""

    @property
    def tools(self) -> list[ToolSpec]: ...

    def reset(self, seed: int) -> list[Message]:
        """Start an episode; returns the prompt messages (system, user)."""
        ...

    def step(self, message: AssistantMessage) -> StepResult:
        """Take the model's turn (parsed from its output); tool calls give an observation, an answer ends it."""
        ...


def observation_text(observation: Sequence[ToolMessage]) -> str:
    """The forced text after a model turn that ended with `[e~[`: newline, the tool block, the generation prompt.

    Appending it keeps the prompt append-only, exactly as `xinzhou.chat.Agent` does."""
    return "\n" + render_tool_results(list(observation)) + GENERATION_PROMPT


class TaskEnv:
    """A bundled task as an environment: tool calls run through the task's tools, a turn without tool calls is the
    final answer and is scored by the task's verifier. More than `max_turns` model turns ends the episode with
    reward 0 and `info["truncated"] = True`."""

    def __init__(self, task: Task | str, difficulty: int | Sequence[int] = 1, *, max_turns: int = 8) -> None:
        self.task = get_task(task) if isinstance(task, str) else task
        # several difficulties: each problem seed picks one (seed % len), so a GRPO group shares its difficulty
        self.difficulties = (difficulty,) if isinstance(difficulty, int) else tuple(difficulty)
        if not self.difficulties:
            raise ValueError("difficulty: give an int or a non-empty sequence of ints")
        for d in self.difficulties:
            self.task.check_difficulty(d)
        if max_turns < 1:
            raise ValueError(f"max_turns must be >= 1, got {max_turns}")
        self.difficulty = self.difficulties[0]
        self.max_turns = max_turns
        self.registry = ToolRegistry(self.task.tools())
        self.problem: Problem | None = None
        self.turns = 0
        self.calls = 0

    @property
    def tools(self) -> list[ToolSpec]:
        return self.registry.specs()

    def reset(self, seed: int) -> list[Message]:
        self.difficulty = self.difficulties[seed % len(self.difficulties)]
        self.problem = self.task.generate(seed, self.difficulty)
        self.turns = self.calls = 0
        return [SystemMessage(self.task.system_prompt), UserMessage(self.problem.prompt)]

    def step(self, message: AssistantMessage) -> StepResult:
        if self.problem is None:
            raise RuntimeError("call reset(seed) before step()")
        self.turns += 1
        info: dict[str, Any] = {"problem_seed": self.problem.seed, "turns": self.turns}
        if message.tool_calls:
            if self.turns >= self.max_turns:
                return StepResult(reward=0.0, done=True, info={**info, "truncated": True})
            return StepResult(observation=[self._run(call) for call in message.tool_calls], info=info)
        try:
            reward = float(self.task.verify(self.problem, message.content))
        except Exception as e:  # noqa: BLE001 (a broken verifier skips the sample; it must not end the run)
            log.warning("task %s: verifier raised on seed %s: %r", self.task.name, self.problem.seed, e)
            return StepResult(done=True, info={**info, "error": f"{type(e).__name__}: {e}"})
        return StepResult(reward=reward, done=True, info=info)

    def _run(self, call: ToolCall) -> ToolMessage:
        call_id = call.id or f"call_{self.calls}"
        self.calls += 1
        result = self.registry.call(call.name, call.arguments)
        return ToolMessage(result.content, tool_call_id=call_id, name=call.name)


@dataclass
class Episode:
    messages: list[Message]
    reward: float | None
    info: dict[str, Any]


def run_episode(
    env: Env, seed: int, policy: Callable[[list[Message]], AssistantMessage], *, max_turns: int = 64
) -> Episode:
    """Play one episode at the message level: `policy(transcript) -> assistant turn` until the env says done.

    For scripted policies, SFT-trace replay and evaluation; the token-level rollout does the same with an engine."""
    messages = env.reset(seed)
    for _ in range(max_turns):
        turn = policy(messages)
        messages.append(turn)
        result = env.step(turn)
        messages.extend(result.observation)
        if result.done:
            return Episode(messages, result.reward, result.info)
    raise RuntimeError(f"the environment did not end the episode within {max_turns} turns")
