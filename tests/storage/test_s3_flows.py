"""The write flows against object storage, and on a Dask cluster that already runs.

Every repository here lives on the test S3 server (tests/s3_server.py: moto's S3 in its own
process, behind one lock so that conditional writes are atomic). Credentials come from a
Prefect Secret block (read by icechunk's credentials callback in each process that touches
the repository, so nothing pickled holds them) or from the environment. Results are read
back with icechunk and xarray, independently of icefloe, and compared with plain xarray.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import contextvars
import json
import os
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import icechunk
import numpy as np
import pytest
import xarray as xr
from distributed import Client, LocalCluster
from prefect.settings import (
    PREFECT_LOCAL_STORAGE_PATH,
    PREFECT_SERVER_DATABASE_CONNECTION_URL,
)

import tasks.batches
from flows import Target, append_flow, create_flow, region_flow
from flows.results import WriteResult
from flows.sources import SyntheticSource
from flows.write import RunOptions
from tasks.errors import PlanError
from tests.conftest import plain_xarray, read_back, tip
from tests.flows import kill_run
from tests.flows.python_sources import GRID, scaled, synthetic
from tests.s3_server import S3Endpoint

pytestmark = [pytest.mark.usefixtures("prefect_harness"), pytest.mark.slow]

ROOT = Path(__file__).parents[2]
PREFIX = "repo"
GROUP = "g"
DATA_VARS = ("air_temperature", "eastward_wind", "northward_wind", "precipitation_flux")
# Recognisable secrets: none may turn up anywhere icefloe or Prefect writes.
_SESSION = uuid.uuid4().hex[:12]
BLOCK_KEY_ID = "AKIAICEFLOEBLOCK0000"
BLOCK_SECRET = f"SECRET-s3-block-{_SESSION}"
ENV_SECRET = f"SECRET-s3-env-{_SESSION}"
# Different key ids for the flow process and the cluster's workers: the server records which
# one signed each request, so it shows who wrote what.
FLOW_KEY_ID = "AKIAICEFLOEFLOWPROC0"
WORKER_KEY_ID = "AKIAICEFLOEWORKERS00"


def window(start: str, periods: int) -> dict[str, Any]:
    return {"kind": "synthetic", "start": start, "periods": periods, **GRID}


def python_source(function: str, **kwargs: Any) -> dict[str, Any]:
    return {"kind": "python", "function": function, "kwargs": kwargs}


def s3_target(s3: S3Endpoint, bucket: str, block: str | None = None) -> Target:
    return Target(
        repo=f"s3://{bucket}/{PREFIX}",
        storage_options={
            "endpoint_url": s3.endpoint_url,
            "region": s3.region,
            "allow_http": True,
            "path-style": True,  # the alias people copy from other tools
        },
        credentials_secret_block=block,
    )


def repository(s3: S3Endpoint, bucket: str) -> icechunk.Repository:
    """The repository opened independently of icefloe, with static credentials."""
    return icechunk.Repository.open(s3.storage(bucket, PREFIX))


def new_bucket(s3: S3Endpoint) -> str:
    name = f"icefloe-{uuid.uuid4().hex[:16]}"
    s3.create_bucket(name)
    return name


def with_scaled(ds: xr.Dataset, part: xr.Dataset) -> xr.Dataset:
    """``ds`` with the labels of ``part`` replaced by its values (a region write)."""
    out = ds.load().copy(deep=True)
    for name in DATA_VARS:
        out[name].loc[{"time": part["time"].values}] = part[name].values
    return out


@pytest.fixture(scope="module")
def scheduler_address(local_cluster: LocalCluster) -> str:
    """The session's 2-process LocalCluster (its workers have no AWS credentials)."""
    return str(local_cluster.scheduler_address)


@pytest.fixture(scope="module")
def secret_block(prefect_harness: str) -> str:
    from prefect.blocks.system import Secret

    name = f"icefloe-s3-{_SESSION}"
    Secret(value={"access_key_id": BLOCK_KEY_ID, "secret_access_key": BLOCK_SECRET}).save(name)
    return name


