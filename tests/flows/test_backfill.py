"""backfill_flow end to end: windows written in units on the cluster, published in groups,
exactly what one write of the whole range stores; a killed backfill publishes whole
windows only, and its re-run fills the rest."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
from pathlib import Path

import icechunk
import numpy as np
import pytest
import xarray as xr
from prefect.settings import PREFECT_LOCAL_STORAGE_PATH

from flows import Target, backfill_flow
from flows.sources import SyntheticSource
from tasks.coverage import coverage
from tests.conftest import plain_xarray, read_back
from tests.flows import kill_backfill

pytestmark = pytest.mark.usefixtures("prefect_harness")


def _repo(path: Path) -> icechunk.Repository:
    return icechunk.Repository.open(icechunk.local_filesystem_storage(str(path)))


def _expected(hours: int) -> xr.Dataset:
    return SyntheticSource(**{**kill_backfill.SOURCE, "periods": hours}).open()


def test_windows_sharing_chunks_land_together_as_one_write_would_store_them(
    tmp_path: Path, scheduler_address: str
) -> None:
    target = Target(repo=str(tmp_path / "repo"))
    # 5-hour windows in 12-hour chunks: most chunks hold parts of two or three windows
    result = backfill_flow(
        target,
        kill_backfill.SOURCE,
        start=dt.datetime(2020, 1, 1),
        end=dt.datetime(2020, 1, 3, 12),
        freq="5h",
        batch=4,
        scheduler_address=scheduler_address,
    )

    # the first window created the group; the other 11 were missing
    assert (result.windows, result.windows_written, result.windows_already_filled) == (12, 11, 1)
    assert result.labels_present == result.labels_total == 60
    assert 1 <= result.commits < 11  # the first window created the group; the rest in groups
    assert (result.rebased_commits, result.windows_rewritten) == (0, 0)
    assert set(result.seconds) == {"extend", "plan", "write", "total"}
    xr.testing.assert_identical(
        read_back(_repo(tmp_path / "repo")), plain_xarray(_expected(60), tmp_path)
    )
    # the append coordinate of a group an append created is chunked for growth
    chunks = read_back(_repo(tmp_path / "repo")).time.encoding.get("chunks")
    assert chunks is None or chunks[0] >= 60

    again = backfill_flow(
        target,
        kill_backfill.SOURCE,
        start=dt.datetime(2020, 1, 1),
        end=dt.datetime(2020, 1, 3, 12),
        freq="5h",
        scheduler_address=scheduler_address,
    )
    assert (again.windows_written, again.commits) == (0, 0)


def test_a_killed_backfill_publishes_whole_windows_and_its_rerun_fills_the_rest(
    tmp_path: Path, scheduler_address: str, prefect_harness: str
) -> None:
    repo_path = tmp_path / "repo"
    env = {
        **os.environ,
        "PREFECT_API_URL": prefect_harness,
        "PREFECT_LOCAL_STORAGE_PATH": str(PREFECT_LOCAL_STORAGE_PATH.value()),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    }
    done = subprocess.run(
        [sys.executable, "-m", "tests.flows.kill_backfill", str(repo_path), scheduler_address],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=Path(__file__).parents[2],
    )
    assert done.returncode == -9, f"the backfill was not killed:\n{done.stdout}\n{done.stderr}"

    repo = _repo(repo_path)
    found = coverage(repo, None, "time", branch="main")
    present = found.present().reshape(-1, 6)  # 8 windows of 6 hours
    # every window wholly present or wholly absent; the first group landed, not all of them
    assert all(row.all() or not row.any() for row in present)
    assert 0 < present.all(axis=1).sum() < 8
    stored = read_back(repo)
    expected = _expected(48)
    hours = np.flatnonzero(found.present())
    xr.testing.assert_equal(
        stored.isel(time=hours).air_temperature, expected.isel(time=hours).air_temperature
    )

    result = kill_backfill.run(str(repo_path), scheduler_address, batch=16)
    assert result.windows_written == 8 - present.all(axis=1).sum()
    xr.testing.assert_identical(read_back(_repo(repo_path)), plain_xarray(expected, tmp_path))
