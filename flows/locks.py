"""Serializing runs that change a group's metadata, with a lease kept next to the data.

Two appends of one group both resize its arrays; icechunk cannot rebase one onto the
other, so the second would fail at commit after doing all its work. Holding a lock per
repository and group makes the second wait instead. Region runs do not take it:
disjoint regions commit side by side.

The lock lives in the repository's own storage, never in Prefect: a Prefect concurrency
limit held by a killed run is only reclaimed by a long-running server's services, so
with Prefect's temporary server (no ``PREFECT_API_URL``) the next run waited forever
(FIELD-NOTES). Here no lock outlives its holder, whatever runs Prefect:

- a repository on the local filesystem: an ``flock`` on a file in the repository's
  directory. The kernel releases it the moment the holder's process dies, by any signal.
- object storage: a lease, written as the tip of the branch ``icefloe-lock/<digest>``.
  Taking, renewing and releasing it are compare-and-swaps on that branch (an icechunk
  commit or amend fails when the branch moved; object stores make that a conditional
  write). A thread of the holder renews it every third of the lease; a waiter takes it
  over when it was not renewed for a whole lease, or at once when the holder ran on
  this host and its process is gone. A clean release deletes the branch.

The lock saves work; it is not what keeps the data safe. If two runs ever held it at
once (a holder frozen longer than its lease), the later commit fails with
CommitConflictError instead of mixing the two writes, as it would without the lock.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import icechunk
import psutil

from flows.targets import Target, safe_url

__all__ = [
    "LEASE_SECONDS_ENV",
    "LockHolder",
    "lease_seconds",
    "limit_name",
    "lock_holder",
    "serialized",
]

_log = logging.getLogger(__name__)

LEASE_SECONDS_ENV = "ICEFLOE_LOCK_LEASE_SECONDS"
# A holder on another host that was killed blocks the group for at most this long (plus
# one poll): the bound is 30 s. Renewing every third of it costs one tiny commit
# on the lock branch every ~7 s.
DEFAULT_LEASE_SECONDS = 20.0
# A snapshot's time is the holder's clock: allow this much skew before trusting it.
CLOCK_SKEW_SECONDS = 5.0
POLL_SECONDS = 0.5
LOCK_BRANCH_PREFIX = "icefloe-lock/"
_METADATA_KEY = "icefloe_lock"


def lease_seconds() -> float:
    """The lease length: ``$ICEFLOE_LOCK_LEASE_SECONDS``, else 20 s."""
    raw = os.environ.get(LEASE_SECONDS_ENV)
    return float(raw) if raw else DEFAULT_LEASE_SECONDS


def limit_name(target: Target, group: str | None) -> str:
    """The lock's name per repository and group (a digest: safe in paths and branch names)."""
    digest = hashlib.sha256(f"{safe_url(target.repo)}|{group or ''}".encode()).hexdigest()
    return f"icefloe-metadata-{digest[:24]}"


# -- who holds a lock -----------------------------------------------------------------------


def _boot_id() -> str:
    with contextlib.suppress(OSError):
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    return ""


def _pid_namespace() -> int:
    # Containers sharing a host name (--net=host) have separate pid numbers: a pid is
    # only comparable within one pid namespace.
    with contextlib.suppress(OSError):
        return os.stat("/proc/self/ns/pid").st_ino
    return 0


@dataclass(frozen=True)
class LockHolder:
    """Enough about a holder to tell, from the same host, whether it is still alive."""

    host: str
    boot_id: str
    pid_namespace: int
    pid: int
    process_started: float  # the process's creation time: pids are reused
    flow_run_id: str | None
    lease_seconds: float

    @classmethod
    def me(cls) -> LockHolder:
        from flows.metadata import current_run

        return cls(
            host=socket.gethostname(),
            boot_id=_boot_id(),
            pid_namespace=_pid_namespace(),
            pid=os.getpid(),
            process_started=psutil.Process().create_time(),
            flow_run_id=current_run().flow_run_id,
            lease_seconds=lease_seconds(),
        )

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LockHolder:
        return cls(**{name: data[name] for name in cls.__dataclass_fields__})

    def provably_gone(self) -> bool:
        """True only when the holder ran here (same host, boot and pid namespace) and its
        process no longer exists; a holder elsewhere is never provably gone."""
        if (self.host, self.boot_id, self.pid_namespace) != (
            socket.gethostname(),
            _boot_id(),
            _pid_namespace(),
        ):
            return False
        try:
            process = psutil.Process(self.pid)
            alive = abs(process.create_time() - self.process_started) < 1.0
            return not alive or process.status() == psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return True

    def describe(self) -> str:
        run = f"flow run {self.flow_run_id}, " if self.flow_run_id else ""
        return f"{run}pid {self.pid} on {self.host}"


