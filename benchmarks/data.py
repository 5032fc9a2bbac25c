"""Lazy, weather-like float32 data whose dask blocks are the zarr chunks.

Every value depends only on its time label and grid point, so windows concatenate
exactly and an append's data continues the stored one. A block costs a few passes of
numpy over its own memory (a smooth field, a daily cycle and a shifted noise field that
keeps zstd from compressing it to nothing): generation is cheap next to the write, and
nothing bigger than one block is ever in memory.

``weather`` is also the function of the ``PythonSource`` the flows open
(``source_spec``), so the flows and the direct alternatives write the very same data.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import dask.array as da
import numpy as np
import pandas as pd
import xarray as xr

__all__ = ["Shape", "source_spec", "weather"]

VARIABLES = ("air_temperature", "eastward_wind", "northward_wind", "surface_pressure")
_UNITS = {"air_temperature": "K", "eastward_wind": "m s-1", "northward_wind": "m s-1"}
_START = pd.Timestamp("2020-01-01")


@dataclass(frozen=True)
class Shape:
    """A dataset of ``variables`` float32 arrays (time, lat, lon)."""

    periods: int
    ny: int = 721
    nx: int = 1440
    time_chunk: int = 4
    variables: int = 4
    first: int = 0  # index of the first hourly label (0 = 2020-01-01T00)

    @classmethod
    def of_bytes(cls, nbytes: float, **kwargs: Any) -> Shape:
        """About ``nbytes`` of data, a whole number of time chunks."""
        probe = cls(periods=1, **kwargs)
        chunks = max(1, round(nbytes / probe.step_bytes / probe.time_chunk))
        return cls(periods=chunks * probe.time_chunk, **kwargs)

    @property
    def step_bytes(self) -> int:
        return self.variables * self.ny * self.nx * 4

    @property
    def nbytes(self) -> int:
        return self.periods * self.step_bytes

    @property
    def chunk_bytes(self) -> int:
        return self.time_chunk * self.ny * self.nx * 4

    def kwargs(self) -> dict[str, int]:
        return {
            "first": self.first,
            "periods": self.periods,
            "ny": self.ny,
            "nx": self.nx,
            "time_chunk": self.time_chunk,
            "variables": self.variables,
        }

    def after(self, periods: int) -> Shape:
        """The next window of ``periods`` labels on the same grid."""
        return Shape(
            periods, self.ny, self.nx, self.time_chunk, self.variables, self.first + self.periods
        )

    def open(self) -> xr.Dataset:
        return weather(**self.kwargs())

    def describe(self) -> str:
        return (
            f"{self.variables} × float32 ({self.periods} h × {self.ny} × {self.nx}), "
            f"chunks {self.time_chunk} × {self.ny} × {self.nx} = {self.chunk_bytes / 1e6:.1f} MB"
        )


def source_spec(shape: Shape) -> dict[str, Any]:
    """The PythonSource (as a flow parameter) that opens ``shape``."""
    return {"kind": "python", "function": "benchmarks.data:weather", "kwargs": shape.kwargs()}


def weather(
    first: int = 0,
    periods: int = 24,
    ny: int = 721,
    nx: int = 1440,
    time_chunk: int = 4,
    variables: int = 4,
    start: Any = None,
    end: Any = None,
) -> xr.Dataset:
    """Hourly labels ``first .. first+periods`` as a lazy CF Dataset chunked like the store.

    A windowed run (a backfill) passes ``start``/``end`` instead: the labels in [start, end).
    """
    if start is not None or end is not None:
        first, periods = _window(start, end, first, periods)
    names = VARIABLES[:variables] if variables <= len(VARIABLES) else _names(variables)
    chunks = _chunks(first, periods, time_chunk)
    hours = da.from_array(np.arange(first, first + periods, dtype=np.int64), chunks=(chunks,))
    data_vars = {}
    for index, name in enumerate(names):
        data = da.map_blocks(
            _block,
            hours,
            chunks=(hours.chunks[0], (ny,), (nx,)),
            new_axis=[1, 2],
            dtype=np.float32,
            meta=np.empty((0, 0, 0), dtype=np.float32),
            index=index,
            ny=ny,
            nx=nx,
            name=f"weather-{name}-{first}-{periods}-{ny}-{nx}-{time_chunk}",
        )
        data_vars[name] = (("time", "lat", "lon"), data, {"units": _UNITS.get(name, "Pa")})
    time = xr.Variable(
        ("time",),
        (_START + pd.to_timedelta(np.arange(first, first + periods), unit="h")).values,
        {"standard_name": "time"},
        encoding={"units": "hours since 2020-01-01 00:00:00", "calendar": "standard"},
    )
    lat = -90.0 + (np.arange(ny) + 0.5) * (180.0 / ny)
    lon = (np.arange(nx) + 0.5) * (360.0 / nx)
    coords = {
        "time": time,
        "lat": ("lat", lat, {"units": "degrees_north"}),
        "lon": ("lon", lon, {"units": "degrees_east"}),
    }
    return xr.Dataset(data_vars, coords, attrs={"title": "icefloe benchmark weather"})


def _window(start: Any, end: Any, first: int, periods: int) -> tuple[int, int]:
    hour = pd.Timedelta(hours=1)
    lo = first if start is None else max(0, -(-(pd.Timestamp(start) - _START) // hour))
    hi = first + periods if end is None else max(lo, -(-(pd.Timestamp(end) - _START) // hour))
    return int(lo), int(hi - lo)


def _names(n: int) -> tuple[str, ...]:
    return tuple(f"{VARIABLES[i % len(VARIABLES)]}_{i}" for i in range(n))


def _chunks(first: int, periods: int, size: int) -> tuple[int, ...]:
    """Block edges at multiples of ``size`` counted from label 0, as the store's chunks."""
    edges = [first, *range((first // size + 1) * size, first + periods, size), first + periods]
    return tuple(b - a for a, b in itertools.pairwise(edges) if b > a) or (0,)


@lru_cache(maxsize=16)
def _fields(index: int, ny: int, nx: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    lat = np.radians(-90.0 + (np.arange(ny) + 0.5) * (180.0 / ny))[:, None]
    lon = np.radians((np.arange(nx) + 0.5) * (360.0 / nx))[None, :]
    base = (280.0 + 20.0 * np.cos(lat) ** 2 + 3.0 * np.sin(2 * lon + index)).astype(np.float32)
    daily = (5.0 * np.cos(lat) * np.ones_like(lon)).astype(np.float32)
    noise = np.random.default_rng(index).standard_normal((ny, nx)).astype(np.float32)
    for field in (base, daily, noise):
        field.setflags(write=False)
    return base, daily, noise


def _block(hours: np.ndarray, *, index: int, ny: int, nx: int) -> np.ndarray:
    base, daily, noise = _fields(index, ny, nx)
    out = np.empty((hours.shape[0], ny, nx), dtype=np.float32)
    for i, hour in enumerate(hours.tolist()):
        np.multiply(daily, np.float32(math.cos(2 * math.pi * hour / 24.0)), out=out[i])
        out[i] += base
        out[i] += np.roll(noise, hour % nx, axis=1)
    return out