@pytest.fixture
def target(s3: S3Endpoint, bucket: str, secret_block: str) -> Target:
    return s3_target(s3, bucket, secret_block)


@pytest.fixture
def env_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", FLOW_KEY_ID)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", ENV_SECRET)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


# -- create, append, staged publish, region ------------------------------------------------


def test_create_append_staged_append_and_region_on_s3(
    s3: S3Endpoint, bucket: str, target: Target, scheduler_address: str, tmp_path: Path
) -> None:
    run = {"group": GROUP, "scheduler_address": scheduler_address}
    create_flow(target, window("2020-01-01", 24), **run)
    append_flow(target, window("2020-01-02", 12), "time", **run)
    staged = append_flow(
        target, window("2020-01-02T12:00", 12), "time", options=RunOptions(publish="staged"), **run
    )
    repo = repository(s3, bucket)
    assert tip(repo) == staged.snapshot_id
    assert repo.list_branches() == {"main"}  # the staging branch is gone once published
    part = scaled("2020-01-01T12:00", 12, 3.0)
    region = region_flow(
        target,
        python_source(
            "tests.flows.python_sources:scaled", start="2020-01-01T12:00", periods=12, factor=3.0
        ),
        **run,
    )

    assert tip(repo) == region.snapshot_id
    assert [s.metadata["icefloe"]["mode"] for s in list(repo.ancestry(branch="main"))[:4]] == [
        "region",
        "append",
        "append",
        "create",
    ]
    expected = with_scaled(synthetic(periods=48), part)
    xr.testing.assert_identical(read_back(repo, GROUP), plain_xarray(expected, tmp_path))
    # the bytes are on the server, as an icechunk repository
    listing = s3.client().list_objects_v2(Bucket=bucket, Prefix=f"{PREFIX}/chunks/")
    assert listing["KeyCount"] > 0


def test_concurrent_region_runs_on_disjoint_regions_both_land(
    s3: S3Endpoint, bucket: str, target: Target, scheduler_address: str, tmp_path: Path
) -> None:
    run = {"group": GROUP, "scheduler_address": scheduler_address}
    created = create_flow(target, window("2020-01-01", 48), **run)
    parts = {"2020-01-01T00:00": 2.0, "2020-01-02T00:00": 5.0}

    def region(start: str) -> WriteResult:
        source = python_source(
            "tests.flows.python_sources:scaled", start=start, periods=24, factor=parts[start]
        )
        return region_flow(target, source, **run)

    # Each thread runs in a copy of this context: the harness's API URL is a context
    # setting, and a bare thread would send its run (and its Secret lookup) elsewhere.
    contexts = [contextvars.copy_context() for _ in parts]
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda c, s: c.run(region, s), contexts, parts))

    repo = repository(s3, bucket)
    history = [snapshot.id for snapshot in repo.ancestry(branch="main")]
    assert history[2] == created.snapshot_id
    assert sorted(history[:2]) == sorted(r.snapshot_id for r in results)  # both landed
    expected = synthetic(periods=48)
    for start, factor in parts.items():
        expected = with_scaled(expected, scaled(start, 24, factor))
    xr.testing.assert_identical(read_back(repo, GROUP), plain_xarray(expected, tmp_path))


# -- a killed run resumes --------------------------------------------------------------------


