"""Garbage collection never reaches an open run, and keeps what the branch needs."""

from __future__ import annotations

import datetime as dt

import pytest
import xarray as xr

from tasks.errors import PlanError
from tasks.maintenance import check_cutoff, expire_and_collect
from tests.cf_datasets import cf_dataset
from tests.conftest import plain_xarray, read_back
from tests.tasks.helpers import write

NOW = dt.datetime(2026, 11, 24, 12, tzinfo=dt.UTC)


def test_cutoff_younger_than_the_oldest_open_run_is_refused():
    run_started = NOW - dt.timedelta(hours=5)
    with pytest.raises(PlanError, match="oldest open run started at 2026-11-24T07:00"):
        check_cutoff(NOW - dt.timedelta(hours=5, minutes=30), run_started, now=NOW)
    assert check_cutoff(NOW - dt.timedelta(hours=7), run_started, now=NOW) < run_started


def test_cutoff_within_the_margin_of_now_is_refused():
    with pytest.raises(PlanError, match="within 1:00:00 of now"):
        check_cutoff(NOW - dt.timedelta(minutes=10), None, now=NOW)


def test_collecting_keeps_the_tip_readable(repo, tmp_path):
    ds = cf_dataset(8)
    write(repo, ds.isel(time=slice(0, 4)), lambda w: w.for_create_or_overwrite(group="g"))
    write(
        repo,
        ds.isel(time=slice(0, 4)).assign(tas=ds.tas[:4] + 1),
        lambda w: w.for_modify(group="g"),
    )
    write(
        repo,
        ds.isel(time=slice(4, 8)).assign(tas=ds.tas[4:] + 1),
        lambda w: w.for_append(group="g"),
    )
    future = dt.datetime.now(dt.UTC) + dt.timedelta(days=1)
    summary = expire_and_collect(repo, future, None, margin=dt.timedelta(days=-2))
    assert summary.snapshots_expired >= 1
    assert summary.snapshots_deleted >= 1  # small chunks live inline in manifests
    assert summary.bytes_deleted > 0
    xr.testing.assert_identical(
        read_back(repo, "g"), plain_xarray(ds.assign(tas=ds.tas + 1), tmp_path)
    )
