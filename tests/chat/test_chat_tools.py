"""Tool registry (schemas from type hints), the calculator, and the python sandbox's guarantees."""

from __future__ import annotations

import enum
import os
import socket
import time
from typing import Literal, Optional

import pytest

from xinzhou.chat import Tool, ToolRegistry, builtin_tools, calculator, run_python
from xinzhou.chat.tools.calculator import CalculatorError, evaluate
from xinzhou.chat.tools.python_exec import format_result, network_namespace_available


class Unit(enum.Enum):
    C = "celsius"
    F = "fahrenheit"


def get_weather(location: str, days: int = 1, unit: Unit = Unit.C, note: Optional[str] = None,  # noqa: UP045 (Optional is what we test)
                tags: list[str] | None = None, mode: Literal["fast", "slow"] = "fast") -> dict:
    """Get the weather forecast.

    Longer explanation that is not part of the short description.

    Args:
        location: City name,
            e.g. Paris.
        days (int): How many days.
        unit: Temperature unit.
    """
    return {"location": location, "days": days}


def test_schema_from_type_hints_and_docstring() -> None:
    tool = Tool.from_function(get_weather)
    assert tool.description == "Get the weather forecast."
    assert tool.parameters == {
        "type": "object",
        "properties": {
            "location": {"type": "string", "description": "City name, e.g. Paris."},
            "days": {"type": "integer", "description": "How many days."},
            "unit": {"enum": ["celsius", "fahrenheit"], "description": "Temperature unit."},
            "note": {"type": ["string", "null"]},
            "tags": {"anyOf": [{"type": "array", "items": {"type": "string"}}, {"type": "null"}]},
            "mode": {"enum": ["fast", "slow"]},
        },
        "required": ["location"],
    }
    assert tool.spec().to_dict()["function"]["name"] == "get_weather"


def test_schema_errors_name_the_problem() -> None:
    def no_hint(x) -> None: ...  # noqa: ANN001

    def var(*args: int) -> None: ...

    def weird(x: set[object]) -> None: ...

    with pytest.raises(TypeError, match="parameter 'x' has no type hint"):
        Tool.from_function(no_hint)
    with pytest.raises(TypeError, match=r"\*args/\*\*kwargs"):
        Tool.from_function(var)
    with pytest.raises(TypeError, match="cannot make a JSON schema from type"):
        Tool.from_function(weird)


def test_registry_call_never_raises() -> None:
    reg = ToolRegistry()

    @reg.register
    def boom(x: int) -> str:
        """Always fails."""
        raise RuntimeError(f"bad {x}")

    reg.register(get_weather, name="weather")
    assert reg.call("weather", {"location": "Paris", "days": 2}).content == '{"location": "Paris", "days": 2}'
    assert reg.call("boom", {"x": 1}).content == "Error: RuntimeError: bad 1"
    assert reg.call("nope", {}).content == "Error: unknown tool 'nope'. Available tools: boom, weather"
    assert "missing required argument(s) 'location'" in reg.call("weather", {}).content
    assert "unknown argument(s) 'city'" in reg.call("weather", {"location": "x", "city": "y"}).content
    assert "must be of type integer, got string" in reg.call("boom", {"x": "1"}).content
    assert all(reg.call(n, a).is_error for n, a in [("boom", {"x": 1}), ("nope", {}), ("weather", {})])
    with pytest.raises(ValueError, match="already registered"):
        reg.add(boom)


# ---------------------------------------------------------------------------------------------- calculator


@pytest.mark.parametrize(
    "expr, expected",
    [
        ("2**200", str(2**200)),
        ("123456789123456789 * 987654321987654321", str(123456789123456789 * 987654321987654321)),
        ("1/3 + 1/6", "1/2 = 0.5"),
        ("0.1 + 0.2", "3/10 = 0.3"),
        ("2 + 3 * 4 ** 2", "50"),
        ("-2 ** 2", "-4"),
        ("(1 - 4) ** 3 / 9", "-3"),
        ("7 // 2 + 7 % 3", "4"),
        ("2 ** -2", "1/4 = 0.25"),
        ("1/7", "1/7 ≈ 0.14285714285714285714"),
        ("factorial(30) / factorial(28)", "870"),
        ("gcd(12, 18) + lcm(4, 6) + abs(-1) + max(1, 2/3) + min(5, 3)", "23"),
    ],
)
def test_calculator_exact(expr: str, expected: str) -> None:
    assert calculator(expr) == expected


