"""One Prefect flow per write mode: create, modify, append and region.

Each flow only chooses the writer's mode; ``_write`` is the process they share:

    open target → open source → plan → write_metadata → write_eager → verify
    → write_lazy (batches) → commit (with its coverage record) → materialize (lineage:
    flows/lineage.py) → summary

Nothing is visible on the branch before the commit: the phases work in a fork of the
branch tip, persisted under the run's key, so a killed run re-run with the same key
resumes from its finished phases and batches; the commit merges them at the run's
base and publishes them with one commit (rebased with conflict detection when the
branch moved). Runs that change metadata are serialized per repository and group;
region runs run side by side. The lazy write runs on the flow's DaskTaskRunner (see
tasks.cluster); everything else runs in the flow process.
"""

import datetime as dt
import functools
import hashlib
import json
import math
import random
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import icechunk
import xarray as xr
from prefect import flow, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.context import FlowRunContext
from prefect.logging import get_run_logger
from pydantic import BaseModel, ConfigDict, Field

from flows import heartbeats
from flows.credentials import load_credentials
from flows.forms import FORM, Tabs, form_properties
from flows.lifeline import ensure_lifeline
from flows.lineage import materialize_commit
from flows.locks import serialized
from flows.metadata import commit_metadata, current_run, parameters_digest
from flows.naming import artifact_key, run_name, tag_run
from flows.parameter_docs import described
from flows.refusals import refusing
from flows.results import WriteResult
from flows.sources import IcechunkSource, Source, SourceModel
from flows.targets import Target, safe_url
from tasks import phases
from tasks.audit import AuditRules, audit_snapshot
from tasks.cluster import check_scheduler, task_runner
from tasks.cluster import scheduler_address as resolve_scheduler_address
from tasks.coverage import CoverageChange
from tasks.errors import CommitConflictError, GroupNotFoundError, TargetError, TargetNotFoundError
from tasks.manifests import SplitRule, record_split_rule, with_split_rule
from tasks.plan import WritePlan, human_bytes
from tasks.publish import Audit
from tasks.request import OnGap, OnOverlap, RegionSpec, WriteMode, WriteRequest
from tasks.stored import StoredGroup
from tasks.writer import XarrayDatasetWriter

# synchronous flow runs end without waiting out their heartbeat thread's sleep
heartbeats.install()

__all__ = [
    "RegionParameter",
    "RunOptions",
    "append_flow",
    "create_flow",
    "modify_flow",
    "region_flow",
    "write_flow",
]

# About one GiB per resumable batch: small enough to lose little when killed, large
# enough that each batch keeps a cluster busy.
BATCH_BYTES = 2**30
# And at most this many chunks: with tiny chunks a GiB is a million of them, minutes of
# work to lose, and a batch's fork carries a reference to every chunk it wrote.
BATCH_CHUNKS = 250_000

Encoding = dict[str, dict[str, Any]]
"""Per-variable encoding as JSON carries it (the flows' parameter type)."""
RegionParameter = Annotated[
    Literal["auto"] | dict[str, tuple[int, int] | Literal["auto"]],
    Tabs("auto: placed by the source's labels", "per dimension: [start, stop) indices"),
]
"""A region as JSON can carry it: "auto", or per dimension [start, stop) or "auto"."""


class RunOptions(BaseModel):
    """How a run survives being killed, retried and overlapped; the defaults suit most runs."""

    model_config = ConfigDict(extra="forbid", json_schema_extra=form_properties)

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
        description="'staged' commits to the branch icefloe/RUN-ID first, audits that "
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


@flow(name="icefloe-create", flow_run_name=run_name, task_runner=task_runner())
@refusing
@described(
    overwrite=(
        "Replace the group if it exists (variables not in the source are deleted); "
        "otherwise an existing group is an error."
    ),
)
def create_flow(
    target: Target,
    source: Source,
    group: Annotated[str | None, FORM] = None,
    overwrite: bool = False,
    encoding: Annotated[Encoding | None, FORM] = None,
    dry_run: bool = False,
    scheduler_address: Annotated[str | None, FORM] = None,
    options: Annotated[RunOptions | None, FORM] = None,
) -> WriteResult:
    """Create the group from the source (creating the repository if needed)."""
    mode: WriteMode = "overwrite" if overwrite else "create"
    request = WriteRequest(mode=mode, group=group, encoding=encoding)
    return run_write(
        WriteRun(
            target, source, request, dry_run, scheduler_address, options, create_repository=True
        )
    )


