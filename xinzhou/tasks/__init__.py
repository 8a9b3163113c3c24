"""xinzhou.tasks: bundled verifiable tasks (deterministic generators, exact verifiers, SFT traces) by name.

    from xinzhou.tasks import get_task
    task = get_task("arithmetic")
    problem = task.generate(seed=0, difficulty=2)
    task.verify(problem, "Answer: 1234")        # 1.0 or 0.0
    messages = task.sft_trace(problem)          # chat messages for xinzhou.chat.to_ids
"""

from __future__ import annotations

from typing import Any

from xinzhou.tasks.arithmetic import ArithmeticTask
from xinzhou.tasks.base import Problem, Task, extract_answer, parse_number
from xinzhou.tasks.countdown import CountdownTask
from xinzhou.tasks.knights import KnightsKnavesTask

TASKS: dict[str, type[Task]] = {
    ArithmeticTask.name: ArithmeticTask,
    CountdownTask.name: CountdownTask,
    KnightsKnavesTask.name: KnightsKnavesTask,
}


def get_task(name: str, **options: Any) -> Task:
    """The task registered as `name`, built with `options` (e.g. `format_score=0.1` for countdown)."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; valid tasks: {', '.join(sorted(TASKS))}")
    return TASKS[name](**options)


__all__ = ["TASKS", "ArithmeticTask", "CountdownTask", "KnightsKnavesTask", "Problem", "Task", "extract_answer",
           "get_task", "parse_number"]
