"""Fixtures shared by the whole suite: repositories on disk and the dask schedulers."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import dask
import httpx
import icechunk
import pytest
import xarray as xr
import zarr
from distributed import Client, LocalCluster


@pytest.fixture
def repo(tmp_path: Path) -> icechunk.Repository:
    return icechunk.Repository.create(icechunk.local_filesystem_storage(str(tmp_path / "repo")))


@pytest.fixture(scope="session")
def local_cluster() -> Iterator[LocalCluster]:
    """Two worker processes: writes cross a process boundary as on a real cluster."""
    with LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
    ) as cluster:
        yield cluster


@pytest.fixture(params=["threads", "cluster"])
def scheduler(request: pytest.FixtureRequest) -> Iterator[str]:
    """Runs a test on the threaded scheduler and on a LocalCluster with worker processes."""
    if request.param == "threads":
        with dask.config.set(scheduler="threads"):
            yield "threads"
    else:
        cluster = request.getfixturevalue("local_cluster")
        # "dask.distributed", not the client itself: a nanny restarting a dead worker ships
        # the config to it, and a Client cannot be pickled
        with Client(cluster), dask.config.set(scheduler="dask.distributed"):
            yield "cluster"


def read_back(
    repo: icechunk.Repository, group: str | None = None, branch: str = "main"
) -> xr.Dataset:
    """The committed group, read independently of icefloe (without the spec icefloe keeps
    with it, which plain xarray reads as one more attribute: tests/tasks/test_spec.py)."""
    session = repo.readonly_session(branch=branch)
    return without_spec(xr.open_zarr(session.store, group=group, consolidated=False).load())


def without_spec(ds: xr.Dataset) -> xr.Dataset:
    """``ds`` without the group attribute that holds icefloe's spec (tasks/spec.py)."""
    ds.attrs.pop("icefloe_spec", None)
    return ds


def plain_xarray(ds: xr.Dataset, tmp_path: Path, name: str = "plain") -> xr.Dataset:
    """What plain xarray stores and reads back for ``ds`` written in one go."""
    path = tmp_path / f"{name}.zarr"
    ds.to_zarr(zarr.storage.LocalStore(str(path)), mode="w", consolidated=False, zarr_format=3)
    return xr.open_zarr(str(path), consolidated=False).load()


def tip(repo: icechunk.Repository, branch: str = "main") -> str:
    return repo.lookup_branch(branch)


@pytest.fixture(scope="session")
def prefect_harness(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One temporary Prefect API for the whole session (about 11 s to start); yields its URL.

    Results go to a temporary directory too: the harness isolates only the database, and
    results persisted by one session would otherwise be found by the next.
    """
    from prefect.settings import (
        PREFECT_API_URL,
        PREFECT_LOCAL_STORAGE_PATH,
        PREFECT_SERVER_ANALYTICS_ENABLED,
        temporary_settings,
    )
    from prefect.testing.utilities import prefect_test_harness

    settings = {
        PREFECT_LOCAL_STORAGE_PATH: tmp_path_factory.mktemp("prefect-results"),
        # The server's telemetry job races the tests for the SQLite lock and logs tracebacks.
        PREFECT_SERVER_ANALYTICS_ENABLED: False,
    }
    with temporary_settings(settings), prefect_test_harness():
        yield str(PREFECT_API_URL.value())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(check, timeout: float, what: str, every: float = 0.5):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(every)
    raise TimeoutError(f"{what} did not happen within {timeout} s")


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``prefect server start`` on a free port with a new SQLite database; yields the API URL.

    One per test session, shared by the deployment tests and the crash tests."""
    with running_prefect_server(tmp_path_factory.mktemp("prefect-home")) as url:
        yield url


@contextlib.contextmanager
def running_prefect_server(home: Path) -> Iterator[str]:
    """A ``prefect server start`` process with its database in ``home``, until the block ends."""
    port = free_port()
    env = {
        **os.environ,
        "PREFECT_HOME": str(home),
        "PREFECT_API_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{home}/prefect.db",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        # the UI test (tests/deployments/test_ui.py) drives it in a browser; on a port
        # other than 4200 the UI needs to be told where its API is (docs/operations.md)
        "PREFECT_SERVER_UI_ENABLED": "true",
        "PREFECT_UI_API_URL": f"http://127.0.0.1:{port}/api",
    }
    env.pop("PREFECT_API_URL", None)
    log = (home / "server.log").open("w")
    server = subprocess.Popen(
        [
            str(Path(sys.executable).with_name("prefect")),
            "server",
            "start",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}/api"

    def healthy() -> bool:
        try:
            return httpx.get(f"{url}/health", timeout=1).status_code == 200
        except httpx.HTTPError:
            if server.poll() is not None:
                raise RuntimeError((home / "server.log").read_text()) from None
            return False

    try:
        wait_until(healthy, 90, "prefect server start")
        yield url
    finally:
        server.terminate()
        try:
            server.wait(20)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()
