"""What a group of the store holds before a write: arrays, their layout and attributes."""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import xarray as xr
import zarr
from xarray.conventions import decode_cf_variable
from zarr.abc.store import Store
from zarr.errors import NodeNotFoundError

from tasks.errors import PlanError

if TYPE_CHECKING:
    from tasks.spec import DatasetSpec

SPEC_KEY = "icefloe_spec"
"""The group attribute that keeps the group's declared spec (tasks/spec.py), as JSON."""


@dataclass(frozen=True)
class StoredArray:
    name: str
    dims: tuple[str, ...]
    shape: tuple[int, ...]
    chunks: tuple[int, ...]
    dtype: np.dtype[Any]
    attrs: Mapping[str, Any]


def dtype_label(dtype: np.dtype[Any]) -> str:
    """A dtype as plans and specs show it: any string dtype (fixed or variable width) is
    "string"."""
    return "string" if dtype.kind in "OUST" else str(dtype)


def normalize_group(group: str | None) -> str | None:
    """``None`` for the root group, else a relative path with no ``..`` or empty parts."""
    if group is None or group in ("", "/"):
        return None
    if group.startswith("/"):
        raise PlanError(
            f"the group path {group!r} is absolute; pass a path relative to the repository root "
            f"such as {group.strip('/')!r}",
            group=group,
        )
    parts = group.split("/")
    if any(part in ("", ".", "..") for part in parts):
        raise PlanError(
            f"the group path {group!r} has an empty, '.' or '..' component; name the group "
            "with plain names separated by '/', e.g. 'forecasts/gfs'",
            group=group,
        )
    return group


def array_path(group: str | None, name: str) -> str:
    return f"{group}/{name}" if group else name


class StoredGroup:
    """A read-only view of one group, read once when a plan is made."""

    def __init__(self, store: Store, group: str | None) -> None:
        self.store = store
        self.group = group
        try:
            self._zarr_group: zarr.Group | None = zarr.open_group(store, path=group or "", mode="r")
        except NodeNotFoundError:
            self._zarr_group = None
        except (zarr.errors.ContainsArrayError, TypeError) as err:
            raise PlanError(
                f"the path {group!r} holds an array, not a group; choose another group path",
                group=group,
            ) from err

    @property
    def exists(self) -> bool:
        return self._zarr_group is not None

    @property
    def is_empty(self) -> bool:
        return not self.exists or (not self.arrays and not self.subgroups)

    @cached_property
    def subgroups(self) -> list[str]:
        if self._zarr_group is None:
            return []
        return [name for name, _ in self._zarr_group.groups()]

    @cached_property
    def attrs(self) -> dict[str, Any]:
        """The group's attributes, without icefloe's spec (``spec`` has it): writes merge
        and compare these, while the spec is icefloe's to keep."""
        if self._zarr_group is None:
            return {}
        return {k: v for k, v in self._zarr_group.attrs.items() if k != SPEC_KEY}

    @cached_property
    def spec(self) -> DatasetSpec | None:
        """The group's declared spec; None for a group written before specs existed."""
        from tasks.spec import parse_stored_spec

        if self._zarr_group is None:
            return None
        return parse_stored_spec(self._zarr_group.attrs.get(SPEC_KEY), self.group)

    @cached_property
    def arrays(self) -> dict[str, StoredArray]:
        if self._zarr_group is None:
            return {}
        arrays = {}
        for name, array in self._zarr_group.arrays():
            dims = getattr(array.metadata, "dimension_names", None)  # zarr v3 only
            if dims is None and array.ndim == 0:
                dims = ()
            if dims is None:
                raise PlanError(
                    f"array {name!r} has no dimension names, so it was not written by xarray "
                    "and icefloe cannot tell how it lines up with the dataset; write to a new "
                    "group or give the array dimension_names",
                    group=self.group,
                )
            arrays[name] = StoredArray(
                name=name,
                dims=tuple(str(d) for d in dims),
                shape=tuple(array.shape),
                chunks=tuple(array.chunks),
                dtype=np.dtype(array.dtype),
                attrs=dict(array.attrs),
            )
        return arrays

    @cached_property
    def sizes(self) -> dict[str, int]:
        sizes: dict[str, int] = {}
        for array in self.arrays.values():
            sizes.update(zip(array.dims, array.shape, strict=True))
        return sizes

    @cached_property
    def undecoded(self) -> xr.Dataset:
        """The group with scale/offset and fill values applied lazily, times left as numbers.

        Opening reads metadata only: no default indexes (they would load every dimension
        coordinate) and no time decoding (xarray decodes the first and last value of a
        time variable to learn its dtype, which fails for a float time that holds only
        fill values in a non-standard calendar, as a just-created or extended array does).
        """
        if not self.arrays:
            return xr.Dataset()
        return open_undecoded(self.store, self.group)

    @cached_property
    def schemas(self) -> dict[str, tuple[np.dtype[Any], dict[str, Any]]]:
        """Per array: the dtype xarray decodes it to and its encoding, from metadata alone."""
        return {
            str(name): decoded_schema(str(name), variable)
            for name, variable in self.undecoded.variables.items()
        }

    @property
    def encodings(self) -> dict[str, dict[str, Any]]:
        return {name: encoding for name, (_, encoding) in self.schemas.items()}

    def variable(self, name: str) -> xr.Variable:
        """One stored variable, decoded as xarray decodes it, lazily (values read on use)."""
        try:
            return decode_variable(name, self.undecoded.variables[name])
        except Exception as err:
            raise PlanError(
                f"xarray cannot decode the stored variable {name!r} ({type(err).__name__}: "
                f"{err}); write its values first (e.g. with for_region) or rewrite it with "
                "for_modify",
                group=self.group,
            ) from err

    def decoded(self) -> xr.Dataset:
        """The group decoded as xarray would, variable by variable and lazily.

        A float time holding only fill values (bounds of labels a backfill has not written
        yet) stays numeric instead of making the whole group unreadable.
        """
        undecoded = self.undecoded
        variables = {}
        for name, variable in undecoded.variables.items():
            try:
                variables[name] = decode_variable(str(name), variable)
            except (ValueError, TypeError, OverflowError):
                variables[name] = variable
        coords = {n: v for n, v in variables.items() if n in undecoded.coords}
        data = {n: v for n, v in variables.items() if n not in undecoded.coords}
        return xr.Dataset(data, coords=coords, attrs=undecoded.attrs)

    @cached_property
    def indexes(self) -> dict[str, pd.Index]:
        """The labels of every dimension coordinate, decoded (these values are read)."""
        return {
            name: self.variable(name).to_index_variable().to_index()
            for name, array in self.arrays.items()
            if array.dims == (name,)
        }


