"""Argument checks shared by the utils modules.

Each check raises ``ValueError`` (bad value) or ``TypeError`` (bad kind) with a message naming the
argument, the value received and what is allowed, e.g. ``max_len must be an int >= 1, got 0``.
Python's ``bool`` is an ``int`` subclass; none of these accept it where a number is meant.
"""

from __future__ import annotations

import math
import numbers

import numpy as np

__all__ = ["is_int", "is_number", "check_int", "check_number", "check_bool"]


def is_int(value, allow_numpy: bool = True) -> bool:
    """An integer (numpy's integer types too, unless ``allow_numpy=False``), not a bool."""
    if isinstance(value, (bool, np.bool_)):
        return False
    return isinstance(value, int) or (allow_numpy and isinstance(value, numbers.Integral))


def is_number(value) -> bool:
    """A finite real number (python or numpy), not a bool, not NaN or infinity."""
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_)) and math.isfinite(value)


def _allowed(kind: str, minimum, maximum, low_open: bool = False, high_open: bool = False) -> str:
    if minimum is not None and maximum is not None:
        return f"{kind} in {'(' if low_open else '['}{minimum}, {maximum}{')' if high_open else ']'}"
    if minimum is not None:
        return f"{kind} {'>' if low_open else '>='} {minimum}"
    if maximum is not None:
        return f"{kind} {'<' if high_open else '<='} {maximum}"
    return kind


def check_int(name: str, value, minimum: int | None = None, maximum: int | None = None) -> int:
    """``value`` as an ``int`` if it is an integer in [minimum, maximum] (either bound optional)."""
    if not is_int(value) or (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        raise ValueError(f"{name} must be {_allowed('an int', minimum, maximum)}, got {value!r}")
    return int(value)


def check_number(name: str, value, minimum: float | None = None, maximum: float | None = None, *,
                 low_open: bool = False, high_open: bool = False) -> float:
    """``value`` as a ``float`` if it is a finite number within the bounds (``low_open``/``high_open``
    exclude the bound itself: ``minimum=0, low_open=True`` means > 0)."""
    ok = is_number(value)
    if ok and minimum is not None:
        ok = value > minimum if low_open else value >= minimum
    if ok and maximum is not None:
        ok = value < maximum if high_open else value <= maximum
    if not ok:
        raise ValueError(f"{name} must be {_allowed('a finite number', minimum, maximum, low_open, high_open)}, "
                         f"got {value!r}")
    return float(value)


def check_bool(name: str, value) -> bool:
    """``value`` if it is exactly True or False (a string such as "no" would otherwise count as True)."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {value!r}")
    return value
