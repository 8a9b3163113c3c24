"""Tools for the agent: a Python function with type hints and a docstring becomes a tool with a JSON schema.

The schema is what the model sees in the system prompt and what the parser types values with, so it is derived
from the signature rather than written twice. `ToolRegistry.call` is the only way the agent runs a tool, and it
never raises: unknown tools, bad arguments and exceptions come back as error results the model can read.
"""

from __future__ import annotations

import enum
import inspect
import json
import re
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from xinzhou.chat.parsers.values import json_type, schema_types
from xinzhou.chat.types import ToolSpec

_SIMPLE = {str: "string", int: "integer", float: "number", bool: "boolean", type(None): "null"}


def type_schema(tp: Any, where: str = "parameter") -> dict[str, Any]:
    """JSON schema of a type hint: str/int/float/bool/None, list[T], dict[str, T], tuple, Literal, Enum, unions."""
    if tp is Any:
        return {}
    if tp in _SIMPLE:
        return {"type": _SIMPLE[tp]}
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return {"enum": [m.value for m in tp]}
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Literal:
        return {"enum": list(args)}
    if origin in (typing.Union, types.UnionType):
        subs = [type_schema(a, where) for a in args]
        if all(set(s) == {"type"} and isinstance(s["type"], str) for s in subs):
            return {"type": [s["type"] for s in subs]}
        return {"anyOf": subs}
    if tp in (list, tuple, set, frozenset) or origin in (list, tuple, set, frozenset, typing.Sequence):
        item = args[0] if args and (origin is not tuple or len(args) == 2 and args[1] is Ellipsis) else None
        return {"type": "array", "items": type_schema(item, where)} if item is not None else {"type": "array"}
    if tp is dict or origin in (dict, Mapping):
        return {"type": "object", "additionalProperties": type_schema(args[1], where)} if args else {"type": "object"}
    raise TypeError(
        f"{where}: cannot make a JSON schema from type {tp!r}; use str, int, float, bool, None, list[...], "
        "dict[str, ...], Literal[...], an Enum, or a union of these"
    )


def parse_docstring(doc: str | None) -> tuple[str, dict[str, str]]:
    """(description, {param: description}) from a Google-style docstring (`Args:` section) or `:param x:` lines."""
    doc = inspect.cleandoc(doc or "")
    params: dict[str, str] = {}
    for m in re.finditer(r"^\s*:param\s+(\w+):\s*(.*)$", doc, re.M):
        params[m.group(1)] = m.group(2).strip()
    section = re.search(r"^(?:Args|Arguments|Parameters):\s*\n((?:[ \t]+.*\n?|\s*\n)*)", doc, re.M)
    if section:
        current = None
        for line in section.group(1).splitlines():
            m = re.match(r"^\s+(\w+)(?:\s*\([^)]*\))?\s*:\s*(.*)$", line)
            if m and (current is None or len(line) - len(line.lstrip()) <= 4):
                current = m.group(1)
                params[current] = m.group(2).strip()
            elif current and line.strip():
                params[current] = (params[current] + " " + line.strip()).strip()
    description = re.split(r"\n\s*\n|^(?:Args|Arguments|Parameters|Returns|Raises|:param)", doc, maxsplit=1,
                           flags=re.M)[0]
    return " ".join(description.split()), params


@dataclass
class ToolResult:
    content: str
    is_error: bool = False


