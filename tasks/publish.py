"""Publishing a run's forks onto a branch with exactly one commit, or not at all.

The forks of a run descend from the snapshot the run started at (its base). They are
merged into a session at that base — never into a session at a newer tip, where
icechunk's merge would silently overwrite chunks the newer commits wrote. When the
branch moved meanwhile, the merged session is committed onto a work branch reset to
the new tip, so icechunk's rebase checks every change against those commits, and the
target then moves with a compare-and-swap.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import icechunk

from tasks.commit import Metadata, backoff, commit_lock, commit_session
from tasks.errors import CommitConflictError, VerificationError

if TYPE_CHECKING:
    from icechunk.session import ForkSession

log = logging.getLogger(__name__)

Audit = Callable[[str], None]


def publish(
    repo: icechunk.Repository,
    branch: str,
    base_snapshot: str,
    changes: Sequence[ForkSession],
    message: str,
    metadata: Metadata | None = None,
    *,
    staging_branch: str | None = None,
    audit: Audit | None = None,
    attempts: int = 12,
    session: icechunk.Session | None = None,
) -> str:
    """Merge ``changes`` (forks of ``base_snapshot``) and move ``branch`` to one new commit.

    ``session``, a clean writable session of ``branch`` at ``base_snapshot`` (the one the
    run forked its workspace from), takes the changes and commits them itself, rebased
    over whatever landed since: one conditional write of the branch per attempt, and
    nothing else to contend for. Without one, a session at the base exists only while
    the branch has not moved; otherwise the changes go to a work branch at the base.
    With ``staging_branch`` the commit lands there first, ``audit(snapshot_id)`` checks
    it (raising to stop the publish; the staging branch is then kept for inspection),
    and the target moves only if it still points where the commit was built on.
    Returns the snapshot id now at the tip of ``branch``.
    """
    if staging_branch is None:
        if session is None and repo.lookup_branch(branch) == base_snapshot:
            session = repo.writable_session(branch)
        if (
            session is not None
            and session.snapshot_id == base_snapshot
            and not session.has_uncommitted_changes
        ):
            session.merge(*changes)
            return commit_session(session, message, metadata)
    work = staging_branch or f"icefloe/rebase-{uuid.uuid4().hex[:12]}"
    keep_work = False
    try:
        for attempt in range(1, attempts + 1):
            tip = repo.lookup_branch(branch)
            snapshot = _commit_on(
                repo, work, branch, base_snapshot, tip, changes, message, metadata
            )
            keep_work = staging_branch is not None  # for inspection, if the audit fails
            run_audit(audit, snapshot, work)
            keep_work = False
            try:
                repo.reset_branch(branch, snapshot, from_snapshot_id=tip)
                return snapshot
            except icechunk.IcechunkError as err:
                # another run landed first: every lost try means some writer made progress,
                # so waiting (jittered, growing) and rebasing again ends; racing at once can
                # starve one run when many finish together on a busy machine
                delay = backoff(attempt)
                log.info(
                    "branch %r moved during publish (try %d), rebasing again in %.2f s: %s",
                    branch,
                    attempt,
                    delay,
                    err,
                )
                if attempt < attempts:
                    time.sleep(delay)
        raise CommitConflictError(
            f"branch {branch!r} kept moving during {attempts} publish attempts; nothing was "
            "published — retry later or serialize the writers",
            overlapping=False,
        )
    finally:
        if not keep_work and work in repo.list_branches():
            repo.delete_branch(work)


def _commit_on(
    repo: icechunk.Repository,
    work: str,
    target_branch: str,
    base: str,
    tip: str,
    changes: Sequence[ForkSession],
    message: str,
    metadata: Metadata | None,
) -> str:
    """One commit on ``work`` holding ``changes``, rebased onto ``tip`` with conflict detection."""
    if work in repo.list_branches():
        repo.reset_branch(work, base)
    else:
        repo.create_branch(work, base)
    session = repo.writable_session(work)
    session.merge(*changes)
    if tip != base:
        # the session stays at base; committing after the branch jumps to tip makes
        # icechunk rebase it, detecting every chunk or metadata change both touched
        repo.reset_branch(work, tip)
    try:
        return commit_session(session, message, metadata)
    except CommitConflictError as err:
        # the work branch is an implementation detail: name the branch the user targets
        raise CommitConflictError(
            str(err).replace(repr(work), repr(target_branch)),
            conflicts=err.conflicts,
            overlapping=err.overlapping,
        ) from err


def publish_staged_snapshot(
    repo: icechunk.Repository,
    branch: str,
    base_snapshot: str,
    snapshot: str,
    staging_branch: str,
    audit: Audit | None,
) -> None:
    """Move ``branch`` from ``base_snapshot`` to an audited commit of ``staging_branch``.

    For runs that committed on the staging branch directly (an overwrite's session
    cannot be rebuilt from forks, so it cannot be rebased either): when the target
    moved meanwhile the run fails, keeping the staged commit for inspection.
    """
    run_audit(audit, snapshot, staging_branch)
    try:
        repo.reset_branch(branch, snapshot, from_snapshot_id=base_snapshot)
    except icechunk.IcechunkError as err:
        raise CommitConflictError(
            f"branch {branch!r} moved while the run was staged; nothing was published and the "
            f"staged commit {snapshot} is kept on branch {staging_branch!r} — re-run on the "
            "new tip",
            overlapping=False,
        ) from err
    repo.delete_branch(staging_branch)


def run_audit(audit: Audit | None, snapshot: str, kept_on: str) -> None:
    """Audit ``snapshot``; a failure says on which branch the audited commit stays."""
    if audit is None:
        return
    try:
        audit(snapshot)
    except VerificationError as err:
        raise VerificationError(
            [*err.problems, f"the audited commit {snapshot} is kept on branch {kept_on!r}"],
            group=err.group,
        ) from err


class WindowPublisher:
    """Publishes one run's forks group by group, one commit per group (a backfill's units).

    Every group's forks descend from a *base* the run forked them from. While nobody but
    this publisher moved the branch since that base, a group is merged straight into a
    session at the tip: its chunks are disjoint from the groups already published (the
    run's units never share a chunk), and no one else's commit could be overwritten. A
    commit that landed meanwhile is caught by the commit's own rebase (conflict detection
    against exactly the commits after that tip). Once anyone else moved the branch, forks
    of older bases go the safe way (``publish``: merged at their base, rebased over every
    commit since) and the run should fork new work from the new tip (``fork``).
    """

    def __init__(self, repo: icechunk.Repository, branch: str) -> None:
        self.repo = repo
        self.branch = branch
        self.commits = 0
        self.rebased = 0  # commits that had to be rebased over someone else's
        self._tip: str | None = None  # the branch tip after this publisher's last commit
        self._clean: set[str] = set()  # bases whose forks merge safely at _tip

    def fork(self) -> tuple[str, ForkSession]:
        """A fork of the branch tip to write new work in, and its base snapshot.

        The base is marked clean: forks of it merge at the tip as long as only this
        publisher moves the branch.
        """
        session = self.repo.writable_session(self.branch)
        tip = session.snapshot_id
        if tip != self._tip:
            self._tip, self._clean = tip, set()
        self._clean.add(tip)
        return tip, session.fork()

    def publish(
        self,
        base: str,
        forks: Sequence[ForkSession],
        message: str,
        metadata: Metadata | None = None,
    ) -> str:
        """Publish ``forks`` (of ``base``) with one commit; returns its snapshot id."""
        with commit_lock(self.repo):
            tip = self.repo.lookup_branch(self.branch)
            if tip == self._tip and base in self._clean:
                session = self.repo.writable_session(self.branch)
                if session.snapshot_id == tip:
                    session.merge(*forks)
                    snapshot = commit_session(session, message, metadata)
                    self.commits += 1
                    if self.repo.lookup_snapshot(snapshot).parent_id != tip:
                        # rebased over a commit that landed meanwhile: older bases are unsafe
                        self.rebased += 1
                        self._clean = set()
                    self._tip = snapshot
                    return snapshot
            snapshot = publish(self.repo, self.branch, base, forks, message, metadata)
            self.commits += 1
            self.rebased += 1
            self._tip, self._clean = snapshot, set()
            return snapshot
