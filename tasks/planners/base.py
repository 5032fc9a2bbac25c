"""What every planner shares: the problems list, encodings of new arrays, write rows.

One planner per mode (create.py, modify.py, append.py, region.py). Each reads the store
(never writes), collects every problem it finds and raises them together as one
PlanError, or returns the plan with the metadata steps and array writes that carry it out.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np
import pandas as pd
import xarray as xr
from xarray.conventions import decode_cf_variable

from tasks.chunking import (
    Region,
    align_to_zarr_chunks,
    chunks_touched,
    default_zarr_chunks,
    full_region,
)
from tasks.encoding import (
    default_compressors,
    encode_for_store,
    fill_values_equal,
    time_encoding_for,
)
from tasks.errors import PlanError
from tasks.plan import (
    ArrayAction,
    ArrayPlan,
    ArrayWrite,
    MetadataSteps,
    Phase,
    WritePlan,
)
from tasks.planners.guards import SpecGuard
from tasks.request import WriteMode
from tasks.stored import SPEC_KEY, StoredGroup, dtype_label

# Encoding keys xarray's zarr backend accepts; anything else a source carried along
# (netCDF's zlib, chunksizes, source, ...) is dropped rather than rejected.


ZARR_ENCODING_KEYS = frozenset(
    {
        "chunks",
        "shards",
        "compressors",
        "filters",
        "serializer",
        "dtype",
        "units",
        "calendar",
        "scale_factor",
        "add_offset",
        "_FillValue",
        "missing_value",
        "fill_value",
    }
)
# Kinds whose in-memory values can be wrapped in dask so that creating the array
# writes no values; strings and cftime objects are written with the metadata.
WRAPPABLE_KINDS = frozenset("biufcmM")
SUPPORTED_KINDS = frozenset("biufcmMOUST")


@dataclass
class Planned:
    plan: WritePlan
    steps: MetadataSteps
    writes: list[ArrayWrite]
    # what the write stores: the request's dataset without icefloe's spec attribute, cut
    # before a gap (on_gap="stop") or with the gap's labels added (on_gap="fill")
    dataset: xr.Dataset


@dataclass
class Problems:
    """Collects every problem so the user sees them all at once."""

    group: str | None
    items: list[str] = field(default_factory=list)

    def add(self, message: str) -> None:
        self.items.append(message)

    def raise_if_any(self) -> None:
        if self.items:
            raise PlanError(self.items, group=self.group)


def is_lazy(variable: xr.Variable) -> bool:
    return variable.chunks is not None


def itemsize(dtype: np.dtype[Any]) -> int:
    return 8 if dtype.kind in "OT" else dtype.itemsize


def write_size(
    region: Region, shape: tuple[int, ...], chunks: tuple[int, ...], dtype: np.dtype[Any]
) -> tuple[int, int]:
    elements = int(
        np.prod([len(range(*sl.indices(n))) for sl, n in zip(region, shape, strict=True)])
    )
    return chunks_touched(region, shape, chunks), elements * itemsize(dtype)


def labels_text(index: pd.Index) -> tuple[str, str]:
    return str(index[0]), str(index[-1])


def stored_variable(stored: StoredGroup, name: str) -> xr.Variable:
    """A stored variable decoded on its own, for comparing values (read lazily)."""
    return stored.variable(name)


def values_equal(a: xr.Variable, b: xr.Variable) -> bool:
    if a.dims != b.dims or a.shape != b.shape:
        return False
    return bool(a.load().equals(b.load())) if a.size < 50_000_000 else bool(a.equals(b))


def check_dataset(ds: xr.Dataset, problems: Problems) -> None:
    """Problems of the dataset itself, whatever the store holds."""
    if not ds.variables:
        problems.add("the dataset is empty (no variables); pass a dataset with data variables")
    for name, variable in ds.variables.items():
        if not isinstance(name, str) or not name or "/" in name:
            problems.add(
                f"variable name {name!r} is not a valid array name; rename it to a non-empty "
                "string without '/'"
            )
        if variable.dtype.kind not in SUPPORTED_KINDS:
            problems.add(
                f"variable {name!r} has dtype {variable.dtype}, which zarr cannot store; cast it "
                "to a numeric, boolean, datetime or string dtype"
            )
        elif variable.dtype.kind == "O" and not is_lazy(variable) and variable.size:
            kinds = {type(v).__name__ for v in np.asarray(variable.values).ravel()[:1000]}
            allowed = {"str", "bytes"} | {
                k for k in kinds if k.startswith(("Datetime", "datetime"))
            }
            if not kinds <= allowed and not all(k.startswith("Datetime") for k in kinds):
                problems.add(
                    f"variable {name!r} holds Python objects of type {', '.join(sorted(kinds))}; "
                    "convert it to strings or numbers"
                )
    for dim in ds.dims:
        if not isinstance(dim, str):
            problems.add(f"dimension name {dim!r} is not a string; rename it")


class Planner:
    """Shared machinery: zarr chunks, encodings, array writes and the plan rows."""

    mode: WriteMode

    def __init__(
        self,
        ds: xr.Dataset,
        stored: StoredGroup,
        encoding: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> None:
        if SPEC_KEY in ds.attrs:
            # data read from another icefloe group carries that group's spec: never this one's
            ds = ds.copy()
            ds.attrs = {k: v for k, v in ds.attrs.items() if k != SPEC_KEY}
        self.ds = ds
        self.stored = stored
        self.group = stored.group
        self.encoding = {str(k): dict(v) for k, v in (encoding or {}).items()}
        self.problems = Problems(stored.group)
        self.guard = SpecGuard(stored.spec, stored, self.problems)
        # 1-D arrays created with room to grow: chunk length by name, not clamped to the
        # array's first length (an append dimension's coordinate; see AppendPlanner)
        self.growth_chunks: dict[str, int] = {}

    # -- creating arrays -------------------------------------------------------------

    def _create_encoding(self, name: str, variable: xr.Variable) -> dict[str, Any]:
        requested = {k: v for k, v in variable.encoding.items() if k in ZARR_ENCODING_KEYS}
        requested.pop("chunks", None)  # a source's chunking says nothing about the target's
        given = self.encoding.get(name, {})
        unknown = sorted(set(given) - ZARR_ENCODING_KEYS)
        if unknown:
            # xarray drops netCDF keys a source carried along but rejects them when asked
            # for explicitly, from deep inside to_zarr: say so here, with the zarr spelling
            self.problems.add(
                f"encoding[{name!r}] has {unknown}, which zarr does not know (netCDF's "
                "zlib/complevel/shuffle/chunksizes/contiguous ...); remove them, and use "
                "'chunks' for chunksizes and 'compressors' (e.g. zarr.codecs.ZstdCodec()) "
                f"for compression; zarr accepts {sorted(ZARR_ENCODING_KEYS)}"
            )
        requested.update({k: v for k, v in given.items() if k in ZARR_ENCODING_KEYS})
        if "chunks" in requested and requested["chunks"] is not None:
            chunks = tuple(int(c) for c in requested["chunks"])
            if len(chunks) != variable.ndim:
                self.problems.add(
                    f"encoding['{name}']['chunks'] = {chunks} has {len(chunks)} entries but variable "
                    f"{name!r} has {variable.ndim} dimensions {variable.dims}; give one size per "
                    "dimension"
                )
                chunks = default_zarr_chunks(variable.shape, variable.chunks)
        else:
            chunks = default_zarr_chunks(variable.shape, variable.chunks)
        requested["chunks"] = (
            tuple(min(c, max(n, 1)) for c, n in zip(chunks, variable.shape, strict=True)) or None
        )
        if name in self.growth_chunks and variable.ndim == 1 and "chunks" not in given:
            requested["chunks"] = (max(self.growth_chunks[name], variable.shape[0]),)
        if variable.ndim == 0:
            requested.pop("chunks")
        fill, missing = requested.get("_FillValue"), requested.get("missing_value")
        if fill is not None and missing is not None and not fill_values_equal(fill, missing):
            # netCDF allows both; xarray's encoder (to_zarr) refuses the pair
            self.problems.add(
                f"variable {name!r} has _FillValue {fill!r} and missing_value {missing!r} in "
                "its encoding, which xarray cannot encode together (both are already masked "
                f"in the decoded values); drop one before writing, e.g. "
                f"del ds[{name!r}].encoding['missing_value']"
            )
            requested.pop("missing_value")
        if isinstance(fill, bytes):
            # to_zarr writes a bytes _FillValue that xarray then cannot read back ("Failed
            # to decode fill_value. Unsupported dtype |S1"): the group would be unreadable
            self.problems.add(
                f"variable {name!r} has the bytes _FillValue {fill!r}, which xarray stores in "
                "zarr but cannot read back, and zarr's fixed-width bytes cannot hold the "
                f"masked (NaN) values; fill them and drop the fill value before writing: "
                f"ds[{name!r}] = ds[{name!r}].fillna({bytes(fill)!r}); "
                f"del ds[{name!r}].encoding['_FillValue']"
            )
            requested.pop("_FillValue")
        if not is_lazy(variable):
            requested.update(time_encoding_for(variable, requested))
        if requested.get("_FillValue") is not None and "fill_value" not in requested:
            # zarr v3 keeps its own fill value (0 for integers) beside the CF _FillValue;
            # unequal, chunks never written (an appended label left to fill_missing, a
            # backfill window not yet run) decode as data, e.g. add_offset, not missing
            requested["fill_value"] = requested["_FillValue"]
        return requested

    def _planned_dtype(
        self, name: str, variable: xr.Variable, encoding: Mapping[str, Any]
    ) -> np.dtype[Any]:
        # one element, not none: xarray cannot tell whether no times fit the units; and not
        # a NaT, which xarray cannot encode alone in integer units coarser than its origin
        at = dict.fromkeys(variable.dims, 0)
        if variable.ndim and variable.dtype.kind in "mM" and not is_lazy(variable):
            valid = np.flatnonzero(~np.isnat(np.asarray(variable.values)).ravel())
            if len(valid):
                at = dict(
                    zip(variable.dims, np.unravel_index(valid[0], variable.shape), strict=True)
                )
        first = (
            variable.isel({d: slice(int(i), int(i) + 1) for d, i in at.items()})
            if variable.ndim
            else variable
        )
        probe = xr.Variable(first.dims, first.data, first.attrs, encoding=dict(encoding))
        probe.encoding.pop("chunks", None)
        try:
            # zarr v3 keeps byte order in its bytes codec: a big-endian netCDF3 variable is
            # stored (and read back) with the native dtype
            encoded: np.dtype[Any] = encode_for_store(probe, probe.encoding, name).dtype
            return encoded.newbyteorder("=")
        except Exception as err:
            self.problems.add(
                f"variable {name!r} cannot be encoded with encoding {dict(encoding)} "
                f"({type(err).__name__}: {err}); change its encoding"
            )
            fallback: np.dtype[Any] = np.dtype(variable.dtype)
            return fallback

    def plan_creates(
        self, variables: Mapping[str, xr.Variable], action: ArrayAction = "create"
    ) -> tuple[list[ArrayPlan], xr.Dataset, dict[str, dict[str, Any]], list[ArrayWrite]]:
        """Rows, the template xarray creates the arrays from, its encoding, and the writes."""
        rows, writes = [], []
        template_vars: dict[str, xr.Variable] = {}
        encodings: dict[str, dict[str, Any]] = {}
        coord_names = set(self.ds.coords)
        for name, variable in variables.items():
            variable = variable.to_base_variable()
            enc = self._create_encoding(name, variable)
            chunks = tuple(enc.get("chunks") or ())
            dtype = self._planned_dtype(name, variable, enc)
            if "compressors" not in enc and (compressors := default_compressors(dtype)):
                enc["compressors"] = compressors
            region = full_region(variable.shape)
            if is_lazy(variable):
                data = (
                    align_to_zarr_chunks(variable.data, region, chunks)
                    if variable.ndim
                    else variable.data
                )
                # a dask array is array-like to xarray; its stubs say otherwise
                variable = variable.copy(data=cast(Any, data))
                phase: Phase = "lazy"
                template_vars[name] = variable
                writes.append(ArrayWrite(name, variable, region, lazy=True))
            elif variable.dtype.kind in WRAPPABLE_KINDS:
                phase = "eager"
                template_vars[name] = variable.chunk()
                writes.append(ArrayWrite(name, variable, region, lazy=False))
            else:
                phase = "metadata"
                template_vars[name] = variable
            encodings[name] = enc
            n_chunks, n_bytes = write_size(region, variable.shape, chunks, dtype)
            rows.append(
                ArrayPlan(
                    name=name,
                    action=action,
                    dims=tuple(map(str, variable.dims)),
                    shape=variable.shape,
                    old_shape=self.stored.arrays[name].shape
                    if name in self.stored.arrays
                    else None,
                    chunks=chunks,
                    dtype=dtype_label(dtype),
                    phase=phase,
                    chunks_written=n_chunks,
                    bytes_written=n_bytes,
                    attrs=dict(variable.attrs),
                    note="coordinate" if name in coord_names else "",
                )
            )
        template = xr.Dataset(
            {n: v for n, v in template_vars.items() if n not in coord_names},
            coords={n: v for n, v in template_vars.items() if n in coord_names},
        )
        return rows, template, encodings, writes

    # -- writing into existing arrays -------------------------------------------------

    def plan_write(
        self,
        name: str,
        variable: xr.Variable,
        region: Region,
        action: ArrayAction,
        shape: tuple[int, ...],
        note: str = "",
    ) -> tuple[ArrayPlan, ArrayWrite]:
        stored = self.stored.arrays[name]
        variable = variable.to_base_variable()
        lazy = is_lazy(variable)
        if lazy and variable.ndim:
            aligned = align_to_zarr_chunks(variable.data, region, stored.chunks)
            variable = variable.copy(data=cast(Any, aligned))
        n_chunks, n_bytes = write_size(region, shape, stored.chunks, stored.dtype)
        row = ArrayPlan(
            name=name,
            action=action,
            dims=stored.dims,
            shape=shape,
            old_shape=stored.shape,
            chunks=stored.chunks,
            dtype=dtype_label(stored.dtype),
            phase="lazy" if lazy else "eager",
            chunks_written=n_chunks,
            bytes_written=n_bytes,
            attrs=dict(stored.attrs),
            note=note,
        )
        return row, ArrayWrite(name, variable, region, lazy)

    def skip_row(self, name: str, note: str) -> ArrayPlan:
        stored = self.stored.arrays[name]
        return ArrayPlan(
            name=name,
            action="skip",
            dims=stored.dims,
            shape=stored.shape,
            old_shape=stored.shape,
            chunks=stored.chunks,
            dtype=dtype_label(stored.dtype),
            phase="none",
            attrs=dict(stored.attrs),
            note=note,
        )

    def check_compatible(self, name: str, variable: xr.Variable, what: str) -> bool:
        """Dims and dtype of ``variable`` against the stored array; False (and a problem) if not."""
        stored = self.stored.arrays[name]
        if tuple(map(str, variable.dims)) != stored.dims:
            self.problems.add(
                f"variable {name!r} has dims {tuple(variable.dims)} but the stored array has "
                f"{stored.dims}; transpose or rename the dimensions to match, or {what}"
            )
            return False
        decoded_dtype, encoding = self.stored.schemas[name]
        ok = dtypes_compatible(variable, decoded_dtype, encoding)
        if not ok:
            self.problems.add(
                f"variable {name!r} has dtype {dtype_label(variable.dtype)} but the store holds "
                f"{dtype_label(decoded_dtype)}; cast it with ds[{name!r}].astype("
                f"'{decoded_dtype}') or {what}"
            )
        return ok

    def check_encodable(self, name: str, variable: xr.Variable) -> None:
        """Values that the stored units/calendar/dtype cannot represent, found before writing."""
        stored_encoding = self.stored.encodings[name]
        self._check_string_width(name, variable)
        if is_lazy(variable) or not variable.size:
            return
        try:
            encoded = encode_for_store(variable, stored_encoding, name)
            # times can silently lose precision or shift calendar; strings round-trip as
            # another (fixed-width) dtype, which equals() would call a difference
            is_time = variable.dtype.kind in "mM" or (
                variable.dtype.kind == "O" and is_cftime(variable)
            )
            if is_time and not decode_cf_variable(name, encoded).equals(
                variable.to_base_variable()
            ):
                raise ValueError("the values do not survive encoding and decoding unchanged")
        except Exception as err:
            units = stored_encoding.get("units")
            calendar = stored_encoding.get("calendar")
            self.problems.add(
                f"variable {name!r} cannot be encoded with the store's units={units!r}, "
                f"calendar={calendar!r}, dtype={stored_encoding.get('dtype')} "
                f"({type(err).__name__}: {err}); convert the values to that calendar and "
                "resolution, or rewrite the variable with for_modify"
            )

    def _check_string_width(self, name: str, variable: xr.Variable) -> None:
        """Strings longer than a stored fixed-width string array holds would be cut short.

        xarray stores strings (also Python str objects) as fixed-width zarr strings as wide
        as the longest one it saw when it created the array; zarr silently truncates longer
        ones written later. Lazy strings are loaded for this: they are small.
        """
        stored = self.stored.arrays[name].dtype
        if stored.kind not in "US" or variable.dtype.kind not in "OUS" or not variable.size:
            return
        width = stored.itemsize // (4 if stored.kind == "U" else 1)
        values = np.asarray(variable.values).ravel()
        lengths = [len(v) for v in values if isinstance(v, str | bytes)]
        longest = max(lengths, default=0)
        if longest > width:
            self.problems.add(
                f"variable {name!r} holds strings of up to {longest} characters but the stored "
                f"array keeps at most {width} ({stored}); zarr would cut them short. Rewrite "
                f"the variable wider with for_modify (e.g. ds[{name!r}].astype('U{longest}') "
                "for all its values), or create the group with strings as wide as they will get"
            )

    def finish(
        self,
        rows: list[ArrayPlan],
        steps: MetadataSteps,
        writes: list[ArrayWrite],
        group_attrs: Mapping[str, Any],
        attrs_changed: list[str],
        **extra: Any,
    ) -> Planned:
        self.problems.raise_if_any()
        plan = WritePlan(
            mode=self.mode,
            group=self.group,
            arrays=tuple(sorted(rows, key=lambda r: (r.note != "coordinate", r.name))),
            group_attrs=dict(group_attrs),
            attrs_changed=tuple(attrs_changed),
            **extra,
        )
        return Planned(plan, steps, writes, self.ds)


def dtypes_compatible(
    variable: xr.Variable, decoded_dtype: np.dtype[Any], encoding: Mapping[str, Any]
) -> bool:
    """Whether ``variable`` may be written into a stored array decoding to ``decoded_dtype``."""
    new: np.dtype[Any] = np.dtype(variable.dtype)
    old = decoded_dtype
    if " since " in str(encoding.get("units", "")):
        # a stored time decodes to datetime64 or to cftime objects depending on its calendar
        # and on the range of its values, which metadata alone cannot tell; the encodability
        # check compares calendars and values exactly
        # (an empty variable, all of it already stored, writes nothing)
        return new.kind == "M" or (new.kind == "O" and (not variable.size or is_cftime(variable)))
    if new.kind in "Mm" or old.kind in "Mm":
        return new.kind == old.kind
    if new.kind in "OUST" or old.kind in "OUST":
        return new.kind in "OUST" and old.kind in "OUST"
    raw = np.dtype(encoding.get("dtype", old))
    if raw.kind in "iu" and encoding.get("_FillValue") is not None and old.kind == "f":
        # integers with a fill value decode to floats (masked): the integers the array was
        # created from, or floats holding them, encode the same way
        return new.kind in "iuf"
    scaled = "scale_factor" in encoding or "add_offset" in encoding
    if scaled:
        return new.kind == "f"
    # byte order is storage detail (netCDF3 is big-endian, zarr v3 keeps it in a codec)
    return new.newbyteorder("=") == old.newbyteorder("=")


def is_cftime(variable: xr.Variable) -> bool:
    import cftime

    sample = variable.isel({d: 0 for d in variable.dims}) if variable.ndim else variable
    return isinstance(sample.values[()], cftime.datetime)


def changed_attrs(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    return [k for k, v in new.items() if k not in old or not attr_equal(old[k], v)]


def attr_equal(a: Any, b: Any) -> bool:
    try:
        return bool(np.array_equal(np.asarray(a), np.asarray(b)))
    except Exception:
        return bool(a == b)
