"""A self-healing archive, end to end on a real ``prefect server start`` with ``icefloe serve``.

A ``files`` source in a directory receives one file per 5 seconds of labels; the file of
one window is missing when the schedule first passes it and appears later. With the
served schedule (``--late-data hole``) and validation after each scheduled append: the
archive keeps updating past the missing window, the gap is recorded and detected, the
validation's ``icefloe.backfill.requested`` event makes the backfill deployment's
automation start a backfill that fills it once the file is there, the next validation is
clean, coverage shows no gap, and every commit carries its icefloe metadata. No step
is taken by the test but writing the late file.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import icechunk
import numpy as np
import pandas as pd
import pytest
import xarray as xr
from distributed import LocalCluster
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
from prefect.client.schemas.sorting import ArtifactSort
from prefect.events.filters import EventFilter, EventNameFilter, EventResourceFilter
from prefect.settings import PREFECT_API_URL, temporary_settings

from flows.naming import artifact_key
from flows.targets import Target
from flows.validate import BACKFILL_REQUESTED
from tasks.coverage import coverage, recorded_coverage
from tests.conftest import read_back, running_prefect_server
from tests.deployments.conftest import served, stop, wait_until

pytestmark = pytest.mark.slow

WINDOW = 5  # labels (seconds) per file
FILES = 30  # 150 s of labels, from 15 s before the test starts
LATE = 8  # the file the schedule first passes without: its labels are 40 s after the start


def _window(start: pd.Timestamp, k: int) -> xr.Dataset:
    """File ``k``: labels start + 5k … start + 5k + 4 s, values a function of the label."""
    time = pd.date_range(start + pd.Timedelta(seconds=WINDOW * k), periods=WINDOW, freq="1s")
    seconds = (time - start).total_seconds().to_numpy()
    y, x = np.arange(3.0), np.arange(4.0)
    temperature = 280 + np.sin(seconds / 7)[:, None, None] + y[None, :, None] + x[None, None, :]
    return xr.Dataset(
        {"temperature": (("time", "y", "x"), temperature.astype("float32"), {"units": "K"})},
        coords={"time": time, "y": y, "x": x},
    )


def _write_file(directory: Path, start: pd.Timestamp, k: int) -> Path:
    path = directory / f"obs_{k:03d}.nc"
    partial = path.with_suffix(".tmp")
    _window(start, k).to_netcdf(partial)
    partial.rename(path)  # a file appears whole, never half-written, as a delivery would
    return path


def _repo(path: Path) -> icechunk.Repository:
    return icechunk.Repository.open(icechunk.local_filesystem_storage(str(path)))


@pytest.fixture(scope="module")
def healing(
    tmp_path_factory: pytest.TempPathFactory, local_cluster: LocalCluster
) -> Iterator[dict[str, Any]]:
    """``icefloe serve`` on a server of this module's own (the other deployment tests serve
    the same deployment names on the shared one, with schedules of their own)."""
    home = tmp_path_factory.mktemp("self-healing")
    incoming = home / "incoming"
    incoming.mkdir()
    start = (pd.Timestamp.now("UTC").tz_localize(None) - pd.Timedelta(seconds=15)).floor("s")
    for k in range(FILES):
        if k != LATE:
            _write_file(incoming, start, k)
    source = {"kind": "files", "paths": [str(incoming / "obs_*.nc")]}
    archive = home / "selfheal.icechunk"
    args = ["--target", str(archive), "--source", json.dumps(source), "--interval", "5"]
    args += ["--late-data", "hole", "--validate-every", "3600"]
    args += ["--scheduler-address", local_cluster.scheduler_address]
    (home / "prefect").mkdir()
    with running_prefect_server(home / "prefect") as api_url:
        process = served(args, api_url, home / "serve.log")
        try:
            with temporary_settings({PREFECT_API_URL: api_url}):
                yield {
                    "archive": archive,
                    "incoming": incoming,
                    "start": start,
                    "process": process,
                    "log": home / "serve.log",
                }
        finally:
            stop(process)


def _tip_record(archive: Path) -> Any:
    try:
        repo = _repo(archive)
        return recorded_coverage(
            repo.lookup_snapshot(repo.lookup_branch("main")).metadata, None, "time"
        )
    except Exception:  # not created yet
        return None


def test_a_late_file_leaves_a_gap_that_validation_and_a_triggered_backfill_fill(
    healing: dict[str, Any],
) -> None:
    archive, start = healing["archive"], healing["start"]
    late_first = start + pd.Timedelta(seconds=WINDOW * LATE)
    late_last = late_first + pd.Timedelta(seconds=WINDOW - 1)

    def gap_recorded() -> Any:
        record = _tip_record(archive)
        return record is not None and [
            g for g in record.gaps if pd.Timestamp(g.first) == late_first
        ]

    try:
        [gap] = wait_until(gap_recorded, 240, "a commit recording the late window as a gap")
    except TimeoutError as err:
        raise AssertionError(f"{err}\n{healing['log'].read_text()[-3000:]}") from err
    assert pd.Timestamp(gap.last) == late_last
    assert gap.count == WINDOW

    # the archive keeps updating past the gap while the file is missing
    seen = _tip_record(archive).n_labels
    wait_until(
        lambda: (r := _tip_record(archive)) is not None and r.n_labels > seen,
        180,
        "appends after the commit that left the gap",
    )
    assert (r := _tip_record(archive)) is not None
    assert [(g.start, g.stop) for g in r.gaps] == [(gap.start, gap.stop)]

    # the gap was detected: validation asked for a backfill of exactly its labels
    def requests() -> list[Any]:
        with get_client(sync_client=True) as client:
            return client.read_events(
                EventFilter(
                    event=EventNameFilter(name=[BACKFILL_REQUESTED]),
                    resource=EventResourceFilter(id=["icefloe.archive.selfheal"]),
                ),
                limit=50,
            ).events

    asked = wait_until(requests, 180, "an icefloe.backfill.requested event")
    assert {pd.Timestamp(e.payload["start"]) for e in asked} == {late_first}

    _write_file(healing["incoming"], start, LATE)  # the late delivery

    try:
        wait_until(lambda: not coverage(_repo(archive)).gaps, 300, "the gap to be filled")
    except TimeoutError as err:
        raise AssertionError(f"{err}\n{healing['log'].read_text()[-3000:]}") from err
    filled_at = _repo(archive).lookup_branch("main")

    # by a backfill the event automation started (the test started none)
    def backfills() -> list[Any]:
        with get_client(sync_client=True) as client:
            [backfill] = [d for d in client.read_deployments() if d.name == "backfill"]
            return [r for r in client.read_flow_runs() if r.deployment_id == backfill.id]

    wait_until(
        lambda: any(r.state is not None and r.state.is_completed() for r in backfills()),
        120,
        "the backfill that filled the gap to complete",
    )
    runs = backfills()
    assert all(pd.Timestamp(r.parameters["start"]) == late_first for r in runs)

    # the next validation is clean
    def clean_validation() -> Any:
        with get_client(sync_client=True) as client:
            latest = client.read_artifacts(
                artifact_filter=ArtifactFilter(
                    key=ArtifactFilterKey(
                        any_=[artifact_key("validation", Target(repo=str(archive)), None)]
                    )
                ),
                sort=ArtifactSort.CREATED_DESC,
                limit=1,
            )
        text = str(latest[0].data) if latest else ""
        snapshot = text.split("Snapshot `", 1)[-1].split("`", 1)[0]
        try:
            after_fill = filled_at in {s.id for s in _repo(archive).ancestry(snapshot_id=snapshot)}
        except Exception:
            return None
        return after_fill and text

    text = wait_until(clean_validation, 120, "a validation after the fill")
    assert ": passed" in text.splitlines()[0], text

    repo = _repo(archive)
    assert coverage(repo).gaps == ()
    # every commit carries its icefloe block, with its coverage record
    history = list(repo.ancestry(branch="main"))[:-1]  # the last is the repository's creation
    assert history
    for snapshot in history:
        block = snapshot.metadata.get("icefloe")
        assert block, (snapshot.message, snapshot.metadata)
        assert block["flow_run_id"]
        assert "coverage" in block
    modes = {s.metadata["icefloe"]["mode"] for s in history}
    assert modes == {"append", "region"}

    # and the archive holds the files' data, the late window included
    stored = read_back(repo)
    files = xr.concat([_window(start, k) for k in range(FILES)], dim="time", data_vars="all").sel(
        time=stored.time
    )
    np.testing.assert_array_equal(stored.temperature.values, files.temperature.values)
    assert healing["process"].poll() is None, healing["log"].read_text()[-3000:]