@flow(name="icefloe-modify", flow_run_name=run_name, task_runner=task_runner())
@refusing
@described(
    only_new_vars="Write only the variables the group does not have yet.",
)
def modify_flow(
    target: Target,
    source: Source,
    group: Annotated[str | None, FORM] = None,
    only_new_vars: bool = False,
    encoding: Annotated[Encoding | None, FORM] = None,
    dry_run: bool = False,
    scheduler_address: Annotated[str | None, FORM] = None,
    options: Annotated[RunOptions | None, FORM] = None,
    update_spec: bool = False,
) -> WriteResult:
    """Add the source's variables to the group and overwrite the ones it has; attributes
    are merged."""
    request = WriteRequest(
        mode="modify",
        group=group,
        encoding=encoding,
        only_new_vars=only_new_vars,
        update_spec=update_spec,
    )
    return run_write(WriteRun(target, source, request, dry_run, scheduler_address, options))


@flow(name="icefloe-append", flow_run_name=run_name, task_runner=task_runner())
@refusing
@described(
    window_start="Cut the source to labels at or after this time.",
    window_end="Cut the source to labels before this time.",
    create_missing=(
        "Create the repository and the group from the source when they do not exist yet "
        "(a scheduled append's first run); otherwise their absence is an error, so that a"
        " mistyped target never starts a second archive."
    ),
)
def append_flow(
    target: Target,
    source: Source,
    append_dim: str,
    group: Annotated[str | None, FORM] = None,
    on_overlap: OnOverlap = "error",
    dry_run: bool = False,
    scheduler_address: Annotated[str | None, FORM] = None,
    options: Annotated[RunOptions | None, FORM] = None,
    window_start: Annotated[dt.datetime | None, FORM] = None,
    window_end: Annotated[dt.datetime | None, FORM] = None,
    create_missing: bool = False,
    on_gap: OnGap = "error",
) -> WriteResult:
    """Extend the group along ``append_dim`` with the source's labels.

    A missing repository or group is an error (a mistyped target must not start a second
    archive) unless ``create_missing``, which the scheduled deployment sets so that its
    first run creates them from the source."""
    request = WriteRequest(
        mode="append",
        group=group,
        append_dim=append_dim,
        on_overlap=on_overlap,
        on_gap=on_gap,
    )
    return run_write(
        WriteRun(
            target,
            source,
            request,
            dry_run,
            scheduler_address,
            options,
            create_repository=create_missing,
            window=(window_start, window_end),
        )
    )


@flow(name="icefloe-region", flow_run_name=run_name, task_runner=task_runner())
@refusing
@described(
    region=(
        '"auto" places the source by its labels; or per dimension [start, stop) indexes, '
        'e.g. {"time": [24, 48]}, or "auto" for that dimension.'
    ),
)
def region_flow(
    target: Target,
    source: Source,
    region: RegionParameter = "auto",
    group: Annotated[str | None, FORM] = None,
    dry_run: bool = False,
    scheduler_address: Annotated[str | None, FORM] = None,
    options: Annotated[RunOptions | None, FORM] = None,
) -> WriteResult:
    """Overwrite a region of the group's existing arrays with the source's values."""
    request = WriteRequest(mode="region", group=group, region=as_region_spec(region))
    return run_write(WriteRun(target, source, request, dry_run, scheduler_address, options))


