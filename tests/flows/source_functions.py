"""Functions that PythonSource tests name as ``tests.flows.source_functions:...``.

They live in an importable module, not in the test file, because a PythonSource imports its
function by name exactly as a deployment on another machine would.
"""

from __future__ import annotations

import numpy as np
import xarray as xr


def make_dataset(
    n: int = 3, scale: float = 1.0, start: object = None, end: object = None
) -> xr.Dataset:
    """A small dataset that records the window it was called with, to check what was passed."""
    return xr.Dataset(
        {"x": ("i", np.arange(n, dtype=np.float64) * scale)},
        attrs={"start": repr(start), "end": repr(end)},
    )


def static_dataset(n: int = 2) -> xr.Dataset:
    """Takes no window: fine for ad-hoc runs, which pass neither start nor end."""
    return xr.Dataset({"y": ("i", np.zeros(n))})


def not_a_dataset() -> list[int]:
    return [1, 2, 3]


NOT_CALLABLE = 42


class Loaders:
    """Reached as ``Loaders.daily``: the part after ':' may be a dotted attribute path."""

    @staticmethod
    def daily(days: int = 1) -> xr.Dataset:
        return xr.Dataset({"z": ("day", np.arange(days))})
