"""Synchronous flow runs still send heartbeats, and no longer wait for their thread at exit."""

from __future__ import annotations

import time
from typing import Any

import prefect.flow_engine
import pytest
from prefect import flow
from prefect.client.orchestration import get_client
from prefect.context import FlowRunContext
from prefect.events.worker import EventsWorker
from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

import flows.write  # noqa: F401  # installs the change, as importing any flow does
from flows import heartbeats

pytestmark = pytest.mark.usefixtures("prefect_harness")


def _heartbeats_of(run_id: str) -> list[dict[str, Any]]:
    with get_client(sync_client=True) as client:
        response = client.request(
            "POST",
            "/events/filter",
            json={
                "filter": {
                    "event": {"name": ["prefect.flow-run.heartbeat"]},
                    "resource": {"id": [f"prefect.flow-run.{run_id}"]},
                    "order": "ASC",
                },
                "limit": 50,
            },
        )
        response.raise_for_status()
        events: list[dict[str, Any]] = response.json()["events"]
        return events


def test_a_synchronous_run_sends_its_heartbeat_and_ends_without_joining_the_thread() -> None:
    assert heartbeats.installed()
    assert prefect.flow_engine._send_heartbeats is heartbeats._send_heartbeats_without_join

    @flow(name="icefloe-heartbeat-check")
    def beating() -> str:
        context = FlowRunContext.get()
        assert context is not None
        assert context.flow_run is not None
        return str(context.flow_run.id)

    with temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: 30}):
        run_id = beating()

    EventsWorker.drain_all()
    deadline = time.monotonic() + 30
    while not (found := _heartbeats_of(run_id)) and time.monotonic() < deadline:
        time.sleep(0.5)
    # the first heartbeat goes out as the run starts, and only that one in a short run
    assert len(found) == 1, found
