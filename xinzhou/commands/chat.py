"""Chat with a checkpoint in the terminal: thinking shown dimmed as it streams, tool calls and their results.

`xinzhou chat --model PATH [--tools calculator,python|none --max-tokens N --temperature T --seed S --system TEXT]`.
Each line you type is a user turn; the model may call tools (run locally, sandboxed) and think between them, with
its thinking kept in the prompt for the whole tool chain (interleaved thinking). Commands: /reset starts over,
/exit (or end of input) quits.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from dataclasses import dataclass
from typing import Any

TOOL_CHOICES = ("calculator", "python")


def setup(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, metavar="PATH", help="checkpoint directory (with tokenizer.json)")
    parser.add_argument("--tools", default="calculator",
                        help=f"comma-separated tools from {', '.join(TOOL_CHOICES)}, or 'none' (default calculator)")
    parser.add_argument("--system", default=None, help="system prompt")
    parser.add_argument("--max-tokens", type=int, default=1024, help="most tokens per model step (default 1024)")
    parser.add_argument("--temperature", type=float, default=1.0, help="0 = greedy (default 1.0)")
    parser.add_argument("--top-p", type=float, default=0.95, help="nucleus mass (default 0.95)")
    parser.add_argument("--top-k", type=int, default=40, help="keep the K most likely tokens (default 40)")
    parser.add_argument("--seed", type=int, default=None, help="random seed (each step adds one)")
    parser.add_argument("--max-steps", type=int, default=8, help="model steps per turn (default 8)")


@dataclass
class _Output:
    text: str
    finish_reason: str


class StreamingLLM:
    """The agent's ``LLM`` over the engine: streams each step's tokens through the M2 parser to the printer as they
    are sampled (the agent then parses the finished text again, cheaply, to run the tools)."""

    def __init__(self, llm: Any, tools: list[Any], printer: Any) -> None:
        self.llm, self.tools, self.printer = llm, tools, printer

    def generate(self, prompts: list[str], params: Any = None) -> list[_Output]:
        from xinzhou.chat import M2StreamParser  # noqa: PLC0415

        outputs = []
        for prompt in prompts:
            parser, text, reason = M2StreamParser(self.tools or None), [], "length"
            for ev in self.llm.stream(prompt, params):
                text.append(ev.text)
                for e in parser.feed(ev.text):
                    self.printer(e)
                reason = ev.finish_reason or reason
            for e in parser.finish():
                self.printer(e)
            outputs.append(_Output("".join(text), reason))
        return outputs


def _tools(spec: str) -> Any:
    from xinzhou.chat import Tool, ToolRegistry, calculator, make_python_tool  # noqa: PLC0415

    names = [] if spec.strip() == "none" else [s.strip() for s in spec.split(",") if s.strip()]
    unknown = [n for n in names if n not in TOOL_CHOICES]
    if unknown:
        raise ValueError(f"unknown tool(s) {unknown}; valid options: {', '.join(TOOL_CHOICES)} or 'none'")
    made = {"calculator": lambda: Tool.from_function(calculator), "python": make_python_tool}
    return ToolRegistry([made[n]() for n in names])


def main(args: argparse.Namespace) -> int:
    from rich.console import Console  # noqa: PLC0415 (keep `xinzhou --help` fast)

    from xinzhou.chat import Agent, SystemMessage, ToolResultEvent, UserMessage  # noqa: PLC0415
    from xinzhou.chat.console import ConsolePrinter  # noqa: PLC0415

    console = Console(highlight=False)
    try:
        registry = _tools(args.tools)
        from xinzhou.engine import LLM, SamplingParams  # noqa: PLC0415 (torch: after the quick checks)

        params = SamplingParams(max_tokens=args.max_tokens, temperature=args.temperature, top_p=args.top_p,
                                top_k=args.top_k, seed=args.seed)
        llm = LLM(args.model)
        if llm.tokenizer is None:
            raise ValueError(f"{args.model} has no tokenizer.json; chat needs one")
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    printer = ConsolePrinter(sys.stdout, color=console.is_terminal)
    model = StreamingLLM(llm, registry.specs(), printer)
    base = [SystemMessage(args.system)] if args.system else []
    history = list(base)
    console.print(f"[bold]xinzhou chat[/] · {args.model} · tools: {', '.join(t.name for t in registry) or 'none'} · "
                  "/reset, /exit")
    turn = 0
    while True:
        try:
            line = console.input("[bold green]you ›[/] ")
        except (EOFError, KeyboardInterrupt):
            console.print()
            return 0
        text = line.strip()
        if text in ("/exit", "/quit"):
            return 0
        if text == "/reset":
            history = list(base)
            console.print("[dim](conversation cleared)[/]")
            continue
        if not text:
            continue
        step_params = params if args.seed is None else dataclasses.replace(params, seed=args.seed + turn)
        turn += 1
        agent = Agent(model, registry, max_steps=args.max_steps, params=step_params,
                      on_event=lambda e: printer(e) if isinstance(e, ToolResultEvent) else None)
        try:
            result = agent.run([*history, UserMessage(text)])
        except KeyboardInterrupt:
            console.print("\n[dim](interrupted)[/]")
            continue
        history = result.messages
        console.print(f"\n[dim]({result.stop_reason}, {len(result.steps)} step(s))[/]")
