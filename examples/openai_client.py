"""A tool round trip with the official `openai` SDK against a running `xinzhou serve`, keeping interleaved thinking.

    xinzhou serve --model PATH                        # in one terminal (prints the model id it serves)
    python examples/openai_client.py                  # in another

The model thinks, calls `get_weather`, we run the tool and send the result back together with the assistant
message *as the server returned it* (`reasoning_content` included): the server renders that thinking into the next
prompt, so the model continues the same chain of thought (and the engine reuses the first turn's state). A random
or tiny model will not produce a meaningful call; then the script says so and shows what it produced.
"""

from __future__ import annotations

import argparse
import json

from openai import OpenAI

TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "Current weather for a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]


def get_weather(city: str) -> str:
    return json.dumps({"city": city, "sky": "sunny", "celsius": 21})


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--base-url", default="http://127.0.0.1:8000/v1")
    p.add_argument("--api-key", default="unused", help="the server's --api-key, if it has one")
    p.add_argument("--model", default=None, help="the model id (default: the first one GET /v1/models lists)")
    p.add_argument("--tool-choice", default="required", help="auto | required | none (required forces a call)")
    args = p.parse_args()
    client = OpenAI(base_url=args.base_url, api_key=args.api_key)
    model = args.model or client.models.list().data[0].id
    messages = [{"role": "user", "content": "What is the weather in Paris? Use the tool."}]

    first = client.chat.completions.create(model=model, messages=messages, tools=TOOLS,
                                           tool_choice=args.tool_choice, max_tokens=256)
    msg = first.choices[0].message
    print("thinking:", (msg.model_extra or {}).get("reasoning_content"))
    if not msg.tool_calls:
        print("no tool call; the model answered:", msg.content)
        return
    messages.append(msg.model_dump(exclude_none=True))  # keeps reasoning_content: the chain's thinking
    for call in msg.tool_calls:
        args_ = json.loads(call.function.arguments)
        print(f"→ {call.function.name}({args_})")
        result = get_weather(**args_) if call.function.name == "get_weather" and "city" in args_ else "unknown tool"
        print(f"← {result}")
        messages.append({"role": "tool", "tool_call_id": call.id, "content": result})

    print("answer: ", end="", flush=True)
    stream = client.chat.completions.create(model=model, messages=messages, tools=TOOLS, max_tokens=256,
                                            stream=True, stream_options={"include_usage": True})
    for chunk in stream:
        for choice in chunk.choices:
            print(choice.delta.content or "", end="", flush=True)
        if chunk.usage:
            details = chunk.usage.prompt_tokens_details
            print(f"\n[{chunk.usage.prompt_tokens} prompt tokens, {details.cached_tokens if details else 0} reused "
                  f"from the first turn's engine state]")


if __name__ == "__main__":
    main()
