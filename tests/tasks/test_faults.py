"""Faults the writer must survive or refuse cleanly.

- a dask worker process killed (SIGKILL) in the middle of write_lazy;
- an object store that answers some requests with 503 SlowDown / 500 InternalError;
- a commit that fails after every chunk was uploaded (the branch moved underneath, the
  ref update is refused, or its response is lost);
- a group written by plain zarr, or holding an array xarray cannot map: every mode
  refuses it by name and nothing in the store changes.
"""

from __future__ import annotations

import http.client
import os
import re
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

import dask
import dask.array as da
import icechunk
import numpy as np
import pandas as pd
import pytest
import xarray as xr
import zarr
from distributed import Client, LocalCluster

from tasks.commit import commit_session
from tasks.errors import CommitConflictError, PlanError
from tasks.writer import XarrayDatasetWriter
from tests.cf_datasets import cf_dataset, lazy
from tests.conftest import plain_xarray, read_back, tip
from tests.s3_server import S3Endpoint, s3_server
from tests.tasks.helpers import write

# -- a dask worker killed mid-write ------------------------------------------------------------

SLOW_BLOCK_S = 0.2


def _slow_values(block: np.ndarray, block_info: dict[Any, Any] | None = None) -> np.ndarray:
    """Values that depend only on the position in the array; each block takes a while."""
    if block_info is not None and None in block_info:
        time.sleep(SLOW_BLOCK_S)
        offset = block_info[None]["array-location"][0][0]
    else:
        offset = 0
    k = np.arange(block.shape[0])[:, None, None] + offset
    y = np.arange(block.shape[1])[None, :, None]
    x = np.arange(block.shape[2])[None, None, :]
    return (np.sin(k * 0.3 + y) * 10 + x).astype("float64")


def _slow_dataset(n_time: int, ny: int = 6, nx: int = 8) -> tuple[xr.Dataset, xr.Dataset]:
    """The same dataset lazily (one slow dask block per time step) and in memory."""
    shape = (n_time, ny, nx)
    lazy_data = da.zeros(shape, chunks=(1, ny, nx)).map_blocks(_slow_values, dtype="float64")
    coords = {
        "time": ("time", pd.date_range("2001-01-01", periods=n_time), {"standard_name": "time"}),
        "y": ("y", np.arange(ny, dtype="float64")),
        "x": ("x", np.arange(nx, dtype="float64")),
    }

    def build(data: Any) -> xr.Dataset:
        ds = xr.Dataset(
            {"field": (("time", "y", "x"), data, {"units": "1"})},
            coords=coords,
            attrs={"title": "killed worker"},
        )
        ds["time"].encoding.update(units="days since 2001-01-01", dtype="int64")
        return ds

    return build(lazy_data), build(_slow_values(np.zeros(shape)))


@pytest.mark.slow
@pytest.mark.cluster
def test_a_worker_killed_during_write_lazy_is_replaced_and_the_data_is_complete(repo, tmp_path):
    lazy_ds, eager_ds = _slow_dataset(n_time=16)
    with (
        LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0"
        ) as cluster,
        Client(cluster) as client,
    ):
        pids = client.run(os.getpid)
        victim = sorted(pids.values())[0]
        killed_at: list[float] = []

        def kill_when_busy() -> None:
            # Wait until the workers are computing blocks of the write, then kill one.
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                processing = client.processing()
                if sum(len(keys) for keys in processing.values()) >= 2:
                    time.sleep(3 * SLOW_BLOCK_S)
                    os.kill(victim, signal.SIGKILL)
                    killed_at.append(time.monotonic())
                    return
                time.sleep(0.05)

        killer = threading.Thread(target=kill_when_busy, daemon=True)
        # By name, not scheduler=client: the nanny sends the dask config to the worker it
        # starts, and a Client object in it cannot be pickled (the restart would fail).
        with dask.config.set(scheduler="dask.distributed"):
            killer.start()
            write(repo, lazy_ds, lambda w: w.for_create_or_overwrite(group="g"))
            finished_at = time.monotonic()
        killer.join(timeout=10)
        assert killed_at, "the worker was never killed"
        assert killed_at[0] < finished_at, "the worker was killed after the write ended"
        client.wait_for_workers(2, timeout=30)  # the nanny started a new one
        assert victim not in client.run(os.getpid).values()
    xr.testing.assert_identical(read_back(repo, "g"), plain_xarray(eager_ds, tmp_path))


# -- transient object-store errors --------------------------------------------------------------

HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "trailers",
    "transfer-encoding",
    "upgrade",
}
S3_ERROR = (
    '<?xml version="1.0" encoding="UTF-8"?>'
    "<Error><Code>{code}</Code><Message>injected by the icefloe test proxy</Message></Error>"
)
Rule = Callable[[str, str], bool]