@dataclass
class Tool:
    """A callable tool. `fn(**arguments)` returns a str (sent as is) or anything JSON-serialisable."""

    name: str
    description: str
    parameters: dict[str, Any]
    fn: Callable[..., Any] = field(repr=False)

    def spec(self) -> ToolSpec:
        return ToolSpec(self.name, self.description, self.parameters)

    @classmethod
    def from_function(cls, fn: Callable[..., Any], name: str | None = None, description: str | None = None) -> Tool:
        """Build the schema from `fn`'s type hints and docstring. Every parameter needs a type hint."""
        name = name or fn.__name__
        hints = typing.get_type_hints(fn)
        doc, param_docs = parse_docstring(fn.__doc__)
        props: dict[str, Any] = {}
        required: list[str] = []
        for p in inspect.signature(fn).parameters.values():
            where = f"tool {name!r}, parameter {p.name!r}"
            if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
                raise TypeError(f"{where}: *args/**kwargs cannot be described by a JSON schema")
            if p.name not in hints:
                raise TypeError(f"{where} has no type hint (every tool parameter needs one)")
            schema = type_schema(hints[p.name], where)
            if p.name in param_docs:
                schema = {**schema, "description": param_docs[p.name]}
            props[p.name] = schema
            if p.default is p.empty:
                required.append(p.name)
        parameters: dict[str, Any] = {"type": "object", "properties": props}
        if required:
            parameters["required"] = required
        return cls(name, description if description is not None else doc, parameters, fn)


def check_arguments(arguments: Mapping[str, Any], parameters: Mapping[str, Any]) -> str | None:
    """A message naming what is wrong with `arguments` for this schema, or None when they fit (shallow check)."""
    props = parameters.get("properties", {})
    unknown = [k for k in arguments if k not in props]
    if unknown:
        return f"unknown argument(s) {', '.join(map(repr, unknown))}; valid: {', '.join(props) or 'none'}"
    missing = [k for k in parameters.get("required", []) if k not in arguments]
    if missing:
        return f"missing required argument(s) {', '.join(map(repr, missing))}"
    for k, v in arguments.items():
        allowed = schema_types(props.get(k))
        t = json_type(v)
        if allowed and t not in allowed and not (t == "integer" and "number" in allowed):
            return f"argument {k!r} must be of type {' | '.join(sorted(allowed))}, got {t} {v!r:.60}"
    return None


class ToolRegistry:
    """Named tools. `register` is a decorator; `call(name, arguments)` never raises."""

    def __init__(self, tools: Iterable[Tool | Callable[..., Any]] = ()) -> None:
        self._tools: dict[str, Tool] = {}
        for t in tools:
            self.add(t)

    def add(self, tool: Tool | Callable[..., Any]) -> Tool:
        tool = tool if isinstance(tool, Tool) else Tool.from_function(tool)
        if tool.name in self._tools:
            raise ValueError(f"a tool named {tool.name!r} is already registered")
        self._tools[tool.name] = tool
        return tool

    def register(
        self, fn: Callable[..., Any] | None = None, *, name: str | None = None, description: str | None = None
    ) -> Any:
        """`@registry.register` or `@registry.register(name=..., description=...)`; returns the function."""

        def deco(f: Callable[..., Any]) -> Callable[..., Any]:
            self.add(Tool.from_function(f, name, description))
            return f

        return deco(fn) if fn is not None else deco

    def __contains__(self, name: object) -> bool:
        return name in self._tools

    def __getitem__(self, name: str) -> Tool:
        return self._tools[name]

    def __iter__(self) -> typing.Iterator[Tool]:
        return iter(self._tools.values())

    def __len__(self) -> int:
        return len(self._tools)

    def specs(self) -> list[ToolSpec]:
        return [t.spec() for t in self._tools.values()]

    def call(self, name: str, arguments: Mapping[str, Any]) -> ToolResult:
        """Run a tool; every failure becomes an error result (`is_error=True`) that starts with "Error: "."""
        tool = self._tools.get(name)
        if tool is None:
            return ToolResult(f"Error: unknown tool {name!r}. Available tools: {', '.join(self._tools) or 'none'}",
                              True)
        problem = check_arguments(arguments, tool.parameters)
        if problem:
            return ToolResult(f"Error: {name}: {problem}", True)
        try:
            out = tool.fn(**arguments)
        except Exception as e:  # a tool failure is a result for the model, never a crash of the agent
            return ToolResult(f"Error: {type(e).__name__}: {e}", True)
        if isinstance(out, ToolResult):
            return out
        if isinstance(out, str):
            return ToolResult(out)
        try:
            return ToolResult(json.dumps(out, ensure_ascii=False, default=str))
        except (TypeError, ValueError) as e:
            return ToolResult(f"Error: {name} returned a value that is not JSON-serialisable: {e}", True)
