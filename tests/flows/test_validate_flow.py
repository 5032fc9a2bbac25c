"""The validate flow on the session's Prefect API: its artifacts, and the events it emits
(read back from the API), a backfill request per gap and none for a gap a backfill run is
already on its way to fill; after a scheduled append it runs as the append's subflow."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import icechunk
import pandas as pd
import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    ArtifactFilterKey,
    FlowRunFilter,
    FlowRunFilterParentFlowRunId,
)
from prefect.events.filters import EventFilter, EventNameFilter, EventResourceFilter
from prefect.events.worker import EventsWorker
from prefect.states import Scheduled

from flows import Target, backfill_flow, scheduled_append_flow
from flows.naming import archive_resource_id, artifact_key
from flows.validate import ARCHIVE_STALE, BACKFILL_REQUESTED, VALIDATION_FAILED, validate_flow
from tasks.spec import read_spec, write_spec
from tests.conftest import wait_until
from tests.flows.python_sources import GRID
from tests.tasks.helpers import write

pytestmark = pytest.mark.usefixtures("prefect_harness")


def _synthetic(periods: int, start: str = "2020-01-01") -> Any:
    from flows.sources import SyntheticSource

    return SyntheticSource(start=start, periods=periods, **GRID)


@pytest.fixture
def events_to_this_api() -> None:
    """Events go out through one worker per process, made for the API current when it
    started: a fresh one here sends them to the session's API."""
    EventsWorker.drain_all(at_exit=False)


def _events(name: str, resource_id: str, since: dt.datetime) -> list[Any]:
    EventsWorker.drain_all(at_exit=False)  # what this process emitted has been sent
    from prefect.events.filters import EventOccurredFilter

    with get_client(sync_client=True) as client:
        page = client.read_events(
            EventFilter(
                occurred=EventOccurredFilter(since=since),
                event=EventNameFilter(name=[name]),
                resource=EventResourceFilter(id=[resource_id]),
            ),
            limit=50,
        )
    return list(page.events)


def _archive_with_a_gap(path: Path) -> Target:
    """24 hourly labels with data, then 24 labels without (an extension), max_delay 1 h."""
    repo = icechunk.Repository.create(icechunk.local_filesystem_storage(str(path)))
    ds = _synthetic(48).open()
    write(repo, ds.isel(time=slice(0, 24)), lambda w: w.for_create_or_overwrite())
    write(repo, ds.isel(time=slice(24, 48))[["time"]], lambda w: w.for_append(fill_missing=True))
    session = repo.writable_session("main")
    spec = read_spec(session.store, None)
    assert spec is not None
    write_spec(session.store, None, spec.model_copy(update={"max_delay": dt.timedelta(hours=1)}))
    session.commit("max_delay")
    return Target(repo=str(path))


@pytest.mark.usefixtures("events_to_this_api")
def test_a_gap_and_stale_data_are_published_and_announced(tmp_path: Path) -> None:
    target = _archive_with_a_gap(tmp_path / "era5.icechunk")
    since = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=5)

    state = validate_flow(target, now=dt.datetime(2020, 1, 3, 12), return_state=True)
    result = state.result()

    assert not result.ok
    assert result.stale
    assert (result.gaps, result.backfills_requested) == (1, 1)
    resource = archive_resource_id(target)
    assert resource == "icefloe.archive.era5"
    [request] = wait_until(
        lambda: _events(BACKFILL_REQUESTED, resource, since), 30, "the backfill request"
    )
    assert request.payload == {
        "start": "2020-01-02T00:00:00",
        "end": "2020-01-03T00:00:00",
        "group": "",
        "labels": 24,
    }
    assert request.resource["icefloe.group"] == "/"
    # the run that asked is named among the event's related resources
    run_id = str(state.state_details.flow_run_id)
    assert any(r.id == f"prefect.flow-run.{run_id}" for r in request.related)
    [stale] = wait_until(lambda: _events(ARCHIVE_STALE, resource, since), 30, "the stale event")
    assert stale.payload["newest"] == "2020-01-01 23:00:00"
    assert stale.payload["max_delay_seconds"] == 3600
    [failed] = wait_until(
        lambda: _events(VALIDATION_FAILED, resource, since), 30, "the failed event"
    )
    assert {f["check"] for f in failed.payload["failed"]} == {"freshness", "gaps"}

    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(
                key=ArtifactFilterKey(
                    any_=[
                        artifact_key("validation", target, None),
                        artifact_key("validation-plot", target, None),
                    ]
                )
            )
        )
    table = next(a for a in artifacts if a.type == "markdown")
    assert "| gaps | 2020-01-02 00:00:00 … 2020-01-02 23:00:00 (24 labels) | **failed**" in str(
        table.data
    )
    plot = next(a for a in artifacts if a.type == "image")
    assert str(plot.data).startswith("data:image/png;base64,")


@pytest.mark.usefixtures("events_to_this_api")
def test_a_gap_an_open_backfill_covers_is_not_requested_again(tmp_path: Path) -> None:
    target = _archive_with_a_gap(tmp_path / "covered.icechunk")
    with get_client(sync_client=True) as client:
        # a backfill of the gap, scheduled and not started (as the automation leaves it)
        flow_id = client.create_flow_from_name(backfill_flow.name)
        client.create_flow_run(
            backfill_flow,
            parameters={
                "target": target.model_dump(),
                "source": _synthetic(48).model_dump(),
                "start": "2020-01-02T00:00:00",
                "end": "2020-01-04T00:00:00",
            },
            state=Scheduled(scheduled_time=dt.datetime.now(dt.UTC) + dt.timedelta(days=1)),
        )
    assert flow_id

    result = validate_flow(target, now=dt.datetime(2020, 1, 3))

    assert result.gaps == 1
    assert result.backfills_requested == 0


