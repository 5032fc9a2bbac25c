"""The validate flow: check an archive, publish what was found, and ask for what it needs.

    open target → tasks.validation.validate (freshness, NaN fraction of the latest window,
    gaps, structure against the spec) → a markdown table and a PNG, keyed per archive and
    group → events

Events (resource ``icefloe.archive.<name>``, flows/naming.py):

- ``icefloe.backfill.requested`` per gap a backfill can fill, with ``start``, ``end`` and
  ``group`` in its payload: the backfill deployment's automation listens for it
  (deployments/serve.py), so a gap is filled without a human;
- ``icefloe.archive.stale`` when the newest label with data is older than ``max_delay``;
- ``icefloe.validation.failed`` when any check failed, with the failed checks;

the last two for users' own automations (notifications). A gap that a backfill run of the
same archive is already on its way to fill is not requested again.

It runs on its own schedule (the ``validate`` deployment) and at the end of every scheduled
append (flows/scheduled.py), where it sees the commit that run just made.
"""

from __future__ import annotations

import base64
import datetime as dt
import tempfile
from pathlib import Path
from typing import Annotated, Any

from prefect import flow
from prefect.artifacts import create_image_artifact, create_markdown_artifact
from prefect.events import emit_event
from prefect.logging import get_run_logger
from pydantic import BaseModel

from flows.credentials import load_credentials
from flows.forms import FORM
from flows.naming import archive_resource_id, artifact_key, run_name, tag_run, where
from flows.parameter_docs import described
from flows.refusals import refusing
from flows.targets import Target
from tasks.stored import normalize_group
from tasks.validation import Validation, validate

__all__ = [
    "ARCHIVE_STALE",
    "BACKFILL_REQUESTED",
    "VALIDATE_EVERY",
    "VALIDATION_FAILED",
    "ValidationResult",
    "announce_refused_append",
    "validate_flow",
]

BACKFILL_REQUESTED = "icefloe.backfill.requested"
ARCHIVE_STALE = "icefloe.archive.stale"
VALIDATION_FAILED = "icefloe.validation.failed"
# the validate deployment's default schedule, in seconds: validation also runs after every
# scheduled append, and on its own it notices an archive whose appends stopped (stale)
VALIDATE_EVERY = 3600.0


class ValidationResult(BaseModel):
    """What a validation found, in short (the artifact has the table)."""

    ok: bool
    snapshot_id: str
    failed: list[str]
    gaps: int
    stale: bool
    backfills_requested: int


@flow(name="icefloe-validate", flow_run_name=run_name, log_prints=False)
@refusing
@described(
    window=(
        "How many of the newest labels holding data the NaN fraction is computed over; "
        "empty for one chunk along the append dimension."
    ),
    recompute=(
        "Judge every label's coverage from the chunks again instead of reading the commit's "
        "record (O(labels)), and report a record that differs."
    ),
    request_backfills="Emit icefloe.backfill.requested for each gap a backfill can fill.",
    now="Judge freshness at this time; empty for the run's start.",
    append_dim="The dimension to validate along; empty for the spec's (else time).",
)
def validate_flow(
    target: Target,
    group: Annotated[str | None, FORM] = None,
    append_dim: Annotated[str | None, FORM] = None,
    window: Annotated[int | None, FORM] = None,
    recompute: bool = False,
    request_backfills: bool = True,
    now: Annotated[dt.datetime | None, FORM] = None,
) -> ValidationResult:
    """Check the archive's freshness, its latest values, its gaps and its structure against
    its spec; publish the result and request a backfill for each gap."""
    from prefect.runtime import flow_run

    logger = get_run_logger()
    tag_run(target, group, "validate")
    group = normalize_group(group)
    repo = target.open_repository(credentials=load_credentials(target))
    found = validate(
        repo,
        group,
        append_dim,
        branch=target.branch,
        now=now or flow_run.scheduled_start_time or dt.datetime.now(dt.UTC),
        window=window,
        recompute=recompute,
    )
    for check in found.checks:
        if check.status == "failed":
            logger.warning("%s %s: %s", check.check, check.subject, check.detail)
    requested = _request_backfills(found, target) if request_backfills else []
    _publish(found, target, requested)
    _emit_findings(found, target)
    logger.info(
        "validation of %s: %s; %d gaps, %d backfills requested",
        where(target, group),
        "passed" if found.ok else f"{len(found.failed)} checks failed",
        len(found.gaps),
        len(requested),
    )
    return ValidationResult(
        ok=found.ok,
        snapshot_id=found.snapshot_id,
        failed=[f"{c.check} {c.subject}: {c.detail}" for c in found.failed],
        gaps=len(found.gaps),
        stale=found.stale,
        backfills_requested=len(requested),
    )


