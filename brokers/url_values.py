"""Converters of broker URL option values: one rule per kind of value, for every broker.

Values are read as written: no whitespace is stripped, booleans are one truth table, and
numbers are plain ASCII decimals (no `_`, no other scripts' digits, no hex) that must be
finite: `nan`, `inf` and what overflows to it (`1e999`) are refused. A converter raises
`ValueError` with a message that names the expectation (the table adds the option name).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

TRUE = frozenset({"1", "true", "yes", "on"})
FALSE = frozenset({"0", "false", "no", "off"})
_INTEGER = re.compile(r"[+-]?[0-9]{1,19}")
_DECIMAL = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]{1,4})?")
_SHOWN = 40  # characters of a refused value quoted in an error


@dataclass(frozen=True)
class Converter:
    """Reads one option value; `type` describes what it accepts (for `docs/brokers.md`)."""

    type: str
    read: Callable[[str], Any]

    def __call__(self, raw: str) -> Any:
        return self.read(raw)


def converter(type_: str) -> Callable[[Callable[[str], Any]], Converter]:
    """A decorator making a function `str -> value` a `Converter` described as `type_`."""
    return lambda read: Converter(type_, read)


def shown(raw: str) -> str:
    """`raw` quoted for an error message, cut if long."""
    return repr(raw if len(raw) <= _SHOWN else raw[:_SHOWN] + "…")


def _bool(raw: str) -> bool:
    if raw.lower() in TRUE:
        return True
    if raw.lower() in FALSE:
        return False
    raise ValueError(f"expected true or false, got {shown(raw)}")


def finite_float(raw: str) -> float:
    """A plain decimal number, refusing `nan`, `inf` and what overflows to it (`1e999`)."""
    if not _DECIMAL.fullmatch(raw):
        raise ValueError(f"expected a number, got {shown(raw)}")
    value = float(raw)
    if not math.isfinite(value):
        raise ValueError(f"expected a finite number, got {shown(raw)}")
    return value


def whole(raw: str) -> int:
    """A plain decimal whole number."""
    if not _INTEGER.fullmatch(raw):
        raise ValueError(f"expected a whole number, got {shown(raw)}")
    return int(raw)


def _n(value: float) -> str:
    return str(value) if isinstance(value, int) else f"{value:g}"


def _bounds(low: float | None, high: float | None, above: bool) -> str:
    if low is not None and high is not None:
        return f"from {_n(low)} to {_n(high)}"
    if low is not None:
        return f"{'>' if above else '>='} {_n(low)}"
    return f"<= {_n(high)}" if high is not None else ""


def _ranged(
    kind: str, read: Callable[[str], float], low: float | None, high: float | None, above: bool
) -> Converter:
    bounds = _bounds(low, high, above)

    def convert(raw: str) -> Any:
        value = read(raw)
        too_low = low is not None and (value <= low if above else value < low)
        if too_low or (high is not None and value > high):
            raise ValueError(f"expected {kind} {bounds}, got {shown(raw)}")
        return value

    return Converter(f"{kind.removeprefix('a ')} {bounds}".strip(), convert)


def integer(low: int | None = None, high: int | None = None, *, above: bool = False) -> Converter:
    """A whole number in `low..high` (`above`: greater than `low`, not equal)."""
    return _ranged("a whole number", whole, low, high, above)


def number(
    low: float | None = None, high: float | None = None, *, above: bool = False
) -> Converter:
    """A finite number in `low..high` (`above`: greater than `low`, not equal)."""
    return _ranged("a number", finite_float, low, high, above)


def choice(*values: str, any_case: bool = False) -> Converter:
    """One of `values` (`any_case`: matched ignoring case, returned as listed)."""
    canonical = {(v.lower() if any_case else v): v for v in values}

    def convert(raw: str) -> str:
        found = canonical.get(raw.lower() if any_case else raw)
        if found is None:
            raise ValueError(f"expected one of {', '.join(values)}, got {shown(raw)}")
        return found

    return Converter(f"one of {', '.join(values)}", convert)


def optional(inner: Converter) -> Converter:
    """`inner`, or None for an empty value."""
    return Converter(f"{inner.type} (empty: none)", lambda raw: inner(raw) if raw else None)


def _non_empty(raw: str) -> str:
    if not raw:
        raise ValueError("expected a value")
    return raw


BOOL = Converter("bool", _bool)
SECONDS = number(0, above=True)  # a duration
TEXT = Converter("text", str)
non_empty = Converter("text, not empty", _non_empty)
