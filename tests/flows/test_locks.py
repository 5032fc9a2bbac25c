"""The metadata lock (flows/locks.py) never outlives its holder.

A holder is a real process that takes the lock and is then killed; the next taker must
get it within the bound: at once on the local filesystem (flock) and, on object storage,
at once when the dead holder ran on this host, else once its lease ran out. Live holders
keep it however long they hold it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, replace
from pathlib import Path

import icechunk
import pytest

from flows import locks
from flows.locks import LockHolder, lock_holder, serialized
from flows.targets import Target
from tests.s3_server import S3Endpoint, s3_server

GROUP = "g"


@pytest.fixture(scope="module")
def s3() -> Iterator[S3Endpoint]:
    with s3_server() as endpoint:
        yield endpoint


@pytest.fixture(params=["local", "s3"])
def target(request: pytest.FixtureRequest, tmp_path: Path) -> Target:
    if request.param == "local":
        target = Target(repo=str(tmp_path / "repo"))
    else:
        s3: S3Endpoint = request.getfixturevalue("s3")
        repo, options = s3.fresh_bucket_options()
        target = Target(repo=repo, storage_options=options)
        os.environ.setdefault("AWS_ACCESS_KEY_ID", s3.access_key_id)
        os.environ.setdefault("AWS_SECRET_ACCESS_KEY", s3.secret_access_key)
    target.open_repository(create=True)
    return target


def _holder(target: Target, tmp_path: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    ready = tmp_path / f"ready-{uuid.uuid4().hex[:6]}"
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.flows.hold_lock",
            target.model_dump_json(),
            GROUP,
            str(ready),
        ],
        cwd=Path(__file__).parents[2],
        env={**os.environ, **(env or {})},
    )
    deadline = time.monotonic() + 60
    while not ready.exists():
        assert process.poll() is None, "the holder died before taking the lock"
        assert time.monotonic() < deadline, "the holder never took the lock"
        time.sleep(0.05)
    return process


def _take_within(target: Target, seconds: float) -> float:
    """Takes and releases the lock; returns how long taking it took (fails past the bound)."""
    done = threading.Event()
    took: list[float] = []

    def take() -> None:
        started = time.monotonic()
        with serialized(target, GROUP, repo=target.open_repository()):
            took.append(time.monotonic() - started)
        done.set()

    thread = threading.Thread(target=take, daemon=True)
    thread.start()
    assert done.wait(seconds), f"the lock was not taken within {seconds} s"
    return took[0]


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_a_killed_holder_on_this_host_releases_the_lock_at_once(
    target: Target, tmp_path: Path, sig: signal.Signals
) -> None:
    # a lease far longer than the wait: only "its process is gone" can explain a takeover
    holder = _holder(target, tmp_path, {locks.LEASE_SECONDS_ENV: "600"})
    assert lock_holder(target, GROUP) is not None
    holder.send_signal(sig)
    holder.wait(10)

    assert _take_within(target, 10) < 10
    assert lock_holder(target, GROUP) is None
    if not target.repo.startswith("s3://"):
        return
    assert target.open_repository().list_branches() == {"main"}  # released: branch deleted


def test_a_live_holder_keeps_the_lock_past_its_lease(target: Target, tmp_path: Path) -> None:
    holder = _holder(target, tmp_path, {locks.LEASE_SECONDS_ENV: "1.5"})
    try:
        waiter_done = threading.Event()

        def wait_for_it() -> None:
            with serialized(target, GROUP, repo=target.open_repository()):
                waiter_done.set()

        threading.Thread(target=wait_for_it, daemon=True).start()
        # three leases: the holder's renewals must keep the waiter out
        assert not waiter_done.wait(4.5)
        holder.kill()
        holder.wait(10)
        assert waiter_done.wait(10)
    finally:
        holder.kill()


def test_a_lease_from_another_host_is_taken_over_once_expired(
    s3: S3Endpoint, tmp_path: Path
) -> None:
    """A holder elsewhere cannot be proven dead: its lease must run out first."""
    bucket = f"icefloe-{uuid.uuid4().hex[:16]}"
    s3.create_bucket(bucket)
    storage = s3.storage(bucket, "repo")
    repo = icechunk.Repository.create(storage)
    target = Target(repo=f"s3://{bucket}/repo")
    branch = locks.LOCK_BRANCH_PREFIX + locks.limit_name(target, GROUP)
    elsewhere = replace(LockHolder.me(), host="another-host", lease_seconds=3.0)
    repo.create_branch(branch, repo.lookup_branch("main"))
    repo.writable_session(branch).commit(
        "lock", metadata={"icefloe_lock": {"holder": asdict(elsewhere)}}, allow_empty=True
    )
    assert lock_holder(target, GROUP, repo) == elsewhere

    started = time.monotonic()
    with serialized(target, GROUP, repo=repo):
        waited = time.monotonic() - started
        assert lock_holder(target, GROUP, repo) == LockHolder.me()
    assert 3.0 <= waited < 3.0 + 5
    assert repo.list_branches() == {"main"}


def test_racing_takers_hold_the_lock_one_at_a_time(target: Target) -> None:
    inside: list[int] = []
    overlaps: list[int] = []

    def take(k: int) -> None:
        repo = target.open_repository()
        for _ in range(3):
            with serialized(target, GROUP, repo=repo):
                inside.append(k)
                if len(inside) > 1:
                    overlaps.append(k)
                time.sleep(0.05)
                inside.remove(k)

    threads = [threading.Thread(target=take, args=(k,)) for k in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not overlaps


def test_the_lock_file_names_its_holder(tmp_path: Path) -> None:
    target = Target(repo=str(tmp_path / "repo"))
    repo = target.open_repository(create=True)
    with serialized(target, GROUP, repo=repo):
        holder = lock_holder(target, GROUP, repo)
        assert holder == LockHolder.me()
        assert json.loads(next((tmp_path / "repo" / ".icefloe-locks").iterdir()).read_text())
    assert lock_holder(target, GROUP, repo) is None
