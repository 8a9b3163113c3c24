"""Knights and knaves: each islander makes one statement; knights always tell the truth, knaves always lie.

Why this task: the logic-puzzle family of the bundled set (as in reasoning-gym and SynLogic), with an exact
verifier and a guaranteed unique answer. The generator draws roles, gives each person a statement whose truth
matches their role, and keeps the puzzle only if brute force over all 2^n role assignments finds exactly one that
is consistent, so the answer cannot be guessed from an ambiguous puzzle.
"""

from __future__ import annotations

import itertools
import re

from xinzhou.chat.types import AssistantMessage, Message, SystemMessage, UserMessage
from xinzhou.tasks.base import ANSWER_FORMAT, Problem, Task, extract_answer

NAMES = ("Ada", "Ben", "Cleo", "Dev", "Emil", "Fay")
# difficulty -> (people, statement kinds)
LEVELS = {
    1: (2, ("is", "same", "diff")),
    2: (3, ("is", "same", "diff", "and", "or")),
    3: (4, ("is", "same", "diff", "and", "or")),
    4: (5, ("is", "same", "diff", "and", "or")),
}
SYSTEM_PROMPT = (
    "You solve knights-and-knaves puzzles. Knights always tell the truth and knaves always lie. "
    f"{ANSWER_FORMAT} Name everyone, e.g. `Answer: Ada is a knight, Ben is a knave`."
)

Statement = tuple  # ("is", x, role) | ("and"|"or", x, rx, y, ry) | ("same"|"diff", x, y); role True = knight


def holds(s: Statement, roles: tuple[bool, ...]) -> bool:
    """Whether statement `s` is true when `roles[i]` says person i is a knight."""
    kind = s[0]
    if kind == "is":
        return roles[s[1]] == s[2]
    if kind == "and":
        return roles[s[1]] == s[2] and roles[s[3]] == s[4]
    if kind == "or":
        return roles[s[1]] == s[2] or roles[s[3]] == s[4]
    return (roles[s[1]] == roles[s[2]]) == (kind == "same")


def _role(r: bool) -> str:
    return "a knight" if r else "a knave"


def say(s: Statement, speaker: int, names: tuple[str, ...]) -> str:
    """The statement in English, as `speaker` says it."""
    def who(i: int) -> str:
        return "I" if i == speaker else names[i]

    kind = s[0]
    if kind == "is":
        return f"{names[s[1]]} is {_role(s[2])}."
    if kind in ("and", "or"):
        return f"{names[s[1]]} is {_role(s[2])} {kind} {names[s[3]]} is {_role(s[4])}."
    pair = f"{who(s[2])} and {who(s[1])}" if s[1] == speaker else f"{who(s[1])} and {who(s[2])}"
    return f"{pair} are {'the same kind' if kind == 'same' else 'different kinds'}."


def solutions(statements: list[Statement]) -> list[tuple[bool, ...]]:
    """Every role assignment under which each person's statement is true exactly when they are a knight."""
    n = len(statements)
    return [r for r in itertools.product((True, False), repeat=n)
            if all(holds(s, r) == r[i] for i, s in enumerate(statements))]