def _logger() -> logging.Logger | logging.LoggerAdapter[logging.Logger]:
    from prefect.context import FlowRunContext, TaskRunContext
    from prefect.logging import get_run_logger

    return get_run_logger() if FlowRunContext.get() or TaskRunContext.get() else _log


# -- local filesystem: flock -----------------------------------------------------------------


def _local_root(repo: icechunk.Repository) -> Path | None:
    described = str(repo.storage)
    if "type: local filesystem" not in described:
        return None
    return Path(described.split("path:", 1)[1].strip().splitlines()[0])


@contextmanager
def _file_lock(path: Path, holder: LockHolder, what: str) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    # opened without O_CLOEXEC cleared (Python's default): child processes never inherit it
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        announced = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if not announced:
                    other = _read_file_holder(path)
                    _logger().info(
                        "waiting for the metadata lock %s of this group, held by %s",
                        what,
                        other.describe() if other else "another run",
                    )
                    announced = True
                time.sleep(POLL_SECONDS)
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(asdict(holder)).encode(), 0)
        _logger().info("holding the metadata lock %s of this group", what)
        try:
            yield
        finally:
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)  # also releases the lock if the body was interrupted mid-way


def _read_file_holder(path: Path) -> LockHolder | None:
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        return LockHolder.from_dict(json.loads(path.read_text()))
    return None


def _file_lock_holder(path: Path) -> LockHolder | None:
    if not path.exists():
        return None
    with path.open("r") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return _read_file_holder(path) or LockHolder("?", "", 0, 0, 0.0, None, 0.0)
        fcntl.flock(handle, fcntl.LOCK_UN)
    return None


# -- object storage: a lease on a branch ------------------------------------------------------


def _lease_of(repo: icechunk.Repository, snapshot_id: str) -> tuple[LockHolder | None, float]:
    """The holder recorded in a lock branch's tip (None: free) and when it was written."""
    info = repo.lookup_snapshot(snapshot_id)
    data = (info.metadata or {}).get(_METADATA_KEY) or {}
    holder = None
    with contextlib.suppress(KeyError, TypeError):
        holder = LockHolder.from_dict(data["holder"]) if data.get("holder") else None
    return holder, info.written_at.timestamp()


