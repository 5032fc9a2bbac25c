"""One Prefect flow per write mode: create, modify, append and region.

Each flow only chooses the writer's mode; ``_write`` is the process they share:

    open target → open source → plan → write_metadata → write_eager → verify
    → write_lazy (batches) → commit → summary

Nothing is visible on the branch before the commit: the phases work in a fork of the
branch tip, persisted under the run's key, so a killed run re-run with the same key
resumes from its finished phases and batches; the commit merges them at the run's
base and publishes them with one commit (rebased with conflict detection when the
branch moved). Runs that change metadata are serialized per repository and group;
region runs run side by side. The lazy write runs on the flow's DaskTaskRunner (see
flows.runner); everything else runs in the flow process.
"""

import datetime as dt
import functools
import hashlib
import json
import math
import random
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import icechunk
import xarray as xr
from prefect import flow, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.context import FlowRunContext
from prefect.logging import get_run_logger
from pydantic import BaseModel, ConfigDict, Field

from flows.lifeline import ensure_lifeline
from flows.locks import serialized
from flows.metadata import commit_metadata, current_run, parameters_digest
from flows.results import WriteResult
from flows.runner import scheduler_address as resolve_scheduler_address
from flows.runner import task_runner
from flows.sources import IcechunkSource, Source, SourceModel
from flows.targets import Target, TargetError, TargetNotFoundError, safe_url
from tasks import phases
from tasks.audit import AuditRules, audit_snapshot
from tasks.errors import CommitConflictError
from tasks.plan import WritePlan, human_bytes
from tasks.planner import OnOverlap, RegionSpec
from tasks.publish import Audit
from tasks.writer import XarrayDatasetWriter

__all__ = [
    "RegionParameter",
    "RunOptions",
    "append_flow",
    "create_flow",
    "modify_flow",
    "region_flow",
]

# About one GiB per resumable batch: small enough to lose little when killed, large
# enough that each batch keeps a cluster busy.
BATCH_BYTES = 2**30

Encoding = dict[str, dict[str, Any]]
RegionParameter = Literal["auto"] | dict[str, tuple[int, int] | Literal["auto"]]
"""A region as JSON can carry it: "auto", or per dimension [start, stop) or "auto"."""

Choose = Callable[[XarrayDatasetWriter], XarrayDatasetWriter]


class RunOptions(BaseModel):
    """How a run survives being killed, retried and overlapped; the defaults suit most runs."""

    model_config = ConfigDict(extra="forbid")

    run_key: str | None = Field(
        default=None,
        description="Names the run for resuming: re-running with the same key, branch tip and "
        "source skips the phases and batches already done. Default: a digest of the parameters.",
    )
    batches: int | None = Field(
        default=None,
        ge=1,
        description="Split the lazy write into this many resumable batches along the append "
        "dimension (or the first dimension). Default: about one per GiB.",
    )
    publish: Literal["direct", "staged"] = Field(
        default="direct",
        description="'staged' commits to the branch icefloe/<run id> first, audits that "
        "commit, then moves the target branch to it (write-audit-publish).",
    )
    max_nan_fraction: float | None = Field(
        default=None,
        ge=0,
        le=1,
        description="Staged runs only: refuse to publish when a written variable is missing "
        "more than this fraction of its values.",
    )
    serialize: bool = Field(
        default=True,
        description="Runs that change metadata (create, modify, append) wait for the group's "
        "lock (kept in the repository's storage) so they never fail on each other. A killed "
        "holder's lock is taken over at once on the same host, else after its lease "
        "($ICEFLOE_LOCK_LEASE_SECONDS, 20 s).",
    )
    start_over_attempts: int = Field(
        default=3,
        ge=1,
        description="Region runs only: how often to start over from the new branch tip when "
        "another run changed the arrays' metadata meanwhile (never when chunks overlap).",
    )


