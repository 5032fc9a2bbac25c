"""What a group of the store holds before a write: arrays, their layout and attributes."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
import xarray as xr
import zarr
from zarr.errors import NodeNotFoundError

from tasks.errors import PlanError


@dataclass(frozen=True)
class StoredArray:
    name: str
    dims: tuple[str, ...]
    shape: tuple[int, ...]
    chunks: tuple[int, ...]
    dtype: np.dtype[Any]
    attrs: Mapping[str, Any]


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

    def __init__(self, store: zarr.abc.store.Store, group: str | None) -> None:
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
        return {} if self._zarr_group is None else dict(self._zarr_group.attrs)

    @cached_property
    def arrays(self) -> dict[str, StoredArray]:
        if self._zarr_group is None:
            return {}
        arrays = {}
        for name, array in self._zarr_group.arrays():
            dims = array.metadata.dimension_names
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
    def dataset(self) -> xr.Dataset:
        """The group decoded by xarray, lazily (values are read only when compared)."""
        if not self.arrays:
            return xr.Dataset()
        try:
            return xr.open_zarr(
                self.store, group=self.group, consolidated=False, chunks=None, zarr_format=3
            )
        except Exception as err:
            raise PlanError(
                f"xarray cannot read the stored group ({type(err).__name__}: {err}); "
                "repair it or write to another group",
                group=self.group,
            ) from err
