"""Planning: compare the dataset with the store, apply the mode's rules, list every problem.

One planner per mode. Each reads the store (never writes), collects every problem it
finds and raises them together as one PlanError, or returns the plan together with
the metadata steps and array writes that carry it out.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

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
from tasks.encoding import encode_for_store, fill_values_equal, time_encoding_for
from tasks.errors import PlanError
from tasks.plan import (
    ArrayAction,
    ArrayPlan,
    ArrayWrite,
    MetadataSteps,
    Phase,
    WritePlan,
)
from tasks.request import OnOverlap, RegionSpec, WriteMode
from tasks.stored import StoredGroup

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


def _dtype_label(dtype: np.dtype[Any]) -> str:
    return "string" if dtype.kind in "OUST" else str(dtype)


def _is_lazy(variable: xr.Variable) -> bool:
    return variable.chunks is not None


def _itemsize(dtype: np.dtype[Any]) -> int:
    return 8 if dtype.kind in "OT" else dtype.itemsize


def _write_size(
    region: Region, shape: tuple[int, ...], chunks: tuple[int, ...], dtype: np.dtype[Any]
) -> tuple[int, int]:
    elements = int(
        np.prod([len(range(*sl.indices(n))) for sl, n in zip(region, shape, strict=True)])
    )
    return chunks_touched(region, shape, chunks), elements * _itemsize(dtype)


def _labels_text(index: pd.Index) -> tuple[str, str]:
    return str(index[0]), str(index[-1])


def _stored_variable(stored: StoredGroup, name: str) -> xr.Variable:
    """A stored variable decoded on its own, for comparing values (read lazily)."""
    return stored.variable(name)


def _values_equal(a: xr.Variable, b: xr.Variable) -> bool:
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
        elif variable.dtype.kind == "O" and not _is_lazy(variable) and variable.size:
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
        self.ds = ds
        self.stored = stored
        self.group = stored.group
        self.encoding = {str(k): dict(v) for k, v in (encoding or {}).items()}
        self.problems = Problems(stored.group)

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
        if not _is_lazy(variable):
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
        if variable.ndim and variable.dtype.kind in "mM" and not _is_lazy(variable):
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
            return encode_for_store(probe, probe.encoding, name).dtype.newbyteorder("=")
        except Exception as err:
            self.problems.add(
                f"variable {name!r} cannot be encoded with encoding {dict(encoding)} "
                f"({type(err).__name__}: {err}); change its encoding"
            )
            return variable.dtype

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
            region = full_region(variable.shape)
            if _is_lazy(variable):
                data = (
                    align_to_zarr_chunks(variable.data, region, chunks)
                    if variable.ndim
                    else variable.data
                )
                variable = variable.copy(data=data)
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
            n_chunks, n_bytes = _write_size(region, variable.shape, chunks, dtype)
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
                    dtype=_dtype_label(dtype),
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
        lazy = _is_lazy(variable)
        if lazy and variable.ndim:
            variable = variable.copy(
                data=align_to_zarr_chunks(variable.data, region, stored.chunks)
            )
        n_chunks, n_bytes = _write_size(region, shape, stored.chunks, stored.dtype)
        row = ArrayPlan(
            name=name,
            action=action,
            dims=stored.dims,
            shape=shape,
            old_shape=stored.shape,
            chunks=stored.chunks,
            dtype=_dtype_label(stored.dtype),
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
            dtype=_dtype_label(stored.dtype),
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
        ok = _dtypes_compatible(variable, decoded_dtype, encoding)
        if not ok:
            self.problems.add(
                f"variable {name!r} has dtype {_dtype_label(variable.dtype)} but the store holds "
                f"{_dtype_label(decoded_dtype)}; cast it with ds[{name!r}].astype("
                f"'{decoded_dtype}') or {what}"
            )
        return ok

    def check_encodable(self, name: str, variable: xr.Variable) -> None:
        """Values that the stored units/calendar/dtype cannot represent, found before writing."""
        stored_encoding = self.stored.encodings[name]
        self._check_string_width(name, variable)
        if _is_lazy(variable) or not variable.size:
            return
        try:
            encoded = encode_for_store(variable, stored_encoding, name)
            # times can silently lose precision or shift calendar; strings round-trip as
            # another (fixed-width) dtype, which equals() would call a difference
            is_time = variable.dtype.kind in "mM" or (
                variable.dtype.kind == "O" and _is_cftime(variable)
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
        return Planned(plan, steps, writes)


def _dtypes_compatible(
    variable: xr.Variable, decoded_dtype: np.dtype[Any], encoding: Mapping[str, Any]
) -> bool:
    """Whether ``variable`` may be written into a stored array decoding to ``decoded_dtype``."""
    new, old = variable.dtype, decoded_dtype
    if " since " in str(encoding.get("units", "")):
        # a stored time decodes to datetime64 or to cftime objects depending on its calendar
        # and on the range of its values, which metadata alone cannot tell; the encodability
        # check compares calendars and values exactly
        # (an empty variable, all of it already stored, writes nothing)
        return new.kind == "M" or (new.kind == "O" and (not variable.size or _is_cftime(variable)))
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


def _is_cftime(variable: xr.Variable) -> bool:
    import cftime

    sample = variable.isel({d: 0 for d in variable.dims}) if variable.ndim else variable
    return isinstance(sample.values[()], cftime.datetime)


def _changed_attrs(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    return [k for k, v in new.items() if k not in old or not _attr_equal(old[k], v)]


def _attr_equal(a: Any, b: Any) -> bool:
    try:
        return bool(np.array_equal(np.asarray(a), np.asarray(b)))
    except Exception:
        return a == b


class CreatePlanner(Planner):
    """``mode="w-"`` (the group must be empty) or ``"w"`` (the group is replaced)."""

    def __init__(
        self, ds: xr.Dataset, stored: StoredGroup, mode: Literal["w", "w-"], encoding: Any = None
    ) -> None:
        super().__init__(ds, stored, encoding)
        self.create_mode = mode
        self.mode = "overwrite" if mode == "w" and not stored.is_empty else "create"

    def plan(self) -> Planned:
        check_dataset(self.ds, self.problems)
        if self.create_mode == "w-" and not self.stored.is_empty:
            contents = sorted(self.stored.arrays) or self.stored.subgroups
            self.problems.add(
                f"the group already exists and holds {', '.join(map(repr, contents[:8]))}; use "
                "mode='w' to replace it, for_modify to change it, or for_append to extend it"
            )
        unknown = set(self.encoding) - {str(n) for n in self.ds.variables}
        if unknown:
            self.problems.add(
                f"encoding names {sorted(unknown)}, which are not variables of the dataset; "
                "remove them from encoding"
            )
        self.problems.raise_if_any()
        variables = {str(n): v for n, v in self.ds.variables.items()}
        rows, template, encodings, writes = self.plan_creates(variables)
        template.attrs = dict(self.ds.attrs)
        deleted = (
            [
                ArrayPlan(
                    name, "delete", a.dims, (), a.shape, a.chunks, _dtype_label(a.dtype), "metadata"
                )
                for name, a in self.stored.arrays.items()
                if name not in variables
            ]
            if self.create_mode == "w"
            else []
        )
        steps = MetadataSteps(create_mode=self.create_mode, template=template, encoding=encodings)
        return self.finish(
            rows + deleted, steps, writes, self.ds.attrs, sorted(map(str, self.ds.attrs))
        )


class ModifyPlanner(Planner):
    """Add variables, overwrite existing ones (replacing those whose layout changed), merge attrs."""

    mode: WriteMode = "modify"

    def __init__(
        self, ds: xr.Dataset, stored: StoredGroup, encoding: Any = None, only_new: bool = False
    ) -> None:
        super().__init__(ds, stored, encoding)
        self.only_new = only_new

    def plan(self) -> Planned:
        check_dataset(self.ds, self.problems)
        if not self.stored.exists:
            self.problems.add(
                "the group does not exist; create it first with for_create_or_overwrite, or "
                "check the group path"
            )
        self.problems.raise_if_any()
        stored_arrays = self.stored.arrays
        ds = self.ds
        skipped_existing: list[str] = []
        if self.only_new:
            for name in [str(n) for n in ds.variables if str(n) in stored_arrays]:
                if name in ds.dims and not _values_equal(
                    ds.variables[name], _stored_variable(self.stored, name)
                ):
                    self.problems.add(
                        f"coordinate {name!r} differs from the stored one, so the new variables "
                        "would be mislabelled; select the stored labels or use for_modify without "
                        "drop_existing_vars to overwrite it"
                    )
                skipped_existing.append(name)
        new_vars: dict[str, xr.Variable] = {}
        replaced: dict[str, xr.Variable] = {}
        rows: list[ArrayPlan] = []
        writes: list[ArrayWrite] = []
        array_attrs: dict[str, dict[str, Any]] = {}
        for hashable_name, variable in ds.variables.items():
            name = str(hashable_name)
            if name in skipped_existing:
                rows.append(self.skip_row(name, "exists"))
                continue
            if name not in stored_arrays:
                new_vars[name] = variable
                continue
            stored = stored_arrays[name]
            same_layout = (
                tuple(map(str, variable.dims)) == stored.dims
                and variable.shape == stored.shape
                and _dtypes_compatible(variable, *self.stored.schemas[name])
            )
            if not same_layout:
                replaced[name] = variable
                continue
            if name in ds.coords and _values_equal(variable, _stored_variable(self.stored, name)):
                rows.append(self.skip_row(name, "unchanged"))
            else:
                self.check_encodable(name, variable)
                row, write = self.plan_write(
                    name, variable, full_region(stored.shape), "overwrite", stored.shape
                )
                rows.append(dataclasses.replace(row, attrs={**stored.attrs, **variable.attrs}))
                writes.append(write)
            changed = _changed_attrs(stored.attrs, variable.attrs)
            if changed:
                array_attrs[name] = {k: variable.attrs[k] for k in changed}
        self._check_dimension_sizes({**new_vars, **replaced})
        self.problems.raise_if_any()
        created_rows, template, encodings, created_writes = self.plan_creates(new_vars)
        replaced_rows, replaced_template, replaced_enc, replaced_writes = self.plan_creates(
            replaced, action="replace"
        )
        template = xr.merge([template, replaced_template]) if replaced else template
        # to_zarr(mode="a") replaces the group's attributes with the template's
        template.attrs = {**self.stored.attrs, **ds.attrs}
        encodings.update(replaced_enc)
        group_changes = _changed_attrs(self.stored.attrs, ds.attrs)
        steps = MetadataSteps(
            delete=sorted(replaced),
            create_mode="a" if new_vars or replaced else None,
            template=template if new_vars or replaced else None,
            encoding=encodings,
            group_attrs={k: ds.attrs[k] for k in group_changes},
            array_attrs=array_attrs,
        )
        rows += created_rows + replaced_rows
        return self.finish(
            rows,
            steps,
            writes + created_writes + replaced_writes,
            {**self.stored.attrs, **ds.attrs},
            group_changes + [f"{n}.{k}" for n, attrs in array_attrs.items() for k in attrs],
        )

    def _check_dimension_sizes(self, changing: Mapping[str, xr.Variable]) -> None:
        """A created or replaced array must agree with the sizes of the arrays that stay."""
        kept_sizes: dict[str, tuple[int, str]] = {}
        for name, array in self.stored.arrays.items():
            if name not in changing:
                for dim, size in zip(array.dims, array.shape, strict=True):
                    kept_sizes.setdefault(dim, (size, name))
        for name, variable in changing.items():
            for dim, size in variable.sizes.items():
                if str(dim) in kept_sizes and kept_sizes[str(dim)][0] != size:
                    stored_size, holder = kept_sizes[str(dim)]
                    self.problems.add(
                        f"variable {name!r} has {dim!r} of length {size} but the stored array "
                        f"{holder!r} has {stored_size}; make the lengths match, or rewrite the "
                        f"group with mode='w'"
                    )


class AppendPlanner(Planner):
    """Extend every variable that has ``append_dim``; everything else must already match."""

    mode: WriteMode = "append"

    def __init__(
        self,
        ds: xr.Dataset,
        stored: StoredGroup,
        append_dim: str,
        on_overlap: OnOverlap = "error",
        update_attrs: Mapping[str, Any] | None = None,
        fill_missing: bool = False,
    ) -> None:
        super().__init__(ds, stored)
        self.append_dim = append_dim
        self.on_overlap = on_overlap
        self.update_attrs = dict(update_attrs or {})
        self.fill_missing = fill_missing

    def plan(self) -> Planned:
        check_dataset(self.ds, self.problems)
        dim = self.append_dim
        if self.on_overlap not in ("error", "skip", "overwrite"):
            self.problems.add(
                f"on_overlap={self.on_overlap!r} is not one of 'error', 'skip', 'overwrite'"
            )
        if dim not in self.ds.dims:
            self.problems.add(
                f"append_dim {dim!r} is not a dimension of the dataset (its dimensions are "
                f"{sorted(map(str, self.ds.dims))}); pass one of those"
            )
        self.problems.raise_if_any()
        if self.stored.is_empty:
            planned = CreatePlanner(self.ds, self.stored, "w-").plan()
            planned.steps.template.attrs.update(self.update_attrs)
            labels = self._labels(self.ds)
            plan = planned.plan
            planned.plan = WritePlan(
                mode="append",
                group=plan.group,
                arrays=plan.arrays,
                group_attrs={**plan.group_attrs, **self.update_attrs},
                attrs_changed=plan.attrs_changed,
                append_dim=dim,
                label_range=_labels_text(labels) if labels is not None and len(labels) else None,
            )
            return planned
        if dim not in self.stored.sizes:
            self.problems.add(
                f"append_dim {dim!r} is not a dimension of the stored group (it has "
                f"{sorted(self.stored.sizes)}); pass one of those"
            )
            self.problems.raise_if_any()
        return self._plan_extend()

    def _labels(self, ds: xr.Dataset) -> pd.Index | None:
        if self.append_dim not in ds.indexes:
            return None
        labels = ds.indexes[self.append_dim]
        if not labels.is_unique:
            dupes = labels[labels.duplicated()].unique()
            self.problems.add(
                f"coordinate {self.append_dim!r} has duplicated labels {[str(x) for x in dupes[:5]]}; "
                "drop the duplicates (e.g. ds.drop_duplicates)"
            )
        elif not labels.is_monotonic_increasing:
            self.problems.add(
                f"coordinate {self.append_dim!r} is not increasing; sort it with "
                f"ds.sortby({self.append_dim!r})"
            )
        return labels

    def _plan_extend(self) -> Planned:
        dim, ds, stored = self.append_dim, self.ds, self.stored
        old_len = stored.sizes[dim]
        new_labels = self._labels(ds)
        write_from, keep_from = (
            old_len,
            0,
        )  # store position the write starts at; first ds label kept
        labels_ok = not self.problems.items
        if new_labels is not None and dim in stored.indexes and len(new_labels):
            stored_labels = stored.indexes[dim]
            if not (stored_labels.is_unique and stored_labels.is_monotonic_increasing):
                # placing labels needs a unique, increasing stored axis (pandas cannot even
                # look labels up in one with repeats)
                self.problems.add(
                    f"the stored coordinate {dim!r} is not unique and increasing, so appended "
                    f"labels cannot be placed after it; rewrite the group with sorted, unique "
                    f"labels (ds.drop_duplicates({dim!r}).sortby({dim!r})) before appending"
                )
            elif labels_ok and self._same_calendar(stored_labels, new_labels):
                write_from, keep_from = self._place_labels(stored_labels, new_labels)
        elif new_labels is None and dim in stored.arrays:
            self.problems.add(
                f"the store has a coordinate {dim!r} but the dataset has none; add the labels "
                f"with ds.assign_coords({dim}=...)"
            )
        elif new_labels is None and self.on_overlap != "error":
            # without labels nothing tells a re-run from new data: skipping or overwriting
            # would silently append the same values again
            self.problems.add(
                f"on_overlap={self.on_overlap!r} needs labels along {dim!r} to recognise what "
                f"is already stored, but neither the dataset nor the store has a {dim!r} "
                f"coordinate; add one (ds.assign_coords({dim}=...)) when creating the group, "
                "or append only new data with on_overlap='error'"
            )
        self.problems.raise_if_any()
        ds = ds.isel({dim: slice(keep_from, None)})
        n_new = ds.sizes[dim]
        new_len = max(old_len, write_from + n_new)

        rows: list[ArrayPlan] = []
        writes: list[ArrayWrite] = []
        resize: dict[str, tuple[int, ...]] = {}
        with_dim = {str(n) for n, v in stored.arrays.items() if dim in v.dims}
        for hashable_name, variable in ds.variables.items():
            name = str(hashable_name)
            if name not in stored.arrays:
                self.problems.add(
                    f"variable {name!r} is not in the store; appending cannot add variables, add "
                    "it first with for_modify (or drop it from the dataset)"
                )
                continue
            if dim not in variable.dims:
                if not _values_equal(variable, _stored_variable(stored, name)):
                    self.problems.add(
                        f"variable {name!r} has no {dim!r} dimension and differs from the stored "
                        f"one; appending never overwrites it: make it equal to the stored values, "
                        "or change it with for_modify"
                    )
                else:
                    rows.append(self.skip_row(name, "unchanged"))
                continue
            if name not in with_dim:
                self.problems.add(
                    f"variable {name!r} has dimension {dim!r} in the dataset but not in the store; "
                    "rename the dimension or rewrite the variable with for_modify"
                )
                continue
            if not self.check_compatible(name, variable, "rewrite it with for_modify"):
                continue
            stored_array = stored.arrays[name]
            for d, size, stored_size in zip(
                stored_array.dims, variable.shape, stored_array.shape, strict=True
            ):
                if d != dim and size != stored_size:
                    self.problems.add(
                        f"variable {name!r} has {d!r} of length {size} but the store has "
                        f"{stored_size}; only {dim!r} may grow, select the stored extent of {d!r}"
                    )
            self.check_encodable(name, variable)
            axis = stored_array.dims.index(dim)
            new_shape = tuple(new_len if i == axis else n for i, n in enumerate(stored_array.shape))
            if new_shape != stored_array.shape:
                resize[name] = new_shape
            if n_new == 0:
                rows.append(self.skip_row(name, "already stored"))
                continue
            region = tuple(
                slice(write_from, write_from + n_new) if i == axis else slice(0, n)
                for i, n in enumerate(new_shape)
            )
            overlap = write_from < old_len
            row, write = self.plan_write(
                name,
                variable,
                region,
                "resize" if new_len > old_len else "region",
                new_shape,
                note="upsert" if overlap and self.on_overlap == "overwrite" else "",
            )
            rows.append(row)
            writes.append(write)

        missing = sorted(with_dim - {str(n) for n in ds.variables})
        if missing and not self.fill_missing:
            self.problems.add(
                f"variables {missing} have dimension {dim!r} in the store but are missing from the "
                "dataset; include them, or pass fill_missing=True to leave them at their fill value"
            )
        for name in missing if self.fill_missing else []:
            array = stored.arrays[name]
            axis = array.dims.index(dim)
            new_shape = tuple(new_len if i == axis else n for i, n in enumerate(array.shape))
            resize[name] = new_shape
            rows.append(
                ArrayPlan(
                    name,
                    "fill",
                    array.dims,
                    new_shape,
                    array.shape,
                    array.chunks,
                    _dtype_label(array.dtype),
                    "metadata",
                    attrs=dict(array.attrs),
                )
            )

        changed = _changed_attrs(stored.attrs, self.update_attrs)
        steps = MetadataSteps(
            resize=resize if n_new else {},
            group_attrs={k: self.update_attrs[k] for k in changed},
        )
        label_range = None
        if n_new and dim in ds.indexes:
            label_range = _labels_text(ds.indexes[dim])
        return self.finish(
            rows,
            steps,
            writes,
            {**stored.attrs, **self.update_attrs},
            changed,
            append_dim=dim,
            label_range=label_range,
        )

    def _same_calendar(self, stored_labels: pd.Index, new_labels: pd.Index) -> bool:
        stored_calendar, new_calendar = _calendar(stored_labels), _calendar(new_labels)
        if stored_calendar == new_calendar:
            return True
        self.problems.add(
            f"labels along {self.append_dim!r} use the {new_calendar} calendar but the store "
            f"uses {stored_calendar}; convert them with ds.convert_calendar({stored_calendar!r})"
        )
        return False

    def _place_labels(self, stored_labels: pd.Index, new_labels: pd.Index) -> tuple[int, int]:
        """Where the new labels go: (store position of the first written, first kept label)."""
        dim = self.append_dim
        old_len = len(stored_labels)
        positions = stored_labels.get_indexer(new_labels)
        n_overlap = int((positions >= 0).sum())
        if n_overlap:
            overlap_positions = positions[:n_overlap]
            contiguous = (positions[n_overlap:] < 0).all() and (
                np.diff(overlap_positions) == 1
            ).all()
            if not contiguous:
                self.problems.add(
                    f"labels along {dim!r} interleave with the stored ones; an append may only "
                    "repeat a contiguous run of stored labels followed by new ones"
                )
                return old_len, 0
            if self.on_overlap == "error":
                first, last = new_labels[0], new_labels[n_overlap - 1]
                self.problems.add(
                    f"{n_overlap} label(s) along {dim!r} are already in the store "
                    f"({first} … {last}); pass on_overlap='skip' to write only new labels or "
                    "on_overlap='overwrite' to replace them"
                )
                return old_len, 0
            reaches_end = overlap_positions[-1] == old_len - 1
            if n_overlap < len(new_labels) and not reaches_end:
                self.problems.add(
                    f"labels along {dim!r} repeat stored labels that end before the last stored "
                    f"label {stored_labels[-1]} and then continue with new ones; that would "
                    "insert in the middle of the axis"
                )
                return old_len, 0
        fresh = new_labels[n_overlap:]
        if len(fresh):
            if fresh[0] <= stored_labels[-1]:
                self.problems.add(
                    f"label {fresh[0]} along {dim!r} is not after the last stored label "
                    f"{stored_labels[-1]}; appends must continue the axis (use for_region to "
                    "rewrite inside it)"
                )
            else:
                self._check_no_gap(stored_labels, fresh)
        if self.on_overlap == "skip":
            return old_len, n_overlap
        return (int(positions[0]) if n_overlap else old_len), 0

    def _check_no_gap(self, stored_labels: pd.Index, fresh: pd.Index) -> None:
        if _calendar(stored_labels) is None:
            # numeric axes (depth levels, longitudes, model levels) are often irregular on
            # purpose: a few equal steps in the first part say nothing about the rest
            return
        step = _regular_step(stored_labels)
        if step is None and len(stored_labels) == 1 and len(fresh) > 1:
            step = _regular_step(fresh)
        if step is None:
            return
        expected = stored_labels[-1] + step
        if fresh[0] != expected:
            self.problems.add(
                f"the axis {self.append_dim!r} is regular with step {step} but the first new label "
                f"is {fresh[0]} instead of {expected}; that leaves a gap — include the missing "
                "labels, or write them later with for_region after extending the axis"
            )
        elif len(fresh) > 1 and _regular_step(fresh) != step:
            self.problems.add(
                f"the new labels along {self.append_dim!r} are not spaced by the stored step "
                f"{step}; resample them to the stored step"
            )


def _calendar(labels: pd.Index) -> str | None:
    """The calendar of time labels, or None for labels that are not times."""
    if isinstance(labels, xr.CFTimeIndex):
        return str(labels.calendar)
    if isinstance(labels, pd.DatetimeIndex):
        return "proleptic_gregorian"
    return None


def _regular_step(labels: pd.Index) -> Any:
    if len(labels) < 2:
        return None
    steps = (
        pd.Index(labels[1:]) - pd.Index(labels[:-1])
        if not isinstance(labels, xr.CFTimeIndex)
        else pd.Index(np.diff(np.asarray(labels)))
    )
    try:
        unique = steps.unique()
    except TypeError:
        return None
    return unique[0] if len(unique) == 1 else None


class RegionPlanner(Planner):
    """Write values into a region of existing arrays; never change metadata."""

    mode: WriteMode = "region"

    def __init__(self, ds: xr.Dataset, stored: StoredGroup, region: RegionSpec) -> None:
        super().__init__(ds, stored)
        self.region_spec = region

    def plan(self) -> Planned:
        check_dataset(self.ds, self.problems)
        if not self.stored.arrays:
            self.problems.add(
                "the group holds no arrays; a region write needs the arrays to exist, create "
                "them first (for_create_or_overwrite, or for_append to extend)"
            )
        self.problems.raise_if_any()
        bounds = self._resolve_region()
        self.problems.raise_if_any()
        rows: list[ArrayPlan] = []
        writes: list[ArrayWrite] = []
        for hashable_name, variable in self.ds.variables.items():
            name = str(hashable_name)
            if name not in self.stored.arrays:
                self.problems.add(
                    f"variable {name!r} is not in the store; a region write cannot add variables, "
                    "add it first with for_modify"
                )
                continue
            in_region = [str(d) for d in variable.dims if str(d) in bounds]
            if not in_region:
                if name in self.ds.data_vars:
                    self.problems.add(
                        f"data variable {name!r} does not overlap the region {sorted(bounds)}; "
                        "drop it from the dataset or write it with for_modify"
                    )
                elif not _values_equal(variable, _stored_variable(self.stored, name)):
                    self.problems.add(
                        f"coordinate {name!r} lies outside the region and differs from the "
                        "stored one; a region write never changes it: select the stored values "
                        "or change it with for_modify"
                    )
                else:
                    rows.append(self.skip_row(name, "unchanged"))
                continue
            if not self.check_compatible(name, variable, "rewrite it with for_modify"):
                continue
            stored = self.stored.arrays[name]
            region = tuple(
                slice(*bounds[d]) if d in bounds else slice(0, n)
                for d, n in zip(stored.dims, stored.shape, strict=True)
            )
            for d, size, sl in zip(stored.dims, variable.shape, region, strict=True):
                if size != sl.stop - sl.start:
                    self.problems.add(
                        f"variable {name!r} has {d!r} of length {size} but the region spans "
                        f"{sl.stop - sl.start} ({d}[{sl.start}:{sl.stop}]); make them equal"
                    )
            if name in self.ds.indexes:
                stored_labels = _stored_variable(self.stored, name)[{name: region[0]}]
                if not _values_equal(variable, stored_labels):
                    self.problems.add(
                        f"labels of {name!r} differ from the stored labels at {name}"
                        f"[{region[0].start}:{region[0].stop}]; use region='auto' to place them by "
                        "label, or fix the slice"
                    )
                else:
                    rows.append(self.skip_row(name, "labels match"))
                continue
            if name in self.ds.coords:
                # rewriting an unchanged coordinate would make disjoint region runs conflict
                in_store = _stored_variable(self.stored, name)[
                    dict(zip(stored.dims, region, strict=True))
                ]
                if _values_equal(variable, in_store):
                    rows.append(self.skip_row(name, "unchanged"))
                    continue
            self.check_encodable(name, variable)
            row, write = self.plan_write(name, variable, region, "region", stored.shape)
            rows.append(row)
            writes.append(write)
        return self.finish(
            rows,
            MetadataSteps(),
            writes,
            self.stored.attrs,
            [],
            region={d: (a, b) for d, (a, b) in bounds.items()},
        )

    def _resolve_region(self) -> dict[str, tuple[int, int]]:
        spec = self.region_spec
        if spec == "auto":
            spec = {str(d): "auto" for d in self.ds.dims if str(d) in self.stored.sizes}
            for dim in list(spec):
                unlabelled = dim not in self.ds.indexes and dim not in self.stored.indexes
                if unlabelled and self.ds.sizes[dim] == self.stored.sizes[dim]:
                    # nothing to place by (bounds' "bnds", a vertex dimension): a dataset
                    # that spans all of it covers the whole extent, as to_zarr does
                    spec[dim] = slice(0, self.stored.sizes[dim])
            if not spec:
                self.problems.add(
                    f"none of the dataset's dimensions {sorted(map(str, self.ds.dims))} is in the "
                    f"store ({sorted(self.stored.sizes)}); rename them to match"
                )
        if not isinstance(spec, Mapping):
            self.problems.add(f"region={spec!r} must be 'auto' or a mapping of dimension to slice")
            return {}
        bounds: dict[str, tuple[int, int]] = {}
        for dim, value in spec.items():
            dim = str(dim)
            if dim not in self.stored.sizes:
                self.problems.add(
                    f"region dimension {dim!r} is not in the store (it has "
                    f"{sorted(self.stored.sizes)}); remove it from the region"
                )
                continue
            if dim not in self.ds.dims:
                self.problems.add(
                    f"region dimension {dim!r} is not a dimension of the dataset; remove it from "
                    "the region or add the dimension"
                )
                continue
            size = self.stored.sizes[dim]
            if value == "auto":
                found = self._auto_bounds(dim)
                if found:
                    bounds[dim] = found
                continue
            if not isinstance(value, slice) or value.step not in (None, 1):
                self.problems.add(
                    f"region[{dim!r}] = {value!r} must be 'auto' or a slice with step 1"
                )
                continue
            start = 0 if value.start is None else value.start
            stop = size if value.stop is None else value.stop
            if not (0 <= start <= stop <= size):
                self.problems.add(
                    f"region[{dim!r}] = slice({value.start}, {value.stop}) is out of bounds: the "
                    f"stored {dim!r} has length {size}; pick a slice within [0, {size}] (or "
                    "extend the arrays with for_append first)"
                )
                continue
            bounds[dim] = (start, stop)
        return bounds

    def _auto_bounds(self, dim: str) -> tuple[int, int] | None:
        if dim not in self.ds.indexes or dim not in self.stored.indexes:
            self.problems.add(
                f"region[{dim!r}] = 'auto' needs a {dim!r} coordinate in both the dataset and "
                "the store; give an explicit slice instead"
            )
            return None
        labels, stored_labels = self.ds.indexes[dim], self.stored.indexes[dim]
        if not stored_labels.is_unique:
            self.problems.add(
                f"the stored labels of {dim!r} repeat, so region='auto' cannot place the "
                f"dataset by label; give an explicit slice instead, e.g. region={{{dim!r}: "
                "slice(start, stop)}"
            )
            return None
        positions = stored_labels.get_indexer(labels)
        if (positions < 0).any():
            missing = labels[positions < 0]
            self.problems.add(
                f"labels {[str(x) for x in missing[:5]]} of {dim!r} are not in the store; "
                "extend the arrays first (for_append, or backfill) or correct the labels"
            )
            return None
        if len(positions) and (np.diff(positions) != 1).any():
            self.problems.add(
                f"labels of {dim!r} are not a contiguous run of the stored labels; split the "
                "write into contiguous pieces"
            )
            return None
        return (int(positions[0]), int(positions[-1]) + 1) if len(positions) else (0, 0)
