"""The Prefect tasks around the writer's phases: retries, where write_lazy computes, progress,
and commit."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import dask.array as da
import icechunk
import icechunk.dask
import numpy as np
import pytest
import xarray as xr
import zarr
from distributed import Client, LocalCluster
from prefect import flow
from prefect.cache_policies import NO_CACHE
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterType
from prefect.states import Failed
from prefect_dask import DaskTaskRunner

import tasks.batches
from tasks import phases
from tasks.errors import (
    ChunkConflictError,
    CommitConflictError,
    IcefloeError,
    PlanError,
    VerificationError,
)
from tasks.progress import watch_progress
from tasks.writer import XarrayDatasetWriter
from tests.conftest import read_back, tip

pytestmark = pytest.mark.usefixtures("prefect_harness")


def _block_pid(block: np.ndarray) -> np.ndarray:
    # Each value records the process that computed it: the test process, or a worker.
    return np.full(block.shape, os.getpid(), dtype=np.int64)


def pid_dataset(n: int = 8) -> xr.Dataset:
    data = da.map_blocks(_block_pid, da.zeros((n, 3), chunks=(2, 3), dtype=np.int64))
    return xr.Dataset({"pid": (("time", "x"), data)}, coords={"time": np.arange(n)})


def prepared_writer(
    repo: icechunk.Repository, ds: xr.Dataset
) -> tuple[str, icechunk.session.ForkSession, XarrayDatasetWriter]:
    """The base snapshot, a fork holding every phase up to write_lazy, and its writer."""
    session = repo.writable_session("main")
    writer = XarrayDatasetWriter(ds, store=session.store).for_create_or_overwrite()
    writer.plan()
    workspace = phases.write_metadata.fn(writer, session.fork(), None)
    workspace = phases.write_eager.fn(writer, workspace, None)
    phases.verify.fn(writer, workspace)
    return session.snapshot_id, workspace, writer


def on_cluster(address: str, body: Callable[[], Any]) -> Any:
    """Runs ``body`` inside a flow whose DaskTaskRunner is the cluster at ``address``."""

    @flow(task_runner=DaskTaskRunner(address=address))
    def run() -> Any:
        return body()

    return run()


# -- retries ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "error",
    [
        ConnectionError("reset by peer"),
        TimeoutError("read timed out"),
        icechunk.StorageError("503 slow down"),
    ],
)
def test_storage_and_network_errors_are_retried(error: BaseException) -> None:
    assert phases.is_transient(error)
    assert phases.retry_transient(phases.write_lazy, None, Failed(data=error))  # type: ignore[arg-type]

    wrapped = RuntimeError("a dask task failed")
    wrapped.__cause__ = error
    assert phases.is_transient(wrapped)


@pytest.mark.parametrize(
    "error",
    [
        PlanError("schema drift", group="g"),
        VerificationError(["time differs"]),
        ChunkConflictError("two blocks share a chunk"),
        CommitConflictError("branch moved"),
        ValueError("bad data"),
        RuntimeError("source failed"),
    ],
)
def test_icefloe_and_other_errors_are_not_retried(error: BaseException) -> None:
    assert not phases.is_transient(error)
    assert not phases.retry_transient(phases.commit, None, Failed(data=error))  # type: ignore[arg-type]


def test_icefloe_error_wins_over_a_transient_cause() -> None:
    error = IcefloeError("verification could not read the store")
    error.__cause__ = ConnectionError()
    assert not phases.is_transient(error)


def test_only_batches_and_commit_retry_and_only_a_run_key_persists() -> None:
    for task in (phases.plan, phases.write_metadata, phases.write_eager, phases.verify):
        assert task.retries == 0, task.name
    for task in (phases.plan, phases.verify, phases.commit):
        assert task.cache_policy is NO_CACHE, task.name
    for task in (phases.write_lazy_batch, phases.commit):
        assert (task.retries or 0) > 0, task.name
        assert task.retry_condition_fn is phases.retry_transient, task.name
    for task in (phases.write_metadata, phases.write_eager, phases.write_lazy_batch):
        assert task.persist_result, task.name
        assert not phases.persisted(task, None).persist_result, task.name


# -- where write_lazy computes, and its progress ---------------------------------------------


def test_write_lazy_runs_on_the_flow_task_runner_cluster(
    repo: icechunk.Repository, local_cluster: LocalCluster
) -> None:
    base, workspace, writer = prepared_writer(repo, pid_dataset())
    calls: list[tuple[int, int]] = []

    def body() -> phases.LazyWriteStats:
        with watch_progress(lambda done, total: calls.append((done, total))):
            forks, stats = phases.write_lazy(writer, workspace, None, 2, report_every=0.05)
        phases.commit(repo, "main", base, workspace, forks, "pids", {"mode": "create"})
        return stats

    stats = on_cluster(local_cluster.scheduler_address, body)

    pids = set(np.unique(read_back(repo)["pid"].values))
    with Client(local_cluster, set_as_default=False) as client:
        workers = set(client.run(os.getpid).values())
    assert pids
    assert pids <= workers
    assert os.getpid() not in pids
    assert stats.scheduler == local_cluster.scheduler_address
    assert stats.batches == 2
    assert stats.dask_tasks > 0
    assert calls[-1] == (stats.dask_tasks, stats.dask_tasks)
    assert _latest_progress_artifact() == 100


def test_write_lazy_outside_a_dask_flow_computes_on_threads(repo: icechunk.Repository) -> None:
    base, workspace, writer = prepared_writer(repo, pid_dataset())

    forks, stats = phases.write_lazy(writer, workspace, None)
    phases.commit.fn(repo, "main", base, workspace, forks, "pids", {"mode": "create"})

    assert stats.scheduler == "threads"
    assert set(np.unique(read_back(repo)["pid"].values)) == {os.getpid()}


def test_a_batch_is_retried_after_a_transient_error(
    repo: icechunk.Repository, local_cluster: LocalCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    base, workspace, writer = prepared_writer(repo, pid_dataset())
    attempts: list[int] = []
    write_batch = tasks.batches.write_batch

    def flaky(*args: Any, **kwargs: Any) -> Any:
        attempts.append(1)
        if len(attempts) == 1:
            raise icechunk.StorageError("connection reset while uploading a chunk")
        return write_batch(*args, **kwargs)

    monkeypatch.setattr(tasks.batches, "write_batch", flaky)
    monkeypatch.setattr(
        phases, "write_lazy_batch", phases.write_lazy_batch.with_options(retry_delay_seconds=0)
    )

    def body() -> None:
        forks, _ = phases.write_lazy(writer, workspace, None)
        phases.commit(repo, "main", base, workspace, forks, "after a retry", {"mode": "create"})

    on_cluster(local_cluster.scheduler_address, body)

    assert len(attempts) == 2
    assert read_back(repo).sizes == {"time": 8, "x": 3}


def test_each_batch_starts_the_next_one_ahead_on_a_cluster(
    repo: icechunk.Repository, local_cluster: LocalCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Batch k+1 computes while batch k finishes; its own task takes that computation."""
    base, workspace, writer = prepared_writer(repo, pid_dataset())
    taken: list[tuple[int, int | None]] = []
    write_batch = tasks.batches.write_batch

    def recording(fork: Any, batch: Any, *args: Any, **kwargs: Any) -> Any:
        started = kwargs.get("started")
        taken.append((batch.index, None if started is None else started.batch.index))
        return write_batch(fork, batch, *args, **kwargs)

    monkeypatch.setattr(tasks.batches, "write_batch", recording)

    def body() -> phases.LazyWriteStats:
        forks, stats = phases.write_lazy(writer, workspace, None, 4)
        phases.commit(repo, "main", base, workspace, forks, "ahead", {"mode": "create"})
        return stats

    stats = on_cluster(local_cluster.scheduler_address, body)

    assert stats.batches == 4
    assert taken == [(0, None), (1, 1), (2, 2), (3, 3)]
    stored = read_back(repo)
    assert stored.sizes == {"time": 8, "x": 3}
    assert os.getpid() not in set(np.unique(stored["pid"].values))


