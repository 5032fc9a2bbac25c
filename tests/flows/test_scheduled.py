"""The scheduled append's late-data policy (flows/scheduled.py, docs/spec.md), with a
``files`` source in a directory where the file of one window arrives late."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import icechunk
import numpy as np
import pytest
import xarray as xr

from flows import Target, backfill_flow, scheduled_append_flow
from flows.sources import SyntheticSource
from tasks.coverage import coverage
from tasks.errors import RequestError
from tests.conftest import read_back, tip

pytestmark = pytest.mark.usefixtures("prefect_harness")

GRID = {"ny": 2, "nx": 3, "time_chunk": 6}


def start_of(k: int) -> dt.datetime:
    return dt.datetime(2020, 1, 1) + dt.timedelta(hours=6 * k)


def window(k: int) -> xr.Dataset:
    """The k-th six-hour window of a synthetic hourly source from 2020-01-01."""
    return SyntheticSource(start=start_of(k).isoformat(), periods=6, **GRID).open().load()


def deliver(incoming: Path, k: int) -> None:
    """The provider drops window k's file into the directory, named by its first hour."""
    window(k).to_netcdf(incoming / f"obs_{start_of(k):%Y%m%d%H}.nc")


def files(incoming: Path) -> dict[str, Any]:
    # one file per hour the run's window spans, as providers name them; hours without a
    # file are left out, so a scheduled run opens every window that arrived since the last
    return {"kind": "files", "paths": [str(incoming / "obs_{start:%Y%m%d%H}.nc")]}


def blocks(target: Target) -> list[dict[str, Any]]:
    repo = icechunk.Repository.open(icechunk.local_filesystem_storage(target.repo))
    found = [s.metadata.get("icefloe") for s in repo.ancestry(branch="main")]
    return [block for block in found if block][::-1]


def run(target: Target, incoming: Path, until_hour: int, late_data: str, address: str) -> Any:
    return scheduled_append_flow(
        target,
        files(incoming),
        scheduled_time=dt.datetime(2020, 1, 1) + dt.timedelta(hours=until_hour),
        scheduler_address=address,
        late_data=late_data,
        # files named by their window start cannot say where the archive begins: the
        # operator gives the first run its start (serve --start)
        start=dt.datetime(2020, 1, 1),
    )


def test_a_first_run_of_files_named_by_date_needs_a_start(tmp_path: Path) -> None:
    incoming = tmp_path / "incoming"
    incoming.mkdir()
    deliver(incoming, 0)
    target = Target(repo=str(tmp_path / "repo"))
    with pytest.raises(RequestError, match=r"serve --start") as info:
        scheduled_append_flow(target, files(incoming), scheduled_time=dt.datetime(2020, 1, 2))
    assert "named by the window start" in str(info.value)
    assert not (tmp_path / "repo").exists()


def expected(windows: list[int]) -> xr.Dataset:
    return xr.concat([window(k) for k in windows], dim="time", data_vars="minimal")


def test_wait_appends_up_to_the_missing_window_and_the_next_run_heals(
    tmp_path: Path, scheduler_address: str
) -> None:
    incoming = tmp_path / "incoming"
    incoming.mkdir()
    target = Target(repo=str(tmp_path / "repo"))
    deliver(incoming, 0)
    run(target, incoming, 5, "wait", scheduler_address)
    for k in (1, 3):  # window 2's file is late
        deliver(incoming, k)

    result = run(target, incoming, 23, "wait", scheduler_address)

    repo = target.open_repository()
    back = read_back(repo)
    assert result.snapshot_id is not None
    np.testing.assert_array_equal(back.time.values, expected([0, 1]).time.values)
    assert blocks(target)[-1]["stopped_before"] == "2020-01-01T12:00:00"
    assert "gaps" not in blocks(target)[-1]
    # nothing new can be appended while the window is missing: no commit at all
    before = tip(repo)
    waiting = run(target, incoming, 23, "wait", scheduler_address)
    assert (waiting.snapshot_id, waiting.skipped, tip(repo)) == (None, True, before)

    deliver(incoming, 2)
    run(target, incoming, 23, "wait", scheduler_address)

    back = read_back(target.open_repository())
    xr.testing.assert_allclose(
        back[["air_temperature"]], expected([0, 1, 2, 3])[["air_temperature"]]
    )
    assert not coverage(target.open_repository()).gaps


def test_wait_on_an_empty_target_creates_the_group_up_to_the_missing_window(
    tmp_path: Path, scheduler_address: str
) -> None:
    incoming = tmp_path / "incoming"
    incoming.mkdir()
    for k in (0, 1, 3):
        deliver(incoming, k)
    target = Target(repo=str(tmp_path / "repo"))

    run(target, incoming, 23, "wait", scheduler_address)

    back = read_back(target.open_repository())
    np.testing.assert_array_equal(back.time.values, expected([0, 1]).time.values)


def test_hole_appends_everything_records_the_gap_and_a_backfill_fills_it(
    tmp_path: Path, scheduler_address: str
) -> None:
    incoming = tmp_path / "incoming"
    incoming.mkdir()
    target = Target(repo=str(tmp_path / "repo"))
    deliver(incoming, 0)
    run(target, incoming, 5, "hole", scheduler_address)
    for k in (1, 3):
        deliver(incoming, k)

    run(target, incoming, 23, "hole", scheduler_address)

    repo = target.open_repository()
    back = read_back(repo)
    np.testing.assert_array_equal(back.time.values, expected([0, 1, 2, 3]).time.values)
    assert back.air_temperature.isel(time=slice(12, 18)).isnull().all()
    assert back.air_temperature.isel(time=slice(18, 24)).notnull().all()
    assert blocks(target)[-1]["gaps"] == [
        {"first": "2020-01-01T12:00:00", "last": "2020-01-01T17:00:00", "count": 6}
    ]
    [gap] = coverage(repo).gaps
    assert (str(gap.first), str(gap.last), gap.count) == (
        "2020-01-01 12:00:00",
        "2020-01-01 17:00:00",
        6,
    )

    deliver(incoming, 2)
    backfill_flow(
        target,
        files(incoming),
        start=dt.datetime(2020, 1, 1, 12),
        end=dt.datetime(2020, 1, 1, 18),
        freq="6h",
        scheduler_address=scheduler_address,
    )

    back = read_back(target.open_repository())
    xr.testing.assert_allclose(
        back[["air_temperature"]], expected([0, 1, 2, 3])[["air_temperature"]]
    )
    assert not coverage(target.open_repository()).gaps
