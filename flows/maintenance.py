"""The maintenance flow: expire old snapshots and collect garbage, never under an open run.

Chunks are uploaded before their commit, so collecting garbage younger than a run still
in flight deletes chunks that run will commit (docs/stack-facts.md). Before anything is deleted
the flow asks the Prefect API for icefloe's open runs (RUNNING or PENDING runs of the
flows named ``icefloe-*``) and refuses, with a PlanError, a cutoff younger than the
oldest of them minus ``margin``. The margin covers writers Prefect does not know about
(the library used directly) and clock skew between machines.

Chunks are not all an open run needs: it commits onto its base snapshot (the branch tip
when it started), and an expired and collected base makes its commit fail
(SnapshotNotFoundError) once another commit moved the branch. So the cutoff is also kept
older than every snapshot that may be an open run's base, on every branch.
"""

from __future__ import annotations

import datetime as dt
from uuid import UUID

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.client.orchestration import SyncPrefectClient, get_client
from prefect.client.schemas.filters import (
    FlowFilter,
    FlowFilterName,
    FlowRunFilter,
    FlowRunFilterState,
    FlowRunFilterStateType,
)
from prefect.client.schemas.objects import StateType
from prefect.client.schemas.sorting import FlowRunSort
from prefect.logging import get_run_logger
from pydantic import BaseModel

from flows import heartbeats
from flows.credentials import load_credentials
from flows.lifeline import ensure_lifeline
from flows.metadata import current_run
from flows.naming import run_name
from flows.parameter_docs import described
from flows.refusals import refusing
from flows.targets import Target, safe_url
from tasks.errors import PlanError
from tasks.maintenance import DEFAULT_MARGIN, check_cutoff, expire_and_collect
from tasks.plan import human_bytes

# synchronous flow runs end without waiting out their heartbeat thread's sleep
heartbeats.install()

__all__ = ["FLOW_NAME_PREFIX", "MaintenanceResult", "maintenance_flow", "oldest_open_run"]

FLOW_NAME_PREFIX = "icefloe-"
OPEN_STATES = (StateType.RUNNING, StateType.PENDING)
_PAGE = 200


class MaintenanceResult(BaseModel):
    """What one maintenance run did (or, for a dry run, would delete); JSON-serialisable."""

    repo: str  # without user info or query, like every description icefloe shows
    cutoff: dt.datetime  # the one applied: older than requested when open runs' bases need it
    requested_cutoff: dt.datetime
    kept_bases: list[str]  # snapshots kept for open runs, which the requested cutoff expired
    oldest_open_run: dt.datetime | None
    dry_run: bool
    snapshots_expired: int
    chunks_deleted: int
    manifests_deleted: int
    snapshots_deleted: int
    bytes_deleted: int


@task(name="oldest_open_run", cache_policy=NO_CACHE, persist_result=False, retries=2)
def oldest_open_run(exclude: str | None = None) -> dt.datetime | None:
    """When the oldest RUNNING or PENDING run of an icefloe flow started (or is expected to
    start), as an aware UTC time; None when there is none. ``exclude`` is a flow run id
    (the maintenance run itself)."""
    oldest: dt.datetime | None = None
    with get_client(sync_client=True) as client:
        offset = 0
        while True:
            runs = client.read_flow_runs(
                # like_ is a substring match: the prefix is checked below
                flow_filter=FlowFilter(name=FlowFilterName(like_=FLOW_NAME_PREFIX)),
                flow_run_filter=FlowRunFilter(
                    state=FlowRunFilterState(type=FlowRunFilterStateType(any_=list(OPEN_STATES)))
                ),
                sort=FlowRunSort.ID_DESC,  # stable paging; the minimum is taken below
                limit=_PAGE,
                offset=offset,
            )
            flow_names = _flow_names(client, {run.flow_id for run in runs})
            for run in runs:
                if str(run.id) == exclude:
                    continue
                if not flow_names.get(run.flow_id, "").startswith(FLOW_NAME_PREFIX):
                    continue
                started = run.start_time or run.expected_start_time or run.created
                if started is None:
                    continue
                started = dt.datetime.fromtimestamp(started.timestamp(), dt.UTC)
                if oldest is None or started < oldest:
                    oldest = started
            if len(runs) < _PAGE:
                return oldest
            offset += _PAGE


def _flow_names(client: SyncPrefectClient, flow_ids: set[UUID]) -> dict[UUID, str]:
    return {flow_id: client.read_flow(flow_id).name for flow_id in flow_ids}


