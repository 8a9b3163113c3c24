"""Multi-step arithmetic word problems that need the calculator tool (the tiny-model demo task).

Why this task: it exercises interleaved thinking end to end. Each problem is a chain of 2-6 exact operations on
2-3 digit numbers (products of quantity and price, a sum, an adjustment, an equal split), so a small model cannot
do it in its head but can by calling `calculator` once per step and reading each result back. The SFT trace does
exactly that, one call per assistant turn, and every tool result in it comes from running the real calculator
(`sft_trace(mental_last=True)`: the last step done in the thinking instead, a habit the demo's RL unlearns).

The thinking says what each step is for in words and reads each result back once ("That is 5175 plants."); it
does not restate the problem's numbers. Every number the model writes is a copy (from the problem, a tool result
or its own last thought), and a success needs every digit right: a difficulty-1 trace that restated everything
held ~75 digit copies, this one ~25, which is what lets a 2M-parameter model get whole problems right.

Problem shape: `(Σ_j a_j·b_j  ± c) / k`, with the parts present by difficulty:

    difficulty 1: a·b ± c                       2 calls
    difficulty 2: a·b + a'·b'                   3 calls
    difficulty 3: (a·b + a'·b' ± c) / k         5 calls
    difficulty 4: (Σ of 3 products ± c) / k     6 calls, larger numbers
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

from xinzhou.chat.tools.calculator import calculator, evaluate
from xinzhou.chat.tools.registry import Tool
from xinzhou.chat.types import (
    AssistantMessage,
    Message,
    SystemMessage,
    ToolCall,
    ToolMessage,
    UserMessage,
)
from xinzhou.tasks.base import (
    ANSWER_FORMAT,
    Problem,
    Task,
    extract_answer,
    parse_number,
)

NAMES = ("Mia", "Leo", "Ana", "Sam", "Ivy", "Tom", "Zoe", "Max", "Lia", "Ben", "Eva", "Kai")


@dataclass(frozen=True)
class Story:
    """Phrasing of one problem family; `{name}`, `{a}`, `{b}`, `{c}`, `{k}`, `{thing}` are filled in.

    Every number in a problem follows the words that identify it ("notebooks: 62", "a coupon worth 717"), and the
    thinking before each call names those words first ("The coupon: I subtract it."), so the add-or-subtract
    choice is read off the adjustment's name one token earlier instead of being made from the bare problem.
    Measured on the demo (480 SFT steps, 64 held-out problems): with the older phrasing ("Then I subtract the lost
    amount.", the number before its noun) 26 of the 28 difficulty-1 failures added on a subtract problem
    (success 56%); with this one 8 did (88%).
    """

    items: tuple[str, ...]
    product: str  # one a·b line
    product_step: str  # reasoning before the call for a·b (words only: the call carries the numbers)
    plus: str
    minus: str
    plus_step: str  # reasoning before the `total + c` call: names the adjustment, then the operation
    minus_step: str
    split: str  # {k} is the number of equal shares
    total_question: str
    split_question: str
    unit: str


STORIES = (
    Story(
        items=("notebooks", "paint sets", "rulers", "glue sticks", "pencil cases", "sketch pads"),
        product="{name} buys {thing}: {a} at {b} cents each.",
        product_step="The {thing}: count times price.",
        plus="There is also a delivery fee of {c} cents.",
        minus="{name} has a coupon worth {c} cents off the total.",
        plus_step="The delivery fee: I add it.",
        minus_step="The coupon: I subtract it.",
        split="The total is shared equally by {k} people.",
        total_question="How many cents does {name} pay in total?",
        split_question="How many cents does each person pay?",
        unit="cents",
    ),
    Story(
        items=("tomatoes", "peppers", "beans", "lettuces", "carrots", "onions"),
        product="A farm grows {thing} in {a} rows with {b} plants in each row.",
        product_step="The {thing}: rows times plants per row.",
        plus="The greenhouse holds {c} more plants.",
        minus="The frost destroys {c} of the plants.",
        plus_step="The greenhouse: I add its plants.",
        minus_step="The frost: I subtract the plants it destroys.",
        split="All the plants are shared equally among {k} markets.",
        total_question="How many plants are there in total?",
        split_question="How many plants does each market get?",
        unit="plants",
    ),
    Story(
        items=("bolts", "screws", "washers", "nails", "hinges", "rivets"),
        product="A warehouse receives {thing} in {a} crates with {b} {thing} in each crate.",
        product_step="The {thing}: crates times {thing} per crate.",
        plus="The stock already holds {c} loose parts.",
        minus="The repairs use up {c} parts.",
        plus_step="The stock: I add its parts.",
        minus_step="The repairs: I subtract the parts they use.",
        split="The parts are then packed equally into {k} boxes.",
        total_question="How many parts does the warehouse have now?",
        split_question="How many parts go in each box?",
        unit="parts",
    ),
)

# difficulty -> (number of products, adjustment?, split?, range of a, range of b, range of k)
LEVELS = {
    1: (1, True, False, (12, 99), (12, 99), (0, 0)),
    2: (2, False, False, (12, 99), (101, 999), (0, 0)),
    3: (2, True, True, (12, 99), (101, 999), (3, 12)),
    4: (3, True, True, (101, 999), (101, 999), (7, 29)),
}

SYSTEM_PROMPT = (
    "You solve arithmetic word problems. Use the calculator tool for every computation, one step at a time, and "
    f"read each result before the next step. {ANSWER_FORMAT}"
)


class ArithmeticTask(Task):
    name = "arithmetic"
    description = "multi-step word problems (products, sums, adjustments, equal splits) solved with the calculator"
    difficulties = tuple(LEVELS)
    system_prompt = SYSTEM_PROMPT

    def tools(self) -> list[Tool]:
        return [Tool.from_function(calculator)]

    def generate(self, seed: int, difficulty: int = 1) -> Problem:
        rng = self.rng(seed, difficulty)
        n_products, adjust, split, a_range, b_range, k_range = LEVELS[difficulty]
        story = rng.choice(STORIES)
        name = rng.choice(NAMES)
        things = rng.sample(story.items, n_products)
        products = [(rng.randint(*a_range), rng.randint(*b_range)) for _ in things]
        total = sum(a * b for a, b in products)
        k = rng.randint(*k_range) if split else 1
        sign, c = "", 0
        if adjust:
            sign = rng.choice("+-")
            c0 = rng.randint(10, max(10, min(999, total // 2)))
            c = c0 + (-(total + c0)) % k if sign == "+" else c0 + (total - c0) % k  # makes the split exact
        value = (total + c if sign == "+" else total - c) // k
        lines = [story.product.format(name=name, a=a, b=b, thing=t) for (a, b), t in zip(products, things)]
        if adjust:
            lines.append((story.plus if sign == "+" else story.minus).format(name=name, c=c))
        if split:
            lines.append(story.split.format(k=k))
        lines.append((story.split_question if split else story.total_question).format(name=name))
        data = {"story": STORIES.index(story), "things": things, "products": products, "sign": sign, "c": c, "k": k}
        return Problem(self.name, seed, difficulty, " ".join(lines), str(value), data)

    def verify(self, problem: Problem, content: str) -> float:
        """1.0 iff the answer (after `Answer:`, else the last number in the content) equals the exact value."""
        answer = extract_answer(content)
        if answer is None:
            numbers = [n for n in (parse_number(w) for w in content.split()) if n is not None]
            value = numbers[-1] if numbers else None
        else:
            value = parse_number(answer)
        return float(value is not None and value == Fraction(problem.answer))

    def steps(self, problem: Problem) -> list[tuple[str, str]]:
        """(reasoning before the call, calculator expression) for each step of the solution, in order."""
        d = problem.data
        story = STORIES[d["story"]]
        out = [(story.product_step.format(a=a, b=b, thing=t), f"{a} * {b}") for (a, b), t in zip(d["products"],
                                                                                            d["things"])]
        partials = [a * b for a, b in d["products"]]
        total = sum(partials)
        if len(partials) > 1:
            out.append((f"Now I add the {len(partials)} amounts.", " + ".join(map(str, partials))))
        if d["sign"]:
            out.append((story.plus_step if d["sign"] == "+" else story.minus_step, f"{total} {d['sign']} {d['c']}"))
            total = total + d["c"] if d["sign"] == "+" else total - d["c"]
        if d["k"] > 1:
            out.append(("Finally I split it into equal shares.", f"{total} / {d['k']}"))
        return out

    def sft_trace(self, problem: Problem, *, mental_last: bool = False) -> list[Message]:
        """System, user, then one assistant turn per step (think, call `calculator`), each followed by its tool
        result, and a final turn that reads the last result and answers.

        `mental_last=True` gives the trace of a demonstrator who does the last step in its head: the final turn
        thinks "Now I add the 2 amounts: 13340 + 26424 = 39764." (always correct) instead of calling the
        calculator for it. The demo mixes such traces into SFT so that the model imitates a habit it lacks the
        skill for (a 2M-parameter model cannot add 5-digit numbers in its head), which its RL stage, rewarded only
        for correct answers, has to unlearn (`xinzhou/demo/presets.py`, `mental_last_frac`)."""
        unit = STORIES[problem.data["story"]].unit
        msgs: list[Message] = [SystemMessage(self.system_prompt), UserMessage(problem.prompt)]
        steps = self.steps(problem)
        assert evaluate(steps[-1][1]) == Fraction(problem.answer)
        readout = ""
        for i, (thought, expr) in enumerate(steps[:-1] if mental_last else steps):
            call = ToolCall("calculator", {"expression": expr}, id=f"call_{i}")
            msgs.append(AssistantMessage("", f"{readout}{thought}", [call]))
            result = calculator(expr)
            msgs.append(ToolMessage(result, tool_call_id=call.id, name="calculator"))
            readout = f"That is {result} {unit}. "
        if mental_last:
            thought, expr = steps[-1]
            readout += f"{thought[:-1]}: {expr} = {problem.answer}. "
        msgs.append(AssistantMessage(f"Answer: {problem.answer}", f"{readout}So that is the answer."))
        return msgs
