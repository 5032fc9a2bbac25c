"""What a flow writes: the Source models, a pydantic union discriminated by ``kind``.

Sources are flow parameters, so they must survive a JSON round trip (deployments, the
Prefect UI form, run records) and must never carry secrets: describe() is copied into logs and
commit metadata, which is why it shows allow-listed option keys only and never kwargs values.

Every kind opens lazily with ``open(start=None, end=None)``. Scheduled and backfill runs pass
a half-open window ``[start, end)``; how each kind honours it:

- ``files``: ``{start:%Y%m%d}`` / ``{end:...}`` placeholders in the paths are filled, and the
  result is cut to the window along ``window_dim``;
- ``zarr`` and ``icechunk``: cut to the window along ``window_dim``;
- ``python``: the function receives ``start=`` and ``end=`` and answers for itself;
- ``synthetic``: generates exactly the labels in the window.
"""

import contextlib
import glob
import importlib
import json
import math
import os
import re
import string
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import lru_cache
from typing import Annotated, Any, Literal, Self

import cftime
import dask.array as da
import numpy as np
import pandas as pd
import xarray as xr
from pandas.tseries.frequencies import to_offset
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    field_validator,
    model_validator,
)

from flows.options import loads_json, validate
from flows.targets import (
    SAFE_STORAGE_OPTION_KEYS,
    Target,
    TargetNotFoundError,
    credential_option_error,
    is_credential_key,
    safe_url,
)
from tasks.errors import RequestError, SourceNotFoundError

__all__ = [
    "FilesSource",
    "IcechunkSource",
    "PythonSource",
    "Source",
    "SourceAdapter",
    "SourceModel",
    "SyntheticSource",
    "WindowBound",
    "ZarrSource",
    "fsspec_options",
    "parse_source",
]

# What open() accepts as a window bound: Prefect hands over datetimes (often tz-aware) or
# ISO strings from JSON; backfills over a cftime axis hand over cftime datetimes.
type WindowBound = datetime | np.datetime64 | cftime.datetime | str

_WINDOW_DIM_DESCRIPTION = (
    "Dimension that a run's [start, end) window selects along; null keeps every label. "
    "Ignored when the dataset lacks that dimension."
)


# --------------------------------------------------------------------------- window helpers


def _to_timestamp(value: WindowBound, what: str) -> pd.Timestamp:
    """A naive UTC pandas Timestamp, the form a datetime64 time axis compares with."""
    if isinstance(value, cftime.datetime):
        value = datetime(
            value.year,
            value.month,
            value.day,
            value.hour,
            value.minute,
            value.second,
            value.microsecond,
        )
    try:
        stamp = pd.Timestamp(value)
    except (ValueError, TypeError) as err:
        raise ValueError(
            f"{what} {value!r} is not a date and time: use an ISO 8601 string such as "
            "'2020-01-01T00:00' or a datetime"
        ) from err
    if pd.isna(stamp):
        raise ValueError(f"{what} is NaT: give a date and time such as '2020-01-01T00:00'")
    if stamp.tzinfo is not None:
        # Scheduled runs get tz-aware times; labels are naive UTC by CF convention.
        stamp = stamp.tz_convert("UTC").tz_localize(None)
    return stamp


def _to_cftime(value: WindowBound, calendar: str, what: str) -> cftime.datetime:
    """A cftime datetime in ``calendar``; strings are parsed in that calendar (2020-02-30
    exists in 360_day)."""
    if isinstance(value, cftime.datetime) and value.calendar == calendar:
        return value
    if isinstance(value, str):
        try:
            return xr.date_range(
                start=value.strip(), periods=1, freq="D", calendar=calendar, use_cftime=True
            )[0]
        except (ValueError, TypeError):
            pass  # fall through to pandas' more lenient parser
    stamp = _to_timestamp(value, what)
    try:
        return cftime.datetime(
            stamp.year,
            stamp.month,
            stamp.day,
            stamp.hour,
            stamp.minute,
            stamp.second,
            stamp.microsecond,
            calendar=calendar,
        )
    except ValueError as err:
        raise ValueError(
            f"{what} {value!r} does not exist in the {calendar} calendar: choose a date that does"
        ) from err


