"""What every corpus scenario shares: cutting a file into pieces, corrupting a slice so a
later write must repair it, and comparing a repository with what plain xarray stores."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import icechunk
import numpy as np
import xarray as xr
import zarr

from tasks.encoding import VALUE_ENCODING_KEYS, same_encoding_value
from tests.conftest import without_spec


def read_group(repo: icechunk.Repository, group: str | None) -> xr.Dataset:
    """The committed group, read by plain xarray (not through icefloe), without the spec
    icefloe keeps with it."""
    session = repo.readonly_session(branch="main")
    return without_spec(xr.open_zarr(session.store, group=group, consolidated=False).load())


def to_zarr_reference(ds: xr.Dataset, tmp_path: Path, name: str) -> xr.Dataset:
    """What ``Dataset.to_zarr`` stores for ``ds`` in one go, read back the same way."""
    path = tmp_path / f"reference-{name}.zarr"
    ds.to_zarr(zarr.storage.LocalStore(str(path)), mode="w", consolidated=False, zarr_format=3)
    return xr.open_zarr(str(path), consolidated=False).load()


def assert_same_as_to_zarr(
    repo: icechunk.Repository, group: str | None, expected: xr.Dataset, tmp_path: Path, name: str
) -> None:
    """identical() to to_zarr's result, and the same value-changing encodings."""
    got = read_group(repo, group)
    reference = to_zarr_reference(expected, tmp_path, name)
    xr.testing.assert_identical(got, reference)
    problems = []
    for var_name, ref_var in reference.variables.items():
        got_encoding = got.variables[var_name].encoding
        for key in VALUE_ENCODING_KEYS:
            a, b = got_encoding.get(key), ref_var.encoding.get(key)
            if key == "units" and a is not None and b is not None:
                # same meaning, maybe spelled differently: xarray spells inferred units of
                # in-memory and dask-backed times differently itself
                if not same_encoding_value(key, a, b):
                    problems.append(f"{var_name}.encoding['units']: icefloe {a!r}, to_zarr {b!r}")
            elif not _same(a, b):
                problems.append(f"{var_name}.encoding[{key!r}]: icefloe {a!r}, to_zarr {b!r}")
    assert not problems, "\n".join(problems)


def _same(a: Any, b: Any) -> bool:
    if a is None or b is None:
        return a is None and b is None
    if isinstance(a, np.dtype | type) or isinstance(b, np.dtype | type):
        return np.dtype(a) == np.dtype(b)
    try:
        return bool(np.array_equal(np.asarray(a), np.asarray(b), equal_nan=True))
    except TypeError:
        return bool(np.array_equal(np.asarray(a), np.asarray(b)))


def labelled(ds: xr.Dataset, dim: str) -> bool:
    return dim in ds.indexes


def appendable(ds: xr.Dataset, dim: str) -> bool:
    """Whether the contract lets ``ds`` be appended piece by piece along ``dim``."""
    if dim not in ds.indexes:
        return True
    index = ds.indexes[dim]
    return bool(index.is_unique and index.is_monotonic_increasing)


def append_edges(n: int) -> list[int]:
    """[0, first part, up to three appended pieces ..., n - 1]; the last label is held back
    for an overlapping re-run that also brings something new."""
    first = max(1, n // 4)
    inner = sorted({round(x) for x in np.linspace(first, n - 1, 4)})
    return sorted({0, first, *inner})


def region_slices(n: int) -> tuple[slice, slice]:
    """A middle slice (written with region="auto") and the one after it (explicit)."""
    width = max(1, n // 6)
    start = min(n // 3, n - 2) if n >= 2 else 0
    first = slice(start, min(start + width, n - 1))
    second = slice(first.stop, min(first.stop + width, n))
    return first, second


def scrambled(ds: xr.Dataset, dim: str, start: int, stop: int) -> xr.Dataset:
    """``ds`` whose data variables hold, in [start, stop) along ``dim``, the values of other
    positions: a later write of the true values must land exactly there."""
    n = ds.sizes[dim]
    positions = np.arange(n)
    positions[start:stop] = (positions[start:stop] + max(1, n // 2)) % n
    out = ds.copy()
    for name, variable in ds.data_vars.items():
        if dim in variable.dims:
            moved = variable.variable.isel({dim: positions})
            out[name] = variable.copy(data=moved.data)
    return out


def derived(ds: xr.Dataset, name: str, offset: float) -> xr.DataArray:
    """A new variable computed from the first numeric data variable (no attrs, no encoding)."""
    # a data variable if there is one (scipy's packed file holds only its coordinate)
    candidates = [*ds.data_vars.values(), *ds.coords.values()]
    source = next(v for v in candidates if v.dtype.kind in "fiu" and v.ndim and v.size > 1)
    values = source.variable.astype("float64") * 2 + offset
    return xr.DataArray(values, coords=source.coords, name=name).drop_attrs(deep=False)


def region_input(ds: xr.Dataset, dim: str, where: slice) -> xr.Dataset:
    """``ds`` cut to ``where`` along ``dim`` without the data variables that lack ``dim``
    (a region write may not touch them; to_zarr demands the same)."""
    without = [n for n, v in ds.data_vars.items() if dim not in v.dims]
    return ds.drop_vars(without).isel({dim: where})
