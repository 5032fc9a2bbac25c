"""Publishing a session: one commit, rebased onto concurrent commits when they do not conflict.

icechunk's own rebase loop retries immediately; several runs finishing together
would then hammer the branch ref in lockstep. Here each try rebases once and waits
a jittered, growing delay before the next, and a genuine conflict (two runs wrote
the same chunk or changed the same metadata) is reported with the paths and chunks,
never resolved by letting the last writer win. Metadata that depends on the parent
(the coverage record, tasks/coverage.py) is computed again after each rebase.
"""

from __future__ import annotations

import fcntl
import logging
import random
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import icechunk

from tasks.errors import CommitConflictError

log = logging.getLogger(__name__)


def describe_conflicts(error: icechunk.RebaseFailedError) -> tuple[list[str], bool]:
    """The conflicts as text, and whether any is a chunk both commits wrote."""
    described, overlapping = [], False
    for conflict in getattr(error, "conflicts", None) or []:
        chunks = conflict.conflicted_chunks
        where = (
            f" chunks {chunks[:8]}{' …' if chunks and len(chunks) > 8 else ''}" if chunks else ""
        )
        described.append(f"{conflict.path}: {conflict.conflict_type}{where}")
        overlapping |= conflict.conflict_type == icechunk.ConflictType.ChunkDoubleUpdate
    return described, overlapping


Metadata = Mapping[str, Any] | Callable[[icechunk.Session], Mapping[str, Any]]
"""A commit's metadata, or what computes it from the session about to commit (its parent
is then the real one: computed again after every rebase)."""


def commit_session(
    session: icechunk.Session,
    message: str,
    metadata: Metadata | None = None,
    *,
    patience: float = 600.0,
    base_delay: float = 0.05,
    max_delay: float = 2.0,
) -> str:
    """Commit, rebasing onto commits that landed meanwhile; returns the new snapshot id.

    Raises CommitConflictError when the changes overlap another commit's. A branch that
    merely moved is rebased onto again, with a jittered, growing delay (at most
    ``max_delay``), for up to ``patience`` seconds: many runs committing disjoint changes
    at once all land, one after the other, instead of some giving up and starting over
    (which rewrites their data: the write amplification of icechunk#1205).
    """
    branch = session.branch
    deadline = time.monotonic() + patience
    attempt = 0
    while True:
        attempt += 1
        described = metadata(session) if callable(metadata) else metadata
        try:
            return session.commit(message, metadata=dict(described or {}))
        except icechunk.ConflictError as err:
            if time.monotonic() >= deadline:
                raise CommitConflictError(
                    f"branch {branch!r} kept moving for {patience:.0f} s ({attempt} commit "
                    "attempts); nothing was published — retry later or serialize the writers",
                    overlapping=False,
                ) from err
        if attempt > 1:  # the first rebase is the expected one: the branch had moved before
            delay = backoff(attempt, base_delay, max_delay)
            log.info("branch %r moved; rebasing again in %.2f s (try %d)", branch, delay, attempt)
            time.sleep(delay)
        try:
            session.rebase(icechunk.ConflictDetector())
        except icechunk.RebaseFailedError as err:
            conflicts, overlapping = describe_conflicts(err)
            raise CommitConflictError(
                f"branch {branch!r} received a commit that changed the same data: "
                f"{'; '.join(conflicts) or err}. Nothing was published; re-run after the other "
                "run finished, or write a region that does not overlap it",
                conflicts=conflicts,
                overlapping=overlapping or not conflicts,
            ) from err


def backoff(attempt: int, base_delay: float = 0.05, max_delay: float = 5.0) -> float:
    """A jittered, growing wait before try ``attempt + 1``: writers that lost a race to the
    same branch tip spread out instead of racing again in lockstep."""
    return float(min(max_delay, base_delay * 2 ** min(attempt, 16)) * random.uniform(0.5, 1.5))


@contextmanager
def commit_lock(repo: icechunk.Repository) -> Iterator[None]:
    """Serialize commits to a repository on the local filesystem; elsewhere, do nothing.

    Object stores make icechunk's branch update a conditional write; the local
    filesystem cannot, and concurrent commits there lost one another's updates (seen
    with several processes, and threads, committing within a second). A file lock in
    the repository's directory makes them take turns, across processes too.
    """
    described = str(repo.storage)
    if "type: local filesystem" not in described:
        yield
        return
    root = Path(described.split("path:", 1)[1].strip().splitlines()[0])
    with (root / ".icefloe-commit.lock").open("a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