def _select_window(
    ds: xr.Dataset,
    dim: str | None,
    start: WindowBound | None,
    end: WindowBound | None,
    what: str,
) -> xr.Dataset:
    """The labels of ``ds`` along ``dim`` in [start, end), as a contiguous slice if possible.

    Windows are half-open so that consecutive windows of a backfill never share a label.
    """
    if (start is None and end is None) or dim is None or dim not in ds.indexes:
        return ds
    index = ds.indexes[dim]
    mask = np.ones(len(index), dtype=bool)
    for bound, keep_at_or_after in ((start, True), (end, False)):
        if bound is None:
            continue
        label: object
        if isinstance(index, pd.DatetimeIndex):
            label = _to_timestamp(bound, f"the window {'start' if keep_at_or_after else 'end'}")
        elif isinstance(index, xr.CFTimeIndex):
            label = _to_cftime(
                bound,
                str(index.calendar),
                f"the window {'start' if keep_at_or_after else 'end'}",
            )
        else:
            raise ValueError(
                f"{what}: cannot select the window along {dim!r}, whose labels are "
                f"{index.dtype}, not dates: set window_dim to the time dimension, or to null"
            )
        mask &= np.asarray(index >= label) if keep_at_or_after else np.asarray(index < label)
    positions = np.flatnonzero(mask)
    if positions.size == 0:
        return ds.isel({dim: slice(0, 0)})
    first, last = int(positions[0]), int(positions[-1])
    if last - first + 1 == positions.size:
        # A slice keeps dask chunks intact; fancy indexing would rechunk.
        return ds.isel({dim: slice(first, last + 1)})
    return ds.isel({dim: positions})


def _check_no_credentials(field: str, options: Mapping[str, object]) -> None:
    secrets = sorted(k for k in options if is_credential_key(k))
    if secrets:
        raise ValueError(credential_option_error(field, secrets))


def _shown_options(options: Mapping[str, object]) -> str:
    shown = [
        f"{k}={safe_url(str(v))}"
        for k, v in sorted(options.items())
        if k in SAFE_STORAGE_OPTION_KEYS
    ]
    return f" ({', '.join(shown)})" if shown else ""


def _is_remote(path: str) -> bool:
    return "://" in path and not path.startswith("file://")


def fsspec_options(url: str, options: Mapping[str, str | int | bool]) -> dict[str, Any]:
    """fsspec keyword arguments for ``url`` from a source's flat, non-secret options.

    For s3:// URLs, the names a Target uses (``region``, ``force_path_style``, ``anonymous``,
    ``allow_http``) are translated into s3fs's (``client_kwargs.region_name``,
    ``config_kwargs.s3.addressing_style``, ``anon``; the endpoint's scheme decides http), so
    a source and a target on the same object store are configured alike. Other keys pass
    through. Credentials never come from here: s3fs reads the environment (botocore's chain).
    """
    result: dict[str, Any] = {}
    protocol = url.split("://", 1)[0].lower() if "://" in url else "file"
    if protocol not in ("s3", "s3a"):
        return dict(options)
    for raw_key, value in options.items():
        key = {"path-style": "force_path_style", "path_style": "force_path_style"}.get(
            raw_key, raw_key
        )
        if key in ("region", "region_name"):
            result.setdefault("client_kwargs", {})["region_name"] = str(value)
        elif key == "force_path_style":
            if _truthy(value):
                result.setdefault("config_kwargs", {})["s3"] = {"addressing_style": "path"}
        elif key in ("anonymous", "anon"):
            result["anon"] = _truthy(value)
        elif key == "allow_http":
            continue
        else:
            result[key] = value
    return result


def _truthy(value: str | int | bool) -> bool:
    return value if isinstance(value, bool) else str(value).strip().lower() in {"1", "true", "yes"}


