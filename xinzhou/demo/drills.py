"""Copy drills: the demo's synthetic pretraining data, which gives a tiny model a copying circuit before SFT.

Why this exists. Every number a calculator trace writes is a copy (from the problem into a call, from a tool
result into the next thought and call), and a problem is solved only if every digit is right. A freshly
initialised 2M-parameter hybrid trained on the traces alone learns their format in ~100 steps but copies no digit
at all: measured on the demo's model, the loss on digit tokens stays at ln 10 ≈ 2.3 nats (chance) after 480 SFT
steps, while every other token is below 0.05. The copying circuit (an induction head: attend to where the current
token appeared before and predict what followed it) forms abruptly, after a few hundred steps, only when copying
dominates the loss. So the demo first trains on short chats whose answer repeats the user's numbers
(``Copy: 94 51 441`` → ``94 51 441``): the digit loss falls from chance to < 0.1 nats in ~300 steps (lr 1e-3;
at 2e-3 and above it did not form within 400 steps), and SFT on the traces then learns the digits too.

This plays the part pretraining plays for a real model, on a budget of about two CPU minutes.
"""

from __future__ import annotations

import random
from typing import Any

VERBS = ("Copy", "Repeat", "Echo")


def copy_drill(rng: random.Random) -> dict[str, Any]:
    """One chat: the user lists 2-6 numbers of 2-4 digits, the assistant repeats them exactly."""
    nums = " ".join(str(rng.randint(10, 9999)) for _ in range(rng.randint(2, 6)))
    return {"messages": [{"role": "user", "content": f"{rng.choice(VERBS)}: {nums}"},
                         {"role": "assistant", "content": nums}]}


def copy_drills(n: int, seed: int = 0) -> list[dict[str, Any]]:
    """``n`` drills (SFT JSONL records), deterministic for ``seed``."""
    if n < 1:
        raise ValueError(f"need at least one drill, got n={n}")
    rng = random.Random(seed)
    return [copy_drill(rng) for _ in range(n)]
