"""``icefloe serve``: one process that serves icefloe's deployments for one repository.

    append-scheduled  every interval (or cron), append what the source has up to now
    write             ad-hoc writes from the Prefect UI, parameters as a typed form
    backfill          manual, CLI, or an event: icefloe.backfill.requested about this
                      archive (resource id icefloe.archive.<archive name>)
    validate          hourly (and after each scheduled append): freshness, NaN fraction,
                      gaps, structure; requests a backfill per gap (flows/validate.py)
    maintenance       weekly: expire old snapshots and collect garbage

Parameters are enforced against the flows' schemas, so a wrong value from the UI or
the API is refused before a run starts. Runs send heartbeats every 30 s, and an
automation marks a run whose heartbeats stopped Crashed (deployments/zombies.py).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
from typing import Any

from prefect import serve
from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy
from prefect.deployments.runner import RunnerDeployment
from prefect.events import DeploymentEventTrigger

from deployments.zombies import ensure_zombie_automation, heartbeat_environment
from flows.backfill import backfill_flow
from flows.credentials import load_credentials
from flows.forms import form_properties
from flows.maintenance import maintenance_flow
from flows.naming import archive_resource_id
from flows.scheduled import LateData, first_run_preview, last_label, scheduled_append_flow
from flows.sources import SourceModel
from flows.targets import Target
from flows.validate import BACKFILL_REQUESTED, VALIDATE_EVERY, validate_flow
from flows.write import write_flow
from tasks.errors import TargetNotFoundError

BACKFILL_FREQ = "1D"  # backfill_flow's default window, for events that name none
WEEKLY = "0 3 * * 0"  # Sundays 03:00 UTC, when most archives are quiet


def backfill_trigger(target: Target, group: str | None) -> DeploymentEventTrigger:
    """The automation that runs the backfill when an event about this archive asks for it.

    ``freq`` and ``group`` are optional in the event: an absent one renders as this
    deployment's own value (Jinja's ``or``), never as an empty string the flow would refuse.
    """
    resource = archive_resource_id(target)
    return DeploymentEventTrigger(
        name=f"icefloe: backfill {resource.removeprefix('icefloe.archive.')} on request",
        description=(
            f"Runs the backfill deployment of {target.describe()} when an {BACKFILL_REQUESTED} "
            f"event about {resource} arrives; its payload gives start and end (ISO times) "
            f"and optionally freq (default {BACKFILL_FREQ}) and group."
        ),
        expect={BACKFILL_REQUESTED},
        match={"prefect.resource.id": resource},
        parameters={
            "start": "{{ event.payload.start }}",
            "end": "{{ event.payload.end }}",
            # parenthesised: Prefect appends "| tojson", which binds tighter than "or"
            "freq": "{{ (event.payload.freq or " + json.dumps(BACKFILL_FREQ) + ") }}",
            "group": "{{ (event.payload.group or " + json.dumps(group or "") + ") }}",
        },
    )


def build_deployments(
    target: Target,
    source: SourceModel,
    group: str | None = None,
    append_dim: str = "time",
    interval: float | None = None,
    cron: str | None = None,
    scheduler_address: str | None = None,
    start: dt.datetime | None = None,
    late_data: LateData = "wait",
    validate_every: float = VALIDATE_EVERY,
) -> list[RunnerDeployment]:
    """The five deployments, pointed at ``target`` and ``source``; the scheduled append
    handles late data as ``late_data`` says (docs/spec.md), and validation runs every
    ``validate_every`` seconds besides after each scheduled append."""
    if (interval is None) == (cron is None):
        raise ValueError("give the scheduled append either --interval SECONDS or --cron EXPR")
    # Unset values are left out, not sent as null: Prefect checks a deployment's parameters
    # against the published schema, where optional fields are plain fields (flows/forms.py).
    common: dict[str, Any] = {
        "target": target.model_dump(exclude_none=True),
        "source": source.model_dump(exclude_none=True),
    }
    where = {k: v for k, v in {"group": group, "scheduler_address": scheduler_address}.items() if v}
    schedule: dict[str, Any] = (
        {"interval": dt.timedelta(seconds=interval)} if interval is not None else {"cron": cron}
    )
    deployments = [
        scheduled_append_flow.to_deployment(
            name="append-scheduled",
            parameters={
                **common,
                **where,
                "append_dim": append_dim,
                **({"start": start.isoformat()} if start is not None else {}),
                "late_data": late_data,
            },
            enforce_parameter_schema=True,
            # A run catches up everything up to its scheduled time, so a run scheduled while
            # another is still going has nothing of its own to do: it is cancelled at once.
            # (Enqueued, each one sat in AwaitingConcurrencySlot and the runner logged
            # "Aborted submission ... non-pending state 'SCHEDULED'" every poll.)
            concurrency_limit=ConcurrencyLimitConfig(
                limit=1, collision_strategy=ConcurrencyLimitStrategy.CANCEL_NEW
            ),
            **schedule,
        ),
        write_flow.to_deployment(
            name="write", parameters={**common, **where}, enforce_parameter_schema=True
        ),
        backfill_flow.to_deployment(
            name="backfill",
            parameters={**common, **where, "append_dim": append_dim},
            enforce_parameter_schema=True,
            triggers=[backfill_trigger(target, group)],
        ),
        validate_flow.to_deployment(
            name="validate",
            parameters={"target": common["target"], **({"group": group} if group else {})},
            enforce_parameter_schema=True,
            # a validation scheduled while another runs would find the same: cancelled
            concurrency_limit=ConcurrencyLimitConfig(
                limit=1, collision_strategy=ConcurrencyLimitStrategy.CANCEL_NEW
            ),
            interval=dt.timedelta(seconds=validate_every),
        ),
        maintenance_flow.to_deployment(
            name="maintenance",
            parameters={"target": common["target"]},
            cron=WEEKLY,
            enforce_parameter_schema=True,
        ),
    ]
    for deployment in deployments:
        # The flows' optional parameters are published without their null branch (a form
        # field, not a "None" tab: flows/forms.py); without "default": null as well, the
        # server's parameter check still takes an explicit null for them.
        form_properties({"properties": deployment._parameter_openapi_schema.properties})
    return deployments


def what_runs_will_do(
    target: Target,
    source: SourceModel,
    group: str | None = None,
    append_dim: str = "time",
    start: dt.datetime | None = None,
    now: dt.datetime | None = None,
    validate_every: float = VALIDATE_EVERY,
) -> list[str]:
    """What ``serve`` says before it serves: what the next scheduled run will write, and
    the event that starts a backfill. A first run against an empty target can write years
    of data (the synthetic source starts in 2020): the operator reads it here first."""
    now = now or dt.datetime.now(dt.UTC)
    try:
        repo = target.open_repository(credentials=load_credentials(target))
        last = last_label(repo, target.branch, group, append_dim)
    except TargetNotFoundError:
        last = None
    if last is None:
        next_run = first_run_preview(source, now, start)
    else:
        next_run = f"the next run appends the labels after {last} up to its scheduled time"
    resource = archive_resource_id(target)
    return [
        f"{target.describe()}: {next_run}",
        f"backfill on an event: prefect event emit {BACKFILL_REQUESTED} --resource-id {resource} "
        '--payload \'{"start": "2024-01-01", "end": "2024-02-01"}\'',
        "validation after each scheduled append and every "
        f"{_duration(validate_every)}: gaps are backfilled through that event",
    ]


def serve_deployments(*, verbose: bool = False, **kwargs: Any) -> None:
    """Serve the deployments until interrupted."""
    deployments = build_deployments(**kwargs)
    preview = {
        k: kwargs[k]
        for k in ("target", "source", "group", "append_dim", "start", "validate_every")
        if k in kwargs
    }
    for line in what_runs_will_do(**preview):
        print(line, flush=True)
    # The runs are this process's children and inherit its environment.
    os.environ.update(heartbeat_environment())
    if not verbose:
        os.environ.update(quiet_run_environment())
        # One INFO line per scheduled run cancelled because the previous one was still
        # going (by design, see concurrency_limit above); the UI shows those runs.
        logging.getLogger("prefect.runner.state_proposer").setLevel(logging.WARNING)
    ensure_zombie_automation()
    serve(*deployments)


def quiet_run_environment() -> dict[str, str]:
    """What keeps a served run's console to its own log lines (``--verbose`` skips it).

    Every run starts a LocalCluster whose start-up and shutdown log ~70 ``distributed.*``
    INFO lines, and icechunk warns on each local-filesystem commit that it is not safe for
    concurrent writers (icefloe's file lock already makes them take turns). Both are
    by design and say nothing about the run; a value the user set already is kept.
    """
    quiet = {
        "DASK_LOGGING__DISTRIBUTED": "warning",
        "ICECHUNK_LOG": "error",
    }
    return {k: v for k, v in quiet.items() if k not in os.environ}


def _duration(seconds: float) -> str:
    return str(dt.timedelta(seconds=round(seconds)))