def test_a_batch_started_ahead_that_failed_is_written_again_by_its_retry(
    repo: icechunk.Repository, local_cluster: LocalCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    base, workspace, writer = prepared_writer(repo, pid_dataset())
    calls: list[int] = []
    store_dask = icechunk.dask.store_dask

    def second_fails_once(*args: Any, **kwargs: Any) -> Any:
        first_label = kwargs["regions"][0][0].start
        calls.append(first_label)
        if calls.count(4) == 1 and first_label == 4:  # the second batch, started ahead
            raise icechunk.StorageError("connection reset while uploading a chunk")
        return store_dask(*args, **kwargs)

    monkeypatch.setattr(icechunk.dask, "store_dask", second_fails_once)
    monkeypatch.setattr(
        phases, "write_lazy_batch", phases.write_lazy_batch.with_options(retry_delay_seconds=0)
    )

    def body() -> None:
        forks, _ = phases.write_lazy(writer, workspace, None, 2)
        phases.commit(repo, "main", base, workspace, forks, "after a retry", {"mode": "create"})

    on_cluster(local_cluster.scheduler_address, body)

    assert sorted(calls) == [0, 4, 4]  # two batches, the second written again by its retry
    stored = read_back(repo)
    assert stored.sizes == {"time": 8, "x": 3}
    assert (stored["pid"].values > 0).all()


def _latest_progress_artifact() -> float:
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(type=ArtifactFilterType(any_=["progress"])),
            limit=1,
            sort="CREATED_DESC",
        )
    assert artifacts
    return float(artifacts[0].data)  # type: ignore[arg-type]