class KnightsKnavesTask(Task):
    name = "knights_knaves"
    description = "knights and knaves logic puzzles with a unique solution (2-5 people)"
    difficulties = tuple(LEVELS)
    system_prompt = SYSTEM_PROMPT

    def _statement(self, rng, speaker: int, n: int, kinds: tuple[str, ...]) -> Statement:
        kind = rng.choice(kinds)
        others = [i for i in range(n) if i != speaker]
        if kind == "is":
            return ("is", rng.choice(others), rng.random() < 0.5)
        if kind in ("and", "or"):
            x, y = sorted(rng.sample(others, 2)) if len(others) >= 2 else (others[0], others[0])
            return (kind, x, rng.random() < 0.5, y, rng.random() < 0.5)
        x, y = rng.sample(range(n), 2)
        return (kind, x, y)

    def generate(self, seed: int, difficulty: int = 1) -> Problem:
        rng = self.rng(seed, difficulty)
        n, kinds = LEVELS[difficulty]
        for _ in range(10_000):
            roles = tuple(rng.random() < 0.5 for _ in range(n))
            statements = []
            for p in range(n):  # a statement true exactly when its speaker is a knight
                s = self._statement(rng, p, n, kinds)
                while holds(s, roles) != roles[p]:
                    s = self._statement(rng, p, n, kinds)
                statements.append(s)
            if len(solutions(statements)) == 1:
                break
        else:
            raise RuntimeError(f"knights_knaves: no unique puzzle for seed {seed}")  # never seen in practice
        names = NAMES[:n]
        said = " ".join(f'{names[p]} says: "{say(s, p, names)}"' for p, s in enumerate(statements))
        prompt = (f"On an island, knights always tell the truth and knaves always lie. You meet {n} islanders: "
                  f"{', '.join(names[:-1])} and {names[-1]}. {said} Who is a knight and who is a knave?")
        answer = ", ".join(f"{names[i]} is {_role(r)}" for i, r in enumerate(roles))
        return Problem(self.name, seed, difficulty, prompt, answer,
                       {"names": list(names), "roles": list(roles), "statements": [list(s) for s in statements]})

    def verify(self, problem: Problem, content: str) -> float:
        """1.0 iff every islander is named with exactly one role (knight/knave) and all roles are right.

        Reads the text after `Answer:` (else the last line); accepts "Ada is a knight", "Ada: knave", "Ada and Ben
        are knights"."""
        lines = [ln for ln in content.strip().splitlines() if ln.strip()]
        text = extract_answer(content) or (lines[-1] if lines else "")
        names = problem.data["names"]
        name = rf"\b({'|'.join(names)})\b"
        canonical = {n.lower(): n for n in names}
        found: dict[str, set[str]] = {n: set() for n in names}

        def add(who: str, roles: list[str]) -> None:
            found[canonical[who.lower()]].update(r.lower() for r in roles)

        hits = list(re.finditer(name, text, re.IGNORECASE))
        for i, m in enumerate(hits):  # the roles said after each name, up to the next name or clause boundary
            after = text[m.end(): hits[i + 1].start() if i + 1 < len(hits) else None]
            add(m.group(1), re.findall(r"\b(knight|knave)s?\b", re.split(r"[,;.\n]", after)[0], re.IGNORECASE))
        group = rf"((?:{name}(?:\s*,\s*|\s+and\s+))+){name}\s+are\s+(?:both\s+|all\s+)?(knight|knave)s\b"
        for m in re.finditer(group, text, re.IGNORECASE):  # "Ada and Ben are knights": the names before the last
            for who in re.findall(name, m.group(1), re.IGNORECASE):
                add(who, [m.group(m.lastindex)])
        return float(all(found[n] == {"knight" if r else "knave"} for n, r in zip(names, problem.data["roles"])))

    def sft_trace(self, problem: Problem) -> list[Message]:
        """System, user, and one assistant turn whose thinking checks each statement under the solution and notes
        that brute force leaves no other consistent assignment."""
        names = tuple(problem.data["names"])
        roles = tuple(problem.data["roles"])
        lines = []
        for p, s in enumerate(problem.data["statements"]):
            truth = holds(tuple(s), roles)
            lines.append(f"If {names[p]} is {_role(roles[p])}, the statement \"{say(tuple(s), p, names)}\" is "
                         f"{'true' if truth else 'false'}, which fits.")
        thought = (" ".join(lines) + f" Every other assignment of the {len(names)} roles contradicts at least one "
                   "statement, so this is the only solution.")
        return [SystemMessage(self.system_prompt), UserMessage(problem.prompt),
                AssistantMessage(f"Answer: {problem.answer}", thought)]
