"""Model-based test of the writer: random sequences of writes against an in-memory model.

A hypothesis state machine applies create / overwrite ("w") / append (on_overlap
error|skip|overwrite) / region / modify operations on small CF-like datasets both to
an icechunk repository (through the phased writer, ``tests.tasks.helpers.write``) and
to an xarray model: the dataset the contract's semantics table says the group holds.
After every step the committed group read back is identical to the model
(``xr.testing.assert_identical``: values, dims, coordinates, group and variable
attributes; encoding is not compared, which is the point — the store's encoding is its
own business as long as the decoded values are right). Operations the model refuses
must raise PlanError and leave the branch tip where it was.

Datasets: a daily ``time`` axis (labels are whole days counted from 2000-01-01, so the
model can reason with integers), a tiny ``y``/``x`` grid, float32, float64 (with NaN)
and integer variables, a scalar int ``crs`` (grid mapping), and variables without the
time dimension added by modify. Values depend on label, grid point, variable and a
version number that changes with every operation, so a rewrite is always visible.

Runs on the threaded scheduler. The default profile is derandomized (CI sees the same
examples every run); ``ICEFLOE_HYPOTHESIS_PROFILE=explore`` draws new ones.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import zlib
from typing import Any, Literal

import dask
import icechunk
import numpy as np
import pandas as pd
import pytest
import xarray as xr
import zarr
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
    run_state_machine_as_test,
)

from tasks.errors import PlanError
from tests.conftest import read_back, tip
from tests.tasks.helpers import write

GROUP = "g"
EPOCH = np.datetime64("2000-01-01", "ns")
DAY = np.timedelta64(1, "D")
TIME_ENCODING = {"units": "days since 2000-01-01", "dtype": "int64"}

# name -> (dims, dtype, attrs): the variables a created group may hold
BASE_SCHEMA: dict[str, tuple[tuple[str, ...], str, dict[str, Any]]] = {
    "tas": (
        ("time", "y", "x"),
        "float32",
        {"standard_name": "air_temperature", "units": "K", "grid_mapping": "crs"},
    ),
    "pr": (("time", "y", "x"), "float64", {"standard_name": "precipitation_flux"}),
    "count": (("time", "y", "x"), "int32", {"long_name": "number of samples"}),
    "crs": ((), "int32", {"grid_mapping_name": "latitude_longitude"}),
}
# variables that modify may add
EXTRA_SCHEMA: dict[str, tuple[tuple[str, ...], str, dict[str, Any]]] = {
    "wind": (("time", "y", "x"), "float64", {"units": "m s-1"}),
    "mask": (("y", "x"), "int64", {"long_name": "land mask"}),
}
# what modify's "retype" turns each dtype into
RETYPE = {"float32": "float64", "float64": "float32", "int32": "float64", "int64": "int32"}

Schema = dict[str, tuple[tuple[str, ...], str, dict[str, Any]]]
Grid = tuple[int, int]

PROFILES = {
    "ci": settings(
        max_examples=25,
        stateful_step_count=6,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        print_blob=True,
    ),
    "explore": settings(
        max_examples=200,
        stateful_step_count=10,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        print_blob=True,
    ),
}
PROFILE = PROFILES[os.environ.get("ICEFLOE_HYPOTHESIS_PROFILE", "ci")]


# -- datasets ---------------------------------------------------------------------------------


def _salt(name: str) -> int:
    return zlib.crc32(name.encode()) % 97


def _values(
    name: str, dims: tuple[str, ...], dtype: str, labels: list[int], grid: Grid, version: int
) -> np.ndarray:
    """Deterministic values: a function of label, grid point, variable and version."""
    sizes = {"time": len(labels), "y": grid[0], "x": grid[1]}
    axes = {
        "time": np.asarray(labels, dtype="int64"),
        "y": np.arange(grid[0]),
        "x": np.arange(grid[1]),
    }
    shape = tuple(sizes[d] for d in dims)
    base = np.full(shape, version * 1000 + _salt(name), dtype="int64")
    for axis, dim in enumerate(dims):
        index = [None] * len(dims)
        index[axis] = slice(None)
        base = base + axes[dim][tuple(index)] * {"time": 100, "y": 10, "x": 1}[dim]
    if np.dtype(dtype).kind == "f":
        values = (base * 0.25).astype(dtype)
        return np.where(base % 7 == 0, np.nan, values).astype(dtype)
    return base.astype(dtype)


def _coords(labels: list[int], grid: Grid) -> dict[str, Any]:
    time = EPOCH + np.asarray(labels, dtype="int64") * DAY
    return {
        "time": ("time", time, {"standard_name": "time", "axis": "T"}),
        "y": ("y", 10.0 * np.arange(grid[0]) + 0.5, {"units": "km", "axis": "Y"}),
        "x": ("x", np.arange(grid[1], dtype="float64"), {"units": "km", "axis": "X"}),
    }


def make_dataset(
    schema: Schema,
    labels: list[int],
    grid: Grid,
    version: int,
    attrs: dict[str, Any] | None = None,
    time_chunk: int | None = None,
) -> xr.Dataset:
    """A dataset with ``schema``'s variables at ``labels``; dask-backed if ``time_chunk``."""
    ds = xr.Dataset(
        {
            name: (dims, _values(name, dims, dtype, labels, grid, version), dict(var_attrs))
            for name, (dims, dtype, var_attrs) in schema.items()
        },
        coords=_coords(labels, grid),
        attrs=dict(attrs or {}),
    )
    # Explicit units: see test_create_with_an_unencoded_datetime_coordinate below.
    ds["time"].encoding.update(TIME_ENCODING)
    if time_chunk is not None:
        ds = ds.chunk({"time": time_chunk})
    return ds


