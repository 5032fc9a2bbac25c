"""``files``: netCDF, HDF5, GRIB and other files xarray opens, local or remote, by path or glob."""

import contextlib
import glob
import os
import string
import sys
from functools import lru_cache
from typing import Any, Literal

import pandas as pd
import xarray as xr
from pydantic import (
    ConfigDict,
    Field,
    field_validator,
)

from flows.sources.base import (
    SourceBase,
    check_no_credentials,
    fsspec_options,
    is_remote,
    shown_options,
)
from flows.sources.window import WindowBound, select_window, to_timestamp
from flows.targets import (
    safe_url,
)
from tasks.errors import SourceNotFoundError

_PLACEHOLDERS = frozenset({"start", "end"})
# strftime codes by the period of time one value of theirs names, finest first: a template
# is filled once per period of its finest code inside the window
_PERIOD_OF_CODE = (
    (("%S", "%s"), "s"),
    (("%M",), "min"),
    (("%H", "%I", "%p"), "h"),
    (("%d", "%j", "%a", "%A", "%u", "%w", "%e"), "D"),
    (("%U", "%W", "%V"), "W"),
    (("%m", "%b", "%B", "%h"), "M"),
    (("%Y", "%y", "%G"), "Y"),
)
MAX_PERIODS = 100_000


def _period_of(template: str) -> str | None:
    """The pandas period frequency of the finest date code in the template's placeholders,
    or None when they carry no date code (``{start}`` alone)."""
    specs = [spec or "" for _, name, spec, _ in string.Formatter().parse(template) if name]
    for codes, period in _PERIOD_OF_CODE:
        if any(code in spec for code in codes for spec in specs):
            return period
    return None


def _fillings(template: str, values: dict[str, pd.Timestamp]) -> list[dict[str, pd.Timestamp]]:
    """The placeholder values to fill ``template`` with: one per period of its finest date
    code that meets the window [start, end) (a daily file per day the window spans), or the
    window itself when the template names no period or the window is open-ended."""
    period = _period_of(template)
    if period is None or "start" not in values or "end" not in values:
        return [values]
    first = pd.Period(values["start"], freq=period)
    last = pd.Period(values["end"] - pd.Timedelta(1, "ns"), freq=period)
    if last < first:
        return [values]
    count = (last - first).n + 1
    if count > MAX_PERIODS:
        raise ValueError(
            f"FilesSource.paths {template!r} names one file per {period} period: the window "
            f"{values['start']} … {values['end']} spans {count} of them (at most {MAX_PERIODS}):"
            " run a shorter window (a later start, or a backfill in windows)"
        )
    periods = pd.period_range(first, last, freq=period)
    return [{"start": p.start_time, "end": (p + 1).start_time} for p in periods]


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


class FilesSource(SourceBase):
    """Files xarray can open (netCDF, HDF5, GRIB with cfgrib ...), combined with
    ``xr.open_mfdataset``."""

    model_config = ConfigDict(title="Files")

    kind: Literal["files"] = Field(default="files", description="Files opened with xarray.")
    paths: list[str] = Field(
        min_length=1,
        description=(
            "Paths or glob patterns of the files (local, or URLs xarray opens as given). "
            "May hold {start:%Y%m%d} / {end:%Y%m%d} placeholders: one file per day (per hour "
            "with %H, …) of each run's window."
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

    @field_validator("storage_options")
    @classmethod
    def _check_storage_options(
        cls, value: dict[str, str | int | bool]
    ) -> dict[str, str | int | bool]:
        check_no_credentials("FilesSource.storage_options", value)
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

    @property
    def needs_window_start(self) -> bool:
        return any("start" in _placeholders(pattern) for pattern in self.paths)

    def resolve_paths(
        self, start: WindowBound | None = None, end: WindowBound | None = None
    ) -> list[str]:
        """The files to open for the window: placeholders filled, globs expanded (sorted).

        A placeholder with a date format is filled once per period of its finest code that
        the window meets (``obs_{start:%Y%m%d}.nc``: each day's file from the window's start
        to its end); a period whose file is absent is left out.

        Raises FileNotFoundError naming every pattern that matched nothing.
        """
        values: dict[str, pd.Timestamp] = {}
        if start is not None:
            values["start"] = to_timestamp(start, "the window start")
        if end is not None:
            values["end"] = to_timestamp(end, "the window end")
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
            patterns = (
                list(dict.fromkeys(template.format(**v) for v in _fillings(template, values)))
                if needed
                else [template]
            )
            # a period without its file is data not there (yet): the run's late-data policy
            # and the plan's gap guard decide; only a template that matched nothing is an error
            check = len(patterns) > 1
            matches = [m for pattern in patterns for m in self._matches(pattern, check=check)]
            if not matches:
                shown = patterns[0] if len(patterns) == 1 else f"{patterns[0]} … {patterns[-1]}"
                missing.append(shown if shown == template else f"{shown} (from {template})")
            files.extend(matches)
        if missing:
            raise SourceNotFoundError(
                f"no file matches FilesSource.paths {', '.join(repr(m) for m in missing)} (working "
                f"directory {os.getcwd()}): fix the paths or glob patterns, or the run's window "
                "for {start}/{end} placeholders"
            )
        return list(dict.fromkeys(files))  # a file matched by two patterns is opened once

    def _matches(self, pattern: str, *, check: bool = False) -> list[str]:
        """The files one filled pattern names: a glob expanded (sorted), a path if it exists.

        A remote path is taken as given (a missing object fails when opened, naming it)
        unless ``check``: one of many periods' files may be absent, and is then left out.
        """
        if is_remote(pattern):
            if glob.has_magic(pattern):
                return self._remote_glob(pattern)
            if check:
                import fsspec

                options = fsspec_options(pattern, self.storage_options)
                fs, path = fsspec.core.url_to_fs(pattern, **options)
                return [pattern] if fs.exists(path) else []
            return [pattern]
        local = os.path.expanduser(pattern.removeprefix("file://"))
        if glob.has_magic(local):
            return sorted(glob.glob(local, recursive=True))
        return [local] if os.path.exists(local) else []

    def _remote_glob(self, pattern: str) -> list[str]:
        """The objects matching a remote glob, as URLs (fsspec, e.g. s3fs for s3://)."""
        import fsspec

        fs, path = fsspec.core.url_to_fs(pattern, **fsspec_options(pattern, self.storage_options))
        return sorted(fs.unstrip_protocol(match) for match in fs.glob(path))

    def open(
        self,
        start: WindowBound | None = None,
        end: WindowBound | None = None,
        *,
        append_dim: str = "time",
    ) -> xr.Dataset:
        """Open the files lazily (dask) as one Dataset, cut to [start, end) along ``append_dim``.

        Remote files (s3:// ...) are read through fsspec by the h5netcdf engine (netCDF4 and
        HDF5 files), the one netCDF engine that reads from a file object.
        """
        files = self.resolve_paths(start, end)
        engine = self.engine
        remote: dict[str, Any] = {}
        if any(is_remote(f) for f in files):
            if engine not in (None, "h5netcdf"):
                raise ValueError(
                    f"FilesSource.engine {engine!r} cannot read remote files such as "
                    f"{safe_url(next(f for f in files if is_remote(f)))!r}: use engine "
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
        return select_window(ds, append_dim, start, end, self.describe())

    def describe(self) -> str:
        engine = f" (engine {self.engine})" if self.engine else ""
        options = shown_options(self.storage_options)
        return f"files {', '.join(safe_url(p) for p in self.paths)}{engine}{options}"
