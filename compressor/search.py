"""Searches over a setting whose cost grows with it, shared by the passes that pick "as much as the
quality allows" (ToMe's r, the step cache's threshold)."""
from __future__ import annotations

from typing import Callable


def largest_passing(low: int, high: int, passes: Callable[[int], bool]) -> int:
    """The largest ``i`` in ``[low, high]`` with ``passes(i)``, by bisection, for a ``passes`` that holds up
    to some point and fails after it. ``low`` is taken to pass without being asked (a setting that does
    nothing, or a sentinel below the candidates)."""
    while low < high:
        middle = (low + high + 1) // 2
        low, high = (middle, high) if passes(middle) else (low, middle - 1)
    return low
