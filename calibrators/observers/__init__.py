"""Range observers that choose a symmetric clipping threshold (amax) from calibration data."""

from __future__ import annotations

from typing import Any, Dict, Type

from .base import RangeObserver
from .entropy import EntropyObserver
from .histogram import AbsHistogram, HistogramObserver
from .max import MaxObserver
from .mse import MSEObserver
from .percentile import PercentileObserver

OBSERVERS: Dict[str, Type[RangeObserver]] = {
    cls.name: cls for cls in (MaxObserver, PercentileObserver, MSEObserver, EntropyObserver)
}


def make_observer(name: str, **options: Any) -> RangeObserver:
    """Build an observer by name, passing ``options`` to its constructor."""
    try:
        cls = OBSERVERS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown observer {name!r}; choose one of: {', '.join(sorted(OBSERVERS))}") from None
    return cls(**options)


__all__ = [
    "AbsHistogram",
    "EntropyObserver",
    "HistogramObserver",
    "MSEObserver",
    "MaxObserver",
    "OBSERVERS",
    "PercentileObserver",
    "RangeObserver",
    "make_observer",
]
