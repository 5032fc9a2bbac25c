"""Validation: freshness, the latest values' NaN fraction, gaps and structure, with and
without a spec, each read back from a real repository."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import icechunk
import numpy as np
import pandas as pd
import pytest
import xarray as xr
import zarr

from tasks.commit import commit_session
from tasks.coverage import RECORD_KEY, CoverageChange, coverage_record
from tasks.errors import GroupNotFoundError
from tasks.spec import SPEC_KEY, read_spec, write_spec
from tasks.validation import validate
from tasks.writer import XarrayDatasetWriter
from tests.cf_datasets import cf_dataset
from tests.tasks.helpers import write

DATA = ("tas", "pr", "tas_packed")
ENCODING = {n: {"chunks": (4, 3, 4)} for n in DATA}


def _recorded(repo: icechunk.Repository, ds: xr.Dataset, choose) -> None:  # type: ignore[no-untyped-def]
    """A write committed as the flows commit it, with its coverage record."""
    session = repo.writable_session("main")
    change = CoverageChange.of(choose(XarrayDatasetWriter(ds, store=session.store)).write())
    commit_session(
        session, "write", lambda s: {"icefloe": {RECORD_KEY: coverage_record(repo, s, change)}}
    )


def _archive(repo: icechunk.Repository, periods: int = 12, **bounds) -> xr.Dataset:  # type: ignore[no-untyped-def]
    ds = cf_dataset(periods)
    _recorded(repo, ds, lambda w: w.for_create_or_overwrite("g", encoding=ENCODING))
    if bounds:
        session = repo.writable_session("main")
        spec = read_spec(session.store, "g")
        assert spec is not None
        write_spec(session.store, "g", spec.model_copy(update=bounds))
        session.commit("bounds")
    return ds


def _rows(found) -> dict[tuple[str, str], str]:  # type: ignore[no-untyped-def]
    return {(c.check, c.subject): c.status for c in found.checks}


def test_a_fresh_complete_archive_as_its_spec_declares_passes(repo: icechunk.Repository) -> None:
    _archive(repo, max_delay=dt.timedelta(days=2), max_nan_fraction={"*": 0.5})

    found = validate(repo, "g", now=dt.datetime(2000, 1, 13, 12))

    assert found.ok, found.markdown()
    assert found.step == "D"
    assert found.freshness.newest == "2000-01-12 00:00:00"
    assert found.freshness.lag == dt.timedelta(days=1, hours=12)
    assert {n.variable for n in found.nan_fractions} == set(DATA)
    # the window is one chunk along time: the last 4 labels
    assert {n.labels for n in found.nan_fractions} == {4}
    assert found.backfill_requests() == []
    assert _rows(found)[("structure", "group 'g'")] == "passed"
    assert "passed" in found.markdown().splitlines()[0]


def test_stale_data_missing_values_a_gap_and_a_changed_unit_fail(
    repo: icechunk.Repository, tmp_path: Path
) -> None:
    ds = _archive(repo, max_delay=dt.timedelta(days=2), max_nan_fraction={"pr": 0.01, "*": 0.5})
    # labels without data in the middle (a commit outside icefloe blanks them)
    blank = ds.isel(time=slice(5, 7))[list(DATA)].drop_vars("height")
    write(
        repo,
        blank.copy(data={n: np.full_like(blank[n].values, np.nan) for n in DATA}),
        lambda w: w.for_region("g"),
    )
    # and someone changed a unit without changing the spec
    session = repo.writable_session("main")
    zarr.open_array(session.store, path="g/tas").attrs["units"] = "degC"
    session.commit("units changed outside icefloe")

    found = validate(repo, "g", now=dt.datetime(2000, 1, 20))

    assert not found.ok
    assert found.stale
    assert found.freshness.lag == dt.timedelta(days=8)
    pr = next(n for n in found.nan_fractions if n.variable == "pr")
    expected = float(np.isnan(ds.pr.isel(time=slice(8, 12)).values).mean())
    assert pr.fraction == pytest.approx(expected)
    assert pr.failed
    assert not next(n for n in found.nan_fractions if n.variable == "tas").failed
    assert found.backfill_requests() == [
        {"start": "2000-01-06T00:00:00", "end": "2000-01-08T00:00:00", "group": "g", "labels": 2}
    ]
    assert found.structure == ("variable 'tas': units 'K' → 'degC'",)
    failed = {c.check for c in found.failed}
    assert failed == {"freshness", "nan fraction", "gaps", "structure"}
    found.plot(str(tmp_path / "validation.png"))
    assert (tmp_path / "validation.png").read_bytes().startswith(b"\x89PNG")
    assert "| gaps | 2000-01-06 00:00:00 … 2000-01-07 00:00:00 (2 labels) | **failed**" in (
        found.markdown()
    )


def test_a_gap_at_the_end_is_requested_up_to_the_next_label_of_the_step(
    repo: icechunk.Repository,
) -> None:
    ds = _archive(repo, 8)
    more = cf_dataset(12).isel(time=slice(8, 12))
    _recorded(repo, more[["time_bnds"]], lambda w: w.for_append("g", fill_missing=True))

    found = validate(repo, "g", now=dt.datetime(2000, 1, 13))

    assert found.backfill_requests() == [
        {"start": "2000-01-09T00:00:00", "end": "2000-01-13T00:00:00", "group": "g", "labels": 4}
    ]
    # freshness is about the newest label holding data, not the newest label
    assert found.freshness.newest == "2000-01-08 00:00:00"
    # the NaN window ends at the newest label with data
    assert {n.labels for n in found.nan_fractions} == {4}
    assert ds.sizes["time"] == 8


def test_without_a_spec_gaps_are_judged_on_the_inferred_step_and_structure_is_skipped(
    repo: icechunk.Repository,
) -> None:
    ds = cf_dataset(12)
    # the axis skips two days: a group written with a hole in its labels
    holed = ds.isel(time=[0, 1, 2, 3, 4, 7, 8, 9, 10, 11])
    _recorded(repo, holed, lambda w: w.for_create_or_overwrite("g", encoding=ENCODING))
    session = repo.writable_session("main")
    del zarr.open_group(session.store, path="g").attrs[SPEC_KEY]
    session.commit("no spec")

    found = validate(repo, "g", now=dt.datetime(2000, 1, 13))

    assert found.spec is None
    assert found.step == "24h"
    assert _rows(found)[("structure", "group 'g'")] == "skipped"
    assert any("no spec" in note for note in found.notes)
    [gap] = found.gaps
    assert (gap.kind, gap.count, gap.start, gap.end) == (
        "not on the axis",
        2,
        "2000-01-06T00:00:00",
        "2000-01-08T00:00:00",
    )
    # a backfill cannot add labels inside the axis: none is requested
    assert found.backfill_requests() == []
    assert not found.ok
    assert all(n.limit is None for n in found.nan_fractions)


def test_recompute_reports_a_record_that_differs_from_the_data(repo: icechunk.Repository) -> None:
    ds = _archive(repo)
    blank = ds.isel(time=slice(2, 3))[list(DATA)].drop_vars("height")
    session = repo.writable_session("main")
    XarrayDatasetWriter(
        blank.copy(data={n: np.full_like(blank[n].values, np.nan) for n in DATA}),
        store=session.store,
    ).for_region("g").write()
    # another tool's commit that copied the parent's record: the labels still match it
    session.commit("copied", metadata=repo.lookup_snapshot(repo.lookup_branch("main")).metadata)

    trusted = validate(repo, "g", now=dt.datetime(2000, 1, 13))
    judged = validate(repo, "g", now=dt.datetime(2000, 1, 13), recompute=True)

    assert trusted.gaps == ()
    assert [g.count for g in judged.gaps] == [1]
    assert judged.record_mismatch is not None
    assert "coverage record" in {c.check for c in judged.failed}


def test_an_empty_group_is_refused(repo: icechunk.Repository) -> None:
    with pytest.raises(GroupNotFoundError, match="nothing to validate"):
        validate(repo, "g")


def test_labels_that_are_not_times_have_no_age(repo: icechunk.Repository) -> None:
    ds = xr.Dataset(
        {"v": (("step", "x"), np.arange(12.0).reshape(6, 2))},
        coords={"step": np.arange(6) * 10},
    )
    write(repo, ds, lambda w: w.for_create_or_overwrite("g"))

    found = validate(repo, "g", "step")

    assert found.freshness.lag is None
    assert _rows(found)[("freshness", "50")] == "skipped"
    assert found.gaps == ()
    assert pd.Index([found.coverage.first_label, found.coverage.last_label]).tolist() == [0, 50]