# -- commit -----------------------------------------------------------------------------------


def test_commit_publishes_a_forked_workspace_with_the_icefloe_block(
    repo: icechunk.Repository,
) -> None:
    base, workspace, writer = prepared_writer(repo, pid_dataset())
    forks, _ = phases.write_lazy(writer, workspace, None)

    snapshot_id = phases.commit.fn(
        repo,
        "main",
        base,
        workspace,
        forks,
        "created pid",
        {"mode": "create", "variables": ["pid"]},
    )

    assert snapshot_id == tip(repo)
    info = next(iter(repo.ancestry(branch="main")))
    assert info.message == "created pid"
    assert info.metadata["icefloe"] == {"mode": "create", "variables": ["pid"]}


def test_commit_conflict_raises_commit_conflict_error(repo: icechunk.Repository) -> None:
    setup = repo.writable_session("main")
    zarr.create_array(setup.store, name="a", shape=(4,), chunks=(2,), dtype="f4", fill_value=0)
    setup.commit("array")
    first, second = repo.writable_session("main"), repo.writable_session("main")
    base = second.snapshot_id
    zarr.open_array(first.store, path="a", mode="r+")[:2] = 1
    zarr.open_array(second.store, path="a", mode="r+")[:2] = 2
    first.commit("first")

    with pytest.raises(CommitConflictError, match="changed the same data"):
        phases.commit.fn(repo, "main", base, second, [], "second", {"mode": "region"})


def test_progress_lines_continue_when_later_batches_add_tasks(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A write whose next batches are submitted while it runs: the total grows, and the
    quarters are of the tasks known at each moment, so lines keep coming to the end (a
    1,000,000-chunk create once logged its last line at half-way, then nothing for 13 min);
    a long stretch without a new quarter still logs once a minute."""
    import logging

    from tasks.progress import TaskCount

    clock = [0.0]
    monkeypatch.setattr(phases.time, "monotonic", lambda: clock[0])
    count = TaskCount()
    logger = logging.getLogger("test-progress")
    reporter = phases._ProgressReporter(count, logger, every=1.0)
    first, second = count.open(), count.open()

    def at(seconds: float, done_first: int, done_second: int, total_second: int) -> None:
        clock[0] = seconds
        count.update(first, done_first, 100)
        count.update(second, done_second, total_second)
        reporter._report(final=False)

    with caplog.at_level(logging.INFO, logger="test-progress"):
        at(1, 30, 0, 0)  # 30 of 100: a quarter
        at(2, 100, 0, 0)  # all known tasks done
        at(3, 100, 0, 100)  # the next batch arrives: 100 of 200
        at(4, 100, 60, 100)  # 160 of 200: three quarters, logged again
        at(70, 100, 70, 100)  # a minute without a new quarter
    lines = [r.getMessage() for r in caplog.records if r.name == "test-progress"]

    assert lines == [
        "write_lazy: 30 of 100 dask tasks finished",
        "write_lazy: 100 of 100 dask tasks finished",
        "write_lazy: 160 of 200 dask tasks finished",
        "write_lazy: 170 of 200 dask tasks finished",
    ]
