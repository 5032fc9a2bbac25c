"""Tiny-chunk data for the scale benchmarks: many chunks, few bytes.

``tiles`` is a lazy Dataset of hourly labels whose every zarr chunk is one hour of one
``tile`` × ``tile`` square (1 KiB of float32 for the default 16 × 16, above icechunk's
512-byte inline threshold, so every chunk is a real object in storage). Values depend
only on (hour, variable, y, x), so any window is reproducible and windows concatenate
exactly. The dask graph is one blockwise layer with no inputs: opening a million-chunk
dataset costs no memory until a part of it is computed.

It is also the function of the ``python`` source the flows open (``tiles_source``), so
flows and direct alternatives write the very same values.
"""

from __future__ import annotations

from typing import Any

import dask.array as da
import numpy as np
import pandas as pd
import xarray as xr

__all__ = ["START", "TileShape", "tiles", "tiles_source"]

START = pd.Timestamp("2020-01-01")
_HOUR = pd.Timedelta(hours=1)


class TileShape:
    """``variables`` float32 arrays (time, y, x) chunked (1, tile, tile)."""

    def __init__(self, ny: int = 160, nx: int = 160, tile: int = 16, variables: int = 1) -> None:
        self.ny, self.nx, self.tile, self.variables = ny, nx, tile, variables

    @property
    def chunks_per_hour(self) -> int:
        return self.variables * -(-self.ny // self.tile) * -(-self.nx // self.tile)

    def hours_for(self, chunks: int) -> int:
        return -(-chunks // self.chunks_per_hour)

    def kwargs(self) -> dict[str, int]:
        return {"ny": self.ny, "nx": self.nx, "tile": self.tile, "variables": self.variables}

    def encoding(self) -> dict[str, dict[str, Any]]:
        """Zarr chunks of one tile, for a create from ``hourly_blocks`` data."""
        return {f"v{i}": {"chunks": (1, self.tile, self.tile)} for i in range(self.variables)}

    def describe(self) -> str:
        return (
            f"{self.variables} × float32 (hours × {self.ny} × {self.nx}), chunks 1 × "
            f"{self.tile} × {self.tile} ({self.tile * self.tile * 4} B), "
            f"{self.chunks_per_hour} chunks an hour"
        )


def tiles_source(
    shape: TileShape,
    first: int | None = None,
    periods: int | None = None,
    hourly_blocks: bool = False,
) -> dict[str, Any]:
    """The PythonSource (a flow parameter) of ``shape``; windowed runs pass start/end."""
    kwargs: dict[str, Any] = dict(shape.kwargs())
    if hourly_blocks:
        kwargs["hourly_blocks"] = True
    if first is not None:
        kwargs["first"] = first
    if periods is not None:
        kwargs["periods"] = periods
    return {"kind": "python", "function": "benchmarks.scale_data:tiles", "kwargs": kwargs}


def tiles(
    first: int = 0,
    periods: int = 24,
    ny: int = 160,
    nx: int = 160,
    tile: int = 16,
    variables: int = 1,
    start: Any = None,
    end: Any = None,
    hourly_blocks: bool = False,
) -> xr.Dataset:
    """Hours ``first .. first+periods`` (or the labels in [start, end)) as a lazy Dataset.

    Its dask blocks are the tiles themselves, or with ``hourly_blocks`` whole hours (a
    dask task per tile costs far more than writing the tile: about 190 chunks/s against
    2,000 written from hourly blocks on 2 workers); write those with ``TileShape.encoding``.
    """
    if start is not None or end is not None:
        lo = first if start is None else max(0, -(-(pd.Timestamp(start) - START) // _HOUR))
        hi = first + periods if end is None else max(lo, -(-(pd.Timestamp(end) - START) // _HOUR))
        first, periods = int(lo), int(hi - lo)
    if hourly_blocks:
        chunks = ((1,) * periods or (0,), (ny,), (nx,))
    else:
        chunks = ((1,) * periods or (0,), _edges(ny, tile), _edges(nx, tile))
    data_vars = {}
    for index in range(variables):
        data = da.map_blocks(
            _block,
            chunks=chunks,
            dtype=np.float32,
            meta=np.empty((0, 0, 0), dtype=np.float32),
            first=first,
            index=index,
            tile=tile,
            name=f"tiles-{index}-{first}-{periods}-{ny}-{nx}-{tile}-{hourly_blocks}",
        )
        data_vars[f"v{index}"] = (("time", "y", "x"), data, {"units": "1"})
    time = xr.Variable(
        ("time",),
        (START + pd.to_timedelta(np.arange(first, first + periods), unit="h")).values,
        {"standard_name": "time"},
        encoding={"units": "hours since 2020-01-01 00:00:00", "calendar": "standard"},
    )
    coords = {
        "time": time,
        "y": ("y", np.arange(ny, dtype="i4")),
        "x": ("x", np.arange(nx, dtype="i4")),
    }
    return xr.Dataset(data_vars, coords, attrs={"title": "icefloe scale benchmark tiles"})


def _edges(n: int, size: int) -> tuple[int, ...]:
    return tuple(min(size, n - k) for k in range(0, n, size))


def _block(
    first: int, index: int, tile: int, block_info: dict[Any, Any] | None = None
) -> np.ndarray:
    """Every tile seeded by its hour, variable and corner: the same values whatever the
    block holds."""
    assert block_info is not None
    info = block_info[None]
    (t0, t1), (y0, y1), (x0, x1) = info["array-location"]
    out = np.empty(info["chunk-shape"], dtype=np.float32)
    for k, hour in enumerate(range(first + t0, first + t1)):
        for ty in range(y0, y1, tile):
            for tx in range(x0, x1, tile):
                seed = (hour * 1_000_003 + index * 7919 + ty * 131 + tx) % 2**32
                h, w = min(tile, y1 - ty), min(tile, x1 - tx)
                out[k, ty - y0 : ty - y0 + h, tx - x0 : tx - x0 + w] = np.random.default_rng(
                    seed
                ).random((h, w), dtype=np.float32)
    return out
