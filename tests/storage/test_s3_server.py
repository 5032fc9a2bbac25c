"""The test S3 server is real enough for icechunk: data round-trips and conditional writes hold.

icechunk's safety on object storage rests on conditional PUTs (``If-Match`` on the
``repo`` object to move a branch). A sequential stale commit is caught by icechunk
itself (it re-reads the branch before writing), so only racing commits show whether the
server honours the condition. Checked by mutation: with the server stripping the
conditional headers, the request, the racing and the direct PUT tests fail.
"""

from __future__ import annotations

import json
import threading
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from functools import partial
from typing import Any

import icechunk
import numpy as np
import pandas as pd
import pytest
import xarray as xr
import zarr
from botocore.exceptions import ClientError

from tests.s3_server import S3Endpoint

PREFIX = "repo"
# Chunks of 1.2 KB: above icechunk's inline threshold (512 B), so they become objects.
SHAPE = (6, 100)
CHUNKS = (3, 50)


def _dataset() -> xr.Dataset:
    rng = np.random.default_rng(0)
    return xr.Dataset(
        {"t2m": (("time", "x"), rng.normal(280.0, 5.0, SHAPE), {"units": "K"})},
        coords={
            "time": pd.date_range("2024-01-01", periods=SHAPE[0], freq="D"),
            "x": np.arange(SHAPE[1]),
        },
        attrs={"title": "s3 round trip"},
    ).chunk(dict(zip(("time", "x"), CHUNKS, strict=True)))


def _commit_values(repo: icechunk.Repository, value: float) -> str:
    session = repo.writable_session("main")
    zarr.open_array(session.store, path="t2m", mode="r+")[:] = value
    return session.commit(f"all {value}")


def _values(repo: icechunk.Repository) -> np.ndarray:
    return np.asarray(zarr.open_array(repo.readonly_session(branch="main").store, path="t2m")[:])


@pytest.fixture
def repo(s3: S3Endpoint, bucket: str) -> icechunk.Repository:
    """A repository holding ``_dataset()`` in one commit."""
    repo = icechunk.Repository.create(s3.storage(bucket, PREFIX))
    session = repo.writable_session("main")
    _dataset().to_zarr(session.store, mode="w", consolidated=False)
    session.commit("initial")
    return repo


def _status(error: ClientError) -> tuple[str, int]:
    return error.response["Error"]["Code"], error.response["ResponseMetadata"]["HTTPStatusCode"]


@contextmanager
def _recorded_requests(s3: S3Endpoint) -> Iterator[list[dict[str, Any]]]:
    """The requests the server received inside the block (moto's request recorder)."""

    def post(action: str) -> None:
        request = urllib.request.Request(
            f"{s3.endpoint_url}/moto-api/recorder/{action}", method="POST"
        )
        urllib.request.urlopen(request, timeout=5).close()

    requests: list[dict[str, Any]] = []
    post("reset-recording")
    post("start-recording")
    try:
        yield requests
    finally:
        post("stop-recording")
    url = f"{s3.endpoint_url}/moto-api/recorder/download-recording"
    with urllib.request.urlopen(url, timeout=5) as response:
        requests.extend(json.loads(line) for line in response.read().decode().splitlines())


def _header(request: dict[str, Any], name: str) -> str | None:
    return {k.lower(): v for k, v in request["headers"].items()}.get(name.lower())


def _race[T](attempts: list[Callable[[], T]]) -> list[T]:
    """Run the attempts on one thread each, released together so that the requests overlap."""
    start = threading.Barrier(len(attempts))

    def run(attempt: Callable[[], T]) -> T:
        start.wait()
        return attempt()

    with ThreadPoolExecutor(len(attempts)) as pool:
        return list(pool.map(run, attempts))


def _try_commit(session: icechunk.Session, message: str) -> bool:
    try:
        session.commit(message)
    except icechunk.ConflictError:
        return False
    return True


def _try_put(client: Any, **request: Any) -> bool:
    """PutObject; False if its condition failed, any other error raised."""
    try:
        client.put_object(**request)
    except ClientError as error:
        if _status(error) != ("PreconditionFailed", 412):
            raise
        return False
    return True


# --- icechunk through the server --------------------------------------------------------


def test_xarray_round_trip_through_icechunk(
    s3: S3Endpoint, bucket: str, repo: icechunk.Repository
) -> None:
    # Reopen from a new Storage: nothing may come from the writer's in-process caches.
    reopened = icechunk.Repository.open(s3.storage(bucket, PREFIX))
    session = reopened.readonly_session(branch="main")
    back = xr.open_zarr(session.store, consolidated=False).load()
    xr.testing.assert_identical(back, _dataset().load())

    # And the bytes really are on the server, laid out as an icechunk repository.
    listing = s3.client().list_objects_v2(Bucket=bucket, Prefix=f"{PREFIX}/")
    keys = {obj["Key"] for obj in listing["Contents"]}
    assert f"{PREFIX}/repo" in keys
    assert any(key.startswith(f"{PREFIX}/chunks/") for key in keys)
    assert any(key.startswith(f"{PREFIX}/snapshots/") for key in keys)


