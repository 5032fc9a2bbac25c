"""Deployments on a real Prefect server: scheduled appends, backfills three ways, the UI form.

The suite starts ``prefect server start`` and ``icefloe serve`` as processes, triggers
runs through the API and an event, waits for them, and checks the repository.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import icechunk
import numpy as np
import pandas as pd
import pytest
import xarray as xr
from distributed import LocalCluster
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName
from prefect.deployments import run_deployment
from prefect.settings import PREFECT_API_URL, temporary_settings

from flows.sources import SyntheticSource
from tasks.coverage import coverage
from tests.conftest import plain_xarray, read_back
from tests.deployments.conftest import served, stop, wait_until

pytestmark = pytest.mark.slow

GRID = {"ny": 3, "nx": 4}


def _repo(path: Path) -> icechunk.Repository:
    return icechunk.Repository.open(icechunk.local_filesystem_storage(str(path)))


def _appends(path: Path) -> list[str]:
    try:
        history = list(_repo(path).ancestry(branch="main"))
    except Exception:  # not created yet
        return []
    return [s.id for s in history if "icefloe" in (s.metadata or {})]


@pytest.fixture(scope="module")
def serving(
    prefect_server: str, local_cluster: LocalCluster, tmp_path_factory: pytest.TempPathFactory
):  # type: ignore[no-untyped-def]
    """icefloe serve for a repository fed by a source of one label per second."""
    home = tmp_path_factory.mktemp("served")
    start = (pd.Timestamp.now("UTC").tz_localize(None) - pd.Timedelta(seconds=20)).floor("s")
    source = {"kind": "synthetic", "start": str(start), "freq": "1s", "time_chunk": 60, **GRID}
    process = served(
        [
            "--target",
            str(home / "live"),
            "--source",
            json.dumps(source),
            "--interval",
            "4",
            "--scheduler-address",
            local_cluster.scheduler_address,
        ],
        prefect_server,
        home / "serve.log",
    )
    try:
        with temporary_settings({PREFECT_API_URL: prefect_server}):
            wait_until(lambda: len(_deployment_names()) == 5, 120, "icefloe serve to register")
            yield home, source, process
    finally:
        stop(process)


def _deployment_names() -> set[str]:
    with get_client(sync_client=True) as client:
        return {d.name for d in client.read_deployments()}


def test_an_interval_schedule_appends_without_gaps_or_duplicates(serving) -> None:  # type: ignore[no-untyped-def]
    home, source, process = serving
    live = home / "live"

    wait_until(lambda: len(_appends(live)) >= 3, 240, "three scheduled appends")

    assert process.poll() is None, (home / "serve.log").read_text()
    labels = read_back(_repo(live)).indexes["time"]
    assert labels.is_unique
    assert labels.is_monotonic_increasing
    assert (np.diff(labels.values) == np.timedelta64(1, "s")).all()
    assert labels[0] == pd.Timestamp(source["start"])
    found = coverage(_repo(live))
    assert found.gaps == ()
    expected = SyntheticSource(**{**source, "periods": len(labels)}).open()
    xr.testing.assert_identical(
        read_back(_repo(live)), plain_xarray(expected, home, "expected-live")
    )


def test_the_parameter_schema_is_the_typed_form_of_target_and_source(serving) -> None:  # type: ignore[no-untyped-def]
    with get_client(sync_client=True) as client:
        deployments = client.read_deployments(
            deployment_filter=DeploymentFilter(
                name=DeploymentFilterName(
                    any_=["append-scheduled", "write", "backfill", "maintenance"]
                )
            )
        )
    assert {d.name for d in deployments} == {"append-scheduled", "write", "backfill", "maintenance"}
    write = next(d for d in deployments if d.name == "write")
    schema = write.parameter_openapi_schema
    definitions = schema.get("definitions", schema.get("$defs", {}))
    assert {"repo", "branch", "storage_options"} <= set(definitions["Target"]["properties"])
    kinds = json.dumps(schema["properties"]["source"])
    for kind in ("FilesSource", "ZarrSource", "IcechunkSource", "PythonSource", "SyntheticSource"):
        assert kind in kinds
    assert schema["properties"]["mode"]["enum"] == [
        "create",
        "overwrite",
        "modify",
        "append",
        "region",
    ]
    assert write.enforce_parameter_schema


def test_a_backfill_run_through_the_api_lands_every_window_once(serving, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    target = {"repo": str(tmp_path / "archive")}
    source = {"kind": "synthetic", "start": "2020-01-01", "freq": "1h", "time_chunk": 24, **GRID}
    parameters = {
        "target": target,
        "source": source,
        "start": "2020-01-01T00:00:00",
        "end": "2020-01-11T00:00:00",
        "freq": "1D",
    }

    first = run_deployment("icefloe-backfill/backfill", parameters=parameters, timeout=300)
    assert first.state.is_completed(), first.state
    commits = list(_repo(tmp_path / "archive").ancestry(branch="main"))
    second = run_deployment("icefloe-backfill/backfill", parameters=parameters, timeout=300)
    assert second.state.is_completed(), second.state

    # the second run found every window filled and committed nothing
    assert [c.id for c in _repo(tmp_path / "archive").ancestry(branch="main")] == [
        c.id for c in commits
    ]
    expected = SyntheticSource(**{**source, "periods": 240}).open()
    xr.testing.assert_identical(
        read_back(_repo(tmp_path / "archive")), plain_xarray(expected, tmp_path)
    )


def _emit(api_url: str, resource_id: str, payload: dict[str, str]) -> None:
    """``prefect event emit`` as an operator would, against the served server.

    Not emit_event in this process: its events worker is made once per process, and in
    the whole suite an earlier test's harness had made it for another API.
    """
    subprocess.run(
        [
            str(Path(sys.executable).with_name("prefect")),
            "event",
            "emit",
            "icefloe.backfill.requested",
            "--resource-id",
            resource_id,
            "--payload",
            json.dumps(payload),
        ],
        env={**os.environ, "PREFECT_API_URL": api_url},
        check=True,
        capture_output=True,
        timeout=120,
    )


def test_an_event_triggers_the_backfill_deployment(serving, prefect_server: str) -> None:  # type: ignore[no-untyped-def]
    home, source, _ = serving
    live = home / "live"
    wait_until(lambda: len(_appends(live)) >= 1, 60, "a first scheduled append")
    start = pd.Timestamp(source["start"])
    with get_client(sync_client=True) as client:
        before = {r.id for r in client.read_flow_runs()}

    window = {"start": str(start), "end": str(start + pd.Timedelta(seconds=10))}
    # about another archive served on the same server: not this archive's automation
    _emit(prefect_server, "icefloe.archive.elsewhere", window)
    # freq and group left out: the window defaults to 1D (cut at end), the group to the root
    _emit(prefect_server, "icefloe.archive.live", window)

    def backfill_runs_finished():  # type: ignore[no-untyped-def]
        with get_client(sync_client=True) as client:
            backfill = {d.id for d in client.read_deployments() if d.name == "backfill"}
            runs = [r for r in client.read_flow_runs() if r.id not in before]
        return [r for r in runs if r.deployment_id in backfill and r.state and r.state.is_final()]

    try:
        # generous: in the whole suite the server's trigger service and the shared cluster
        # have a backlog (this took over 120 s there once, 20 s alone)
        runs = wait_until(
            backfill_runs_finished, 300, "a backfill run triggered by the event", every=2
        )
    except TimeoutError as err:
        with get_client(sync_client=True) as client:
            seen = [(r.name, r.state_name) for r in client.read_flow_runs() if r.id not in before]
        raise AssertionError(f"{err}; runs since the event: {seen}") from err
    assert all(r.state.is_completed() for r in runs), [r.state for r in runs]
    assert len(runs) == 1, [r.name for r in runs]  # the other archive's event started nothing
    assert runs[0].parameters["freq"] == "1D"


def test_serve_switches_on_zombie_detection(serving, prefect_server: str) -> None:  # type: ignore[no-untyped-def]
    """Its runs send heartbeats (the runner's children inherit the setting) and the
    automation that marks a run Crashed once they stop exists (tests/deployments/
    test_zombies.py shows it at work)."""
    import datetime as dt

    from deployments.zombies import AUTOMATION_NAME, HEARTBEAT_SECONDS, MISSED_HEARTBEATS

    with (
        temporary_settings({PREFECT_API_URL: prefect_server}),
        get_client(sync_client=True) as client,
    ):
        (automation,) = client.read_automations_by_name(AUTOMATION_NAME)
    assert automation.enabled
    assert automation.trigger.within == dt.timedelta(seconds=MISSED_HEARTBEATS * HEARTBEAT_SECONDS)
    assert automation.actions[0].state.value == "CRASHED"


def test_serve_refuses_a_missing_schedule(tmp_path: Path, prefect_server: str) -> None:
    process = served(
        ["--target", str(tmp_path / "x"), "--source", '{"kind": "synthetic"}'],
        prefect_server,
        tmp_path / "log",
    )
    assert process.wait(120) == 1
    assert "--interval" in (tmp_path / "log").read_text()