def open_undecoded(store: Store, group: str | None) -> xr.Dataset:
    """A group opened without reading any values: see ``StoredGroup.undecoded``."""
    try:
        opened: xr.Dataset = xr.open_zarr(
            store,
            group=group,
            consolidated=False,
            chunks=None,
            zarr_format=3,
            decode_times=False,
            decode_timedelta=False,
            create_default_indexes=False,
        )
        return opened
    except Exception as err:
        raise PlanError(
            f"xarray cannot read the stored group ({type(err).__name__}: {err}); "
            "repair it or write to another group",
            group=group,
        ) from err


def decoded_schema(name: str, variable: xr.Variable) -> tuple[np.dtype[Any], dict[str, Any]]:
    """The decoded dtype and the full encoding of an undecoded variable, without its values.

    The time coders run on a single zero of the masked-and-scaled dtype that carries the
    variable's attributes: they move units and calendar into the encoding and pick the
    decoded dtype (datetime64, cftime objects, timedelta64) exactly as on the real values.
    """
    probe = xr.Variable((), np.zeros((), dtype=variable.dtype), attrs=dict(variable.attrs))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        decoded = decode_cf_variable(
            name, probe, mask_and_scale=False, concat_characters=False, decode_endianness=False
        )
    encoding = dict(variable.encoding)
    encoding.update({k: v for k, v in decoded.encoding.items() if k != "dtype"})
    return decoded.dtype, encoding


def decode_variable(name: str, variable: xr.Variable) -> xr.Variable:
    """Decode the times of one undecoded variable (lazily; only its first and last values)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        decoded = decode_cf_variable(
            name, variable, mask_and_scale=False, concat_characters=False, decode_endianness=False
        )
    decoded.encoding = {
        **variable.encoding,
        **decoded.encoding,
        "dtype": variable.encoding.get("dtype", variable.dtype),
    }
    return decoded


def stored_encodings(store: Store, group: str | None) -> dict[str, dict[str, Any]]:
    """The encoding of every array of the group, as xarray reads it back, from metadata only."""
    return StoredGroup(store, group).encodings