def _resource(target: Target, group: str | None) -> dict[str, str]:
    return {
        "prefect.resource.id": archive_resource_id(target),
        "prefect.resource.name": where(target, group),
        "icefloe.group": group or "/",
    }


def _request_backfills(found: Validation, target: Target) -> list[dict[str, Any]]:
    """Emit one backfill request per fillable gap that no open backfill run covers yet."""
    logger = get_run_logger()
    open_runs = _open_backfills(target)
    requested = []
    for request in found.backfill_requests():
        if any(_covers(run, request, found.group) for run in open_runs):
            logger.info(
                "gap %s … %s: a backfill of it is already on its way",
                request["start"],
                request["end"],
            )
            continue
        emit_event(BACKFILL_REQUESTED, resource=_resource(target, found.group), payload=request)
        requested.append(request)
    return requested


def _open_backfills(target: Target) -> list[dict[str, Any]]:
    """The parameters of this archive's backfill runs that have not finished yet."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowFilter,
        FlowFilterName,
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType

    unfinished = [StateType.SCHEDULED, StateType.PENDING, StateType.RUNNING, StateType.PAUSED]
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            flow_filter=FlowFilter(name=FlowFilterName(any_=["icefloe-backfill"])),
            flow_run_filter=FlowRunFilter(
                state=FlowRunFilterState(type=FlowRunFilterStateType(any_=unfinished))
            ),
        )
    mine = []
    for run in runs:
        parameters = dict(run.parameters or {})
        repo = (parameters.get("target") or {}).get("repo")
        if repo == target.repo:
            mine.append(parameters)
    return mine


def _covers(parameters: dict[str, Any], request: dict[str, Any], group: str | None) -> bool:
    import pandas as pd

    if normalize_group(parameters.get("group") or None) != group:
        return False
    try:
        start, end = pd.Timestamp(parameters["start"]), pd.Timestamp(parameters["end"])
        return bool(start <= pd.Timestamp(request["start"]) and pd.Timestamp(request["end"]) <= end)
    except (KeyError, TypeError, ValueError):
        return False


def _emit_findings(found: Validation, target: Target) -> None:
    resource = _resource(target, found.group)
    if found.stale:
        f = found.freshness
        emit_event(
            ARCHIVE_STALE,
            resource=resource,
            payload={
                "newest": f.newest,
                "lag_seconds": None if f.lag is None else f.lag.total_seconds(),
                "max_delay_seconds": None if f.max_delay is None else f.max_delay.total_seconds(),
                "snapshot_id": found.snapshot_id,
            },
        )
    if not found.ok:
        emit_event(
            VALIDATION_FAILED,
            resource=resource,
            payload={
                "snapshot_id": found.snapshot_id,
                "failed": [
                    {"check": c.check, "subject": c.subject, "detail": c.detail}
                    for c in found.failed
                ],
            },
        )


def announce_refused_append(target: Target, group: str | None, error: BaseException) -> None:
    """``icefloe.validation.failed`` for a scheduled append the plan refused (the branch
    is unchanged): the source no longer fits the archive, and nothing else would tell."""
    emit_event(
        VALIDATION_FAILED,
        resource=_resource(target, group),
        payload={
            "snapshot_id": None,
            "failed": [
                {"check": "append refused", "subject": where(target, group), "detail": str(error)}
            ],
        },
    )


def _publish(found: Validation, target: Target, requested: list[dict[str, Any]]) -> None:
    title = f"validation of {target.describe()}"
    note = (
        f"\n\n{len(requested)} backfill(s) requested with {BACKFILL_REQUESTED}."
        if requested
        else ""
    )
    create_markdown_artifact(
        markdown=f"{found.markdown()}{note}\n\n_{title}_",
        key=artifact_key("validation", target, found.group),
        description=f"{'passed' if found.ok else 'failed'}: {title}",
    )
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "validation.png"
        found.plot(str(path))
        # Prefect shows images by URL; a data URL keeps the PNG with the artifact itself
        data = base64.b64encode(path.read_bytes()).decode()
        create_image_artifact(
            image_url=f"data:image/png;base64,{data}",
            key=artifact_key("validation-plot", target, found.group),
            description=f"coverage and the latest values' NaN fractions: {title}",
        )
