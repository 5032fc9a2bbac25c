"""Functions for ``{"kind": "python"}`` sources in the flow tests (importable by dask workers)."""

from __future__ import annotations

from typing import Any

import dask.array as da
import numpy as np
import xarray as xr

from flows.sources import SyntheticSource

GRID = {"ny": 4, "nx": 6, "time_chunk": 12}


def synthetic(start: str = "2020-01-01", periods: int = 48) -> xr.Dataset:
    return SyntheticSource(start=start, periods=periods, **GRID).open()


def with_celsius(start: str = "2020-01-01", periods: int = 48) -> xr.Dataset:
    """The synthetic data plus a derived variable, for modify runs."""
    ds = synthetic(start, periods)
    ds["air_temperature_celsius"] = ds["air_temperature"] - np.float32(273.15)
    ds["air_temperature_celsius"].attrs = {"units": "degC", "grid_mapping": "crs"}
    return ds


def scaled(start: str, periods: int, factor: float = 2.0) -> xr.Dataset:
    """A window of the synthetic data with every data variable multiplied, for region runs
    (without the scalar ``crs``, which a region cannot hold)."""
    ds = synthetic(start, periods).drop_vars("crs")
    for name in ("air_temperature", "eastward_wind", "northward_wind", "precipitation_flux"):
        ds[name] = (ds[name] * np.float32(factor)).assign_attrs(ds[name].attrs)
    return ds


def with_token(token: str, start: str = "2020-01-01", periods: int = 48) -> xr.Dataset:
    """Takes a credential-like kwarg that must never reach metadata, logs or artifacts."""
    assert token
    return synthetic(start, periods)


def failing(**kwargs: Any) -> xr.Dataset:
    raise RuntimeError("the upstream archive is down")


def _explode(block: np.ndarray) -> np.ndarray:
    raise RuntimeError("a chunk of the source could not be read")


def failing_lazily(start: str = "2020-01-01", periods: int = 24) -> xr.Dataset:
    """Opens fine; a chunk raises when the cluster computes it."""
    ds = synthetic(start, periods)
    data = ds["air_temperature"].data
    ds["air_temperature"] = ds["air_temperature"].copy(
        data=da.map_blocks(_explode, data, dtype=data.dtype)
    )
    return ds


def drifted(
    start: Any = "2020-01-01",
    end: Any = None,
    periods: int = 24,
    dtype: str = "float32",
    units: str | None = None,
    **grid: int,
) -> xr.Dataset:
    """The synthetic data as a provider that changed something mid-stream delivers it: the
    temperature in another dtype, or in other units. Windowed runs pass start and end;
    ``grid`` overrides ny, nx or time_chunk."""
    ds = SyntheticSource(start="2020-01-01", periods=periods, **(GRID | grid)).open(start, end)
    temperature = ds["air_temperature"].astype(dtype)
    if units is not None:
        temperature = (temperature - temperature.dtype.type(273.15)).assign_attrs(
            ds["air_temperature"].attrs | {"units": units}
        )
    ds["air_temperature"] = temperature
    return ds
