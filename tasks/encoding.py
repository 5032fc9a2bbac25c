"""CF encoding of values for arrays that already exist in the store.

Data written into an existing array must be encoded exactly as xarray encoded the
array when it created it (units and calendar of times, scale_factor/add_offset,
_FillValue, dtype). The stored encoding is read back from the store and applied here,
which is what xarray itself does when it appends. Arrays a write creates take their
encoding from the dataset, except for their compressors where it names none
(``default_compressors``).
"""

from __future__ import annotations

import warnings
from collections.abc import Hashable, Mapping
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr
from xarray.backends.zarr import encode_zarr_variable
from zarr.codecs import BloscCodec

# Encoding keys that change the stored values; the rest (chunks, compressors, ...)
# describe the array layout, which already exists.
VALUE_ENCODING_KEYS = (
    "units",
    "calendar",
    "dtype",
    "scale_factor",
    "add_offset",
    "_FillValue",
    "missing_value",
)


def default_compressors(dtype: np.dtype[Any]) -> tuple[BloscCodec, ...] | None:
    """The compressors of an array a write creates when its encoding names none.

    zarr's default is zstd at level 3 on the values' bytes as they are. For float32 fields
    Blosc's shuffle first groups the bytes of every value by significance, so the slowly
    varying sign, exponent and high mantissa bytes compress together; with zstd at level 2
    behind it, the corpus's float32 arrays store 7 % smaller and compress 1.5× faster, the
    benchmark's fields 22 % smaller and 2.5–2.7× faster (docs/modes.md, "Default compression").
    Other dtypes keep zarr's default (None): shuffled, the corpus's 8-byte values compress
    a third worse and its int16 radar fields no better.
    """
    if dtype.kind != "f" or dtype.itemsize != 4:
        return None
    # typesize and shuffle left to zarr, which takes them from the array's dtype
    return (BloscCodec(cname="zstd", clevel=2),)


def value_encoding(encoding: Mapping[str, Any]) -> dict[str, Any]:
    """The keys of a stored encoding that change values, as they were when xarray created it.

    An array created from a variable that had only ``missing_value`` (NCEP reanalysis, ARM
    files) reads back with zarr's default ``_FillValue`` (NaN) beside it; xarray cannot
    encode the pair (it calls them conflicting, and its own append fails). At creation
    missing values became ``missing_value``, and reading masks both, so later values are
    encoded with ``missing_value`` alone.
    """
    kept = {k: encoding[k] for k in VALUE_ENCODING_KEYS if k in encoding}
    if (
        "_FillValue" in kept
        and "missing_value" in kept
        and not fill_values_equal(kept["_FillValue"], kept["missing_value"])
    ):
        del kept["_FillValue"]
    return kept


def fill_values_equal(a: Any, b: Any) -> bool:
    """CF fill values compared as xarray compares them (NaN equals NaN; arrays elementwise)."""
    a_arr, b_arr = np.asarray(a), np.asarray(b)
    if a_arr.shape != b_arr.shape:
        return False
    if a_arr.dtype.kind in "fc" and b_arr.dtype.kind in "fc":
        return bool(np.array_equal(a_arr, b_arr, equal_nan=True))
    return bool(np.array_equal(a_arr, b_arr))


def encode_for_store(
    variable: xr.Variable, stored_encoding: Mapping[str, Any], name: Hashable
) -> xr.Variable:
    """Encode ``variable`` (decoded, numpy- or dask-backed) with a stored array's encoding.

    Dask-backed data stays lazy. Raises whatever xarray raises when the values cannot be
    represented (e.g. times finer than the stored units in an integer dtype).
    """
    plain = xr.Variable(variable.dims, variable.data, variable.attrs)
    plain.encoding = value_encoding(stored_encoding)
    with warnings.catch_warnings():
        # xarray warns when it must switch to finer time units than the stored ones; the
        # array's units attribute would not follow, so the values would be silently wrong
        warnings.filterwarnings("error", message=".*serialized faithfully.*")
        try:
            encoded: xr.Variable = encode_zarr_variable(plain, name=name, zarr_format=3)
        except UserWarning as warning:
            raise ValueError(str(warning)) from None
    for key in ("units", "calendar"):
        wanted = plain.encoding.get(key)
        got = encoded.attrs.get(key, wanted)
        if wanted is not None and _normalized(key, got) != _normalized(key, wanted):
            raise ValueError(f"the values need {key} {got!r}, not the stored {wanted!r}")
    return encoded


def same_encoding_value(key: str, a: Any, b: Any) -> bool:
    """Whether two values of an encoding key mean the same (units spelled two ways:
    xarray writes "hours since 1970-01-01" or "... 00:00:00.000000" for the same data)."""
    return bool(_normalized(key, a) == _normalized(key, b))


def _normalized(key: str, value: Any) -> Any:
    """Units that mean the same written the same ("days since 2000-01-01" and "... 00:00:00")."""
    if key == "units" and isinstance(value, str) and " since " in value:
        step, reference = value.split(" since ", 1)
        try:
            return step.strip(), pd.Timestamp(reference.strip())
        except (ValueError, TypeError):
            return step.strip(), reference.strip()
    if key == "calendar" and isinstance(value, str):
        aliases = {"standard": "proleptic_gregorian", "gregorian": "proleptic_gregorian"}
        return aliases.get(value.lower(), value.lower())
    return value


def time_encoding_for(variable: xr.Variable, requested: Mapping[str, Any]) -> dict[str, Any]:
    """Units and calendar xarray would pick for in-memory times, fixed before they go lazy.

    Wrapping in-memory times in dask (to create their array without writing values)
    would make xarray fall back to nanoseconds; inferring here keeps the units a plain
    ``to_zarr`` of the same data would choose.
    """
    if variable.dtype.kind == "M" or _holds_cftime(variable):
        encoded = encode_zarr_variable(
            xr.Variable(variable.dims, variable.values, encoding=dict(requested)), zarr_format=3
        )
        return {
            "units": encoded.attrs["units"],
            "calendar": encoded.attrs.get("calendar", "proleptic_gregorian"),
            "dtype": encoded.dtype,
        }
    if variable.dtype.kind == "m":
        encoded = encode_zarr_variable(
            xr.Variable(variable.dims, variable.values, encoding=dict(requested)), zarr_format=3
        )
        return {"units": encoded.attrs["units"], "dtype": encoded.dtype}
    return {}


def _holds_cftime(variable: xr.Variable) -> bool:
    if variable.dtype.kind != "O" or variable.size == 0:
        return False
    import cftime

    first = np.asarray(variable.values).flat[0]
    return isinstance(first, cftime.datetime)