@flow(name="icefloe-create", task_runner=task_runner())
def create_flow(
    target: Target,
    source: Source,
    group: str | None = None,
    overwrite: bool = False,
    encoding: Encoding | None = None,
    dry_run: bool = False,
    scheduler_address: str | None = None,
    options: RunOptions | None = None,
) -> WriteResult:
    """Create the group from the source (creating the repository if needed); ``overwrite``
    replaces an existing group, otherwise an existing group is an error."""
    return _write(
        _Run(
            target,
            source,
            group,
            dry_run,
            scheduler_address,
            options or RunOptions(),
            kind="create",
            overwrite=overwrite,
            create_repository=True,
        ),
        lambda writer: writer.for_create_or_overwrite(
            group, mode="w" if overwrite else "w-", encoding=encoding
        ),
    )


@flow(name="icefloe-modify", task_runner=task_runner())
def modify_flow(
    target: Target,
    source: Source,
    group: str | None = None,
    only_new_vars: bool = False,
    encoding: Encoding | None = None,
    dry_run: bool = False,
    scheduler_address: str | None = None,
    options: RunOptions | None = None,
) -> WriteResult:
    """Add the source's variables to the group and overwrite the ones it has (only the new
    ones with ``only_new_vars``); attributes are merged."""

    def choose(writer: XarrayDatasetWriter) -> XarrayDatasetWriter:
        writer = writer.for_modify(group, encoding=encoding)
        return writer.drop_existing_vars() if only_new_vars else writer

    return _write(
        _Run(
            target,
            source,
            group,
            dry_run,
            scheduler_address,
            options or RunOptions(),
            kind="modify",
        ),
        choose,
    )


@flow(name="icefloe-append", task_runner=task_runner())
def append_flow(
    target: Target,
    source: Source,
    append_dim: str,
    group: str | None = None,
    on_overlap: OnOverlap = "error",
    dry_run: bool = False,
    scheduler_address: str | None = None,
    options: RunOptions | None = None,
    window_start: dt.datetime | None = None,
    window_end: dt.datetime | None = None,
) -> WriteResult:
    """Extend the group along ``append_dim`` with the source's labels; ``on_overlap`` says
    what labels already stored do: "error", "skip" (re-runs are no-ops) or "overwrite".
    ``window_start``/``window_end`` cut the source to [start, end)."""
    return _write(
        _Run(
            target,
            source,
            group,
            dry_run,
            scheduler_address,
            options or RunOptions(),
            kind="append",
            create_repository=True,
            window=(window_start, window_end),
        ),
        lambda writer: writer.for_append(group, append_dim=append_dim, on_overlap=on_overlap),
    )


@flow(name="icefloe-region", task_runner=task_runner())
def region_flow(
    target: Target,
    source: Source,
    region: RegionParameter = "auto",
    group: str | None = None,
    dry_run: bool = False,
    scheduler_address: str | None = None,
    options: RunOptions | None = None,
) -> WriteResult:
    """Overwrite a region of the group's existing arrays with the source's values; "auto"
    places it by the source's labels."""
    return _write(
        _Run(
            target,
            source,
            group,
            dry_run,
            scheduler_address,
            options or RunOptions(),
            kind="region",
        ),
        lambda writer: writer.for_region(group, region=as_region_spec(region)),
    )


def as_region_spec(region: RegionParameter) -> RegionSpec:
    """The writer's region (slices) from the JSON-friendly parameter (pairs)."""
    if region == "auto":
        return "auto"
    return {
        dim: "auto" if bounds == "auto" else slice(int(bounds[0]), int(bounds[1]))
        for dim, bounds in region.items()
    }


# -- the process every flow runs ------------------------------------------------------------


@dataclass(frozen=True)
class _Run:
    target: Target
    source: SourceModel
    group: str | None
    dry_run: bool
    scheduler_address: str | None
    options: RunOptions
    kind: Literal["create", "modify", "append", "region"]
    overwrite: bool = False
    create_repository: bool = False
    window: tuple[dt.datetime | None, dt.datetime | None] = (None, None)

    @property
    def changes_metadata(self) -> bool:
        return self.kind != "region"


