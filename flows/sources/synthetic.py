"""``synthetic``: a deterministic, weather-like dataset for demos and tests."""

import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from functools import lru_cache
from typing import Any, Literal, Self

import cftime
import dask.array as da
import numpy as np
import pandas as pd
import xarray as xr
from pandas.tseries.frequencies import to_offset
from pydantic import (
    ConfigDict,
    Field,
    model_validator,
)

from flows.sources.base import (
    SourceBase,
)
from flows.sources.window import WindowBound, to_cftime, to_timestamp

# ----------------------------------------------------------------------------- synthetic

# Synthetic values are sums of (a function of the time label) x (a fixed field on the grid).
# Time factors are evaluated per label with the math module, spatial fields once per grid,
# and they are combined with plain multiplications and additions in a fixed order. So a
# value depends only on its label and grid point, bit for bit, whatever window or chunk it
# is computed in: numpy's vectorised transcendental loops are not guaranteed to give the same
# last bit for an element at different positions, scalar math is.


@dataclass(frozen=True)
class _Wave:
    """amplitude * cos(2π t / period + phase - (m·lon + n·lat)): a wave travelling east."""

    amplitude: float
    period_hours: float
    phase: float
    m: int
    n: int


type _Field = Callable[[np.ndarray, np.ndarray], np.ndarray]


@dataclass(frozen=True)
class _VariableSpec:
    attrs: dict[str, str]
    base: _Field  # (lat, lon) in radians -> field
    seasonal: _Field  # amplitude of the annual cycle, coldest/driest around 15 January
    diurnal: _Field  # amplitude of the daily cycle, peaking at 15:00 local solar time
    waves: tuple[_Wave, ...]
    envelope: _Field | None = None  # multiplies the waves' amplitude
    post: Callable[[np.ndarray], np.ndarray] | None = None  # elementwise, e.g. keep >= 0


def _precipitation(signal: np.ndarray) -> np.ndarray:
    # Squared positive part: dry most of the time, showers where the signal peaks, never < 0.
    flux: np.ndarray = np.square(np.maximum(signal, 0.0)) * 2.5e-5
    return flux


_VARIABLES: dict[str, _VariableSpec] = {
    "air_temperature": _VariableSpec(
        attrs={
            "standard_name": "air_temperature",
            "long_name": "Near-surface air temperature",
            "units": "K",
        },
        base=lambda lat, lon: 301.0 - 50.0 * np.sin(lat) ** 2 + 2.0 * np.cos(lat) * np.sin(2 * lon),
        seasonal=lambda lat, lon: -14.0 * np.sin(lat),
        diurnal=lambda lat, lon: 5.0 * np.cos(lat),
        waves=(
            _Wave(1.6, 101.0, 0.3, 3, 2),
            _Wave(1.1, 53.0, 1.7, 5, 3),
            _Wave(0.7, 29.0, 4.1, 8, 5),
            _Wave(0.9, 173.0, 2.9, 2, 1),
        ),
    ),
    "precipitation_flux": _VariableSpec(
        attrs={
            "standard_name": "precipitation_flux",
            "long_name": "Precipitation flux",
            "units": "kg m-2 s-1",
        },
        base=lambda lat, lon: (
            -0.45 + 0.5 * np.cos(lat) ** 2 + 0.8 * np.exp(-((np.degrees(lat) / 8.0) ** 2))
        ),
        seasonal=lambda lat, lon: -0.2 * np.sin(lat),
        diurnal=lambda lat, lon: 0.15 * np.cos(lat),
        waves=(
            _Wave(0.6, 37.0, 0.9, 4, 3),
            _Wave(0.5, 71.0, 2.2, 6, 2),
            _Wave(0.4, 19.0, 5.3, 9, 6),
        ),
        envelope=lambda lat, lon: 0.4 + np.cos(lat),
        post=_precipitation,
    ),
    "eastward_wind": _VariableSpec(
        attrs={"standard_name": "eastward_wind", "long_name": "Eastward wind", "units": "m s-1"},
        base=lambda lat, lon: 22.0 * np.sin(2 * lat) ** 2 - 7.0 * np.cos(lat) ** 2,
        seasonal=lambda lat, lon: 3.0 * np.sin(lat),
        diurnal=lambda lat, lon: 0.5 * np.cos(lat),
        waves=(
            _Wave(5.0, 97.0, 1.1, 4, 2),
            _Wave(3.0, 43.0, 3.7, 7, 4),
        ),
    ),
    "northward_wind": _VariableSpec(
        attrs={"standard_name": "northward_wind", "long_name": "Northward wind", "units": "m s-1"},
        base=lambda lat, lon: -2.0 * np.sin(2 * lat),
        seasonal=lambda lat, lon: 0.5 * np.sin(lat),
        diurnal=lambda lat, lon: 0.3 * np.cos(lat),
        waves=(
            _Wave(4.0, 89.0, 0.4, 5, 3),
            _Wave(2.5, 31.0, 2.6, 8, 5),
        ),
    ),
}

