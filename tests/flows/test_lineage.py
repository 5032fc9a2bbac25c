"""Lineage: every commit is a materialization of the group's asset with the source upstream,
read back from the Prefect API's events."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import icechunk
import pytest
from prefect.client.orchestration import get_client
from prefect.events.filters import (
    EventFilter,
    EventNameFilter,
    EventOccurredFilter,
    EventResourceFilter,
)
from prefect.events.worker import EventsWorker

from flows import Target, append_flow, create_flow
from flows.lineage import archive_asset_key, source_asset_keys
from flows.sources import FilesSource, IcechunkSource, SyntheticSource
from tests.conftest import wait_until
from tests.flows.python_sources import GRID

pytestmark = pytest.mark.usefixtures("prefect_harness")

MATERIALIZED = "prefect.asset.materialization.succeeded"


def _materializations(key: str, since: dt.datetime, count: int) -> list[Any]:
    def read() -> list[Any]:
        EventsWorker.drain_all(at_exit=False)  # what this process emitted has been sent
        with get_client(sync_client=True) as client:
            page = client.read_events(
                EventFilter(
                    occurred=EventOccurredFilter(since=since),
                    event=EventNameFilter(name=[MATERIALIZED]),
                    resource=EventResourceFilter(id=[key]),
                ),
                limit=50,
            )
        events = sorted(page.events, key=lambda e: e.occurred)
        return events if len(events) >= count else []

    return wait_until(read, 30, f"{count} materializations of {key}")


def _icefloe_commits(path: Path) -> list[Any]:
    repo = icechunk.Repository.open(icechunk.local_filesystem_storage(str(path)))
    return [s for s in reversed(list(repo.ancestry(branch="main"))) if "icefloe" in s.metadata]


def test_every_commit_materializes_the_groups_asset_from_its_source(
    tmp_path: Path, scheduler_address: str
) -> None:
    EventsWorker.drain_all(at_exit=False)  # a worker for this session's API
    since = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=5)
    era5 = Target(repo=str(tmp_path / "era5.icechunk"))
    synthetic = SyntheticSource(start="2020-01-01", periods=48, **GRID)
    create_flow(
        era5,
        synthetic.model_copy(update={"periods": 24}),
        group="surface",
        scheduler_address=scheduler_address,
    )
    append_flow(
        era5,
        synthetic,
        "time",
        group="surface",
        on_overlap="skip",
        scheduler_address=scheduler_address,
    )
    # a second archive written from the first: its upstream is the first's asset
    copy = Target(repo=str(tmp_path / "copy.icechunk"))
    create_flow(
        copy, IcechunkSource(target=era5, group="surface"), scheduler_address=scheduler_address
    )

    key = archive_asset_key(era5, "surface")
    assert key == (tmp_path / "era5.icechunk").absolute().as_uri() + "/surface"
    created, appended = _materializations(key, since, 2)
    commits = _icefloe_commits(tmp_path / "era5.icechunk")
    assert [created.payload["snapshot_id"], appended.payload["snapshot_id"]] == [
        c.id for c in commits
    ]
    assert created.payload["mode"] == "create"
    assert appended.payload["mode"] == "append"
    assert appended.payload["label_range"] == ["2020-01-02 00:00:00", "2020-01-02 23:00:00"]
    assert appended.payload["branch"] == "main"
    assert set(appended.payload["variables"]) >= {"air_temperature", "time"}
    assert appended.resource["prefect.resource.name"] == "era5.icechunk/surface"
    for event in (created, appended):
        upstream = {r.id for r in event.related if r.role == "asset"}
        assert (
            upstream == set(source_asset_keys(synthetic)) == {"synthetic://weather/1h/4x6/standard"}
        )
        assert any(r.id.startswith("prefect.flow-run.") for r in event.related)

    [copied] = _materializations(archive_asset_key(copy, None), since, 1)
    assert {r.id for r in copied.related if r.role == "asset"} == {key}
    assert copied.payload["snapshot_id"] == _icefloe_commits(tmp_path / "copy.icechunk")[0].id


def test_asset_keys_hold_no_credentials_and_no_characters_prefect_refuses() -> None:
    target = Target(repo="s3://bucket/archives/era5.icechunk", branch="dev")
    assert archive_asset_key(target, "a/b") == "s3://bucket/archives/era5.icechunk/a/b"
    files = FilesSource(paths=["s3://user:secret@bucket/in/era5_{start:%Y%m%d}.nc"])
    [key] = source_asset_keys(files)
    assert "secret" not in key
    assert key == "s3://bucket/in/era5__start:_Y_m_d_.nc"
