"""CF-style datasets generated in code: what weather and climate archives really hold.

Every value depends only on its position along time (counted from the dataset's
start) and the grid point, so slices of one long dataset stand for consecutive
deliveries, and their concatenation is the long dataset itself.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import pandas as pd
import xarray as xr

Calendar = Literal["standard", "noleap", "360_day"]


def time_labels(start: str, periods: int, freq: str, calendar: Calendar) -> pd.Index:
    if calendar == "standard":
        return pd.date_range(start, periods=periods, freq=freq)
    return xr.date_range(start, periods=periods, freq=freq, calendar=calendar, use_cftime=True)


def cf_dataset(
    periods: int = 12,
    *,
    start: str = "2000-01-01",
    freq: str = "D",
    calendar: Calendar = "standard",
    ny: int = 3,
    nx: int = 4,
) -> xr.Dataset:
    """A small, realistic CF dataset: packed, masked, bounded, grid-mapped, with strings."""
    time = time_labels(start, periods, freq, calendar)
    k = np.arange(periods)[:, None, None]
    lat = np.linspace(-60.0, 60.0, ny)
    lon = np.linspace(0.0, 360.0, nx, endpoint=False)
    lat3, lon3 = lat[None, :, None], lon[None, None, :]
    tas = 273.15 + 25 * np.cos(np.deg2rad(lat3)) + 5 * np.sin(2 * np.pi * k / 7 + np.deg2rad(lon3))
    pr = np.maximum(0.0, np.sin(k * 0.7 + lat3 * 0.05 + lon3 * 0.01)) * 1e-4
    pr = np.where((k + lat3.astype(int) + lon3.astype(int)) % 5 == 0, np.nan, pr)
    bounds = np.stack(
        [np.asarray(time), np.asarray(time_labels(start, periods + 1, freq, calendar))[1:]], axis=1
    )

    ds = xr.Dataset(
        data_vars={
            "tas": (
                ("time", "lat", "lon"),
                tas.astype("float32"),
                {
                    "standard_name": "air_temperature",
                    "units": "K",
                    "grid_mapping": "crs",
                    "cell_methods": "time: mean",
                },
            ),
            "pr": (
                ("time", "lat", "lon"),
                pr.astype("float64"),
                {
                    "standard_name": "precipitation_flux",
                    "units": "kg m-2 s-1",
                    "grid_mapping": "crs",
                },
            ),
            "tas_packed": (
                ("time", "lat", "lon"),
                np.round(tas, 2),
                {
                    "standard_name": "air_temperature",
                    "units": "K",
                    "long_name": "packed temperature",
                },
            ),
            "time_bnds": (("time", "nv"), bounds),
            "crs": (
                (),
                np.int32(0),
                {"grid_mapping_name": "latitude_longitude", "earth_radius": 6371000.0},
            ),
        },
        coords={
            "time": ("time", time, {"standard_name": "time", "axis": "T", "bounds": "time_bnds"}),
            "lat": (
                "lat",
                lat,
                {"standard_name": "latitude", "units": "degrees_north", "axis": "Y"},
            ),
            "lon": (
                "lon",
                lon,
                {"standard_name": "longitude", "units": "degrees_east", "axis": "X"},
            ),
            "height": ((), 2.0, {"standard_name": "height", "units": "m", "positive": "up"}),
            "zone": ("lat", [f"zone-{i}" for i in range(ny)], {"long_name": "climate zone"}),
        },
        attrs={"Conventions": "CF-1.11", "title": "icefloe test data", "institution": "nowhere"},
    )
    ds["tas_packed"].encoding.update(
        dtype="int16", scale_factor=0.01, add_offset=273.15, _FillValue=-32768
    )
    ds["pr"].encoding.update(_FillValue=-9999.0)
    units = "days since 2000-01-01" if freq.endswith("D") else "hours since 2000-01-01"
    for name in ("time", "time_bnds"):
        ds[name].encoding.update(
            units=units,
            dtype="int64",
            calendar=calendar if calendar != "standard" else "proleptic_gregorian",
        )
    return ds


def lazy(ds: xr.Dataset, time_chunk: int = 4) -> xr.Dataset:
    """The data variables dask-backed, as when read from files; coordinates stay in memory."""
    return ds.chunk({"time": time_chunk})