class _SourceBase(BaseModel):
    # Unknown keys are typos in a deployment or UI form: refuse them rather than ignore.
    # Inputs stay out of error messages, which Prefect logs and stores with failed runs.
    # Every kind has describe() (one line for logs and commit metadata, never a secret)
    # and open(start, end) (the data, lazily, for the half-open window [start, end)).
    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)


# --------------------------------------------------------------------------------- files

_PLACEHOLDERS = frozenset({"start", "end"})


def _placeholders(pattern: str) -> set[str]:
    try:
        return {name for _, name, _, _ in string.Formatter().parse(pattern) if name is not None}
    except ValueError as err:
        raise ValueError(
            f"FilesSource.paths {pattern!r} has unbalanced braces ({err}): use {{start:%Y%m%d}} "
            "style placeholders, and {{ }} for literal braces"
        ) from err


@lru_cache(maxsize=1)
def _close_h5py_files_at_exit() -> None:
    """Close every HDF5 file before the interpreter finalizes (registered once).

    h5py reads remote files through a Python file object (fsspec's). A file still open when
    the process exits (e.g. referenced from a daemon thread, as in a flow process) is closed
    by HDF5's own C exit handler, which then calls back into the finalized interpreter and
    crashes the process with SIGSEGV (h5py 3.16, HDF5 1.14). Python's atexit runs earlier,
    while that call is still safe.
    """
    import atexit

    def close() -> None:
        h5py = sys.modules.get("h5py")
        if h5py is None:
            return
        for file_id in h5py.h5f.get_obj_ids(types=h5py.h5f.OBJ_FILE):
            # exiting anyway: never turn a clean exit into an error
            with contextlib.suppress(Exception):
                h5py.File(file_id).close()

    atexit.register(close)


