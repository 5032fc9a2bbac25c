"""The sections of ``python -m benchmarks.scale``; each returns a JSON-ready dict."""

from __future__ import annotations

import datetime as dt
import time
from pathlib import Path
from typing import Any

import icechunk
import numpy as np
import pandas as pd
import xarray as xr

from benchmarks.scale import Bench, fresh
from benchmarks.scale_data import START, TileShape, tiles, tiles_source


def _open(path: Path) -> icechunk.Repository:
    return icechunk.Repository.open(icechunk.local_filesystem_storage(str(path)))


def _same_as_source(repo: icechunk.Repository, shape: TileShape, first: int, periods: int) -> bool:
    stored = xr.open_zarr(repo.readonly_session("main").store, consolidated=False)
    expected = tiles(first, periods, **shape.kwargs()).compute()
    return bool(
        stored.sizes["time"] == periods
        and np.array_equal(stored["time"].values, expected["time"].values)
        and all(np.array_equal(stored[v].values, expected[v].values) for v in expected.data_vars)
    )


# -- planning and orchestration of backfills ---------------------------------------------------


def planning(bench: Bench) -> dict[str, Any]:
    from flows import Target, backfill_flow

    shape = TileShape(ny=16, nx=16, tile=16)  # one chunk an hour: orchestration dominates
    counts = [20, 40] if bench.sizes == "small" else [100, 1000, 10_000]
    rows = []
    for windows in counts:
        path = fresh(bench, f"backfill-{windows}")
        end = START + pd.Timedelta(hours=windows)
        bench.log(f"planning: backfill of {windows} hourly windows ({shape.describe()})")
        begun = time.perf_counter()
        result = backfill_flow(
            Target(repo=str(path)),
            tiles_source(shape),
            start=START.to_pydatetime(),
            end=end.to_pydatetime(),
            freq="1h",
            batch=4,
            scheduler_address=bench.address,
        )
        seconds = time.perf_counter() - begun
        same = _same_as_source(_open(path), shape, 0, windows)
        bench.log(
            f"   {seconds:.1f} s, {seconds / windows * 1000:.0f} ms a window, data identical: {same}"
        )
        rows.append(
            {
                "windows": windows,
                "seconds": seconds,
                "ms_per_window": seconds / windows * 1000,
                "identical": same,
                "result": result.model_dump() if hasattr(result, "model_dump") else str(result),
            }
        )
    return {"shape": shape.describe(), "rows": rows}


def growth(bench: Bench) -> dict[str, Any]:
    raise NotImplementedError


def bigrun(bench: Bench) -> dict[str, Any]:
    raise NotImplementedError


def contention(bench: Bench) -> dict[str, Any]:
    raise NotImplementedError


def gc(bench: Bench) -> dict[str, Any]:
    raise NotImplementedError


_ = (dt, time)
