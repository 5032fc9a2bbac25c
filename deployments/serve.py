"""``icefloe serve``: one process that serves icefloe's deployments for one repository.

    append-scheduled  every interval (or cron), append what the source has up to now
    write             ad-hoc writes from the Prefect UI, parameters as a typed form
    backfill          manual, CLI, or an event: icefloe.backfill.requested
    maintenance       weekly: expire old snapshots and collect garbage

Parameters are enforced against the flows' schemas, so a wrong value from the UI or
the API is refused before a run starts. Runs send heartbeats every 30 s, and an
automation marks a run whose heartbeats stopped Crashed (deployments/zombies.py).
"""

from __future__ import annotations

import datetime as dt
import os
from typing import Any

from prefect import serve
from prefect.deployments.runner import RunnerDeployment
from prefect.events import DeploymentEventTrigger

from deployments.zombies import ensure_zombie_automation, heartbeat_environment
from flows.backfill import backfill_flow
from flows.maintenance import maintenance_flow
from flows.scheduled import scheduled_append_flow
from flows.sources import SourceModel
from flows.targets import Target
from flows.write import write_flow

BACKFILL_EVENT = "icefloe.backfill.requested"
WEEKLY = "0 3 * * 0"  # Sundays 03:00 UTC, when most archives are quiet


def build_deployments(
    target: Target,
    source: SourceModel,
    group: str | None = None,
    append_dim: str = "time",
    interval: float | None = None,
    cron: str | None = None,
    scheduler_address: str | None = None,
) -> list[RunnerDeployment]:
    """The four deployments, pointed at ``target`` and ``source``."""
    if (interval is None) == (cron is None):
        raise ValueError("give the scheduled append either --interval SECONDS or --cron EXPR")
    common: dict[str, Any] = {"target": target.model_dump(), "source": source.model_dump()}
    where = {"group": group, "scheduler_address": scheduler_address}
    schedule: dict[str, Any] = (
        {"interval": dt.timedelta(seconds=interval)} if interval is not None else {"cron": cron}
    )
    backfill_trigger = DeploymentEventTrigger(
        expect={BACKFILL_EVENT},
        parameters={
            "start": "{{ event.payload.start }}",
            "end": "{{ event.payload.end }}",
            "freq": "{{ event.payload.freq }}",
        },
    )
    return [
        scheduled_append_flow.to_deployment(
            name="append-scheduled",
            parameters={**common, **where, "append_dim": append_dim},
            enforce_parameter_schema=True,
            # a run that starts late catches up on its own: later ones wait, never pile up
            concurrency_limit=1,
            **schedule,
        ),
        write_flow.to_deployment(
            name="write", parameters={**common, **where}, enforce_parameter_schema=True
        ),
        backfill_flow.to_deployment(
            name="backfill",
            parameters={**common, **where, "append_dim": append_dim},
            enforce_parameter_schema=True,
            triggers=[backfill_trigger],
        ),
        maintenance_flow.to_deployment(
            name="maintenance",
            parameters={"target": target.model_dump()},
            cron=WEEKLY,
            enforce_parameter_schema=True,
        ),
    ]


def serve_deployments(**kwargs: Any) -> None:
    """Serve the deployments until interrupted."""
    deployments = build_deployments(**kwargs)
    # The runs are this process's children and inherit its environment.
    os.environ.update(heartbeat_environment())
    ensure_zombie_automation()
    serve(*deployments)
