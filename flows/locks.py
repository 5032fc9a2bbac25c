"""Serializing runs that change a group's metadata, with a Prefect global concurrency limit.

Two appends of one group both resize its arrays; icechunk cannot rebase one onto the
other, so the second would fail at commit after doing all its work. Holding a limit of
one per repository and group makes the second wait instead. Region runs do not take
it: disjoint regions commit side by side.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager, suppress

from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
from prefect.concurrency.sync import concurrency
from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound
from prefect.logging import get_run_logger

from flows.targets import Target, safe_url

LEASE_SECONDS = 60


def limit_name(target: Target, group: str | None) -> str:
    """A limit name per repository and group; names cannot contain '/' (FIELD-NOTES)."""
    digest = hashlib.sha256(f"{safe_url(target.repo)}|{group or ''}".encode()).hexdigest()
    return f"icefloe-metadata-{digest[:24]}"


def ensure_limit(name: str) -> None:
    # a limit that does not exist is silently ignored unless strict: create it first
    with get_client(sync_client=True) as client:
        try:
            client.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            with suppress(ObjectAlreadyExists):
                client.create_global_concurrency_limit(
                    GlobalConcurrencyLimitCreate(name=name, limit=1)
                )


@contextmanager
def serialized(target: Target, group: str | None, *, enabled: bool = True) -> Iterator[None]:
    """Hold the group's metadata lock (waiting for it) while the block runs."""
    if not enabled:
        yield
        return
    name = limit_name(target, group)
    ensure_limit(name)
    get_run_logger().info("waiting for the metadata lock %s of this group", name)
    # the shortest lease Prefect allows: a killed holder blocks the group for about a
    # minute (plus the server's 15 s repossessor loop), not five
    with concurrency(name, occupy=1, strict=True, lease_duration=LEASE_SECONDS):
        yield
