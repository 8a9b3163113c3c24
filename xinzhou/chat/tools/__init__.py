"""Tools the agent can call: the registry (typed functions -> JSON-schema tools) and the built-ins."""

from xinzhou.chat.tools.calculator import calculator
from xinzhou.chat.tools.python_exec import make_python_tool, run_python
from xinzhou.chat.tools.registry import Tool, ToolRegistry, ToolResult


def builtin_tools() -> ToolRegistry:
    """A registry with `calculator` and `python` (default sandbox limits)."""
    return ToolRegistry([Tool.from_function(calculator), make_python_tool()])


__all__ = ["Tool", "ToolRegistry", "ToolResult", "builtin_tools", "calculator", "make_python_tool", "run_python"]