def test_a_run_killed_on_s3_resumes_from_its_persisted_batches(
    s3: S3Endpoint,
    bucket: str,
    target: Target,
    scheduler_address: str,
    prefect_harness: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With a Secret-block target: its forks are persisted (they hold no secret) and a
    re-run in another process, with the same key, takes them back."""
    first_day = {**kill_run.WINDOW, "start": "2020-01-01", "periods": 24}
    create_flow(target, first_day, scheduler_address=scheduler_address)
    repo = repository(s3, bucket)
    before = tip(repo)
    spec = target.model_dump_json()
    counted = tmp_path / "batches"
    counted.touch()
    env = {
        **os.environ,
        "PREFECT_API_URL": prefect_harness,
        "PREFECT_LOCAL_STORAGE_PATH": str(PREFECT_LOCAL_STORAGE_PATH.value()),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    }
    killed = subprocess.run(
        [
            sys.executable,
            "-m",
            "tests.flows.kill_run",
            spec,
            scheduler_address,
            "batch:3",
            str(counted),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
        check=False,
    )
    assert killed.returncode == -9, f"not killed:\n{killed.stdout}\n{killed.stderr[-3000:]}"
    assert counted.read_text().count("batch") == 2
    assert tip(repo) == before
    assert repo.list_branches() == {"main"}

    rerun: list[int] = []
    original = tasks.batches.write_batch
    monkeypatch.setattr(
        tasks.batches, "write_batch", lambda *a, **k: rerun.append(1) or original(*a, **k)
    )
    kill_run.run(spec, scheduler_address)

    assert len(rerun) == kill_run.BATCHES - 2
    full = SyntheticSource(**{**first_day, "periods": 24 + kill_run.WINDOW["periods"]}).open()
    xr.testing.assert_identical(read_back(repository(s3, bucket)), plain_xarray(full, tmp_path))


# -- an existing Dask cluster ----------------------------------------------------------------


@dataclass(frozen=True)
class Cluster:
    address: str
    worker_pids: frozenset[int]


@pytest.fixture(scope="module")
def dask_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """``dask scheduler`` and two ``dask worker`` processes (no nanny, so each process is a
    worker), started as an operator would, with AWS credentials in their environment."""
    folder = tmp_path_factory.mktemp("dask-cluster")
    scheduler_file = folder / "scheduler.json"
    dask = str(Path(sys.executable).with_name("dask"))
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),  # the python sources' modules, as a deployment ships them
        "AWS_ACCESS_KEY_ID": WORKER_KEY_ID,
        "AWS_SECRET_ACCESS_KEY": ENV_SECRET,
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    common = ["--scheduler-file", str(scheduler_file), "--no-dashboard"]
    processes: list[subprocess.Popen[bytes]] = []

    def start(name: str, *args: str) -> subprocess.Popen[bytes]:
        with (folder / f"{name}.log").open("wb") as log:
            process = subprocess.Popen(
                [dask, *args], env=env, cwd=folder, stdout=log, stderr=subprocess.STDOUT
            )
        processes.append(process)
        return process

    try:
        start("scheduler", "scheduler", "--host", "127.0.0.1", "--port", "0", *common)
        workers = [
            start(f"worker-{i}", "worker", "--nthreads", "1", "--no-nanny", *common)
            for i in range(2)
        ]
        with Client(scheduler_file=str(scheduler_file), timeout=60) as client:
            client.wait_for_workers(2, timeout=60)
            pids = frozenset(client.run(os.getpid).values())
            address = str(client.scheduler.address)
        assert pids == {worker.pid for worker in workers}
        yield Cluster(address, pids)
    finally:
        for process in reversed(processes):
            process.terminate()
        for process in processes:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@contextlib.contextmanager
def recorded_requests(s3: S3Endpoint) -> Iterator[list[dict[str, Any]]]:
    """The requests the S3 server received inside the block (moto's request recorder)."""

    def post(action: str) -> None:
        url = f"{s3.endpoint_url}/moto-api/recorder/{action}"
        urllib.request.urlopen(urllib.request.Request(url, method="POST"), timeout=5).close()

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


def signed_by(request: dict[str, Any]) -> str:
    headers = {k.lower(): v for k, v in request["headers"].items()}
    return headers.get("authorization", "").partition("Credential=")[2].partition("/")[0]


@pytest.mark.usefixtures("env_credentials")
def test_an_existing_cluster_writes_the_chunks_to_s3_from_its_workers(
    s3: S3Endpoint, bucket: str, dask_cluster: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Environment credentials: the flow process signs with one key, the workers with
    another. Every chunk object is uploaded by a worker; the flow only commits."""
    target = s3_target(s3, bucket)
    source = python_source("tests.storage.s3_sources:pids", periods=24)
    with recorded_requests(s3) as requests:
        created = create_flow(target, source, scheduler_address=dask_cluster.address)
    # the same through the environment variable, as a deployment's job would set it
    monkeypatch.setenv("ICEFLOE_SCHEDULER_ADDRESS", dask_cluster.address)
    appended = append_flow(
        target, python_source("tests.storage.s3_sources:pids", start="2020-01-02"), "time"
    )

    repo = repository(s3, bucket)
    assert tip(repo) == appended.snapshot_id != created.snapshot_id
    back = read_back(repo)
    assert back.sizes["time"] == 48
    for half in (slice(0, 24), slice(24, 48)):  # the create, then the append
        writers = {int(pid) for pid in np.unique(back["pid"].values[half, 0])}
        assert writers, "no data"
        assert writers <= dask_cluster.worker_pids, (writers, dask_cluster.worker_pids)

    puts = [r for r in requests if r["method"] == "PUT" and f"/{bucket}/" in r["url"]]
    chunks = [r for r in puts if f"/{PREFIX}/chunks/" in r["url"]]
    assert len(chunks) == 6, "\n".join(r["url"] for r in puts)  # 24 labels, chunks of 4
    assert {signed_by(r) for r in chunks} == {WORKER_KEY_ID}
    commits = [r for r in puts if f"/{PREFIX}/snapshots/" in r["url"]]
    assert commits
    assert {signed_by(r) for r in commits} == {FLOW_KEY_ID}


@pytest.mark.usefixtures("env_credentials")
def test_files_zarr_and_icechunk_sources_on_s3(
    s3: S3Endpoint, bucket: str, dask_cluster: Cluster, secret_block: str, tmp_path: Path
) -> None:
    """netCDF files found by an s3:// glob, a Zarr store and an icechunk repository, all on
    the server, read by the cluster's workers with their environment credentials."""
    fsspec_options = {"endpoint_url": s3.endpoint_url, "region": s3.region, "path-style": True}
    for day, start in enumerate(("2020-01-01", "2020-01-02")):
        local = tmp_path / f"day-{day}.nc"
        synthetic(start, 24).to_netcdf(local, engine="netcdf4")
        s3.client().upload_file(str(local), bucket, f"incoming/day-{day}.nc")
    synthetic("2020-01-03", 24).to_zarr(
        f"s3://{bucket}/incoming/day-2.zarr",
        storage_options={"endpoint_url": s3.endpoint_url},
        consolidated=False,
        zarr_format=3,
    )
    target = s3_target(s3, bucket)  # environment credentials, in the flow and on the workers
    run = {"group": GROUP, "scheduler_address": dask_cluster.address}

    files = {
        "kind": "files",
        "paths": [f"s3://{bucket}/incoming/day-*.nc"],
        "chunks": {"time": 12},
        "storage_options": fsspec_options,
    }
    create_flow(target, files, **run)
    zarr_store = {
        "kind": "zarr",
        "url": f"s3://{bucket}/incoming/day-2.zarr",
        "storage_options": fsspec_options,
    }
    append_flow(target, zarr_store, "time", **run)
    # a copy of that repository into another one, with Secret-block credentials
    copy = s3_target(s3, new_bucket(s3), secret_block)
    copy_bucket = copy.repo.split("/")[2]
    create_flow(copy, {"kind": "icechunk", "target": target.model_dump(), "group": GROUP}, **run)

    expected = plain_xarray(synthetic(periods=72), tmp_path)
    xr.testing.assert_identical(read_back(repository(s3, bucket), GROUP), expected)
    xr.testing.assert_identical(read_back(repository(s3, copy_bucket), GROUP), expected)


# -- no secret anywhere ----------------------------------------------------------------------


def _api_records() -> str:
    """Everything a user of the Prefect API can read about the runs, as JSON text."""
    from prefect.client.orchestration import get_client
    from prefect.logging.handlers import APILogWorker

    APILogWorker.drain_all(timeout=10)  # logs are sent in batches: send what is queued
    parts: list[str] = []
    with get_client(sync_client=True) as client:
        readers = {
            "flow_runs": client.read_flow_runs,
            "task_runs": client.read_task_runs,
            "logs": client.read_logs,
            "artifacts": client.read_artifacts,
        }
        for name, read in readers.items():
            offset, count = 0, 0
            while True:
                page = read(limit=200, offset=offset)
                parts.extend(item.model_dump_json() for item in page)
                offset += len(page)
                count += len(page)
                if len(page) < 200:
                    break
            assert count, f"the API returned no {name}"
    return "\n".join(parts)


def _database_bytes() -> bytes:
    url = str(PREFECT_SERVER_DATABASE_CONNECTION_URL.value())
    path = Path(url.split(":///", 1)[1])
    return b"".join(p.read_bytes() for p in path.parent.glob(f"{path.name}*"))


def _persisted_results(since: float) -> list[bytes]:
    """Result files written since ``since``: raw, and their pickled payload decoded."""
    found: list[bytes] = []
    for path in Path(PREFECT_LOCAL_STORAGE_PATH.value()).rglob("*"):
        if not path.is_file() or path.stat().st_mtime < since:
            continue
        raw = path.read_bytes()
        found.append(raw)
        try:  # a result record: JSON whose "result" is the base64 of the pickle
            payload: bytes | str = json.loads(raw)["result"]
        except (ValueError, KeyError, TypeError):
            payload = raw  # a bare serialized value (e.g. a failed task's exception)
        with contextlib.suppress(ValueError, binascii.Error):
            found.append(base64.b64decode(payload))
    return found


def _commit_metadata(repo: icechunk.Repository) -> str:
    return "\n".join(
        json.dumps({"message": s.message, "metadata": s.metadata}, default=str)
        for branch in repo.list_branches()
        for s in repo.ancestry(branch=branch)
    )


@pytest.mark.usefixtures("env_credentials")
def test_no_secret_in_logs_artifacts_database_results_or_commits(
    s3: S3Endpoint,
    secret_block: str,
    dask_cluster: Cluster,
    scheduler_address: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    since = time.time() - 1
    # A Secret-block target: phases and batches are persisted under the run's key.
    with_block = new_bucket(s3)
    target = s3_target(s3, with_block, secret_block)
    run = {"group": GROUP, "scheduler_address": scheduler_address}
    create_flow(target, window("2020-01-01", 24), **run)
    append_flow(target, window("2020-01-02", 24), "time", options=RunOptions(batches=2), **run)
    with pytest.raises(PlanError):  # a failed run: its error is logged and stored too
        append_flow(target, window("2020-01-02", 24), "time", **run)
    # Environment credentials, on the cluster whose workers hold them too.
    from_env = new_bucket(s3)
    create_flow(
        s3_target(s3, from_env), window("2020-01-01", 24), scheduler_address=dask_cluster.address
    )

    results = _persisted_results(since)
    places: dict[str, bytes] = {
        "caplog": caplog.text.encode(),
        "prefect api": _api_records().encode(),
        "prefect database": _database_bytes(),
        "persisted results": b"\n".join(results),
        "commit metadata": "\n".join(
            _commit_metadata(repository(s3, b)) for b in (with_block, from_env)
        ).encode(),
    }
    for place, content in places.items():
        for secret in (BLOCK_SECRET, ENV_SECRET):
            if secret.encode() in content:  # no assert: its report would print the content
                pytest.fail(f"{secret} found in the {place}")

    # Not a vacuous search: each place holds the runs it should.
    assert secret_block.encode() in places["prefect database"]
    assert b"icefloe-create" in places["prefect api"]
    assert b'"mode": "append"' in places["commit metadata"]
    # The Secret-block run persisted its forks: they name the bucket and the block (the
    # credentials callback), not the secret.
    forks = [r for r in results if with_block.encode() in r]
    assert forks, "no persisted fork of the Secret-block run"
    assert any(secret_block.encode() in fork for fork in forks)
    assert any(b"load_secret_credentials" in fork for fork in forks)
