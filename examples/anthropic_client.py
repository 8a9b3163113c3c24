"""A tool round trip with the official `anthropic` SDK against a running `xinzhou serve`, keeping interleaved
thinking.

    xinzhou serve --model PATH                           # in one terminal
    python examples/anthropic_client.py                  # in another

The whole `content` of the assistant turn (thinking, text and tool_use blocks) goes back into the history, and the
tool result goes in a user turn of `tool_result` blocks; the server maps those to tool messages, so the thinking of
the chain stays in the prompt. A random or tiny model will not produce a meaningful call; then the script says so.
"""

from __future__ import annotations

import argparse
import json

import anthropic

TOOLS = [{"name": "get_weather", "description": "Current weather for a city.",
          "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--base-url", default="http://127.0.0.1:8000")
    p.add_argument("--api-key", default="unused", help="the server's --api-key, if it has one")
    p.add_argument("--model", default=None, help="the model id (default: the first one GET /v1/models lists)")
    args = p.parse_args()
    client = anthropic.Anthropic(base_url=args.base_url, api_key=args.api_key)
    model = args.model or client.models.list().data[0].id
    messages = [{"role": "user", "content": "What is the weather in Paris? Use the tool."}]

    first = client.messages.create(model=model, max_tokens=256, messages=messages, tools=TOOLS,
                                   tool_choice={"type": "any"})
    for block in first.content:
        if block.type == "thinking":
            print("thinking:", block.thinking)
    calls = [b for b in first.content if b.type == "tool_use"]
    if not calls:
        print("no tool call; stop reason", first.stop_reason)
        return
    messages.append({"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in first.content]})
    results = []
    for call in calls:
        print(f"→ {call.name}({call.input})")
        out = json.dumps({"city": call.input.get("city"), "sky": "sunny", "celsius": 21})
        print(f"← {out}")
        results.append({"type": "tool_result", "tool_use_id": call.id, "content": out})
    messages.append({"role": "user", "content": results})

    print("answer: ", end="", flush=True)
    with client.messages.stream(model=model, max_tokens=256, messages=messages, tools=TOOLS) as stream:
        for text in stream.text_stream:
            print(text, end="", flush=True)
        final = stream.get_final_message()
    print(f"\n[{final.stop_reason}; {final.usage.cache_read_input_tokens} prompt tokens reused from engine state]")


if __name__ == "__main__":
    main()
