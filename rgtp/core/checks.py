"""Validation of the numbers a user gives (options, policies, settings), with messages that
name the setting, what was given and what is accepted. Raised where the value is given, so a
bad setting never reaches a frame."""

from __future__ import annotations

import math
import numbers


def check_int(name: str, value: object, low: int, high: int | None = None, hint: str = "") -> int:
    """`value` as an int in low..high (high None: no upper bound); ValueError otherwise.

    bool is refused although Python counts it as an int: True for a count is a mistake.
    """
    accepted = f"an integer >= {low}" if high is None else f"an integer in {low}..{high}"
    ok = isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if not ok or value < low or (high is not None and value > high):
        raise ValueError(f"{name} must be {accepted}{hint}, got {value!r}")
    return int(value)


def check_real(
    name: str,
    value: object,
    low: float,
    high: float,
    low_open: bool = False,
    high_open: bool = False,
) -> float:
    """`value` as a finite float in the interval low..high (open ends as asked; an infinite
    end is open whatever is asked, as only finite values pass)."""
    low_open, high_open = low_open or low == -math.inf, high_open or high == math.inf
    interval = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
    if ok:
        v = float(value)
        ok = (
            math.isfinite(v)
            and (v > low if low_open else v >= low)
            and (v < high if high_open else v <= high)
        )
    if not ok:
        raise ValueError(f"{name} must be a number in {interval}, got {value!r}")
    return float(value)
