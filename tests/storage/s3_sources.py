"""Python sources for the object-storage flow tests (importable by the Dask workers)."""

from __future__ import annotations

import os

import dask.array as da
import numpy as np
import pandas as pd
import xarray as xr


def _pid_block(block: np.ndarray) -> np.ndarray:
    # Random filler keeps each chunk (2 KiB) from compressing below icechunk's inline limit,
    # so that every chunk becomes an object of its own, uploaded by whoever computed it.
    out = np.random.default_rng().integers(0, 2**40, size=block.shape, dtype=np.int64)
    out[:, 0] = os.getpid()
    return out


def pids(start: str = "2020-01-01", periods: int = 24, chunk: int = 4) -> xr.Dataset:
    """Hourly labels whose first column is the id of the process that computed the chunk:
    read back from the repository, it says which processes produced each chunk."""
    labels = pd.date_range(start, periods=periods, freq="h")
    blocks = da.zeros((periods, 64), chunks=(chunk, 64), dtype=np.int64)
    data = blocks.map_blocks(_pid_block, dtype=np.int64)
    return xr.Dataset(
        {"pid": (("time", "x"), data, {"long_name": "process id of the writer in column 0"})},
        coords={"time": labels, "x": np.arange(64)},
    )