class FilesSource(_SourceBase):
    """Files xarray can open (netCDF, HDF5, GRIB with cfgrib ...), combined with
    ``xr.open_mfdataset``."""

    model_config = ConfigDict(title="Files")

    kind: Literal["files"] = Field(default="files", description="Files opened with xarray.")
    paths: list[str] = Field(
        min_length=1,
        description=(
            "Paths or glob patterns of the files (local, or URLs xarray opens as given). "
            "May hold {start:%Y%m%d} / {end:%Y%m%d} placeholders, filled with each run's window."
        ),
        examples=[["data/*.nc"], ["data/era5_{start:%Y%m%d}.nc"]],
    )
    engine: str | None = Field(
        default=None,
        description="xarray backend engine (h5netcdf, netcdf4, cfgrib ...); null lets xarray pick.",
    )
    chunks: dict[str, int] | None = Field(
        default=None,
        description="Dask chunk length per dimension; null makes one chunk per file.",
    )
    concat_dim: str | None = Field(
        default=None,
        description=(
            "Dimension to concatenate the files along, in the order listed (nested combine); "
            "null combines them by their coordinates."
        ),
    )
    storage_options: dict[str, str | int | bool] = Field(
        default_factory=dict,
        description=(
            "Non-secret fsspec options for remote paths (s3://...): endpoint_url, region, "
            "force_path_style, anonymous ... Credentials come from the environment, never "
            "from here."
        ),
        examples=[{"endpoint_url": "http://localhost:9000", "force_path_style": True}],
    )
    window_dim: str | None = Field(default="time", description=_WINDOW_DIM_DESCRIPTION)

    @field_validator("storage_options")
    @classmethod
    def _check_storage_options(
        cls, value: dict[str, str | int | bool]
    ) -> dict[str, str | int | bool]:
        _check_no_credentials("FilesSource.storage_options", value)
        return value

    @field_validator("paths", mode="before")
    @classmethod
    def _one_path_is_a_list(cls, value: object) -> object:
        # The UI and CLI naturally give a single pattern as a string.
        return [value] if isinstance(value, str) else value

    @field_validator("paths")
    @classmethod
    def _check_paths(cls, value: list[str]) -> list[str]:
        for pattern in value:
            if not pattern.strip():
                raise ValueError("FilesSource.paths holds an empty path: remove it")
            unknown = _placeholders(pattern) - _PLACEHOLDERS
            if unknown:
                raise ValueError(
                    f"FilesSource.paths {pattern!r} has placeholders {sorted(unknown)}: only "
                    "{start:...} and {end:...} are filled (e.g. {start:%Y%m%d})"
                )
        return value

    def resolve_paths(
        self, start: WindowBound | None = None, end: WindowBound | None = None
    ) -> list[str]:
        """The files to open for the window: placeholders filled, globs expanded (sorted).

        Raises FileNotFoundError naming every pattern that matched nothing.
        """
        values: dict[str, pd.Timestamp] = {}
        if start is not None:
            values["start"] = _to_timestamp(start, "the window start")
        if end is not None:
            values["end"] = _to_timestamp(end, "the window end")
        files: list[str] = []
        missing: list[str] = []
        for template in self.paths:
            needed = _placeholders(template)
            absent = [name for name in ("start", "end") if name in needed and name not in values]
            if absent:
                listed = " and ".join(absent)
                raise ValueError(
                    f"FilesSource.paths {template!r} needs the window {listed}, but open() got "
                    f"no {listed}: run it as a scheduled or backfill run, pass "
                    f"{'/'.join(absent)} to open(), or remove the placeholder"
                )
            pattern = template.format(**values) if needed else template
            if _is_remote(pattern):
                if not glob.has_magic(pattern):
                    files.append(pattern)  # opened as given; a missing object fails there
                    continue
                matches = self._remote_glob(pattern)
                if not matches:
                    missing.append(
                        pattern if pattern == template else f"{pattern} (from {template})"
                    )
                files.extend(matches)
                continue
            local = os.path.expanduser(pattern.removeprefix("file://"))
            if glob.has_magic(local):
                matches = sorted(glob.glob(local, recursive=True))
            else:
                matches = [local] if os.path.exists(local) else []
            if not matches:
                missing.append(pattern if pattern == template else f"{pattern} (from {template})")
            files.extend(matches)
        if missing:
            raise SourceNotFoundError(
                f"no file matches FilesSource.paths {', '.join(repr(m) for m in missing)} (working "
                f"directory {os.getcwd()}): fix the paths or glob patterns, or the run's window "
                "for {start}/{end} placeholders"
            )
        return list(dict.fromkeys(files))  # a file matched by two patterns is opened once

    def _remote_glob(self, pattern: str) -> list[str]:
        """The objects matching a remote glob, as URLs (fsspec, e.g. s3fs for s3://)."""
        import fsspec

        fs, path = fsspec.core.url_to_fs(pattern, **fsspec_options(pattern, self.storage_options))
        return sorted(fs.unstrip_protocol(match) for match in fs.glob(path))

    def open(self, start: WindowBound | None = None, end: WindowBound | None = None) -> xr.Dataset:
        """Open the files lazily (dask) as one Dataset, cut to [start, end) along window_dim.

        Remote files (s3:// ...) are read through fsspec by the h5netcdf engine (netCDF4 and
        HDF5 files), the one netCDF engine that reads from a file object.
        """
        files = self.resolve_paths(start, end)
        engine = self.engine
        remote: dict[str, Any] = {}
        if any(_is_remote(f) for f in files):
            if engine not in (None, "h5netcdf"):
                raise ValueError(
                    f"FilesSource.engine {engine!r} cannot read remote files such as "
                    f"{safe_url(next(f for f in files if _is_remote(f)))!r}: use engine "
                    "'h5netcdf' (netCDF4/HDF5 files) or null"
                )
            engine = "h5netcdf"
            remote["storage_options"] = fsspec_options(files[0], self.storage_options)
            _close_h5py_files_at_exit()
        # Explicit combine options: xarray's defaults are changing (FutureWarnings), and
        # these never load data to compare it: variables without the concatenated dimension
        # are taken from the first file, and coordinates must match exactly.
        ds = xr.open_mfdataset(
            files,
            engine=engine,
            chunks=self.chunks if self.chunks is not None else {},
            combine="nested" if self.concat_dim else "by_coords",
            concat_dim=self.concat_dim,
            data_vars="minimal",
            coords="minimal",
            compat="override",
            join="exact",
            combine_attrs="override",
            **remote,
        )
        return _select_window(ds, self.window_dim, start, end, self.describe())

    def describe(self) -> str:
        engine = f" (engine {self.engine})" if self.engine else ""
        options = _shown_options(self.storage_options)
        return f"files {', '.join(safe_url(p) for p in self.paths)}{engine}{options}"


