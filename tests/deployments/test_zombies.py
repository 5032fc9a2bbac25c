"""Zombie runs on a real ``prefect server start``: a SIGKILLed run is marked Crashed.

The automation (deployments/zombies.py) is test-scaled here: a run is a zombie 10 s after
its last heartbeat instead of 90 s (10 s is Prefect 3.9's minimum `within` for a
proactive trigger). Prefect sends a run's first heartbeat as it starts,
so a run killed a few seconds in has sent exactly one.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from uuid import UUID

import icechunk
import pytest
from distributed import LocalCluster
from prefect.client.orchestration import get_client
from prefect.settings import PREFECT_API_URL, temporary_settings

from deployments.zombies import (
    AUTOMATION_NAME,
    HEARTBEAT_ENV,
    ensure_zombie_automation,
    zombie_automation,
)
from flows import Target, create_flow
from tests.conftest import tip, wait_until
from tests.flows.test_resume import FIRST_DAY

pytestmark = pytest.mark.slow

WITHIN = dt.timedelta(seconds=10)


@pytest.fixture
def automation(prefect_server: str) -> Iterator[UUID]:
    with temporary_settings({PREFECT_API_URL: prefect_server}):
        # the run below is called directly, not through a deployment
        automation_id = ensure_zombie_automation(within=WITHIN, deployments_only=False)
        try:
            yield automation_id
        finally:
            # a zombie after 10 s would crash the session's other, live, runs
            with get_client(sync_client=True) as client:
                client.delete_automation(automation_id)


def test_ensure_zombie_automation_is_idempotent(automation: UUID, prefect_server: str) -> None:
    with temporary_settings({PREFECT_API_URL: prefect_server}):
        assert ensure_zombie_automation(within=WITHIN, deployments_only=False) == automation
        with get_client(sync_client=True) as client:
            (stored,) = client.read_automations_by_name(AUTOMATION_NAME)
    assert stored.trigger == zombie_automation(WITHIN, deployments_only=False).trigger


def test_a_killed_run_is_marked_crashed_after_its_heartbeats_stop(
    automation: UUID, prefect_server: str, tmp_path: Path, local_cluster: LocalCluster
) -> None:
    # local_cluster, not tests/flows' scheduler_address fixture: that one is not visible here
    target = Target(repo=str(tmp_path / "repo"))
    with temporary_settings({PREFECT_API_URL: prefect_server}):
        create_flow(target, FIRST_DAY, scheduler_address=str(local_cluster.scheduler_address))
    repo = icechunk.Repository.open(icechunk.local_filesystem_storage(target.repo))
    before = tip(repo)
    at = tmp_path / "at.json"
    env = {
        **os.environ,
        "PREFECT_API_URL": prefect_server,
        HEARTBEAT_ENV: "30",
        "PREFECT_LOCAL_STORAGE_PATH": str(tmp_path / "results"),
    }
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.flows.crash_run",
            target.repo,
            "write_metadata",
            str(at),
            str(tmp_path / "batches"),
            "zombie",
        ],
        cwd=Path(__file__).parents[2],
        env=env,
    )
    try:
        wait_until(at.exists, 120, "the run to start", every=0.2)
        run_id = json.loads(at.read_text())["flow_run_id"]
        time.sleep(2)  # its first heartbeat is on its way
    finally:
        process.kill()
        process.wait()

    def state() -> str:
        with get_client(sync_client=True) as client:
            run = client.read_flow_run(UUID(run_id))
        return run.state.type.value if run.state else ""

    with temporary_settings({PREFECT_API_URL: prefect_server}):
        assert state() == "RUNNING"  # what a killed run looked like before
        wait_until(lambda: state() == "CRASHED", 90, "the zombie run to be marked crashed", every=1)
        with get_client(sync_client=True) as client:
            message = client.read_flow_run(UUID(run_id)).state.message  # type: ignore[union-attr]
    assert "heartbeat" in (message or "")
    assert tip(repo) == before
