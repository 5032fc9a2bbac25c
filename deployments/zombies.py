"""Zombie runs: flow runs whose process died stay RUNNING until something marks them.

A killed run's flow process reports nothing more, so on a Prefect server (or Cloud) it
stays RUNNING forever, and icefloe's maintenance keeps every snapshot such a run may be
based on (flows/maintenance.py): garbage collection is held back. Prefect's answer is
flow-run heartbeats plus an automation that marks a run Crashed when they stop ("detect
zombie flows" in Prefect's docs); nothing creates that automation by itself.

``ensure_zombie_automation()`` creates (or updates) it for icefloe's flows, and
``heartbeat_environment()`` is what the flow processes need to emit heartbeats often
enough. ``icefloe serve`` does both; for ``prefect deploy`` the build step in
deployments/prefect.yaml runs ``python -m deployments.zombies``.

The data never depends on it: a killed run never moved the branch, and its lock is
taken over by the next run (flows/locks.py). This only keeps the UI and maintenance honest.
"""

from __future__ import annotations

import datetime as dt
import os
import sys
from uuid import UUID

from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import StateType
from prefect.events.actions import ChangeFlowRunState
from prefect.events.schemas.automations import AutomationCore, EventTrigger, Posture

__all__ = [
    "AUTOMATION_NAME",
    "HEARTBEAT_ENV",
    "HEARTBEAT_SECONDS",
    "ensure_zombie_automation",
    "heartbeat_environment",
    "zombie_automation",
]

AUTOMATION_NAME = "icefloe: mark zombie runs crashed"
HEARTBEAT_ENV = "PREFECT_FLOWS_HEARTBEAT_FREQUENCY"
# Prefect's minimum; its default (180 s) would leave a dead run RUNNING for ~10 minutes.
HEARTBEAT_SECONDS = 30
# Three missed heartbeats: one late heartbeat on a busy host is not a crash.
MISSED_HEARTBEATS = 3


def heartbeat_environment() -> dict[str, str]:
    """The environment a flow process needs to send heartbeats every HEARTBEAT_SECONDS
    (unless the environment already chose a frequency)."""
    return {HEARTBEAT_ENV: os.environ.get(HEARTBEAT_ENV) or str(HEARTBEAT_SECONDS)}


def zombie_automation(
    within: dt.timedelta | None = None, flows: str = "icefloe-*", deployments_only: bool = True
) -> AutomationCore:
    """An automation that marks a run of the ``flows`` (a name, ``*`` wildcards allowed)
    Crashed when no event of it followed a heartbeat ``within`` (default: three
    heartbeat intervals).

    ``deployments_only``: only runs of deployments, which ``icefloe serve`` and
    deployments/prefect.yaml start with 30 s heartbeats. A script calling a flow directly
    against the server sends them at Prefect's default (every 180 s): a 90 s window would
    mark its long runs Crashed while they still work.
    """
    related = [{"prefect.resource.role": "flow", "prefect.resource.name": flows}]
    if deployments_only:
        related.append({"prefect.resource.role": "deployment"})
    if within is None:
        heartbeat = int(heartbeat_environment()[HEARTBEAT_ENV])
        within = dt.timedelta(seconds=MISSED_HEARTBEATS * heartbeat)
    return AutomationCore(
        name=AUTOMATION_NAME,
        description="Marks an icefloe flow run Crashed when its heartbeats stop (its process "
        "was killed): it no longer holds maintenance back. Created by icefloe.",
        trigger=EventTrigger(
            after={"prefect.flow-run.heartbeat"},
            expect={"prefect.flow-run.*"},
            match={"prefect.resource.id": "prefect.flow-run.*"},
            match_related=related,  # type: ignore[arg-type]  # every one must match
            for_each={"prefect.resource.id"},
            posture=Posture.Proactive,
            threshold=1,
            within=within,
        ),
        actions=[
            ChangeFlowRunState(
                state=StateType.CRASHED,
                message="icefloe: no heartbeat for too long, the flow process is gone. The "
                "branch was not changed; re-run it (it resumes from finished batches).",
            )
        ],
    )


def ensure_zombie_automation(
    within: dt.timedelta | None = None, deployments_only: bool = True
) -> UUID:
    """Create the automation, or update it to these settings; returns its id (idempotent)."""
    wanted = zombie_automation(within, deployments_only=deployments_only)
    with get_client(sync_client=True) as client:
        existing = client.read_automations_by_name(AUTOMATION_NAME)
        if not existing:
            return client.create_automation(wanted)
        first, *duplicates = existing
        for duplicate in duplicates:  # two serve processes started at once
            client.delete_automation(duplicate.id)
        if first.trigger != wanted.trigger or first.actions != wanted.actions:
            client.update_automation(first.id, wanted)
        return first.id


if __name__ == "__main__":
    automation = ensure_zombie_automation()
    print(f"automation {AUTOMATION_NAME!r}: {automation}", file=sys.stderr)