def test_stale_session_commit_raises_conflict_and_keeps_first_commit(
    repo: icechunk.Repository,
) -> None:
    first = repo.writable_session("main")
    stale = repo.writable_session("main")  # same base snapshot as `first`
    zarr.open_array(first.store, path="t2m", mode="r+")[:] = 1.0
    zarr.open_array(stale.store, path="t2m", mode="r+")[:] = 2.0
    first_id = first.commit("first")

    with pytest.raises(icechunk.ConflictError):
        stale.commit("stale")

    assert repo.lookup_branch("main") == first_id
    np.testing.assert_array_equal(_values(repo), np.full(SHAPE, 1.0))


def test_create_on_existing_repository_fails(
    s3: S3Endpoint, bucket: str, repo: icechunk.Repository
) -> None:
    with pytest.raises(icechunk.IcechunkError, match="clean prefix"):
        icechunk.Repository.create(s3.storage(bucket, PREFIX))
    np.testing.assert_array_equal(_values(repo), _dataset()["t2m"].values)


def test_icechunk_commit_moves_the_branch_with_if_match(
    s3: S3Endpoint, bucket: str, repo: icechunk.Repository
) -> None:
    """The request the other tests' guarantees hang on: the branch update is conditional."""
    key = f"{PREFIX}/repo"
    etag_before = s3.client().head_object(Bucket=bucket, Key=key)["ETag"].strip('"')
    with _recorded_requests(s3) as requests:
        _commit_values(repo, 3.0)

    updates = [r for r in requests if r["method"] == "PUT" and f"/{bucket}/{key}?" in r["url"]]
    assert len(updates) == 1, [r["url"] for r in requests]
    assert (_header(updates[0], "If-Match") or "").strip('"') == etag_before


def test_racing_commits_have_exactly_one_winner(s3: S3Endpoint, bucket: str) -> None:
    """Commits from one base, started together: the server, not the client, must decide.

    Each contender already holds a session at the same base, so each passes any
    client-side check; only the conditional PUT on the server can stop the loser.
    """
    repo = icechunk.Repository.create(s3.storage(bucket, PREFIX))
    session = repo.writable_session("main")
    zarr.create_array(session.store, name="t2m", shape=SHAPE, chunks=CHUNKS, dtype="f8")
    session.commit("array")
    rounds, contenders = 4, 3
    for round_ in range(rounds):
        sessions = [repo.writable_session("main") for _ in range(contenders)]
        for i, contender in enumerate(sessions):
            zarr.open_array(contender.store, path="t2m", mode="r+")[:] = 10.0 * round_ + i
        won = _race([partial(_try_commit, contender, f"round {round_}") for contender in sessions])
        assert won.count(True) == 1, f"round {round_}: {won}"
        expected = 10.0 * round_ + won.index(True)
        np.testing.assert_array_equal(_values(repo), np.full(SHAPE, expected))
    # initial commit + array + one per round: no commit was lost or duplicated.
    assert len(list(repo.ancestry(branch="main"))) == 2 + rounds


# --- the server's conditional PUT, directly -------------------------------------------


def test_put_if_none_match_refuses_an_existing_key(s3: S3Endpoint, bucket: str) -> None:
    client = s3.client()
    client.put_object(Bucket=bucket, Key="k", Body=b"first", IfNoneMatch="*")
    with pytest.raises(ClientError) as excinfo:
        client.put_object(Bucket=bucket, Key="k", Body=b"second", IfNoneMatch="*")
    assert _status(excinfo.value) == ("PreconditionFailed", 412)
    assert client.get_object(Bucket=bucket, Key="k")["Body"].read() == b"first"


def test_put_if_match_refuses_a_stale_etag(s3: S3Endpoint, bucket: str) -> None:
    client = s3.client()
    stale = client.put_object(Bucket=bucket, Key="k", Body=b"v1")["ETag"]
    current = client.put_object(Bucket=bucket, Key="k", Body=b"v2", IfMatch=stale)["ETag"]
    with pytest.raises(ClientError) as excinfo:
        client.put_object(Bucket=bucket, Key="k", Body=b"v3", IfMatch=stale)
    assert _status(excinfo.value) == ("PreconditionFailed", 412)
    client.put_object(Bucket=bucket, Key="k", Body=b"v4", IfMatch=current)
    assert client.get_object(Bucket=bucket, Key="k")["Body"].read() == b"v4"


@pytest.mark.parametrize("condition", ["If-None-Match", "If-Match"])
def test_racing_conditional_puts_have_exactly_one_winner(
    s3: S3Endpoint, bucket: str, condition: str
) -> None:
    """Plain moto checks and stores in two unlocked steps; the test server must not."""
    contenders = 6
    clients = [s3.client() for _ in range(contenders)]  # own connections: truly concurrent
    for round_ in range(10):
        key = f"race-{round_}"
        if condition == "If-Match":
            etag = clients[0].put_object(Bucket=bucket, Key=key, Body=b"base")["ETag"]
            kwargs = {"IfMatch": etag}
        else:
            kwargs = {"IfNoneMatch": "*"}
        won = _race(
            [
                partial(_try_put, client, Bucket=bucket, Key=key, Body=bytes([i]), **kwargs)
                for i, client in enumerate(clients)
            ]
        )
        assert won.count(True) == 1, f"round {round_}: {won}"
