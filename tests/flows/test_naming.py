"""Runs, tasks and artifacts are named after what they do, so the Prefect UI reads well."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId, TaskRunFilter

from flows import Target, append_flow, backfill_flow, create_flow
from flows.naming import archive_name, artifact_key
from tests.flows.python_sources import GRID

pytestmark = pytest.mark.usefixtures("prefect_harness")


def source(periods: int) -> dict[str, Any]:
    return {"kind": "synthetic", "start": "2020-01-01", "periods": periods, **GRID}


def flow_run(run_id: Any) -> Any:
    with get_client(sync_client=True) as client:
        return client.read_flow_run(run_id)


def task_names(run_id: Any) -> list[str]:
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run_id])),
            task_run_filter=TaskRunFilter(),
        )
    return sorted(r.name for r in runs)


def artifact_keys(run_id: Any) -> set[str]:
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run_id]))
        )
    return {a.key for a in artifacts if a.key}


def test_runs_tasks_and_artifacts_are_named_after_the_write(
    tmp_path: Path, scheduler_address: str
) -> None:
    target = Target(repo=str(tmp_path / "era5.icechunk"))
    create_flow(target, source(24), group="surface", scheduler_address=scheduler_address)

    state = append_flow(
        target,
        {**source(48)},
        "time",
        group="surface",
        on_overlap="skip",
        window_end=dt.datetime(2020, 1, 2, 12),
        scheduler_address=scheduler_address,
        return_state=True,
    )

    run = flow_run(state.state_details.flow_run_id)
    assert run.name == "append era5.icechunk/surface → 2020-01-02T12:00"
    assert {"icefloe", "archive:era5.icechunk", "group:surface", "mode:append"} <= set(run.tags)
    names = task_names(run.id)
    assert {"plan", "write_metadata", "write_eager", "verify", "commit"} <= set(names)
    assert "write_lazy 1/1" in names
    assert artifact_key("summary", target, "surface") in artifact_keys(run.id)


def test_backfill_runs_name_their_range_and_key_their_coverage(
    tmp_path: Path, scheduler_address: str
) -> None:
    target = Target(repo=str(tmp_path / "archive"))

    state = backfill_flow(
        target,
        {"kind": "synthetic", "start": "2020-01-01", **GRID},
        start=dt.datetime(2020, 1, 1),
        end=dt.datetime(2020, 1, 2),
        freq="12h",
        scheduler_address=scheduler_address,
        return_state=True,
    )

    run = flow_run(state.state_details.flow_run_id)
    assert run.name == "backfill archive 2020-01-01…2020-01-02"
    assert "mode:backfill" in run.tags
    keys = artifact_keys(run.id)
    assert artifact_key("coverage", target, None) in keys
    assert artifact_key("coverage-plot", target, None) in keys


def test_artifact_keys_are_valid_and_tell_archives_apart() -> None:
    one = artifact_key("summary", Target(repo="s3://a/era5.icechunk"), "Surface/T2M")
    other = artifact_key("summary", Target(repo="s3://b/era5.icechunk"), "Surface/T2M")
    assert one != other
    assert one.startswith("icefloe-summary-era5-icechunk-surface-t2m-")
    assert all(c.islower() or c.isdigit() or c == "-" for c in one)
    assert archive_name("s3://bucket/path/era5.icechunk/") == "era5.icechunk"
