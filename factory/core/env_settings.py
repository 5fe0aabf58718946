"""Numbers the factory reads from its environment variables, refused in one line when malformed."""

from __future__ import annotations

import math
import os
from typing import Callable

from factory.core.errors import UserError


def seconds_setting(name: str, default: float, allowed: Callable[[float], bool], rule: str) -> float:
    """The number of seconds in environment variable `name` (`default` when unset or blank); a value that
    is not a number, or that `allowed` refuses, is a UserError naming the variable and `rule`."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = math.nan  # allowed() refuses it, as it refuses "nan" itself
    if not allowed(value):
        raise UserError(f"{name}={raw!r}: must be {rule}")
    return value
