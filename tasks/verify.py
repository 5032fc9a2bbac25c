"""Read the session back after write_metadata and write_eager, and compare it with the plan.

Catches what would otherwise be published silently: an array created with other
chunks or dtype than planned, attributes lost, in-memory values that did not land,
an append whose labels do not continue the stored axis.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import xarray as xr
import zarr
from zarr.abc.store import Store

from tasks.encoding import encode_for_store
from tasks.errors import VerificationError
from tasks.spec import VariableSpec
from tasks.stored import StoredGroup, array_path, stored_encodings

if TYPE_CHECKING:
    from tasks.planners import Planned


def verify_store(store: Store, planned: Planned, source: xr.Dataset) -> None:
    plan = planned.plan
    group = plan.group
    problems: list[str] = []
    for row in plan.arrays:
        if row.action == "delete":
            if _open(store, group, row.name) is not None:
                problems.append(f"array {row.name!r} should have been deleted but is still there")
            continue
        array = _open(store, group, row.name)
        if array is None:
            problems.append(f"array {row.name!r} is missing")
            continue
        dims = tuple(getattr(array.metadata, "dimension_names", None) or ())  # zarr v3 only
        if dims != row.dims:
            problems.append(f"array {row.name!r} has dims {dims}, planned {row.dims}")
        if tuple(array.shape) != row.shape:
            problems.append(
                f"array {row.name!r} has shape {tuple(array.shape)}, planned {row.shape}"
            )
        if row.chunks and tuple(array.chunks) != row.chunks:
            problems.append(
                f"array {row.name!r} has chunks {tuple(array.chunks)}, planned {row.chunks}"
            )
        stored_dtype = np.dtype(array.dtype)
        if stored_dtype.kind not in "OUST" and str(stored_dtype) != row.dtype:
            problems.append(f"array {row.name!r} has dtype {stored_dtype}, planned {row.dtype}")
        missing_attrs = [
            k for k, v in row.attrs.items() if k not in array.attrs or not _equal(array.attrs[k], v)
        ]
        if missing_attrs and row.action != "skip":
            problems.append(f"array {row.name!r} lacks the planned attributes {missing_attrs}")

    zgroup = zarr.open_group(store, path=group or "", mode="r")
    lost = [
        k
        for k, v in plan.group_attrs.items()
        if k not in zgroup.attrs or not _equal(zgroup.attrs[k], v)
    ]
    if lost:
        problems.append(f"group attributes {lost} are not as planned")

    if planned.steps.spec is not None:
        problems += _check_spec(store, planned)
    if not problems:
        problems += _check_eager_values(store, planned)
        problems += _check_append_labels(store, planned, source)
    if problems:
        raise VerificationError(problems, group=group)


def _check_spec(store: Store, planned: Planned) -> list[str]:
    """The spec write_metadata wrote describes the arrays this write created or changed."""
    stored = StoredGroup(store, planned.plan.group)
    spec = stored.spec
    if spec is None:
        return ["the group has no spec after write_metadata"]
    problems = []
    for row in planned.plan.arrays:
        if row.action in ("skip", "delete") or row.name not in stored.arrays:
            continue
        declared = spec.variables.get(row.name)
        if declared is None:
            problems.append(f"the group's spec does not list array {row.name!r}")
            continue
        changed = declared.differences(VariableSpec.of_array(stored.arrays[row.name]))
        if changed:
            problems.append(
                f"array {row.name!r} differs from the group's spec: {', '.join(changed)}"
            )
    return problems


def _check_eager_values(store: Store, planned: Planned) -> list[str]:
    """Encoded source values against the raw stored ones: exact, even for packed data."""
    eager = [w for w in planned.writes if not w.lazy]
    if not eager:
        return []
    group = planned.plan.group
    encodings = stored_encodings(store, group)
    problems = []
    for write in eager:
        expected = encode_for_store(write.variable, encodings[write.name], write.name)
        array = zarr.open_array(store, path=array_path(group, write.name), mode="r")
        back = np.asarray(array[write.region])
        if not _array_equal(back, np.asarray(expected.values)):
            region = dict(zip(expected.dims, write.region, strict=True))
            problems.append(
                f"variable {write.name!r} reads back different values than were written to "
                f"{_describe(region)}"
            )
    return problems


def _check_append_labels(store: Store, planned: Planned, source: xr.Dataset) -> list[str]:
    dim = planned.plan.append_dim
    if dim is None or dim not in source.indexes:
        return []
    # only the labels are decoded: a time variable the lazy write has yet to fill (bounds)
    # cannot be decoded before it holds values
    stored = StoredGroup(store, planned.plan.group)
    if dim not in stored.indexes:
        return [f"the stored group has no {dim!r} coordinate after the append"]
    labels = stored.indexes[dim]
    problems = []
    if not (labels.is_monotonic_increasing and labels.is_unique):
        problems.append(f"the stored {dim!r} labels are not strictly increasing after the append")
    missing = source.indexes[dim].difference(labels)
    if len(missing):
        problems.append(f"labels {[str(x) for x in missing[:5]]} of {dim!r} are not in the store")
    return problems


def _open(store: Store, group: str | None, name: str) -> zarr.Array[Any] | None:
    try:
        return zarr.open_array(store, path=array_path(group, name), mode="r")
    except (FileNotFoundError, zarr.errors.NodeNotFoundError):
        return None


def _array_equal(a: np.ndarray[Any, Any], b: np.ndarray[Any, Any]) -> bool:
    if a.shape != b.shape:
        return False
    if a.dtype.kind in "fc" and b.dtype.kind in "fc":
        return bool(np.array_equal(a, b, equal_nan=True))
    if a.dtype.kind in "OUST" or b.dtype.kind in "OUST":
        # variable-length strings come back as numpy's StringDType, which astype(str)
        # refuses: compare the Python values (bytes decoded, as xarray decodes them)
        return _as_text(a) == _as_text(b)
    return bool(np.array_equal(a, b))


def _as_text(values: np.ndarray[Any, Any]) -> list[str]:
    return [v.decode() if isinstance(v, bytes) else str(v) for v in values.ravel().tolist()]


def _equal(a: Any, b: Any) -> bool:
    try:
        return bool(np.array_equal(np.asarray(a), np.asarray(b)))
    except Exception:
        return bool(a == b)


def _describe(region: dict[Any, slice]) -> str:
    return ", ".join(f"{d}[{s.start}:{s.stop}]" for d, s in region.items()) or "the whole array"