_TWO_PI = 2.0 * math.pi
_COLDEST_HOUR_OF_YEAR = 14.5 * 24.0  # mid-January
SYNTHETIC_VARIABLES = len(_VARIABLES)  # float32 data variables per label and grid point

_YEAR_HOURS = {"standard": 365.2425 * 24.0, "noleap": 365.0 * 24.0, "360_day": 360.0 * 24.0}


def _grid(ny: int, nx: int) -> tuple[np.ndarray, np.ndarray]:
    """Cell-centre latitudes (-90..90) and longitudes (0..360) in degrees."""
    lat = -90.0 + (np.arange(ny, dtype=np.float64) + 0.5) * (180.0 / ny)
    lon = (np.arange(nx, dtype=np.float64) + 0.5) * (360.0 / nx)
    return lat, lon


@lru_cache(maxsize=64)
def _spatial_fields(variable: str, ny: int, nx: int) -> tuple[np.ndarray, ...]:
    """The base field then one field per time factor of ``_time_factors``, float64 (ny, nx)."""
    spec = _VARIABLES[variable]
    lat_deg, lon_deg = _grid(ny, nx)
    lat, lon = np.meshgrid(np.radians(lat_deg), np.radians(lon_deg), indexing="ij")
    diurnal = spec.diurnal(lat, lon)
    envelope = spec.envelope(lat, lon) if spec.envelope is not None else np.ones_like(lat)
    fields = [
        spec.base(lat, lon),
        spec.seasonal(lat, lon),
        diurnal * np.cos(lon),  # cos(α + lon) = cos α cos lon − sin α sin lon
        -diurnal * np.sin(lon),
    ]
    for wave in spec.waves:
        theta = wave.m * lon + wave.n * lat
        fields.append(wave.amplitude * envelope * np.cos(theta))
        fields.append(wave.amplitude * envelope * np.sin(theta))
    for field in fields:
        field.setflags(write=False)  # cached and shared between threads: never mutated
    return tuple(fields)


def _time_factors(variable: str, hours: float, year_hours: float) -> list[float]:
    """The time factors matching ``_spatial_fields[1:]`` for one label (hours since 1970)."""
    seasonal = math.cos(_TWO_PI * (hours - _COLDEST_HOUR_OF_YEAR) / year_hours)
    alpha = _TWO_PI * (hours - 15.0) / 24.0
    factors = [seasonal, math.cos(alpha), math.sin(alpha)]
    for wave in _VARIABLES[variable].waves:
        # cos(ωt + φ − θ) = cos(ωt + φ) cos θ + sin(ωt + φ) sin θ
        angle = _TWO_PI * hours / wave.period_hours + wave.phase
        factors.extend((math.cos(angle), math.sin(angle)))
    return factors


def _synthetic_block(
    hours: np.ndarray, *, variable: str, ny: int, nx: int, year_hours: float
) -> np.ndarray:
    """One dask block: float32 (len(hours), ny, nx). Module-level so workers can unpickle it."""
    fields = _spatial_fields(variable, ny, nx)
    out = np.empty((hours.shape[0], ny, nx), dtype=np.float64)
    out[...] = fields[0]
    factors = np.array(
        [_time_factors(variable, float(h), year_hours) for h in hours.tolist()],
        dtype=np.float64,
    ).reshape(hours.shape[0], len(fields) - 1)
    for j, field in enumerate(fields[1:]):
        out += factors[:, j, None, None] * field
    post = _VARIABLES[variable].post
    if post is not None:
        out = post(out)
    return out.astype(np.float32)