def _write(run: _Run, choose: Choose) -> WriteResult:
    """Open, then attempt the write; a region run starts over when metadata moved under it."""
    logger = get_run_logger()
    ensure_lifeline()  # killed, the run leaves no process behind (flows.lifeline)
    if not run.dry_run:
        check_scheduler(_scheduler(run))
    repo = _open_repository(run)
    dataset = open_source(run.source, *run.window)
    locked = run.changes_metadata and run.options.serialize and not run.dry_run
    with serialized(run.target, run.group, enabled=locked, repo=repo):
        for attempt in range(1, run.options.start_over_attempts + 1):
            try:
                return _attempt(run, choose, repo, dataset)
            except CommitConflictError as err:
                if err.overlapping or run.changes_metadata:
                    raise
                if attempt == run.options.start_over_attempts:
                    raise
                delay = random.uniform(0.2, 1.0) * attempt
                logger.warning(
                    "another run changed the arrays meanwhile (%s); starting over from the new "
                    "tip in %.1f s (attempt %d of %d)",
                    "; ".join(err.conflicts),
                    delay,
                    attempt + 1,
                    run.options.start_over_attempts,
                )
                time.sleep(delay)
    raise AssertionError("unreachable")


def _attempt(
    run: _Run, choose: Choose, repo: icechunk.Repository, dataset: xr.Dataset
) -> WriteResult:
    logger = get_run_logger()
    started = time.perf_counter()
    branch = run.target.branch
    staging = _staging_branch(run) if run.options.publish == "staged" and not run.dry_run else None
    session = _session(repo, run, staging if run.overwrite else None)
    base = session.snapshot_id
    try:
        writer = choose(XarrayDatasetWriter(dataset, store=session.store))
        plan = phases.plan(writer)
        logger.info("plan for %s:\n%s", _where(run.target), plan)
        if run.dry_run:
            _publish_plan(plan, run)
            return _result(run, plan, snapshot_id=None, skipped=False)
        if plan.changes_nothing:
            logger.info("nothing to write: the group already holds what the source has")
            return _result(run, plan, snapshot_id=None, skipped=True)
        # An overwrite deletes the group, and forks that each carry that deletion cannot be
        # merged: it works in the session itself and cannot resume (FIELD-NOTES).
        workspace = session if run.overwrite else session.fork()
        key = _resume_key(run, repo, base) if workspace is not session else None
        workspace = phases.persisted(phases.write_metadata, key)(writer, workspace, key)
        workspace = phases.persisted(phases.write_eager, key)(writer, workspace, key)
        phases.verify(writer, workspace)
        forks, lazy = phases.write_lazy(
            writer, workspace, key, _target_batches(plan, run), scheduler_address=_scheduler(run)
        )
        metadata = {**_metadata(plan, run), "run_key": _run_key(run), "base_snapshot": base}
        snapshot_id = phases.commit(
            repo,
            branch,
            base,
            workspace,
            forks,
            _message(plan),
            metadata,
            staging_branch=staging,
            audit=_audit(repo, plan, dataset, run) if staging else None,
        )
    except BaseException:
        # The session may be half-written; dropping its changes makes sure nothing of this
        # run can be committed by mistake later.
        if not session.read_only:
            session.discard_changes()
        raise
    _publish_summary(plan, run, metadata, snapshot_id, lazy, time.perf_counter() - started)
    return _result(run, plan, snapshot_id=snapshot_id, skipped=False)


def _run_key(run: _Run) -> str:
    return run.options.run_key or parameters_digest(
        {k: v for k, v in _parameters().items() if k not in ("dry_run", "scheduler_address")}
        or {"target": run.target, "source": run.source, "group": run.group, "kind": run.kind}
    )


def _resume_key(run: _Run, repo: icechunk.Repository, base: str) -> str | None:
    """Where a run's phases and batches are persisted.

    The base snapshot's write time is part of the key: every new repository starts from
    the same snapshot id, and a repository deleted and created again at the same path
    must not resume the old one's work. Persisted forks carry the storage configuration,
    but never a secret: environment credentials are not pickled, and a Secret block's are
    read by a callback that pickles as the block's name (flows.targets;
    tests/storage/test_s3_flows).
    """
    fingerprint = run.source.model_dump_json()
    written = repo.lookup_snapshot(base).written_at.isoformat()
    identity = f"{_run_key(run)}|{base}|{written}|{fingerprint}"
    digest = hashlib.sha256(identity.encode()).hexdigest()
    return f"icefloe-{digest[:40]}"


