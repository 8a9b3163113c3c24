"""What a bundled task is: a deterministic problem generator, an exact verifier, and SFT traces in chat messages.

Why: RL on verifiable rewards needs problems whose answers can be checked exactly and reproduced from a seed, and
the tiny demo model needs supervised traces in the same M2 chat format the policy will emit (think, call a tool,
read the result, think again, answer), so SFT and RL see one format. Tasks know nothing about RL: `xinzhou.rl.env`
wraps any `Task` into an environment.

Answers are read from the assistant's visible content (never its reasoning): `Answer: …` on its own line (the
format every system prompt asks for), or `\\boxed{…}`.
"""

from __future__ import annotations

import random
import re
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

from xinzhou.chat.tools.registry import Tool
from xinzhou.chat.types import Message, messages_to_dicts

ANSWER_FORMAT = "End with the final answer on its own line, as `Answer: <answer>`."
_ANSWER_RE = re.compile(r"(?:final\s+)?answer\s*(?:is)?\s*[:=]\s*(.+)", re.IGNORECASE)
_BOXED_RE = re.compile(r"\\boxed\{([^{}]*)\}")
_NUMBER_RE = re.compile(r"[-−]?\d+(?:,\d{3})*(?:\.\d+)?(?:\s*/\s*\d+)?")


@dataclass(frozen=True)
class Problem:
    """One generated problem. `data` holds what the verifier and the SFT trace need (task-specific)."""

    task: str
    seed: int
    difficulty: int
    prompt: str  # the user message
    answer: str  # a canonical correct answer, as the model should write it after "Answer: "
    data: dict[str, Any] = field(default_factory=dict)


def extract_answer(content: str) -> str | None:
    """The final answer in `content`: the last `\\boxed{…}`, else the text after the last `Answer:` (to the end of
    that line, markdown emphasis and a trailing period removed); None when neither is there."""
    boxed = _BOXED_RE.findall(content)
    if boxed:
        return boxed[-1].strip()
    matches = [m for line in content.splitlines() if (m := _ANSWER_RE.search(line))]
    if not matches:
        return None
    text = matches[-1].group(1).strip().strip("*_`$ ").strip()
    return text[:-1].strip() if text.endswith(".") else text


def parse_number(text: str) -> Fraction | None:
    """The first number in `text` as an exact Fraction: `1,234`, `-12`, `3.50`, `7/2`, `$1234 cents`; else None."""
    m = _NUMBER_RE.search(text)
    if m is None:
        return None
    s = m.group(0).replace(",", "").replace("−", "-").replace(" ", "")
    try:
        return Fraction(s)
    except (ValueError, ZeroDivisionError):
        return None


class Task(ABC):
    """A family of problems. Subclasses set `name`, `description`, `difficulties`, `system_prompt`."""

    name: str
    description: str
    difficulties: tuple[int, ...] = (1, 2, 3, 4)
    system_prompt: str

    def tools(self) -> list[Tool]:
        """Tools the model may call (none by default)."""
        return []

    def check_difficulty(self, difficulty: int) -> None:
        if difficulty not in self.difficulties:
            raise ValueError(f"task {self.name!r}: unknown difficulty {difficulty!r}; valid: "
                             f"{', '.join(map(str, self.difficulties))}")

    def rng(self, seed: int, difficulty: int) -> random.Random:
        """The generator's random stream, a pure function of (task, difficulty, seed) on every platform."""
        self.check_difficulty(difficulty)
        return random.Random(f"{self.name}/{difficulty}/{seed}")

    @abstractmethod
    def generate(self, seed: int, difficulty: int = 1) -> Problem:
        """The problem for `seed` at `difficulty`: the same arguments always give the same problem."""

    @abstractmethod
    def verify(self, problem: Problem, content: str) -> float:
        """The reward of a final assistant `content` for `problem`: 1.0 correct, 0.0 wrong or unreadable."""

    @abstractmethod
    def sft_trace(self, problem: Problem) -> list[Message]:
        """A correct episode as chat messages (system, user, assistant/tool turns), ready for `xinzhou.chat.to_ids`."""

    def sft_record(self, problem: Problem, **trace_options: Any) -> dict[str, Any]:
        """The SFT trace as one line of the SFT JSONL format: `{"messages": [...], "tools": [...]}` (plain JSON);
        `trace_options` go to the task's `sft_trace` (e.g. the arithmetic task's `mental_last`)."""
        return {"messages": messages_to_dicts(self.sft_trace(problem, **trace_options)),
                "tools": [t.spec().to_dict() for t in self.tools()]}

    def dataset(self, n: int, difficulty: int = 1, *, start_seed: int = 0) -> list[Problem]:
        """Problems for seeds `start_seed .. start_seed + n - 1`."""
        return [self.generate(start_seed + i, difficulty) for i in range(n)]
