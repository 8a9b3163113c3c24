"""Ask the `xinzhou demo` model a word problem through the official `openai` SDK; it calls the calculator, we run it.

    xinzhou serve --model runs/demo/model            # in one terminal
    python examples/demo_client.py                    # in another (pip install openai)

The agent loop of a real client: send the conversation with the `calculator` tool; while the model answers with
tool calls, run them locally and append the assistant message *as the server returned it* (its
`reasoning_content` included, so the next prompt keeps the chain of thought: interleaved thinking) and the tool
results; stop at the first answer without a tool call. Prints each step and checks the answer against the exact
value.
"""

from __future__ import annotations

import argparse
import json
import sys
from fractions import Fraction

from openai import OpenAI

from xinzhou.chat.tools.calculator import calculator
from xinzhou.chat.tools.registry import Tool
from xinzhou.tasks import get_task
from xinzhou.tasks.base import extract_answer, parse_number


def solve(client: OpenAI, model: str, system: str, question: str, max_turns: int = 8) -> tuple[str, int]:
    """Run the tool loop; returns (final content, number of calculator calls)."""
    tools = [Tool.from_function(calculator).spec().to_dict()]
    messages: list[dict] = [{"role": "system", "content": system}, {"role": "user", "content": question}]
    calls = 0
    for _ in range(max_turns):
        reply = client.chat.completions.create(model=model, messages=messages, tools=tools, max_tokens=128,
                                               temperature=0)
        msg = reply.choices[0].message
        thinking = (msg.model_extra or {}).get("reasoning_content")
        if thinking:
            print(f"  thinking: {thinking}")
        if not msg.tool_calls:
            print(f"  answer:   {msg.content}")
            return msg.content or "", calls
        messages.append(msg.model_dump(exclude_none=True))  # keeps reasoning_content
        for call in msg.tool_calls:
            args = json.loads(call.function.arguments)
            result = calculator(**args) if call.function.name == "calculator" else f"unknown tool {call.function.name}"
            calls += 1
            print(f"  → {call.function.name}({args}) = {result}")
            messages.append({"role": "tool", "tool_call_id": call.id, "content": result})
    return "", calls


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--base-url", default="http://127.0.0.1:8000/v1")
    p.add_argument("--api-key", default="unused", help="the server's --api-key, if it has one")
    p.add_argument("--model", default=None, help="the model id (default: the first one GET /v1/models lists)")
    p.add_argument("--problems", type=int, default=3, help="how many held-out problems to ask")
    p.add_argument("--difficulty", type=int, default=2, help="1: 2 calculator calls, 2: 3 calls, 3: 5 calls")
    args = p.parse_args(argv)
    client = OpenAI(base_url=args.base_url, api_key=args.api_key)
    model = args.model or client.models.list().data[0].id
    task = get_task("arithmetic")
    solved = 0
    for i in range(args.problems):
        problem = task.generate(2_000_000 + i, args.difficulty)  # seeds no training stage uses
        print(f"Q: {problem.prompt}")
        content, calls = solve(client, model, task.system_prompt, problem.prompt)
        answer = extract_answer(content)
        ok = answer is not None and parse_number(answer) == Fraction(problem.answer)
        solved += ok
        print(f"  {'correct' if ok else 'wrong'} (expected {problem.answer}; {calls} calculator calls)\n")
    print(f"{solved}/{args.problems} correct")
    return 0 if solved else 1


if __name__ == "__main__":
    sys.exit(main())