# ---------------------------------------------------------------------------------- zarr


class ZarrSource(_SourceBase):
    """A Zarr store (v2 or v3), local or behind an fsspec URL."""

    model_config = ConfigDict(title="Zarr")

    kind: Literal["zarr"] = Field(default="zarr", description="A Zarr store.")
    url: str = Field(
        description="Path or fsspec URL of the Zarr store (e.g. s3://bucket/data.zarr).",
        examples=["data/weather.zarr"],
    )
    group: str | None = Field(default=None, description="Group inside the store; null for root.")
    chunks: dict[str, int] | None = Field(
        default=None,
        description="Dask chunk length per dimension; null follows the store's chunks.",
    )
    storage_options: dict[str, str | int | bool] = Field(
        default_factory=dict,
        description=(
            "Non-secret fsspec options (endpoint_url, anon, region ...). Credentials come from "
            "the environment, never from here."
        ),
    )
    window_dim: str | None = Field(default="time", description=_WINDOW_DIM_DESCRIPTION)

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("ZarrSource.url is empty: set the path or URL of the Zarr store")
        if "://" in value and "@" in value.split("://", 1)[1].split("/", 1)[0]:
            raise ValueError(
                f"ZarrSource.url {safe_url(value)!r} carries user information before '@': "
                "remove it and provide credentials through the environment"
            )
        return value.strip()

    @field_validator("storage_options")
    @classmethod
    def _check_storage_options(
        cls, value: dict[str, str | int | bool]
    ) -> dict[str, str | int | bool]:
        _check_no_credentials("ZarrSource.storage_options", value)
        return value

    def open(self, start: WindowBound | None = None, end: WindowBound | None = None) -> xr.Dataset:
        """Open the store lazily, cut to [start, end) along window_dim."""
        try:
            ds = xr.open_zarr(
                self.url,
                group=self.group,
                chunks=self.chunks if self.chunks is not None else {},
                consolidated=None,
                storage_options=fsspec_options(self.url, self.storage_options) or None,
            )
        except (FileNotFoundError, KeyError) as err:  # zarr raises KeyError for a missing group
            where = f"group {self.group!r} of " if self.group else ""
            raise SourceNotFoundError(
                f"cannot open {where}the Zarr store {safe_url(self.url)!r}: {err}; fix "
                "ZarrSource.url" + (" or ZarrSource.group" if self.group else "")
            ) from err
        return _select_window(ds, self.window_dim, start, end, self.describe())

    def describe(self) -> str:
        group = f" group {self.group}" if self.group else ""
        return f"zarr {safe_url(self.url)}{group}{_shown_options(self.storage_options)}"


# ------------------------------------------------------------------------------ icechunk


