"""Safe evaluation of the arithmetic a model writes in its reasoning (``16 - 3 = 13``, ``<<9*2=18>>``).

Pure and bounded: expressions are parsed with :mod:`ast` and only number literals,
``+ - * / **``, unary signs and parentheses are evaluated (no names, no calls), with
exponents of magnitude at most 10 so no input can make it slow. Typography models
use is normalised first: thousands separators, ``$``, ``%`` (as ``/100``), ``x``,
``\\u00d7`` (times), ``\\*`` and ``÷``.
"""

from __future__ import annotations

import ast
import operator
import re
from collections.abc import Callable

__all__ = ["NotArithmeticError", "evaluate", "numbers_in", "parse_number", "same_number"]

_MAX_EXPONENT = 10
_BINARY: dict[type[ast.operator], Callable[[float, float], float]] = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
    ast.Pow: operator.pow,
}
_NUMBER = re.compile(r"-?(?:\d[\d,]*(?:\.\d+)?|\.\d+)")
_REPLACEMENTS = (("\\*", "*"), ("×", "*"), ("x", "*"), ("÷", "/"), ("^", "**"), ("%", "/100"), ("$", ""), (",", ""))


class NotArithmeticError(ValueError):
    """An expression is not plain arithmetic on numbers (or divides by zero)."""


def _eval(node: ast.AST) -> float:
    if isinstance(node, ast.Expression):
        return _eval(node.body)
    if isinstance(node, ast.Constant) and isinstance(node.value, int | float) and not isinstance(node.value, bool):
        return float(node.value)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
        value = _eval(node.operand)
        return -value if isinstance(node.op, ast.USub) else value
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left, right = _eval(node.left), _eval(node.right)
        if isinstance(node.op, ast.Pow) and abs(right) > _MAX_EXPONENT:
            raise NotArithmeticError(f"exponent {right} is beyond the limit of {_MAX_EXPONENT}")
        try:
            return _BINARY[type(node.op)](left, right)
        except ZeroDivisionError:
            raise NotArithmeticError("division by zero") from None
    raise NotArithmeticError(f"not plain arithmetic: {ast.dump(node)[:60]}")


def evaluate(expression: str) -> float:
    """The value of an arithmetic expression as a model writes it.

    Args:
        expression: e.g. ``"$80,000 + 50,000"``, ``"2/3 x 60"``, ``"20%*5"``.

    Raises:
        NotArithmeticError: if it is not plain arithmetic on numbers, or divides by zero.
    """
    text = expression
    for old, new in _REPLACEMENTS:
        text = text.replace(old, new)
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError:
        raise NotArithmeticError(f"cannot parse {expression!r} as arithmetic") from None
    return _eval(tree)


def parse_number(text: str) -> float:
    """A number as written (``"1,200"``, ``"-3.5"``, ``".4"``). Raises ValueError otherwise."""
    return float(text.replace(",", ""))


def numbers_in(text: str) -> list[float]:
    """Every number written in ``text``, in order."""
    return [parse_number(m) for m in _NUMBER.findall(text) if m not in ("-",)]


def same_number(a: float, b: float) -> bool:
    """True when two numbers agree to a cent, or to 1e-4 relative for large values (rounding in prose)."""
    return abs(a - b) <= max(0.01, 1e-4 * abs(b))