class _BranchLease:
    """One holder's lease on ``branch``: taken, renewed by a thread, released."""

    def __init__(self, repo: icechunk.Repository, branch: str, base_branch: str) -> None:
        self.repo = repo
        self.branch = branch
        self.base_branch = base_branch
        self.holder = LockHolder.me()
        self.snapshot: str | None = None  # our lease's snapshot while we hold it
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _metadata(self) -> dict[str, Any]:
        return {_METADATA_KEY: {"holder": asdict(self.holder), "renewed": time.time()}}

    def _session(self) -> icechunk.Session | None:
        """A writable session on the lock branch, creating the branch when it is missing."""
        for _ in range(3):
            try:
                return self.repo.writable_session(self.branch)
            except icechunk.IcechunkError:
                if self.branch in self.repo.list_branches():
                    raise
            # A new lock branch starts at the target branch's tip: it only ever holds empty
            # lease commits, and a clean release deletes it.
            bases = [self.base_branch] if self.base_branch in self.repo.list_branches() else []
            base = self.repo.lookup_branch((bases or sorted(self.repo.list_branches()))[0])
            with contextlib.suppress(icechunk.IcechunkError):  # another waiter created it
                self.repo.create_branch(self.branch, base)
        return None

    def try_take(self, seen: dict[str, float]) -> LockHolder | None:
        """Take the lease if it is free, expired or its holder is gone; else its holder."""
        session = self._session()
        if session is None:
            return LockHolder("?", "", 0, 0, 0.0, None, 0.0)
        tip = session.snapshot_id
        holder, written = _lease_of(self.repo, tip)
        if holder is not None:
            first_seen = seen.setdefault(tip, time.monotonic())
            stale = time.monotonic() - first_seen >= holder.lease_seconds or (
                time.time() - written > holder.lease_seconds + CLOCK_SKEW_SECONDS
            )
            if not (stale or holder.provably_gone()):
                return holder
            _logger().warning(
                "taking over the metadata lock from %s: %s",
                holder.describe(),
                "its process is gone" if not stale else "its lease expired",
            )
        try:
            # a commit on the tip we judged: it fails if anyone moved the branch meanwhile
            self.snapshot = session.commit(
                "icefloe: lock taken", metadata=self._metadata(), allow_empty=True
            )
        except icechunk.ConflictError:
            return LockHolder("?", "", 0, 0, 0.0, None, 0.0)
        return None

    def renew(self) -> bool:
        session = self.repo.writable_session(self.branch)
        if session.snapshot_id != self.snapshot:
            return False
        try:
            # amend, not commit: the lock branch stays two snapshots long however long we hold it
            self.snapshot = session.amend(
                "icefloe: lock renewed", metadata=self._metadata(), allow_empty=True
            )
        except icechunk.ConflictError:
            return False
        return True

    def _renew_loop(self) -> None:
        every = self.holder.lease_seconds / 3
        while not self._stop.wait(every):
            try:
                if not self.renew():
                    self.lost.set()
                    _log.warning(
                        "lost the metadata lock %s (another run took it over); this run's "
                        "commit still fails rather than mix with theirs",
                        self.branch,
                    )
                    return
            except Exception:  # storage hiccup: try again next time, the lease may still hold
                _log.warning("renewing the metadata lock %s failed", self.branch, exc_info=True)

    def start_renewing(self) -> None:
        self._thread = threading.Thread(
            target=self._renew_loop, name="icefloe-lock-renewal", daemon=True
        )
        self._thread.start()

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self.lost.is_set() or self.snapshot is None:
            return
        with contextlib.suppress(icechunk.IcechunkError):
            if self.repo.lookup_branch(self.branch) == self.snapshot:
                self.repo.delete_branch(self.branch)


@contextmanager
def _branch_lock(repo: icechunk.Repository, branch: str, base: str, what: str) -> Iterator[None]:
    lease = _BranchLease(repo, branch, base)
    seen: dict[str, float] = {}
    announced = False
    while (holder := lease.try_take(seen)) is not None:
        if not announced and holder.pid:
            _logger().info(
                "waiting for the metadata lock %s of this group, held by %s (taken over if "
                "not renewed within %.0f s)",
                what,
                holder.describe(),
                holder.lease_seconds,
            )
            announced = True
        time.sleep(POLL_SECONDS)
    _logger().info("holding the metadata lock %s of this group", what)
    lease.start_renewing()
    try:
        yield
    finally:
        lease.release()


# -- the lock ---------------------------------------------------------------------------------


def _file_path(root: Path, name: str) -> Path:
    return root / ".icefloe-locks" / f"{name}.lock"


@contextmanager
def serialized(
    target: Target,
    group: str | None,
    *,
    enabled: bool = True,
    repo: icechunk.Repository | None = None,
) -> Iterator[None]:
    """Hold the group's metadata lock (waiting for it) while the block runs."""
    if not enabled:
        yield
        return
    name = limit_name(target, group)
    repo = repo if repo is not None else target.open_repository()
    root = _local_root(repo)
    if root is not None:
        with _file_lock(_file_path(root, name), LockHolder.me(), name):
            yield
    else:
        with _branch_lock(repo, LOCK_BRANCH_PREFIX + name, target.branch, name):
            yield


def lock_holder(
    target: Target, group: str | None, repo: icechunk.Repository | None = None
) -> LockHolder | None:
    """Who holds the group's metadata lock now (None: nobody), for tests and tools."""
    name = limit_name(target, group)
    repo = repo if repo is not None else target.open_repository()
    root = _local_root(repo)
    if root is not None:
        return _file_lock_holder(_file_path(root, name))
    try:
        tip = repo.lookup_branch(LOCK_BRANCH_PREFIX + name)
    except icechunk.IcechunkError:
        return None
    return _lease_of(repo, tip)[0]