class IcechunkSource(_SourceBase):
    """Another Icechunk repository (or another branch or snapshot of the same one)."""

    model_config = ConfigDict(title="Icechunk")

    kind: Literal["icechunk"] = Field(
        default="icechunk", description="An Icechunk repository read at a branch or snapshot."
    )
    target: Target = Field(description="The repository and branch to read.")
    group: str | None = Field(default=None, description="Group to read; null for the root.")
    snapshot_id: str | None = Field(
        default=None,
        description="Snapshot to read instead of the branch tip; null reads the branch tip.",
    )
    window_dim: str | None = Field(default="time", description=_WINDOW_DIM_DESCRIPTION)

    def open(
        self,
        start: WindowBound | None = None,
        end: WindowBound | None = None,
        *,
        credentials: Mapping[str, str] | None = None,
    ) -> xr.Dataset:
        """Open a read-only session lazily, cut to [start, end) along window_dim.

        ``credentials`` are the contents of ``target.credentials_secret_block`` when the
        caller resolved it. The read-only session pickles, so dask workers can read from it.
        """
        import icechunk  # deferred: only this kind needs it at open time

        repo = self.target.open_repository(credentials=credentials)
        where = self.target.describe()
        try:
            if self.snapshot_id:
                session = repo.readonly_session(snapshot_id=self.snapshot_id)
            else:
                session = repo.readonly_session(branch=self.target.branch)
        except icechunk.RefNotFoundError as err:
            branches = sorted(repo.list_branches())
            raise TargetNotFoundError(
                f"the branch {self.target.branch!r} does not exist in {where}: set "
                f"IcechunkSource.target.branch to one of {branches}"
            ) from err
        except (icechunk.SnapshotNotFoundError, icechunk.InvalidInputError) as err:
            raise TargetNotFoundError(
                f"the snapshot {self.snapshot_id!r} does not exist in {where}: set "
                "IcechunkSource.snapshot_id to an existing snapshot id (see `icefloe log`), or "
                "to null for the branch tip"
            ) from err
        try:
            ds = xr.open_zarr(session.store, group=self.group, consolidated=False, chunks={})
        except (FileNotFoundError, KeyError) as err:
            raise SourceNotFoundError(
                f"the group {self.group!r} does not exist in {where}: set IcechunkSource.group "
                "to an existing group (null for the root)"
            ) from err
        return _select_window(ds, self.window_dim, start, end, self.describe())

    def describe(self) -> str:
        group = f" group {self.group}" if self.group else ""
        snapshot = f" snapshot {self.snapshot_id}" if self.snapshot_id else ""
        return f"icechunk {self.target.describe()}{group}{snapshot}"


# -------------------------------------------------------------------------------- python

_FUNCTION_SPEC = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")


class PythonSource(_SourceBase):
    """A function that builds the Dataset, named as ``package.module:function``."""

    model_config = ConfigDict(title="Python function")

    kind: Literal["python"] = Field(
        default="python", description="A Python function returning an xarray.Dataset."
    )
    function: str = Field(
        description=(
            "The function as 'package.module:function'. It must be importable where the flow "
            "runs and return an xarray.Dataset; windowed runs also pass start= and end=."
        ),
        examples=["mypackage.sources:load_forecast"],
    )
    kwargs: dict[str, Any] = Field(
        default_factory=dict,
        description="JSON-serialisable keyword arguments for the function.",
    )

    @field_validator("function")
    @classmethod
    def _check_function(cls, value: str) -> str:
        value = value.strip()
        if not _FUNCTION_SPEC.match(value):
            raise ValueError(
                f"PythonSource.function {value!r} is not of the form 'package.module:function': "
                "write the importable module, a colon, then the function name"
            )
        return value

    @field_validator("kwargs")
    @classmethod
    def _check_kwargs(cls, value: dict[str, Any]) -> dict[str, Any]:
        # Parameters are stored as JSON by Prefect; a value that does not serialise would
        # break deployments and the UI much later and further away.
        for key, item in value.items():
            try:
                json.dumps(item, allow_nan=False)
            except (TypeError, ValueError) as err:
                raise ValueError(
                    f"PythonSource.kwargs[{key!r}] is not JSON-serialisable ({type(item).__name__}"
                    "): pass plain numbers, strings, booleans, lists and objects, and build "
                    "richer values inside the function"
                ) from err
        return value

    def load(self) -> Callable[..., object]:
        """Import the function. ImportError/AttributeError name the function string and fix."""
        module_name, _, attr_path = self.function.partition(":")
        try:
            obj: object = importlib.import_module(module_name)
        except ModuleNotFoundError as err:
            if err.name and (module_name == err.name or module_name.startswith(err.name + ".")):
                raise ImportError(
                    f"PythonSource.function {self.function!r}: there is no module "
                    f"{module_name!r} ({err}): fix the module path before ':', or install the "
                    "package that provides it where the flow (and its workers) run"
                ) from err
            raise ImportError(
                f"PythonSource.function {self.function!r}: importing {module_name!r} needs the "
                f"missing module {err.name!r}: install it where the flow (and its workers) run"
            ) from err
        except ImportError as err:
            raise ImportError(
                f"PythonSource.function {self.function!r}: importing {module_name!r} failed "
                f"({err}): fix that module or its dependencies"
            ) from err
        for part in attr_path.split("."):
            try:
                obj = getattr(obj, part)
            except AttributeError as err:
                raise AttributeError(
                    f"PythonSource.function {self.function!r}: {module_name!r} has no attribute "
                    f"{attr_path!r} (missing {part!r}): fix the name after ':'"
                ) from err
        if not callable(obj):
            raise TypeError(
                f"PythonSource.function {self.function!r} names a {type(obj).__name__}, not a "
                "function: point it at a callable"
            )
        return obj

    def open(self, start: WindowBound | None = None, end: WindowBound | None = None) -> xr.Dataset:
        """Call the function with kwargs, plus start=/end= when given (as given)."""
        function = self.load()
        kwargs = dict(self.kwargs)
        for name, value in (("start", start), ("end", end)):
            if value is None:
                continue
            if name in kwargs:
                raise ValueError(
                    f"PythonSource.kwargs sets {name!r} but the run passes a window {name}: "
                    f"remove {name!r} from kwargs for scheduled and backfill runs"
                )
            kwargs[name] = value
        result = function(**kwargs)
        if not isinstance(result, xr.Dataset):
            raise TypeError(
                f"PythonSource.function {self.function!r} returned a {type(result).__name__}, "
                "not an xarray.Dataset: make it return a Dataset (a DataArray converts with "
                ".to_dataset(name=...))"
            )
        return result

    def describe(self) -> str:
        # Keys only: values may be anything, including things that must not be logged.
        keys = f" (kwargs: {', '.join(sorted(self.kwargs))})" if self.kwargs else ""
        return f"python {self.function}{keys}"


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