def schema_of(ds: xr.Dataset) -> Schema:
    return {
        str(name): (tuple(map(str, v.dims)), str(v.dtype), dict(v.attrs))
        for name, v in ds.data_vars.items()
    }


def labels_of(ds: xr.Dataset) -> list[int]:
    return [int(k) for k in (ds.indexes["time"].values - EPOCH) // DAY]


def grid_of(ds: xr.Dataset) -> Grid:
    return ds.sizes["y"], ds.sizes["x"]


def _regular_step(labels: list[int]) -> int | None:
    steps = set(np.diff(labels).tolist())
    return steps.pop() if len(labels) >= 2 and len(steps) == 1 else None


def append_outcome(
    stored: list[int], new: list[int], on_overlap: str
) -> tuple[list[int], list[int]] | None:
    """The contract's append rows for labels: (labels rewritten, labels appended), or None
    when the append must be refused.

    Labels already stored: "error" refuses, "skip" drops them, "overwrite" rewrites them
    (they must be a run of stored labels that ends at the last one unless nothing new
    follows). New labels must come after the stored ones, without a gap in a regular
    axis. An axis of one stored label has no step of its own; the new labels' step (if
    there are several) then counts as the axis step.
    """
    positions = [stored.index(k) if k in stored else -1 for k in new]
    n_overlap = sum(p >= 0 for p in positions)
    overlap, fresh = new[:n_overlap], new[n_overlap:]
    if n_overlap:
        if any(p < 0 for p in positions[:n_overlap]) or np.any(np.diff(positions[:n_overlap]) != 1):
            return None  # interleaves with the stored labels
        if on_overlap == "error":
            return None
        if fresh and positions[n_overlap - 1] != len(stored) - 1:
            return None  # would insert in the middle of the axis
    if fresh:
        if fresh[0] <= stored[-1]:
            return None
        step = _regular_step(stored)
        if step is None and len(stored) == 1:
            step = _regular_step(fresh)
        if step is not None and (
            fresh[0] != stored[-1] + step or (len(fresh) > 1 and _regular_step(fresh) != step)
        ):
            return None  # a gap, or a different step
    return ([] if on_overlap == "skip" else overlap), fresh


# -- the state machine -------------------------------------------------------------------------

Refused = object()  # the model's verdict for a request that must raise PlanError

schemas = st.sets(st.sampled_from(sorted(BASE_SCHEMA)), min_size=1).filter(
    lambda names: any("time" in BASE_SCHEMA[n][0] for n in names)
)
grids = st.tuples(st.integers(1, 3), st.integers(1, 3))
time_chunks = st.none() | st.integers(1, 3)
creates = {
    "names": schemas,
    "grid": grids,
    "start": st.integers(0, 3),
    "length": st.integers(1, 4),
    "time_chunk": time_chunks,
    "zarr_time_chunk": st.none() | st.integers(1, 3),
}


class WriterModel(RuleBasedStateMachine):
    """The repository's group "g" against ``self.model`` (None: the group does not exist)."""

    def __init__(self) -> None:
        super().__init__()
        self.dir = tempfile.mkdtemp(prefix="icefloe-model-")
        self.repo = icechunk.Repository.create(icechunk.local_filesystem_storage(self.dir))
        self.model: xr.Dataset | None = None
        self.version = 0

    def teardown(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)

    # -- helpers --

    def next_version(self) -> int:
        self.version += 1
        return self.version

    def apply(
        self,
        op: str,
        ds: xr.Dataset,
        choose: Any,
        expected: xr.Dataset | object,
        no_op: bool = False,
    ) -> None:
        """Write ``ds``; the model becomes ``expected``, or stays as it is if it is Refused.

        ``no_op``: the contract says the write changes nothing, so no commit is made.
        """
        event(f"{op}: {'refused' if expected is Refused else 'no-op' if no_op else 'written'}")
        before = tip(self.repo)
        with dask.config.set(scheduler="threads"):
            if expected is Refused:
                with pytest.raises(PlanError):
                    write(self.repo, ds, choose)
                assert tip(self.repo) == before, "a refused write moved the branch"
                return
            plan = write(self.repo, ds, choose)
        assert isinstance(expected, xr.Dataset)
        if no_op:
            assert plan.changes_nothing, plan
            assert tip(self.repo) == before, "a write that changes nothing made a commit"
        self.model = expected

    # -- operations --

    @initialize(exists=st.sampled_from([True, True, True, False]), **creates)
    def start(self, exists: bool, **create: Any) -> None:
        """Most runs start from a created group, some from none at all."""
        if exists:
            self.create(mode="w-", **create)

    @rule(mode=st.sampled_from(["w-", "w"]), **creates)
    def create(
        self,
        names: set[str],
        grid: Grid,
        start: int,
        length: int,
        time_chunk: int | None,
        zarr_time_chunk: int | None,
        mode: Literal["w", "w-"],
    ) -> None:
        """for_create_or_overwrite: "w-" refused on an existing group, "w" replaces it."""
        version = self.next_version()
        schema = {n: BASE_SCHEMA[n] for n in sorted(names)}
        labels = list(range(start, start + length))
        ds = make_dataset(
            schema, labels, grid, version, {"title": f"created v{version}"}, time_chunk
        )
        encoding = (
            {n: {"chunks": (zarr_time_chunk, *grid)} for n, s in schema.items() if "time" in s[0]}
            if zarr_time_chunk
            else None
        )
        expected = Refused if mode == "w-" and self.model is not None else ds.load()
        self.apply(
            "create",
            ds,
            lambda w: w.for_create_or_overwrite(group=GROUP, mode=mode, encoding=encoding),
            expected,
        )

    @rule(
        offset=st.integers(-3, 1),
        length=st.integers(1, 4),
        on_overlap=st.sampled_from(["error", "skip", "overwrite"]),
        time_chunk=time_chunks,
        mutation=st.sampled_from([None] * 8 + ["new_var", "drop_var", "cast", "crs", "grid"]),
    )
    def append(
        self,
        offset: int,
        length: int,
        on_overlap: str,
        time_chunk: int | None,
        mutation: str | None,
    ) -> None:
        """for_append: labels ``offset`` after the last stored one (negative: overlapping)."""
        version = self.next_version()
        choose = lambda w: w.for_append(group=GROUP, append_dim="time", on_overlap=on_overlap)  # noqa: E731
        if self.model is None:  # appending to a missing group creates it
            labels = list(range(max(offset, 0), max(offset, 0) + length))
            ds = make_dataset(
                {n: BASE_SCHEMA[n] for n in ("tas", "count", "crs")},
                labels,
                (2, 2),
                version,
                {"title": "created by append"},
                time_chunk,
            )
            self.apply("append", ds, choose, ds.load())
            return
        model = self.model
        stored = labels_of(model)
        grid = grid_of(model)
        labels = list(range(stored[-1] + 1 + offset, stored[-1] + 1 + offset + length))
        time_vars = {n: s for n, s in schema_of(model).items() if "time" in s[0]}
        # variable attributes change too: an append keeps the stored ones
        schema = {n: (d, t, {**a, "comment": f"v{version}"}) for n, (d, t, a) in time_vars.items()}
        refused = False
        if mutation == "new_var":
            schema["extra"] = (("time", "y", "x"), "float32", {})
            refused = True
        elif mutation == "drop_var":
            del schema[sorted(schema)[0]]
            refused = True
        elif mutation == "cast":
            name = sorted(schema)[-1]
            dims, dtype, attrs = schema[name]
            schema[name] = (dims, RETYPE[dtype], attrs)
            refused = True
        elif mutation == "grid":
            grid = (grid[0] + 1, grid[1])
            refused = True
        ds = make_dataset(schema, labels, grid, version, {"title": "ignored by append"}, None)
        for name, variable in model.data_vars.items():
            if "time" not in variable.dims:  # compared with the stored values: equal, skipped
                ds[name] = variable.copy(deep=True)
        if mutation == "crs":  # differs from the stored crs, or is new: refused either way
            ds["crs"] = xr.Variable((), np.int32(7), BASE_SCHEMA["crs"][2])
            refused = True
        if time_chunk is not None:
            ds = ds.chunk({"time": time_chunk})
        outcome = None if refused else append_outcome(stored, labels, on_overlap)
        if outcome is None:
            self.apply("append", ds, choose, Refused)
            return
        rewritten, fresh = outcome
        expected = model.copy(deep=True)
        for name in time_vars:
            if rewritten:
                at = {"time": EPOCH + np.asarray(rewritten) * DAY}
                expected[name].loc[at] = ds[name].sel(at).values
        if fresh:
            tail = ds.sel(time=EPOCH + np.asarray(fresh) * DAY).load()
            for name in time_vars:
                tail[name].attrs = dict(model[name].attrs)
            expected = xr.concat(
                [expected, tail],
                dim="time",
                data_vars="minimal",
                coords="minimal",
                compat="override",
                combine_attrs="override",
            )
        self.apply("append", ds, choose, expected, no_op=not rewritten and not fresh)

    @rule(
        position=st.integers(0, 5),
        length=st.integers(1, 3),
        which=st.sets(st.integers(0, 3), min_size=1),
        time_chunk=time_chunks,
        mutation=st.sampled_from([None] * 6 + ["before", "after", "crs", "cast"]),
    )
    def region(
        self,
        position: int,
        length: int,
        which: set[int],
        time_chunk: int | None,
        mutation: str | None,
    ) -> None:
        """for_region("auto"): new values for some variables at stored labels.

        The labels are a run of stored labels starting at ``position``; the mutations
        "before" and "after" move the run to start just outside the stored labels.
        """
        version = self.next_version()
        choose = lambda w: w.for_region(group=GROUP, region="auto")  # noqa: E731
        if self.model is None:
            ds = make_dataset({"tas": BASE_SCHEMA["tas"]}, [0], (1, 1), version)
            self.apply("region", ds, choose, Refused)
            return
        model = self.model
        stored = labels_of(model)
        labels = stored[position % len(stored) :][:length]
        if mutation == "before":
            labels = list(range(stored[0] - 1, stored[0] - 1 + length))
        elif mutation == "after":
            labels = list(range(stored[-1] + 1, stored[-1] + 1 + length))
        time_vars = sorted(n for n, v in model.data_vars.items() if "time" in v.dims)
        names = sorted({time_vars[i % len(time_vars)] for i in which})
        # metadata in a region write is ignored: attributes differ on purpose
        schema = {n: (*schema_of(model)[n][:2], {"comment": "ignored"}) for n in names}
        refused = not set(labels) <= set(stored)  # labels not in the store
        if mutation == "cast":
            dims, dtype, attrs = schema[names[0]]
            schema[names[0]] = (dims, RETYPE[dtype], attrs)
            refused = True
        ds = make_dataset(schema, labels, grid_of(model), version, {"title": "ignored"}, None)
        if mutation == "crs":  # a data variable that does not overlap the region
            ds["crs"] = xr.Variable((), np.int32(0), BASE_SCHEMA["crs"][2])
            refused = True
        if time_chunk is not None:
            ds = ds.chunk({"time": time_chunk})
        if refused:
            self.apply("region", ds, choose, Refused)
            return
        expected = model.copy(deep=True)
        at = {"time": ds.time.values}
        for name in names:
            expected[name].loc[at] = ds[name].values
        self.apply("region", ds, choose, expected)

    @rule(
        kind=st.sampled_from(["add", "overwrite", "retype", "attrs"]),
        pick=st.integers(0, 7),
        merge_attrs=st.booleans(),
        time_chunk=time_chunks,
    )
    def modify(self, kind: str, pick: int, merge_attrs: bool, time_chunk: int | None) -> None:
        """for_modify: add a variable, overwrite or retype an existing one, or set attributes.

        A retyped variable is rewritten whole; its new attributes are given as a superset of
        the stored ones, so "merged" and "replaced" attributes agree (the contract says
        attributes merge but not what a whole rewrite keeps). Attributes are only added,
        never changed: changing the value of a stored variable attribute is a known bug
        (test_modify_changes_the_value_of_a_variable_attribute).
        """
        version = self.next_version()
        choose = lambda w: w.for_modify(group=GROUP)  # noqa: E731
        group_attrs = {"history": f"modified v{version}"}
        new_attrs = {f"note_v{version}": "revised"}
        if self.model is None:
            ds = make_dataset({"tas": BASE_SCHEMA["tas"]}, [0], (1, 1), version, group_attrs)
            self.apply("modify", ds, choose, Refused)
            return
        model = self.model
        labels, grid = labels_of(model), grid_of(model)
        existing = schema_of(model)
        if kind == "add":
            name = sorted(EXTRA_SCHEMA)[pick % len(EXTRA_SCHEMA)]
            dims, dtype, attrs = EXTRA_SCHEMA[name]
            if name in existing:  # the stored layout: an overwrite with merged attributes
                dims, dtype = existing[name][:2]
                attrs = new_attrs
        elif kind in ("overwrite", "retype"):
            name = sorted(existing)[pick % len(existing)]
            dims, dtype, attrs = existing[name]
            attrs = new_attrs if merge_attrs else {**attrs, **new_attrs}
            if kind == "retype":
                dtype = RETYPE[dtype]
                attrs = {**existing[name][2], **attrs}
                # a new dtype changes the group's declared spec: said so on purpose
                choose = lambda w: w.for_modify(group=GROUP, update_spec=True)  # noqa: E731
        else:
            name, dims, dtype, attrs = None, (), "", {}
        ds = make_dataset({}, labels, grid, version, group_attrs)
        if name is not None:
            values = _values(name, dims, dtype, labels, grid, version)
            ds[name] = xr.Variable(dims, values, attrs)
        if "time" not in ds.dims:
            ds = ds.drop_vars("time")
        if time_chunk is not None and name is not None:
            ds = ds.chunk({"time": time_chunk} if "time" in ds.dims else {})
        expected = model.copy(deep=True)
        expected.attrs.update(group_attrs)
        if name is not None:
            merged = {**existing[name][2], **attrs} if name in existing else dict(attrs)
            expected[name] = xr.Variable(dims, values, merged)
        self.apply("modify", ds, choose, expected)

    # -- after every step --

    @invariant()
    def store_equals_model(self) -> None:
        if self.model is None:
            session = self.repo.readonly_session(branch="main")
            try:
                root = zarr.open_group(session.store, mode="r")
            except zarr.errors.GroupNotFoundError:
                return  # a new repository has not even a root group
            assert GROUP not in root
            return
        back = read_back(self.repo, GROUP)
        xr.testing.assert_identical(back, self.model)


@pytest.mark.slow
def test_writer_matches_the_model() -> None:
    run_state_machine_as_test(WriterModel, settings=PROFILE)


# -- a bug the model found ------------------------------------------------------------------


@pytest.mark.parametrize("start", ["2000-01-01", "2000-01-01T06"])
def test_create_with_an_unencoded_datetime_coordinate(repo, start) -> None:
    ds = xr.Dataset(
        {"a": ("time", np.arange(3.0))},
        coords={"time": pd.date_range(start, periods=3, freq="D")},
    )
    write(repo, ds, lambda w: w.for_create_or_overwrite(group=GROUP))
    xr.testing.assert_identical(read_back(repo, GROUP), ds)


def test_make_dataset_is_what_the_model_assumes() -> None:
    """Sanity of the test's own generator: labels, grid and NaN placement."""
    ds = make_dataset(BASE_SCHEMA, [3, 4, 5], (2, 3), version=1)
    assert labels_of(ds) == [3, 4, 5]
    assert grid_of(ds) == (2, 3)
    assert ds.pr.isnull().any()
    assert ds.pr.notnull().any()
    assert ds["count"].dtype == np.int32
    assert ds.tas.dtype == np.float32
    assert append_outcome([0, 1, 2], [3, 4], "error") == ([], [3, 4])
    assert append_outcome([0, 1, 2], [2, 3], "error") is None
    assert append_outcome([0, 1, 2], [2, 3], "skip") == ([], [3])
    assert append_outcome([0, 1, 2], [1, 2, 3], "overwrite") == ([1, 2], [3])
    assert append_outcome([0, 1, 2], [0, 1], "overwrite") == ([0, 1], [])
    assert append_outcome([0, 1, 2], [4], "error") is None  # gap
    assert append_outcome([0], [4], "error") == ([], [4])  # no step known yet
    assert append_outcome([0], [4, 5], "error") is None  # the new labels' step counts
    assert append_outcome([2, 3], [0, 1], "overwrite") is None  # before the stored ones


def test_modify_changes_the_value_of_a_variable_attribute(repo) -> None:
    ds = make_dataset({"tas": BASE_SCHEMA["tas"]}, [0, 1], (1, 2), version=1)
    write(repo, ds, lambda w: w.for_create_or_overwrite(group=GROUP))
    fixed = ds[["tas"]].copy(deep=True)
    fixed["tas"].attrs["units"] = "degC"
    # units are part of the group's declared spec: changed on purpose
    write(repo, fixed, lambda w: w.for_modify(group=GROUP, update_spec=True))
    assert read_back(repo, GROUP).tas.attrs["units"] == "degC"