def _target_batches(plan: WritePlan, run: _Run) -> int:
    if run.options.batches:
        return run.options.batches
    return max(1, math.ceil(plan.bytes_in_phase("lazy") / BATCH_BYTES))


def _staging_branch(run: _Run) -> str:
    run_id = current_run().flow_run_id or uuid.uuid4().hex
    return f"icefloe/{run_id}"


def _audit(repo: icechunk.Repository, plan: WritePlan, dataset: xr.Dataset, run: _Run) -> Audit:
    rules = AuditRules(max_nan_fraction=run.options.max_nan_fraction)
    return functools.partial(_audit_snapshot, repo, plan=plan, source=dataset, rules=rules)


def _audit_snapshot(
    repo: icechunk.Repository,
    snapshot: str,
    *,
    plan: WritePlan,
    source: xr.Dataset,
    rules: AuditRules,
) -> None:
    get_run_logger().info("audit: checking staged commit %s", snapshot)
    audit_snapshot(repo, snapshot, plan, source, rules)


def _open_repository(run: _Run) -> icechunk.Repository:
    credentials = load_credentials(run.target)
    if run.dry_run:
        try:
            return run.target.open_repository(credentials=credentials)
        except TargetNotFoundError:
            if not run.create_repository:
                raise
            # Plan the creation against an empty repository, without creating the real one.
            return icechunk.Repository.create(icechunk.in_memory_storage())
    return run.target.open_repository(create=run.create_repository, credentials=credentials)


def _session(repo: icechunk.Repository, run: _Run, staging: str | None = None) -> icechunk.Session:
    branch = run.target.branch
    try:
        # A dry run plans on a read-only session, so it cannot write even by mistake.
        if run.dry_run:
            return repo.readonly_session(branch=branch)
        if staging is not None:
            repo.create_branch(staging, repo.lookup_branch(branch))
            return repo.writable_session(staging)
        return repo.writable_session(branch)
    except icechunk.IcechunkError as err:
        if branch in repo.list_branches():
            raise
        raise TargetError(
            f"branch {branch!r} does not exist in {_where(run.target)}: set Target.branch to "
            f"one of {sorted(repo.list_branches())}, or create it first "
            f"(repo.create_branch({branch!r}, repo.lookup_branch('main')))"
        ) from err


# Never persisted: the Dataset may hold large in-memory variables.
@task(name="open_source", cache_policy=NO_CACHE, retries=0, persist_result=False)
def open_source(
    source: SourceModel, start: dt.datetime | None = None, end: dt.datetime | None = None
) -> xr.Dataset:
    """The source's data for [start, end), lazily (dask-backed where the source is)."""
    if isinstance(source, IcechunkSource):
        return source.open(start, end, credentials=load_credentials(source.target))
    return source.open(start, end)


def load_credentials(target: Target) -> dict[str, str] | None:
    """The static credentials in ``target.credentials_secret_block``, or None (environment)."""
    if not target.credentials_secret_block:
        return None
    from prefect.blocks.system import Secret

    value = Secret.load(target.credentials_secret_block).get()
    if isinstance(value, str):
        value = json.loads(value)
    if not isinstance(value, Mapping):
        raise TargetError(
            f"the Secret block {target.credentials_secret_block!r} does not hold a JSON object "
            'of credentials: store e.g. {"access_key_id": ..., "secret_access_key": ...}'
        )
    return {str(k): str(v) for k, v in value.items()}


def _scheduler(run: _Run) -> str | None:
    return resolve_scheduler_address(run.scheduler_address)