def _aligned_chunks(first_k: int, n: int, size: int) -> tuple[int, ...]:
    """Chunk lengths with boundaries at multiples of ``size`` counted from the source start,
    so any window's chunks line up with those of a store created from the start."""
    chunks: list[int] = []
    k, stop = first_k, first_k + n
    while k < stop:
        boundary = min(stop, (k // size + 1) * size)
        chunks.append(boundary - k)
        k = boundary
    return tuple(chunks) or (0,)


def _ceil_div(numerator: timedelta | pd.Timedelta, step: timedelta | pd.Timedelta) -> int:
    return -(-numerator // step)


class SyntheticSource(SourceBase):
    """A built-in, deterministic, weather-like generator for demos and tests.

    Labels are ``start + k·freq`` (k >= 0); every value depends only on its label and grid
    point, so any window is reproducible and windows concatenate exactly.
    """

    model_config = ConfigDict(title="Synthetic weather")

    kind: Literal["synthetic"] = Field(
        default="synthetic", description="Built-in deterministic weather-like data."
    )
    start: str = Field(
        default="2020-01-01",
        description="The first time label (ISO 8601); must fall on the frequency.",
    )
    freq: str = Field(
        default="1h", description="Spacing of the time labels, as a pandas frequency (1h, 1D, MS)."
    )
    periods: int = Field(
        default=24, ge=1, description="Number of labels opened when a run gives no window end."
    )
    ny: int = Field(default=18, ge=1, description="Number of latitudes (cell centres, -90..90).")
    nx: int = Field(default=36, ge=1, description="Number of longitudes (cell centres, 0..360).")
    time_chunk: int = Field(default=24, ge=1, description="Dask chunk length along time.")
    calendar: Literal["standard", "noleap", "360_day"] = Field(
        default="standard",
        description="CF calendar; noleap and 360_day give cftime labels.",
    )

    @model_validator(mode="after")
    def _check_axis(self) -> Self:
        origin = self._origin()
        try:
            first_two = self._date_range(origin, periods=2)
        except (ValueError, TypeError, KeyError) as err:
            raise ValueError(
                f"SyntheticSource.freq {self.freq!r} is not a frequency for the {self.calendar} "
                "calendar: use a pandas frequency such as '1h', '6h', '1D' or 'MS'"
            ) from err
        if first_two[0] != origin:
            raise ValueError(
                f"SyntheticSource.start {self.start!r} does not fall on the frequency "
                f"{self.freq!r}: use {first_two[0].isoformat()} or another label on it"
            )
        if not first_two[1] > first_two[0]:
            raise ValueError(
                f"SyntheticSource.freq {self.freq!r} does not move forward in time: use a "
                "positive frequency such as '1h'"
            )
        return self

    # -- the label axis

    @property
    def _cftime(self) -> bool:
        return self.calendar != "standard"

    def _label(self, value: WindowBound, what: str) -> Any:
        if self._cftime:
            return to_cftime(value, self.calendar, what)
        return to_timestamp(value, what)

    def _origin(self) -> Any:
        return self._label(self.start, "SyntheticSource.start")

    def _date_range(self, start: Any, *, periods: int | None = None, end: Any = None) -> pd.Index:
        if self._cftime:
            return xr.date_range(
                start=start,
                end=end,
                periods=periods,
                freq=self.freq,
                calendar=self.calendar,
                use_cftime=True,
                inclusive="left" if end is not None else "both",
            )
        return pd.date_range(
            start=start,
            end=end,
            periods=periods,
            freq=self.freq,
            unit="ns",
            inclusive="left" if end is not None else "both",
        )

    def _step(self) -> timedelta | pd.Timedelta | None:
        """The fixed spacing of the labels, or None for calendar offsets (months, years)."""
        try:
            step = pd.Timedelta(to_offset(self.freq))
        except (ValueError, TypeError):
            return None
        return step.to_pytimedelta() if self._cftime else step

    def labels(
        self, start: WindowBound | None = None, end: WindowBound | None = None
    ) -> tuple[pd.Index, int]:
        """The labels in [start, end) and the index k of the first one (0 = source start)."""
        origin = self._origin()
        lo = origin if start is None else max(origin, self._label(start, "the window start"))
        hi = None if end is None else self._label(end, "the window end")
        step = self._step()
        if step is not None:
            # Fixed spacing: integer arithmetic finds the window without enumerating labels
            # since the source start (years of hourly labels would be slow in cftime).
            first_k = _ceil_div(lo - origin, step)
            n = self.periods if hi is None else max(0, _ceil_div(hi - origin, step) - first_k)
            return self._date_range(origin + first_k * step, periods=n), first_k
        # Months, years, anchored weeks: no fixed length, so count the labels before the
        # window; there are few of them at such frequencies.
        first_k = len(self._date_range(origin, end=lo)) if lo > origin else 0
        if hi is None:
            labels = self._date_range(origin, periods=first_k + self.periods)
        elif hi > origin:
            labels = self._date_range(origin, end=hi)
        else:
            return self._date_range(origin, periods=0), 0
        return labels[first_k:], first_k

    def _hours_since_1970(self, labels: pd.Index) -> np.ndarray:
        if self._cftime:
            epoch = cftime.datetime(1970, 1, 1, calendar=self.calendar)
            hour = timedelta(hours=1)
            return np.array([(label - epoch) / hour for label in labels], dtype=np.float64)
        nanoseconds = np.asarray(labels, dtype="datetime64[ns]").astype(np.int64)
        return nanoseconds / 3.6e12

    # -- the dataset

    def open(
        self,
        start: WindowBound | None = None,
        end: WindowBound | None = None,
        *,
        append_dim: str = "time",
    ) -> xr.Dataset:
        """The labels in [start, end) (default: ``periods`` labels from the source start),
        as a lazy, dask-backed CF Dataset. An empty window gives a zero-length time axis."""
        labels, first_k = self.labels(start, end)
        n = len(labels)
        hours = da.from_array(
            self._hours_since_1970(labels), chunks=(_aligned_chunks(first_k, n, self.time_chunk),)
        )
        year_hours = _YEAR_HOURS[self.calendar]
        dims = ("time", "lat", "lon")
        data_vars: dict[str, Any] = {}
        for name, spec in _VARIABLES.items():
            data = da.map_blocks(
                _synthetic_block,
                hours,
                chunks=(hours.chunks[0], (self.ny,), (self.nx,)),
                new_axis=[1, 2],
                dtype=np.float32,
                meta=np.empty((0, 0, 0), dtype=np.float32),
                variable=name,
                ny=self.ny,
                nx=self.nx,
                year_hours=year_hours,
            )
            data_vars[name] = (dims, data, {**spec.attrs, "grid_mapping": "crs"})
        data_vars["crs"] = (
            (),
            np.int32(0),
            {
                "grid_mapping_name": "latitude_longitude",
                "longitude_of_prime_meridian": 0.0,
                "semi_major_axis": 6378137.0,
                "inverse_flattening": 298.257223563,
            },
        )
        if self._cftime:
            time_values: np.ndarray = np.array(list(labels), dtype=object)
        else:
            time_values = np.asarray(labels, dtype="datetime64[ns]")
        lat, lon = _grid(self.ny, self.nx)
        coords = {
            "time": xr.Variable(
                ("time",),
                time_values,
                {"standard_name": "time", "long_name": "time", "axis": "T"},
                # Same units whichever window is written first, so stores created by any
                # window of a backfill encode time alike.
                encoding={
                    "units": f"{self._time_unit()} since {self._origin_text()}",
                    "calendar": self.calendar,
                },
            ),
            "lat": (
                "lat",
                lat,
                {
                    "standard_name": "latitude",
                    "long_name": "latitude",
                    "units": "degrees_north",
                    "axis": "Y",
                },
            ),
            "lon": (
                "lon",
                lon,
                {
                    "standard_name": "longitude",
                    "long_name": "longitude",
                    "units": "degrees_east",
                    "axis": "X",
                },
            ),
        }
        return xr.Dataset(
            data_vars,
            coords,
            attrs={
                "Conventions": "CF-1.11",
                "title": "icefloe synthetic weather",
                "source": "icefloe synthetic generator",
                # No history or creation timestamp: the same window must always give the
                # same attributes, or appends would see spurious metadata changes.
                "comment": (
                    "Deterministic synthetic data: every value depends only on its time label "
                    "and grid point."
                ),
            },
        )

    def _time_unit(self) -> str:
        """The coarsest unit in which every label is a whole number since the origin's
        midnight, so xarray encodes time as integers rather than floats."""
        step = self._step()
        if step is None:
            return "days"  # calendar offsets land on whole days
        seconds = pd.Timedelta(step).total_seconds()
        for unit, length in (("days", 86400), ("hours", 3600), ("minutes", 60)):
            if seconds % length == 0 and self._offset_seconds() % length == 0:
                return unit
        return "seconds"

    def _offset_seconds(self) -> float:
        origin = self._origin()
        return float(origin.hour * 3600 + origin.minute * 60 + origin.second)

    def _origin_text(self) -> str:
        origin = self._origin()
        return f"{origin.year:04d}-{origin.month:02d}-{origin.day:02d} 00:00:00"

    def describe(self) -> str:
        """One line naming the generator's parameters (there is nothing secret in them)."""
        return (
            f"synthetic weather from {self.start} every {self.freq}, {self.ny}x{self.nx} grid, "
            f"{self.calendar} calendar"
        )
