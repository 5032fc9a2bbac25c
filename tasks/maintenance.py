"""Expiring old snapshots and collecting garbage without deleting an open run's chunks.

Chunks are uploaded before their commit. A collection whose cutoff is younger than
a run still in flight deletes that run's chunks; the run's later commit succeeds and
the branch then points at missing objects (docs/stack-facts.md). The cutoff is therefore
checked against the oldest open run, with a margin, before anything is deleted.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import icechunk

from tasks.errors import PlanError

DEFAULT_MARGIN = dt.timedelta(hours=1)

# What garbage collection may hold in memory. icechunk's defaults let the manifest caches
# grow to 512 MiB compressed and 4 GiB decoded; these keep a collection of a million-chunk
# archive with hundreds of expired snapshots well under 1 GB (benchmarks/RESULTS.md, Scale).
GC_MEMORY: dict[str, int] = {
    "max_snapshots_in_memory": 50,
    "max_compressed_manifest_mem_bytes": 128 * 2**20,
    "max_decoded_manifest_mem_bytes": 512 * 2**20,
}


@dataclass(frozen=True)
class MaintenanceSummary:
    cutoff: dt.datetime
    snapshots_expired: int
    chunks_deleted: int
    manifests_deleted: int
    snapshots_deleted: int
    bytes_deleted: int
    kept_bases: list[str]


def check_cutoff(
    older_than: dt.datetime,
    oldest_open_run: dt.datetime | None,
    *,
    now: dt.datetime | None = None,
    margin: dt.timedelta = DEFAULT_MARGIN,
) -> dt.datetime:
    """The cutoff as an aware UTC time, or PlanError if an open run could lose chunks."""
    now = now or dt.datetime.now(dt.UTC)
    cutoff = older_than if older_than.tzinfo else older_than.replace(tzinfo=dt.UTC)
    youngest_allowed = min(now, oldest_open_run or now) - margin
    if cutoff > youngest_allowed:
        reason = (
            f"the oldest open run started at {oldest_open_run.isoformat()}"
            if oldest_open_run
            else f"it is within {margin} of now"
        )
        raise PlanError(
            f"older_than={cutoff.isoformat()} is too recent: {reason}, and collecting "
            f"garbage younger than that would delete chunks a run has not committed yet; "
            f"pass older_than <= {youngest_allowed.isoformat()}"
        )
    return cutoff


def expire_and_collect(
    repo: icechunk.Repository,
    older_than: dt.datetime,
    oldest_open_run: dt.datetime | None,
    *,
    margin: dt.timedelta = DEFAULT_MARGIN,
    dry_run: bool = False,
) -> MaintenanceSummary:
    """Expire snapshots older than ``older_than`` and delete what no ref can reach."""
    # an open run needs its chunks (check_cutoff) and its base snapshot (keep_open_bases)
    cutoff, kept = keep_open_bases(
        repo, check_cutoff(older_than, oldest_open_run, margin=margin), oldest_open_run, margin
    )
    expired = set() if dry_run else repo.expire_snapshots(cutoff)
    summary = repo.garbage_collect(cutoff, dry_run=dry_run, **GC_MEMORY)
    return MaintenanceSummary(
        cutoff=cutoff,
        snapshots_expired=len(expired),
        chunks_deleted=summary.chunks_deleted,
        manifests_deleted=summary.manifests_deleted,
        snapshots_deleted=summary.snapshots_deleted,
        bytes_deleted=summary.bytes_deleted,
        kept_bases=kept,
    )


def keep_open_bases(
    repo: icechunk.Repository,
    cutoff: dt.datetime,
    open_run: dt.datetime | None,
    margin: dt.timedelta,
) -> tuple[dt.datetime, list[str]]:
    """The cutoff lowered so that no snapshot an open run may be based on is expired, and
    the snapshots that needed it.

    A run started at T is based on a snapshot that was a branch tip at some moment after T:
    on each branch, the newest snapshot written before T - margin (margin for clock skew)
    or a newer one. Newer ones are younger than any accepted cutoff already.
    """
    if open_run is None:
        return cutoff, []
    horizon = open_run - margin
    applied, kept = cutoff, []
    for branch in sorted(repo.list_branches()):
        for position, snapshot in enumerate(repo.ancestry(branch=branch)):
            if snapshot.written_at > horizon:
                continue
            # the oldest possible base; a tip is never expired, so it needs nothing
            if position > 0 and snapshot.written_at - margin < cutoff:
                applied = min(applied, snapshot.written_at - margin)
                if snapshot.id not in kept:
                    kept.append(snapshot.id)
            break
    if applied < cutoff:
        # objects written at the very instant of the base's commit must stay too
        applied -= dt.timedelta(milliseconds=1)
    return applied, kept