def check_scheduler(address: str | None, timeout: float = 10.0) -> None:
    """Fail before anything is written when the Dask scheduler cannot be reached."""
    if not address:
        return
    from distributed import Client

    try:
        Client(address, timeout=timeout, set_as_default=False).close()
    except (OSError, TimeoutError, ValueError) as err:
        raise TargetError(
            f"cannot reach the Dask scheduler at {address!r} ({type(err).__name__}: {err}); "
            "start it, fix the address, or unset scheduler_address / ICEFLOE_SCHEDULER_ADDRESS "
            "to use a local cluster"
        ) from err


def _parameters() -> dict[str, Any]:
    context = FlowRunContext.get()
    return dict(context.parameters) if context is not None else {}


def _metadata(plan: WritePlan, run: _Run) -> dict[str, Any]:
    return commit_metadata(
        plan=plan,
        source=run.source,
        target=run.target,
        parameters=_parameters(),
        run=current_run(),
    )


def _message(plan: WritePlan) -> str:
    where = f"group {plan.group}" if plan.group else "root group"
    what = f"{plan.mode} {where}: {len(plan.variables)} variables, {plan.chunks_written} chunks"
    if plan.label_range is not None:
        what += f", {plan.append_dim} {plan.label_range[0]} … {plan.label_range[1]}"
    if plan.region is not None:
        what += ", region " + ", ".join(f"{d}[{a}:{b}]" for d, (a, b) in plan.region.items())
    return f"icefloe: {what}"


def _where(target: Target) -> str:
    # Not target.describe(): summaries and artifacts show no storage option values at all.
    return f"{safe_url(target.repo)} (branch {target.branch})"


def _result(run: _Run, plan: WritePlan, *, snapshot_id: str | None, skipped: bool) -> WriteResult:
    result = WriteResult(
        snapshot_id=snapshot_id,
        branch=run.target.branch,
        mode=plan.mode,
        group=plan.group,
        variables=plan.variables,
        chunks_written=plan.chunks_written,
        bytes_written=plan.bytes_written,
        skipped=skipped,
    )
    result._plan = str(plan)
    return result


def _publish_plan(plan: WritePlan, run: _Run) -> None:
    create_markdown_artifact(
        markdown=f"# icefloe dry run: {plan.mode}\n\n{_where(run.target)}, nothing written.\n\n"
        f"```\n{plan}\n```\n",
        description=f"dry run plan for {_where(run.target)}",
    )


def _publish_summary(
    plan: WritePlan,
    run: _Run,
    metadata: Mapping[str, Any],
    snapshot_id: str | None,
    lazy: phases.LazyWriteStats,
    seconds: float,
) -> None:
    throughput = plan.bytes_written / seconds if seconds > 0 else 0.0
    rows = [
        ("target", _where(run.target)),
        ("group", plan.group or "/"),
        ("source", metadata["source"]),  # the redacted description
        ("commit", snapshot_id or "none (nothing changed)"),
        ("variables", ", ".join(plan.variables) or "-"),
        ("chunks written", str(plan.chunks_written)),
        ("bytes written", human_bytes(plan.bytes_written)),
        ("batches", f"{lazy.batches} ({lazy.batches_resumed} resumed from an earlier run)"),
        ("dask tasks", f"{lazy.dask_tasks} on {lazy.scheduler}"),
        ("duration", f"{seconds:.1f} s (lazy write {lazy.seconds:.1f} s)"),
        ("throughput", f"{human_bytes(throughput)}/s"),
    ]
    table = "\n".join(f"| {key} | {value} |" for key, value in rows)
    create_markdown_artifact(
        markdown=f"# icefloe {plan.mode}\n\n| | |\n|---|---|\n{table}\n\n## Plan\n\n"
        f"```\n{plan}\n```\n",
        description=f"icefloe {plan.mode} of {_where(run.target)}",
    )
    get_run_logger().info(
        "%s committed %s: %d chunks, %s in %.1f s (%s/s)",
        plan.mode,
        snapshot_id,
        plan.chunks_written,
        human_bytes(plan.bytes_written),
        seconds,
        human_bytes(throughput),
    )
