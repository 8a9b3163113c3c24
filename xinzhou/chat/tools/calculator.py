"""The `calculator` tool: exact integer and rational arithmetic, by walking a Python AST (never `eval`).

Models are bad at arithmetic and floats are wrong for it (0.1 + 0.2), so values are Python ints and Fractions:
decimal literals are read exactly from their text, `/` gives a fraction, `**` takes integer exponents. Results
past ~4000 digits, division by zero and unsupported syntax are clean `CalculatorError`s, which the registry
turns into error results for the model.
"""

from __future__ import annotations

import ast
import math
import operator
from collections.abc import Callable
from decimal import Decimal, localcontext
from fractions import Fraction

MAX_INPUT_CHARS = 2000
MAX_DIGITS = 4000  # below Python's int->str limit of 4300 digits
_MAX_BITS = int(MAX_DIGITS * math.log2(10))
_MAX_FACTORIAL = 1000

Number = Fraction  # every intermediate value; ints are Fractions with denominator 1


class CalculatorError(ValueError):
    """A user-facing error: bad syntax, division by zero, a result too large, an unsupported operation."""


def _check(x: Fraction) -> Fraction:
    if max(x.numerator.bit_length(), x.denominator.bit_length()) > _MAX_BITS:
        raise CalculatorError(f"result too large (more than about {MAX_DIGITS} digits)")
    return x


def _integer(x: Fraction, what: str) -> int:
    if x.denominator != 1:
        raise CalculatorError(f"{what} must be an integer, got {_fmt_exact(x)}")
    return x.numerator


def _pow(base: Fraction, exp: Fraction) -> Fraction:
    if exp.denominator != 1:
        raise CalculatorError("only integer exponents are supported (a fractional power may be irrational)")
    n = exp.numerator
    if base == 0 and n < 0:
        raise CalculatorError("division by zero (zero to a negative power)")
    if abs(base) != 1 and base != 0:
        bits = max(base.numerator.bit_length(), base.denominator.bit_length())
        if (bits - 1) * abs(n) > _MAX_BITS:
            raise CalculatorError(f"result too large (more than about {MAX_DIGITS} digits)")
    return base**n


def _factorial(x: Fraction) -> Fraction:
    n = _integer(x, "factorial's argument")
    if n < 0 or n > _MAX_FACTORIAL:
        raise CalculatorError(f"factorial needs 0 <= n <= {_MAX_FACTORIAL}, got {n}")
    return Fraction(math.factorial(n))


_BINOPS: dict[type, Callable[[Fraction, Fraction], Fraction]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: lambda a, b: Fraction(a // b),
    ast.Mod: operator.mod,
    ast.Pow: _pow,
}
_FUNCS: dict[str, Callable[..., Fraction]] = {
    "abs": lambda x: abs(x),
    "min": lambda *xs: min(xs),
    "max": lambda *xs: max(xs),
    "gcd": lambda *xs: Fraction(math.gcd(*(_integer(x, "gcd's arguments") for x in xs))),
    "lcm": lambda *xs: Fraction(math.lcm(*(_integer(x, "lcm's arguments") for x in xs))),
    "factorial": _factorial,
}


def _eval(node: ast.AST, src: str) -> Fraction:
    if isinstance(node, ast.Expression):
        return _eval(node.body, src)
    if isinstance(node, ast.Constant):
        if isinstance(node.value, bool) or not isinstance(node.value, (int, float)):
            raise CalculatorError(f"unsupported literal {node.value!r}: only integers and decimals")
        text = ast.get_source_segment(src, node) or repr(node.value)
        return _check(Fraction(text.replace("_", "")))  # exact: "0.1" is 1/10, not the float
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.UAdd, ast.USub)):
        v = _eval(node.operand, src)
        return -v if isinstance(node.op, ast.USub) else v
    if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
        a, b = _eval(node.left, src), _eval(node.right, src)
        try:
            return _check(_BINOPS[type(node.op)](a, b))
        except ZeroDivisionError:
            raise CalculatorError("division by zero") from None
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitXor):
        raise CalculatorError("'^' is not supported; use ** for powers")
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in _FUNCS:
        if node.keywords or not node.args:
            raise CalculatorError(f"{node.func.id}() takes one or more positional arguments")
        return _check(_FUNCS[node.func.id](*(_eval(a, src) for a in node.args)))
    what = ast.get_source_segment(src, node) or type(node).__name__
    raise CalculatorError(
        f"unsupported expression {what[:40]!r}: use numbers, + - * / // % **, parentheses and "
        f"{', '.join(_FUNCS)}"
    )


def evaluate(expression: str) -> Fraction:
    """The exact value of an arithmetic expression (raises CalculatorError)."""
    if not isinstance(expression, str):
        raise CalculatorError(f"expression must be a string, got {type(expression).__name__}")
    if len(expression) > MAX_INPUT_CHARS:
        raise CalculatorError(f"expression too long ({len(expression)} > {MAX_INPUT_CHARS} characters)")
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except (SyntaxError, ValueError, MemoryError, RecursionError) as e:
        raise CalculatorError(f"cannot parse the expression: {getattr(e, 'msg', None) or e}") from None
    try:
        return _eval(tree, expression.strip())
    except RecursionError:
        raise CalculatorError("expression nested too deeply") from None


def _fmt_exact(x: Fraction) -> str:
    return str(x.numerator) if x.denominator == 1 else f"{x.numerator}/{x.denominator}"


def format_number(x: Fraction) -> str:
    """`7` · `7/2 = 3.5` (terminating decimal) · `1/3 ≈ 0.33333333333333333333` (20 significant digits)."""
    exact = _fmt_exact(x)
    if x.denominator == 1:
        return exact
    d, twos, fives = x.denominator, 0, 0
    while d % 2 == 0:
        d, twos = d // 2, twos + 1
    while d % 5 == 0:
        d, fives = d // 5, fives + 1
    places = max(twos, fives)
    if d == 1 and places <= 50:
        scaled = abs(x.numerator) * 10**places // x.denominator
        digits = str(scaled).rjust(places + 1, "0")
        return f"{exact} = {'-' if x < 0 else ''}{digits[:-places]}.{digits[-places:]}"
    with localcontext() as ctx:
        ctx.prec = 20
        return f"{exact} ≈ {Decimal(x.numerator) / Decimal(x.denominator)}"


def calculator(expression: str) -> str:
    """Evaluate an arithmetic expression exactly, with integers and fractions (no floating point).

    Args:
        expression: e.g. "2**100 + 1/3". Supports + - * / // % ** (integer exponents), parentheses,
            decimal numbers, and abs, min, max, gcd, lcm, factorial.
    """
    return format_number(evaluate(expression))