class FlakyProxy:
    """An HTTP proxy in front of the S3 server that fails requests on purpose.

    Every ``fail_every``-th request is answered 503 SlowDown or 500 InternalError
    (alternately) *without* being forwarded, so a retry is always safe. ``refuse``
    answers matching requests 503 every time; ``lose_response`` forwards a matching
    request and then answers 500 anyway: the change landed but the client cannot know.
    """

    def __init__(self, upstream: str, fail_every: int = 0) -> None:
        self.upstream = urlsplit(upstream)
        self.fail_every = fail_every
        self.refuse: Rule | None = None
        self.lose_response: Rule | None = None
        self.lock = threading.Lock()
        self.requests = 0
        self.injected: list[tuple[str, str, int]] = []
        self.lost: list[tuple[str, str, int]] = []
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FlakyProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(timeout=5)

    def _injected_status(self, method: str, path: str) -> int | None:
        with self.lock:
            self.requests += 1
            status = None
            if self.refuse is not None and self.refuse(method, path):
                status = 503
            elif self.fail_every and self.requests % self.fail_every == 0:
                status = 503 if (self.requests // self.fail_every) % 2 else 500
            if status is not None:
                self.injected.append((method, path, status))
            return status

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as S3 clients expect

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _read_body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    body = b""
                    while size := int(self.rfile.readline().split(b";")[0], 16):
                        body += self.rfile.read(size)
                        self.rfile.readline()
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return body
                length = int(self.headers.get("Content-Length") or 0)
                return self.rfile.read(length) if length else b""

            def _error(self, status: int) -> None:
                payload = S3_ERROR.format(
                    code="SlowDown" if status == 503 else "InternalError"
                ).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/xml")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def _forward(self) -> None:
                body = self._read_body()  # read it even when failing: the connection stays usable
                status = proxy._injected_status(self.command, self.path)
                if status is not None:
                    self._error(status)
                    return
                headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
                if body or self.command in ("PUT", "POST"):
                    headers["Content-Length"] = str(len(body))
                upstream = http.client.HTTPConnection(
                    proxy.upstream.hostname, proxy.upstream.port, timeout=30
                )
                try:
                    upstream.request(self.command, self.path, body=body, headers=headers)
                    response = upstream.getresponse()
                    data = response.read()
                finally:
                    upstream.close()
                if proxy.lose_response is not None and proxy.lose_response(self.command, self.path):
                    with proxy.lock:
                        proxy.lost.append((self.command, self.path, response.status))
                    self._error(500)
                    return
                self.send_response(response.status, response.reason)
                head = self.command == "HEAD"  # HEAD keeps the object's Content-Length
                for key, value in response.getheaders():
                    if key.lower() in HOP_BY_HOP or (key.lower() == "content-length" and not head):
                        continue
                    self.send_header(key, value)
                if not head:
                    self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if not head:
                    self.wfile.write(data)

            do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = _forward

        return Handler


@pytest.fixture(scope="module")
def s3() -> Iterator[S3Endpoint]:
    """The suite's S3 server (tests/s3_server.py), one per module."""
    with s3_server() as endpoint:
        yield endpoint


@pytest.fixture
def bucket(s3: S3Endpoint) -> str:
    name = f"icefloe-faults-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(name)
    return name


@pytest.fixture
def proxy(s3: S3Endpoint) -> Iterator[FlakyProxy]:
    with FlakyProxy(s3.endpoint_url) as running:
        yield running


def _through(proxy: FlakyProxy, s3: S3Endpoint, bucket: str) -> icechunk.Storage:
    """Storage on the S3 server, reached through the proxy; built as S3Endpoint.storage does."""
    return icechunk.s3_storage(
        bucket=bucket,
        prefix="repo",
        endpoint_url=proxy.url,
        region=s3.region,
        allow_http=True,
        force_path_style=True,
        access_key_id=s3.access_key_id,
        secret_access_key=s3.secret_access_key,
    )


# fail fast: the tests below make requests fail for good, and icechunk's defaults would
# retry a ref update 100 times
FAST_RETRIES = icechunk.StorageRetriesSettings(
    max_tries=3, initial_backoff_ms=10, max_backoff_ms=50
)
FAST_FAILING = icechunk.RepositoryConfig(
    storage=icechunk.StorageSettings(retries=FAST_RETRIES),
    # not re-exported by icechunk 2.3
    repo_update_retries=icechunk._icechunk_python.RepoUpdateRetryConfig(default=FAST_RETRIES),
)
# Grids large enough that chunks (> 512 bytes) are objects, not inlined in manifests.
GRID = {"ny": 8, "nx": 16}


@pytest.fixture
def threads() -> Iterator[None]:
    with dask.config.set(scheduler="threads"):
        yield


@pytest.mark.usefixtures("threads")
def test_transient_503_and_500_are_retried(s3, bucket, proxy, tmp_path):
    proxy.fail_every = 7
    repo = icechunk.Repository.create(_through(proxy, s3, bucket))
    full = lazy(cf_dataset(12, **GRID), time_chunk=3)
    write(repo, full.isel(time=slice(0, 6)), lambda w: w.for_create_or_overwrite(group="g"))
    write(repo, full.isel(time=slice(6, 12)), lambda w: w.for_append(group="g"))
    assert len(proxy.injected) > 0
    statuses = {status for _, _, status in proxy.injected}
    assert statuses == {500, 503}, proxy.injected
    assert {method for method, _, _ in proxy.injected} >= {"PUT"}  # writes were hit too
    direct = icechunk.Repository.open(s3.storage(bucket, "repo"))
    assert [c.message for c in direct.ancestry(branch="main")][:2] == ["write", "write"]
    xr.testing.assert_identical(read_back(direct, "g"), plain_xarray(full, tmp_path))


# -- a commit that fails after its chunks were written -------------------------------------------

BRANCH_REF = re.compile(r"/repo/repo(\?|$)")  # the object a commit rewrites to move a branch


def _prepared(repo: icechunk.Repository, ds: xr.Dataset, choose: Any) -> icechunk.Session:
    """A session in which every writer phase ran: chunks uploaded, nothing committed."""
    session = repo.writable_session("main")
    writer = choose(XarrayDatasetWriter(ds, store=session.store))
    writer.plan()
    writer.write_metadata()
    writer.write_eager()
    writer.verify()
    writer.write_lazy()
    return session


def _appends(repo: icechunk.Repository) -> list[str]:
    return [c.message for c in repo.ancestry(branch="main") if c.message.startswith("append")]


@pytest.mark.usefixtures("threads")
@pytest.mark.parametrize("fault", ["ref update refused", "ref update response lost"])
def test_a_commit_whose_ref_update_fails_publishes_nothing_and_a_rerun_converges(
    s3, bucket, proxy, tmp_path, fault
):
    full = lazy(cf_dataset(12, **GRID), time_chunk=3)
    repo = icechunk.Repository.create(_through(proxy, s3, bucket), config=FAST_FAILING)
    write(repo, full.isel(time=slice(0, 6)), lambda w: w.for_create_or_overwrite(group="g"))
    before = tip(repo)
    append = lambda w: w.for_append(group="g", on_overlap="skip")  # noqa: E731
    session = _prepared(repo, full.isel(time=slice(6, 12)), append)

    if fault == "ref update refused":
        proxy.refuse = lambda method, path: method == "PUT" and bool(BRANCH_REF.search(path))
        with pytest.raises(icechunk.IcechunkError):
            commit_session(session, "append 6-12")
        assert len(proxy.injected) >= 1
        assert tip(repo) == before  # nothing published
        assert read_back(repo, "g").sizes["time"] == 6
        proxy.refuse = None
    else:
        # the ref update lands, but the client sees a 500: it must not publish twice, nor
        # report a conflict with itself
        proxy.lose_response = lambda method, path: (
            method == "PUT" and bool(BRANCH_REF.search(path)) and not proxy.lost
        )
        commit_session(session, "append 6-12")
        assert len(proxy.lost) == 1
        proxy.lose_response = None

    # re-running the same request is safe: it appends what is missing, or nothing
    write(repo, full.isel(time=slice(6, 12)), append, message="append 6-12 (re-run)")
    direct = icechunk.Repository.open(s3.storage(bucket, "repo"))
    assert len(_appends(direct)) == 1  # published exactly once
    xr.testing.assert_identical(read_back(direct, "g"), plain_xarray(full, tmp_path))


@pytest.mark.usefixtures("threads")
def test_a_commit_after_the_branch_moved_underneath_fails_and_a_rerun_converges(repo, tmp_path):
    full = lazy(cf_dataset(12), time_chunk=3)
    write(repo, full.isel(time=slice(0, 6)), lambda w: w.for_create_or_overwrite(group="g"))
    append = lambda w: w.for_append(group="g", on_overlap="skip")  # noqa: E731
    ours = _prepared(repo, full.isel(time=slice(6, 12)), append)
    # another run appends part of the same labels first
    write(repo, full.isel(time=slice(6, 9)), append, message="append 6-9 (other run)")
    theirs = tip(repo)
    with pytest.raises(CommitConflictError, match="g/"):
        commit_session(ours, "append 6-12")
    assert tip(repo) == theirs  # our chunks were uploaded, but nothing was published
    xr.testing.assert_identical(
        read_back(repo, "g"), plain_xarray(full.isel(time=slice(0, 9)), tmp_path, "theirs")
    )
    write(repo, full.isel(time=slice(6, 12)), append, message="append 6-12 (re-run)")
    xr.testing.assert_identical(read_back(repo, "g"), plain_xarray(full, tmp_path))


# -- groups icefloe did not write ----------------------------------------------------------------

REQUESTS: dict[str, Callable[[XarrayDatasetWriter], XarrayDatasetWriter]] = {
    "create w-": lambda w: w.for_create_or_overwrite(group="g"),
    "overwrite w": lambda w: w.for_create_or_overwrite(group="g", mode="w"),
    "modify": lambda w: w.for_modify(group="g"),
    "modify new vars": lambda w: w.for_modify(group="g").drop_existing_vars(),
    "append error": lambda w: w.for_append(group="g", append_dim="time"),
    "append skip": lambda w: w.for_append(group="g", append_dim="time", on_overlap="skip"),
    "append overwrite": lambda w: w.for_append(
        group="g", append_dim="time", on_overlap="overwrite"
    ),
    "region auto": lambda w: w.for_region(group="g"),
    "region slice": lambda w: w.for_region(group="g", region={"time": slice(0, 4)}),
}


def _request_dataset() -> xr.Dataset:
    ds = xr.Dataset(
        {"v": (("time", "lat"), np.ones((4, 3)), {"units": "1"})},
        coords={"time": pd.date_range("2000-01-01", periods=4), "lat": [-10.0, 0.0, 10.0]},
    )
    ds["time"].encoding.update(units="days since 2000-01-01", dtype="int64")
    return ds


def _foreign_group(repo: icechunk.Repository, kind: str) -> str:
    """Commit a group holding an array icefloe cannot place; returns that array's name.

    "plain zarr": written by zarr alone, no dimension_names at all.
    "unmappable": an xarray group plus an array whose dimensions xarray cannot map onto
    the group's (its "lat" axis has 2 elements, the group's "lat" has 3), so xarray cannot
    open the group.
    """
    session = repo.writable_session("main")
    if kind == "plain zarr":
        group = zarr.create_group(session.store, path="g")
        name = "raw"
        group.create_array(name, shape=(4, 3), chunks=(2, 3), dtype="float32")
    else:
        _request_dataset().to_zarr(session.store, group="g", consolidated=False, zarr_format=3)
        group = zarr.open_group(session.store, path="g")
        name = "bounds"
        group.create_array(
            name, shape=(2, 2), chunks=(2, 2), dtype="float32", dimension_names=("lat", "nv")
        )
    group[name][...] = np.arange(np.prod(group[name].shape), dtype="float32").reshape(
        group[name].shape
    )
    session.commit(f"foreign group ({kind})")
    return name


def _array_state(repo: icechunk.Repository, name: str) -> tuple[Any, ...]:
    array = zarr.open_array(repo.readonly_session(branch="main").store, path=f"g/{name}", mode="r")
    return array.metadata.to_dict(), np.asarray(array[...]).tobytes()


@pytest.mark.usefixtures("threads")
@pytest.mark.parametrize(
    ("kind", "request_name"),
    [("plain zarr", r) for r in REQUESTS]
    # mode="w" replaces a group whose arrays all have dimension names: see the next test
    + [("unmappable", r) for r in REQUESTS if r != "overwrite w"],
)
def test_a_group_icefloe_cannot_map_is_refused_by_name(repo, kind, request_name):
    """Every mode, with labels that overlap the stored ones and labels that do not."""
    name = _foreign_group(repo, kind)
    before, state = tip(repo), _array_state(repo, name)
    for ds in (_request_dataset(), _request_dataset().isel(time=slice(2, 4))):
        with pytest.raises(PlanError, match=f"'{name}'"):
            write(repo, ds, REQUESTS[request_name])
        assert tip(repo) == before
        assert _array_state(repo, name) == state


def test_overwrite_replaces_a_group_xarray_cannot_open(repo, tmp_path):
    """The contract: mode="w" replaces the group, whatever it held, as long as every array
    has dimension names (a plain zarr group is refused, see above)."""
    _foreign_group(repo, "unmappable")
    ds = _request_dataset()
    write(repo, ds, REQUESTS["overwrite w"])
    back = read_back(repo, "g")
    assert "bounds" not in back
    xr.testing.assert_identical(back, plain_xarray(ds, tmp_path))