@flow(name="icefloe-write", flow_run_name=run_name, task_runner=task_runner())
@refusing
@described(
    mode=(
        "create (the group must not exist), overwrite (replace it), modify (add or "
        "overwrite variables), append (extend along append_dim) or region (rewrite a part"
        " of existing arrays)."
    ),
    region='region only: "auto" (placed by labels) or per dimension [start, stop).',
    only_new_vars="modify only: write just the variables the group lacks.",
    on_gap='append only: labels that skip labels of the group\'s step are refused ("error"), '
    'appended up to the first missing one ("stop"), or written with the gap as fill values '
    '("fill").',
    update_spec="modify only: let it change the structure the group's spec declares.",
)
def write_flow(
    target: Target,
    source: Source,
    mode: WriteMode = "append",
    group: Annotated[str | None, FORM] = None,
    append_dim: str = "time",
    on_overlap: OnOverlap = "error",
    region: RegionParameter = "auto",
    only_new_vars: bool = False,
    encoding: Annotated[Encoding | None, FORM] = None,
    dry_run: bool = False,
    scheduler_address: Annotated[str | None, FORM] = None,
    options: Annotated[RunOptions | None, FORM] = None,
    on_gap: OnGap = "error",
    update_spec: bool = False,
) -> WriteResult:
    """Any write, chosen by ``mode``, with its options: the form behind ad-hoc UI runs.

    The form shows every mode's options at once; those of other modes are ignored."""
    request = WriteRequest(
        mode=mode,
        group=group,
        encoding=encoding if mode in ("create", "overwrite", "modify") else None,
        only_new_vars=only_new_vars and mode == "modify",
        update_spec=update_spec and mode == "modify",
        append_dim=append_dim if mode == "append" else None,
        on_overlap=on_overlap if mode == "append" else "error",
        on_gap=on_gap if mode == "append" else "error",
        region=as_region_spec(region) if mode == "region" else None,
    )
    return run_write(
        WriteRun(
            target,
            source,
            request,
            dry_run,
            scheduler_address,
            options,
            create_repository=request.creates_group,
        )
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
class WriteRun:
    """One write as the flows carry it: the request, and where and how to run it."""

    target: Target
    source: SourceModel
    request: WriteRequest
    dry_run: bool = False
    scheduler_address: str | None = None
    options: RunOptions | None = None
    create_repository: bool = False
    window: tuple[dt.datetime | None, dt.datetime | None] = (None, None)
    # False for a write that is one of several in its flow run (a backfill window): the
    # run is tagged and summarised by its flow instead
    own_run: bool = True

    @property
    def settings(self) -> RunOptions:
        return self.options or RunOptions()


def run_write(run: WriteRun, dataset: xr.Dataset | None = None) -> WriteResult:
    """Open, then attempt the write; a region run starts over when metadata moved under it.

    Every write of every flow (backfill windows included) goes through here, so there is
    one way to plan, resume, commit and describe a commit.
    """
    logger = get_run_logger()
    ensure_lifeline()  # killed, the run leaves no process behind (flows.lifeline)
    if run.own_run:
        tag_run(run.target, run.request.group, run.request.mode)
    if not run.dry_run:
        check_scheduler(_scheduler(run))
    # The source first: a source that cannot be read must not leave a new repository behind.
    if dataset is None:
        dataset = open_source(run.source, *run.window, run.request.append_dim or "time")
    repo = _open_repository(run, dataset)
    if not run.create_repository and run.target.branch in repo.list_branches():
        # Refused before the group's lock is waited for (a missing branch is _session's to
        # report); checked again under the lock, where the plan is made.
        _require_group(repo.readonly_session(branch=run.target.branch), run)
    request, attempts = run.request, run.settings.start_over_attempts
    locked = request.changes_metadata and run.settings.serialize and not run.dry_run
    with serialized(run.target, request.group, enabled=locked, repo=repo):
        repo, split_rule = _split_manifests(run, repo)
        for attempt in range(1, attempts + 1):
            try:
                result = _attempt(run, repo, dataset)
                if split_rule is not None and result.snapshot_id is not None:
                    # recorded once the run wrote with it: a refused run changes nothing
                    record_split_rule(repo, split_rule)
                return result
            except CommitConflictError as err:
                if err.overlapping or request.changes_metadata:
                    raise
                if attempt == attempts:
                    raise
                delay = random.uniform(0.2, 1.0) * attempt
                logger.warning(
                    "another run changed the arrays meanwhile (%s); starting over from the new "
                    "tip in %.1f s (attempt %d of %d)",
                    "; ".join(err.conflicts),
                    delay,
                    attempt + 1,
                    attempts,
                )
                time.sleep(delay)
    raise AssertionError("unreachable")


def _split_manifests(
    run: WriteRun, repo: icechunk.Repository
) -> tuple[icechunk.Repository, SplitRule | None]:
    """An append splits its group's manifests along the append dimension (tasks.manifests):
    the repository with that rule in force, and the rule to record once the run committed."""
    request = run.request
    if run.dry_run or request.mode != "append" or request.append_dim is None:
        return repo, None
    if run.target.branch not in repo.list_branches():
        return repo, None
    stored = StoredGroup(repo.readonly_session(branch=run.target.branch).store, request.group)
    if stored.is_empty or request.append_dim not in stored.sizes:
        return repo, None
    return with_split_rule(
        repo,
        request.group,
        request.append_dim,
        run.target.manifests.split_size,
        branch=run.target.branch,
    )


def _attempt(run: WriteRun, repo: icechunk.Repository, dataset: xr.Dataset) -> WriteResult:
    logger = get_run_logger()
    started = time.perf_counter()
    branch = run.target.branch
    overwrite = run.request.mode == "overwrite"
    staged = run.settings.publish == "staged" and not run.dry_run
    staging = _staging_branch() if staged else None
    session = _session(repo, run, staging if overwrite else None)
    base = session.snapshot_id
    try:
        if not run.create_repository:
            _require_group(session, run)
        writer = XarrayDatasetWriter(dataset, store=session.store).for_request(run.request)
        plan = phases.plan(writer)
        logger.info("plan for %s:\n%s", _where(run.target), plan)
        if run.dry_run:
            _publish_plan(plan, run)
            return _result(run, plan, snapshot_id=None, skipped=False)
        if plan.changes_nothing:
            if plan.stopped_at is not None:
                logger.info(
                    "nothing to write yet: the source lacks the next label %s (on_gap='stop'); "
                    "a later run appends from there",
                    plan.stopped_at,
                )
            else:
                logger.info("nothing to write: the group already holds what the source has")
            return _result(run, plan, snapshot_id=None, skipped=True)
        if plan.stopped_at is not None:
            logger.info(
                "stopping before the missing label %s (on_gap='stop'): the labels after it wait "
                "for a later run",
                plan.stopped_at,
            )
        for first, last, count in plan.gaps:
            logger.info(
                "leaving a gap (on_gap='fill'): %s … %s (%d labels) written as fill values and "
                "recorded in the commit",
                first,
                last,
                count,
            )
        # An overwrite deletes the group, and forks that each carry that deletion cannot be
        # merged: it works in the session itself and cannot resume (docs/stack-facts.md).
        workspace = session if overwrite else session.fork()
        resume_key = _resume_key(run, repo, base) if workspace is not session else None
        write_metadata = phases.persisted(phases.write_metadata, resume_key)
        workspace = write_metadata(writer, workspace, resume_key)
        workspace = phases.persisted(phases.write_eager, resume_key)(writer, workspace, resume_key)
        phases.verify(writer, workspace)
        forks, lazy = phases.write_lazy(
            writer,
            workspace,
            resume_key,
            _target_batches(plan, run),
            scheduler_address=_scheduler(run),
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
            audit=_audit(repo, plan, writer.written_dataset, run) if staging else None,
            coverage=CoverageChange.of(plan),
            base_session=session if workspace is not session else None,
        )
    except BaseException:
        # The session may be half-written; dropping its changes makes sure nothing of this
        # run can be committed by mistake later.
        if not session.read_only:
            session.discard_changes()
        raise
    # lineage: the commit as a materialization of the group's asset, the source upstream
    materialize_commit(run.target, run.source, plan.group, snapshot_id, metadata)
    if run.own_run:
        _publish_summary(plan, run, metadata, snapshot_id, lazy, time.perf_counter() - started)
    return _result(run, plan, snapshot_id=snapshot_id, skipped=False)


def _run_key(run: WriteRun) -> str:
    return run.settings.run_key or parameters_digest(
        {k: v for k, v in _parameters().items() if k not in ("dry_run", "scheduler_address")}
        or {"target": run.target, "source": run.source, "request": run.request.describe()}
    )


def _resume_key(run: WriteRun, repo: icechunk.Repository, base: str) -> str | None:
    """Where a run's phases and batches are persisted.

    The base snapshot's write time is part of the key: every new repository starts from
    the same snapshot id, and a repository deleted and created again at the same path
    must not resume the old one's work. Persisted forks carry the storage configuration,
    but never a secret: environment credentials are not pickled, and a Secret block's are
    read by a callback that pickles as the block's name (flows.targets;
    tests/storage/test_s3_flows).
    """
    written = repo.lookup_snapshot(base).written_at.isoformat()
    # One flow run may make several writes (a backfill's windows): the request and the
    # window tell them apart.
    identity = json.dumps(
        [
            _run_key(run),
            base,
            written,
            run.source.model_dump(mode="json"),
            run.request.describe(),
            [str(edge) for edge in run.window],
        ],
        default=str,
    )
    digest = hashlib.sha256(identity.encode()).hexdigest()
    return f"icefloe-{digest[:40]}"


def _target_batches(plan: WritePlan, run: WriteRun) -> int:
    if run.settings.batches:
        return run.settings.batches
    return max(
        1,
        math.ceil(plan.bytes_in_phase("lazy") / BATCH_BYTES),
        math.ceil(plan.chunks_in_phase("lazy") / BATCH_CHUNKS),
    )


def _staging_branch() -> str:
    run_id = current_run().flow_run_id or uuid.uuid4().hex
    return f"icefloe/{run_id}"


def _audit(repo: icechunk.Repository, plan: WritePlan, dataset: xr.Dataset, run: WriteRun) -> Audit:
    rules = AuditRules(max_nan_fraction=run.settings.max_nan_fraction)
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


def _open_repository(run: WriteRun, dataset: xr.Dataset) -> icechunk.Repository:
    """The target's repository. Only create (and a scheduled append's first run) may create
    it, and only once the request has been planned against an empty repository in memory:
    a request refused there leaves nothing behind on disk."""
    credentials = load_credentials(run.target)
    try:
        return run.target.open_repository(credentials=credentials)
    except TargetNotFoundError as err:
        if not run.create_repository:
            raise TargetNotFoundError(
                f"no Icechunk repository at {_where(run.target)}: {run.request.mode} writes "
                "only into an existing repository; check --target (Target.repo) for a typo, "
                "or create the repository with `icefloe create` (create_flow)"
            ) from err
        if run.target.branch != "main":
            raise TargetNotFoundError(
                f"no Icechunk repository at {_where(run.target)}, and a new repository has "
                "only the branch 'main': create it on 'main' first, then create the branch"
            ) from err
    scratch = icechunk.Repository.create(icechunk.in_memory_storage())
    if run.dry_run:
        return scratch  # the dry run plans against it; nothing is created
    store = scratch.writable_session("main").store
    XarrayDatasetWriter(dataset, store=store).for_request(run.request).plan()
    return run.target.open_repository(create=True, credentials=credentials)


def _require_group(session: icechunk.Session, run: WriteRun) -> None:
    """Refuse modify, append and region on a group that holds nothing: only create makes one."""
    group = run.request.group
    stored = StoredGroup(session.store, group)
    if not stored.is_empty:
        return
    what = (
        f"there is no group {group!r} in {_where(run.target)}"
        if not stored.exists
        else f"{f'group {group!r}' if group else 'the root group'} of {_where(run.target)} "
        "holds no arrays"
    )
    raise GroupNotFoundError(
        f"{what}: {run.request.mode} writes only into an existing group; check --group "
        "(group=) for a typo, or create the group with `icefloe create` (create_flow)",
        group=group,
    )


def _session(
    repo: icechunk.Repository, run: WriteRun, staging: str | None = None
) -> icechunk.Session:
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
@task(
    name="open_source",
    task_run_name="open_source",
    cache_policy=NO_CACHE,
    retries=0,
    persist_result=False,
)
def open_source(
    source: SourceModel,
    start: dt.datetime | None = None,
    end: dt.datetime | None = None,
    append_dim: str = "time",
) -> xr.Dataset:
    """The source's data for [start, end), lazily (dask-backed where the source is)."""
    if isinstance(source, IcechunkSource):
        return source.open(
            start, end, append_dim=append_dim, credentials=load_credentials(source.target)
        )
    return source.open(start, end, append_dim=append_dim)


def open_region_window(source: SourceModel, append_dim: str, start: Any, end: Any) -> xr.Dataset:
    """A window's data for a region write, as a backfill unit opens it on a dask worker.

    Defined here, not in flows/backfill.py: Prefect loads a deployment's entrypoint file
    under a module name of its own, so a function defined there is pickled by a reference
    the workers (and the scheduler) cannot import.
    """
    ds: xr.Dataset = open_source.fn(source, start, end, append_dim)
    # variables without the append dimension (a grid mapping, static fields) are the
    # group's already; a region write may only hold what lies in the region
    return ds.drop_vars([n for n, v in ds.data_vars.items() if append_dim not in v.dims])


def _scheduler(run: WriteRun) -> str | None:
    return resolve_scheduler_address(run.scheduler_address)


def _parameters() -> dict[str, Any]:
    context = FlowRunContext.get()
    return dict(context.parameters) if context is not None else {}


def _metadata(plan: WritePlan, run: WriteRun) -> dict[str, Any]:
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


def _result(
    run: WriteRun, plan: WritePlan, *, snapshot_id: str | None, skipped: bool
) -> WriteResult:
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


def _publish_plan(plan: WritePlan, run: WriteRun) -> None:
    create_markdown_artifact(
        markdown=f"# icefloe dry run: {plan.mode}\n\n{_where(run.target)}, nothing written.\n\n"
        f"```\n{plan}\n```\n",
        description=f"dry run plan for {_where(run.target)}",
        key=artifact_key("plan", run.target, plan.group),
    )


def _publish_summary(
    plan: WritePlan,
    run: WriteRun,
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
        key=artifact_key("summary", run.target, plan.group),
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