def test_a_scheduled_append_validates_what_it_committed(
    tmp_path: Path, scheduler_address: str
) -> None:
    target = Target(repo=str(tmp_path / "live.icechunk"))

    state = scheduled_append_flow(
        target,
        _synthetic(100).model_dump(),
        scheduled_time=dt.datetime(2020, 1, 1, 23),
        scheduler_address=scheduler_address,
        return_state=True,
    )

    assert state.is_completed()
    with get_client(sync_client=True) as client:
        [child] = [
            r
            for r in client.read_flow_runs(
                flow_run_filter=FlowRunFilter(
                    parent_flow_run_id=FlowRunFilterParentFlowRunId(
                        any_=[state.state_details.flow_run_id]
                    )
                )
            )
            if r.name.startswith("validate")
        ]
        assert child.state is not None
        assert child.state.is_completed()
        [table] = client.read_artifacts(
            artifact_filter=ArtifactFilter(
                key=ArtifactFilterKey(any_=[artifact_key("validation", target, None)]),
                flow_run_id=ArtifactFilterFlowRunId(any_=[child.id]),
            )
        )
    tip = icechunk.Repository.open(
        icechunk.local_filesystem_storage(str(tmp_path / "live.icechunk"))
    ).lookup_branch("main")
    # the commit this run made, validated: 24 labels, no gap
    assert f"Snapshot `{tip}`" in str(table.data)
    assert "24 of 24 labels hold data" in str(table.data)
    assert "| gaps | 24 labels | passed |" in str(table.data)


@pytest.mark.usefixtures("events_to_this_api")
def test_a_source_whose_dtype_drifts_is_refused_and_announced(
    tmp_path: Path, scheduler_address: str
) -> None:
    target = Target(repo=str(tmp_path / "drift.icechunk"))
    source: dict[str, Any] = {"kind": "python", "function": "tests.flows.python_sources:drifted"}
    scheduled_append_flow(
        target,
        source,
        scheduled_time=dt.datetime(2020, 1, 1, 23),
        scheduler_address=scheduler_address,
    )
    # from the next day on, the provider sends the temperature as float64
    source["kwargs"] = {"dtype": "float64", "periods": 48}
    repo = icechunk.Repository.open(
        icechunk.local_filesystem_storage(str(tmp_path / "drift.icechunk"))
    )
    tip = repo.lookup_branch("main")
    since = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=5)

    state = scheduled_append_flow(
        target,
        source,
        scheduled_time=dt.datetime(2020, 1, 2, 5),
        scheduler_address=scheduler_address,
        return_state=True,
    )

    assert state.is_failed()
    assert "air_temperature" in str(state.message)
    assert "float64" in str(state.message)
    assert repo.lookup_branch("main") == tip  # nothing of the refused run is visible
    [event] = wait_until(
        lambda: _events(VALIDATION_FAILED, archive_resource_id(target), since), 30, "the event"
    )
    [failed] = event.payload["failed"]
    assert failed["check"] == "append refused"
    assert "air_temperature" in failed["detail"]
    assert event.payload["snapshot_id"] is None


def test_a_backfill_before_the_late_file_arrives_waits_for_it(
    tmp_path: Path, scheduler_address: str
) -> None:
    """The loop without a server: a hole, a validation asking for its backfill, a backfill
    that finds no file yet (completes, commits nothing), the file, the backfill that fills
    it, a clean validation."""
    from tests.deployments.test_self_healing import _write_file

    incoming = tmp_path / "incoming"
    incoming.mkdir()
    start = pd.Timestamp("2026-01-01")
    for k in (0, 1, 3):
        _write_file(incoming, start, k)
    source = {"kind": "files", "paths": [str(incoming / "obs_*.nc")]}
    target = Target(repo=str(tmp_path / "late.icechunk"))
    scheduled_append_flow(
        target,
        source,
        scheduled_time=dt.datetime(2026, 1, 1, 0, 1),
        scheduler_address=scheduler_address,
        late_data="hole",
        validation=False,
    )
    found = validate_flow(target, now=dt.datetime(2026, 1, 1, 0, 1), request_backfills=False)
    assert found.gaps == 1
    repo = icechunk.Repository.open(icechunk.local_filesystem_storage(target.repo))
    before = repo.lookup_branch("main")
    window = {"start": dt.datetime(2026, 1, 1, 0, 0, 10), "end": dt.datetime(2026, 1, 1, 0, 0, 15)}

    early = backfill_flow(target, source, **window, scheduler_address=scheduler_address)

    assert (early.windows_written, early.windows_without_source_data, early.gaps) == (0, 1, 1)
    assert repo.lookup_branch("main") == before
    _write_file(incoming, start, 2)  # the late delivery
    filled = backfill_flow(target, source, **window, scheduler_address=scheduler_address)
    assert (filled.windows_written, filled.gaps) == (1, 0)
    assert validate_flow(target, now=dt.datetime(2026, 1, 1, 0, 1)).ok