@task(name="expire_and_collect", cache_policy=NO_CACHE, persist_result=False, retries=0)
def _expire_and_collect(
    target: Target,
    cutoff: dt.datetime,
    open_run: dt.datetime | None,
    margin: dt.timedelta,
    dry_run: bool,
) -> MaintenanceResult:
    repo = target.open_repository(credentials=load_credentials(target))
    summary = expire_and_collect(repo, cutoff, open_run, margin=margin, dry_run=dry_run)
    if summary.kept_bases:
        get_run_logger().warning(
            "cutoff lowered from %s to %s to keep snapshots %s: open runs may be based on them",
            cutoff.isoformat(),
            summary.cutoff.isoformat(),
            ", ".join(summary.kept_bases),
        )
    return MaintenanceResult(
        repo=safe_url(target.repo),
        cutoff=summary.cutoff,
        requested_cutoff=cutoff,
        kept_bases=summary.kept_bases,
        oldest_open_run=open_run,
        dry_run=dry_run,
        snapshots_expired=summary.snapshots_expired,
        chunks_deleted=summary.chunks_deleted,
        manifests_deleted=summary.manifests_deleted,
        snapshots_deleted=summary.snapshots_deleted,
        bytes_deleted=summary.bytes_deleted,
    )


@flow(name="icefloe-maintenance", flow_run_name=run_name)
@refusing
@described(
    older_than="Expire snapshots older than this time, or this age (e.g. 7 days).",
    margin="How much older than the oldest open icefloe run the cutoff must be.",
    dry_run="Only count what would be collected; delete nothing.",
)
def maintenance_flow(
    target: Target,
    older_than: dt.datetime | dt.timedelta = dt.timedelta(days=7),
    margin: dt.timedelta = DEFAULT_MARGIN,
    dry_run: bool = False,
) -> MaintenanceResult:
    """Expire snapshots older than ``older_than`` (a time, or an age) and delete what no
    branch or tag reaches any more; ``dry_run`` only counts what would be collected.

    Refuses (PlanError) a cutoff younger than the oldest open icefloe run minus ``margin``.
    A dry run does not expire snapshots, so it counts only what is unreachable already."""
    logger = get_run_logger()
    ensure_lifeline()  # killed, the run leaves no process behind (flows.lifeline)
    if margin < dt.timedelta(0):
        raise PlanError(
            f"margin={margin} is negative: it must be zero or more (default {DEFAULT_MARGIN})"
        )
    now = dt.datetime.now(dt.UTC)
    if isinstance(older_than, dt.timedelta):
        cutoff = now - older_than
    else:
        cutoff = older_than if older_than.tzinfo else older_than.replace(tzinfo=dt.UTC)
    open_run = oldest_open_run(exclude=current_run().flow_run_id)
    logger.info(
        "cutoff %s; oldest open icefloe run: %s; margin %s",
        cutoff.isoformat(),
        open_run.isoformat() if open_run else "none",
        margin,
    )
    # Checked here, before the repository is even opened, and again right before deleting.
    check_cutoff(cutoff, open_run, margin=margin)
    result = _expire_and_collect(target, cutoff, open_run, margin, dry_run)
    verb = "would delete" if dry_run else "deleted"
    logger.info(
        "%s: expired %d snapshots; %s %d chunks, %d manifests, %d snapshots (%s)",
        result.repo,
        result.snapshots_expired,
        verb,
        result.chunks_deleted,
        result.manifests_deleted,
        result.snapshots_deleted,
        human_bytes(result.bytes_deleted),
    )
    _publish_summary(result)
    return result


def _publish_summary(result: MaintenanceResult) -> None:
    title = "icefloe maintenance" + (" (dry run: nothing deleted)" if result.dry_run else "")
    rows = [
        ("repository", result.repo),
        ("cutoff", result.cutoff.isoformat()),
        ("requested cutoff", result.requested_cutoff.isoformat()),
        ("snapshots kept for open runs", ", ".join(result.kept_bases) or "none"),
        (
            "oldest open run",
            result.oldest_open_run.isoformat() if result.oldest_open_run else "none",
        ),
        ("snapshots expired", str(result.snapshots_expired)),
        ("chunks deleted", str(result.chunks_deleted)),
        ("manifests deleted", str(result.manifests_deleted)),
        ("snapshots deleted", str(result.snapshots_deleted)),
        ("bytes deleted", human_bytes(result.bytes_deleted)),
    ]
    table = "\n".join(f"| {key} | {value} |" for key, value in rows)
    note = (
        "\n\nA dry run expires nothing, so the counts cover only objects unreachable already; "
        "the deleted columns say what a real run would delete of them.\n"
        if result.dry_run
        else "\n"
    )
    create_markdown_artifact(
        markdown=f"# {title}\n\n| | |\n|---|---|\n{table}{note}",
        description=f"icefloe maintenance of {result.repo}",
    )
