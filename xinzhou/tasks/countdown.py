"""Countdown: combine the given numbers with + - * / to reach a target (TinyZero's R1-Zero task).

Why this task: it is the best-known small verifiable-reward benchmark (TinyZero, reasoning-gym), it needs search
rather than recall, and a candidate answer is checked exactly: the expression must use each given number exactly
once, only the four operations and parentheses (no unary minus, no concatenation), and evaluate to the target in
exact rational arithmetic. Every generated problem is solvable: the target is built from a random expression
tree over all the numbers, with every intermediate value a positive integer.
"""

from __future__ import annotations

import ast
import operator
from collections import Counter
from fractions import Fraction

from xinzhou.chat.types import AssistantMessage, Message, SystemMessage, UserMessage
from xinzhou.tasks.base import ANSWER_FORMAT, Problem, Task, extract_answer

# difficulty -> (how many numbers, pool of numbers, target range)
LEVELS = {
    1: (3, tuple(range(1, 13)), (10, 99)),
    2: (4, tuple(range(1, 26)), (10, 199)),
    3: (4, tuple(range(1, 11)) + (25, 50, 75, 100), (100, 999)),
    4: (5, tuple(range(1, 11)) + (25, 50, 75, 100), (100, 999)),
}
_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv}
_SYMBOL = {"+": operator.add, "-": operator.sub, "*": operator.mul, "/": operator.truediv}

SYSTEM_PROMPT = (
    "You solve countdown puzzles: combine the given numbers with +, -, *, / and parentheses to reach the target, "
    f"using each number exactly once. {ANSWER_FORMAT} The answer is the expression, e.g. `Answer: (6 + 4) * 3`."
)


def evaluate_countdown(expression: str) -> tuple[Fraction, list[int]]:
    """(exact value, numbers used) of a countdown expression; ValueError if it is not one.

    Allowed: non-negative integer literals, binary + - * /, parentheses. Division is exact (rational)."""
    expression = expression.replace("×", "*").replace("÷", "/").replace("−", "-")
    try:
        tree = ast.parse(expression.strip(), mode="eval").body
    except SyntaxError as e:
        raise ValueError(f"not an expression: {expression!r} ({e.msg})") from None
    numbers: list[int] = []

    def walk(node: ast.AST) -> Fraction:
        if isinstance(node, ast.Constant) and type(node.value) is int:
            numbers.append(node.value)
            return Fraction(node.value)
        if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
            left, right = walk(node.left), walk(node.right)
            if isinstance(node.op, ast.Div) and right == 0:
                raise ValueError("division by zero")
            return _OPS[type(node.op)](left, right)
        raise ValueError(f"only integers, + - * / and parentheses are allowed, got {ast.unparse(node)!r}")

    return walk(tree), numbers


class CountdownTask(Task):
    name = "countdown"
    description = "reach a target number from given numbers with + - * /, each number used exactly once"
    difficulties = tuple(LEVELS)
    system_prompt = SYSTEM_PROMPT

    def __init__(self, format_score: float = 0.0) -> None:
        """`format_score`: reward for a well-formed expression that misses (TinyZero gives 0.1)."""
        if not 0.0 <= format_score < 1.0:
            raise ValueError(f"format_score must be in [0, 1), got {format_score}")
        self.format_score = format_score

    def generate(self, seed: int, difficulty: int = 1) -> Problem:
        rng = self.rng(seed, difficulty)
        count, pool, (lo, hi) = LEVELS[difficulty]
        for _ in range(10_000):  # a few tries at most: most random trees land in range
            numbers = [rng.choice(pool) for _ in range(count)]
            items = [(Fraction(n), str(n)) for n in numbers]
            steps = []
            while len(items) > 1:
                i, j = rng.sample(range(len(items)), 2)
                (x, ex), (y, ey) = items[i], items[j]
                if x < y:
                    (x, ex), (y, ey) = (y, ey), (x, ex)
                ops = [op for op in "+-*/" if not (op == "-" and x == y) and not (op == "/" and (y == 1 or x % y))]
                if y == 1:
                    ops = [op for op in ops if op != "*"] or ops
                op = rng.choice(ops)
                value = _SYMBOL[op](x, y)
                steps.append(f"{x} {op} {y} = {value}")
                items = [it for k, it in enumerate(items) if k not in (i, j)] + [(value, f"({ex} {op} {ey})")]
            target, expr = items[0]
            if lo <= target <= hi and int(target) not in numbers:
                break
        else:
            raise RuntimeError(f"countdown: no target in [{lo}, {hi}] for seed {seed}")  # never seen in practice
        expr = expr[1:-1] if expr.startswith("(") else expr
        prompt = f"Numbers: {', '.join(map(str, numbers))}. Target: {target}. Reach the target using each number once."
        return Problem(self.name, seed, difficulty, prompt, expr,
                       {"numbers": numbers, "target": int(target), "steps": steps})

    def verify(self, problem: Problem, content: str) -> float:
        """1.0 iff the answer expression uses exactly the given numbers and equals the target; `format_score` if it
        is a valid expression that does not; 0.0 otherwise. Without `Answer:`, the last line is read. A trailing
        `= target` is allowed."""
        lines = [ln for ln in content.strip().splitlines() if ln.strip()]
        answer = extract_answer(content) or (lines[-1].strip() if lines else "")
        try:
            value, used = evaluate_countdown(answer.split("=")[0])
        except (ValueError, RecursionError):
            return 0.0
        ok = Counter(used) == Counter(problem.data["numbers"]) and value == problem.data["target"]
        return 1.0 if ok else self.format_score

    def sft_trace(self, problem: Problem) -> list[Message]:
        """System, user, and one assistant turn whose thinking walks the solution's steps."""
        steps = ". ".join(problem.data["steps"])
        thought = (f"I need {problem.data['target']} from {', '.join(map(str, problem.data['numbers']))}. "
                   f"{steps}. That reaches the target and uses every number once.")
        return [SystemMessage(self.system_prompt), UserMessage(problem.prompt),
                AssistantMessage(f"Answer: {problem.answer}", thought)]