@pytest.mark.parametrize(
    "expr, match",
    [
        ("1/0", "division by zero"),
        ("5 % 0", "division by zero"),
        ("0 ** -1", "division by zero"),
        ("2 ** 10 ** 10", "result too large"),
        ("9 ** 99999", "result too large"),
        ("2 ** 0.5", "only integer exponents"),
        ("2 ^ 3", "use \\*\\* for powers"),
        ("__import__('os').system('x')", "unsupported expression"),
        ("x + 1", "unsupported expression"),
        ("1 +", "cannot parse"),
        ("1j", "unsupported literal"),
        ("factorial(10**6)", "factorial needs"),
        ("1" * 3000, "expression too long"),
        ("-" * 1500 + "1", "nested too deeply|cannot parse"),
    ],
)
def test_calculator_clean_errors(expr: str, match: str) -> None:
    start = time.monotonic()
    with pytest.raises(CalculatorError, match=match):
        evaluate(expr)
    assert time.monotonic() - start < 1.0
    assert builtin_tools().call("calculator", {"expression": expr}).content.startswith("Error: CalculatorError:")


# ---------------------------------------------------------------------------------------------- python sandbox


def run(code: str, **kw) -> str:
    kw.setdefault("timeout", 5)
    return format_result(run_python(code, **kw), kw["timeout"]).content


def test_python_runs_code_in_an_empty_temp_dir() -> None:
    out = run("import os\nprint(os.listdir('.'), 6 * 7)\nopen('f.txt', 'w').write('hi')\nprint(open('f.txt').read())")
    assert out == "[] 42\nhi\n"
    assert "ZeroDivisionError" in run("1/0") and "[exit code 1]" in run("1/0")


@pytest.mark.parametrize(
    "code",
    [
        "print(open('/etc/passwd').read())",
        f"print(open({os.path.abspath(__file__)!r}).read())",
        "print(open('../../../../etc/hostname').read())",
        "import os; print(os.open('/etc/passwd', os.O_RDONLY))",
        "import os; print(os.listdir('/'))",
        "import os; os.symlink('/etc/passwd', 'p'); print(open('p').read())",
        "import pathlib; print(pathlib.Path.home().parent.joinpath('etc/passwd').read_text())",
    ],
)
def test_python_cannot_read_outside_its_dir(code: str) -> None:
    out = run(code)
    assert "sandbox:" in out and "root:" not in out and "test_python_cannot_read" not in out


@pytest.mark.parametrize("namespace", [False, None])
def test_python_cannot_open_sockets(namespace) -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        port = server.getsockname()[1]
        code = f"import socket\ns = socket.create_connection(('127.0.0.1', {port}), timeout=2)\nprint('connected')"
        out = run(code, network_namespace=namespace)
        server.settimeout(0.1)
        with pytest.raises(TimeoutError):  # a connection would be waiting in the backlog
            server.accept()
    assert "connected" not in out and "sandbox: socket" in out
    assert "sandbox: socket" in run("import socket; socket.socket()", network_namespace=namespace)


def test_network_namespace_is_used_when_available() -> None:
    if not network_namespace_available():
        pytest.skip("unshare -n does not work on this machine; the audit hook alone blocks sockets")
    code = "import os; print(sorted(os.listdir('.')))"  # the namespace does not change the sandbox's view
    assert run(code, network_namespace=True) == "[]\n"


@pytest.mark.parametrize(
    "code",
    [
        "import os; os.fork()",
        "import os; os.system('echo escaped')",
        "import subprocess; subprocess.run(['echo', 'escaped'])",
        "import os; os.execv('/bin/echo', ['echo', 'escaped'])",
        "import os, signal; os.kill(os.getppid(), signal.SIGTERM)",
        "import ctypes; ctypes.CDLL(None).system(b'echo escaped')",
    ],
)
def test_python_cannot_spawn_or_signal(code: str) -> None:
    out = run(code)
    assert "sandbox:" in out and "escaped\n" not in out


def test_python_cannot_outlive_its_timeout() -> None:
    for code in ["while True: pass", "import time; time.sleep(60)"]:
        start = time.monotonic()
        r = run_python("import os; print(os.getpid(), flush=True)\n" + code, timeout=1)
        assert r.timed_out and r.exit_code is None
        assert time.monotonic() - start < 3
        with pytest.raises(ProcessLookupError):  # the process (and its group) is gone
            os.kill(int(r.output.split()[0]), 0)
        assert "[timed out after 1 s; the process was killed]" in format_result(r, 1).content


def test_python_memory_and_output_limits() -> None:
    assert "MemoryError" in run("x = bytearray(2 * 1024**3)", memory_mb=256)
    out = run("print('x' * 100_000)", output_limit=1000)
    assert out.startswith("x" * 1000) and "[output truncated to 1000 bytes]" in out
    assert "File too large" in run("open('big', 'wb').write(b'0' * 3 * 2**20)", file_limit_mb=1)


def test_builtin_python_tool_returns_errors_as_results() -> None:
    reg = builtin_tools()
    ok = reg.call("python", {"code": "print(sum(range(10)))"})
    assert (ok.content, ok.is_error) == ("45\n", False)
    bad = reg.call("python", {"code": "raise SystemExit(2)"})
    assert bad.is_error and "[exit code 2]" in bad.content