class SyntheticSource(_SourceBase):
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
            return _to_cftime(value, self.calendar, what)
        return _to_timestamp(value, what)

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

    def open(self, start: WindowBound | None = None, end: WindowBound | None = None) -> xr.Dataset:
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


# ---------------------------------------------------------------------------- the union

type SourceModel = FilesSource | ZarrSource | IcechunkSource | PythonSource | SyntheticSource

Source = Annotated[
    FilesSource | ZarrSource | IcechunkSource | PythonSource | SyntheticSource,
    Field(discriminator="kind"),
]
"""Any source, told apart by ``kind``; what flows take as their ``source`` parameter."""

SourceAdapter: TypeAdapter[Source] = TypeAdapter(Source)
"""Validates and serialises a Source: ``SourceAdapter.validate_python(dict)``,
``validate_json(str)``, ``dump_json(source)``, ``json_schema()``."""

SOURCE_EXAMPLE = '{"kind": "synthetic", "periods": 48}'
"""A valid source spec, shown in errors about a malformed one."""

_SOURCE_CLASSES = (FilesSource, ZarrSource, IcechunkSource, PythonSource, SyntheticSource)


def parse_source(
    value: str | Mapping[str, Any] | SourceModel, *, name: str = "the source"
) -> Source:
    """A Source from a model, a dict, a JSON object string, or a plain path or glob (files).

    Raises RequestError (a ValueError) in the user's terms, naming the option (``name``,
    e.g. ``--source``), the key at fault and a valid example.
    """
    if isinstance(value, _SOURCE_CLASSES):
        return value
    if isinstance(value, str):
        text = value.strip()
        if not text:
            raise RequestError(
                f"{name} is empty: give a path or glob of files, or a JSON source spec such "
                f"as {SOURCE_EXAMPLE}"
            )
        if not text.startswith(("{", "[")):
            return FilesSource(paths=[text])
        value = loads_json(name, text, SOURCE_EXAMPLE)
    if isinstance(value, Mapping):
        return validate(name, SourceAdapter, dict(value), SOURCE_EXAMPLE)
    raise TypeError(
        f"cannot make a source from a {type(value).__name__}: pass a Source model, a dict, a "
        "JSON string or a path"
    )
