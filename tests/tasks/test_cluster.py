"""Where a flow's lazy write computes: threads for a small write, a new LocalCluster for a
larger one, the scheduler it was given whatever the size; and the quiet cluster shutdown."""

from __future__ import annotations

import logging
import os

import dask
import icechunk
import numpy as np
import pytest
from distributed import Client, LocalCluster
from prefect import flow

from tasks import phases
from tasks.cluster import (
    THREADS_BELOW_ENV,
    WORKER_MALLOC_ENV,
    local_cluster_kwargs,
    task_runner,
    threads_below_bytes,
)
from tests.conftest import read_back
from tests.tasks.test_phases import pid_dataset, prepared_writer

pytestmark = pytest.mark.usefixtures("prefect_harness")


def _write_in_a_default_flow(repo: icechunk.Repository, address: str | None = None) -> str:
    """write_lazy in a flow whose runner is icefloe's default (a LocalCluster on first use)
    or the scheduler at ``address``; returns where it computed."""
    base, workspace, writer = prepared_writer(repo, pid_dataset())

    @flow(task_runner=task_runner(address))
    def run() -> str:
        forks, stats = phases.write_lazy(writer, workspace, None)
        phases.commit(repo, "main", base, workspace, forks, "pids", {"mode": "create"})
        return stats.scheduler

    return run()


def test_a_small_write_runs_on_the_flow_process_threads(
    repo: icechunk.Repository, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(THREADS_BELOW_ENV, raising=False)

    where = _write_in_a_default_flow(repo)

    assert where == "threads"
    assert set(np.unique(read_back(repo)["pid"].values)) == {os.getpid()}


@pytest.mark.slow
@pytest.mark.cluster
def test_a_write_over_the_threshold_starts_the_local_cluster(
    repo: icechunk.Repository, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(THREADS_BELOW_ENV, "0")

    where = _write_in_a_default_flow(repo)

    assert where.startswith("tcp://")
    assert os.getpid() not in set(np.unique(read_back(repo)["pid"].values))


def _worker_malloc_env(**cluster_kwargs: object) -> dict[str, str | None]:
    kwargs = {**local_cluster_kwargs(), "n_workers": 1, **cluster_kwargs}
    with LocalCluster(**kwargs) as cluster, Client(cluster) as client:
        (env,) = client.run(lambda: {k: os.environ.get(k) for k in WORKER_MALLOC_ENV}).values()
    return env


@pytest.mark.slow
@pytest.mark.cluster
def test_the_local_cluster_keeps_chunk_sized_buffers_on_the_heap(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """glibc reads these when the worker process starts; the user's own setting wins."""
    for name in WORKER_MALLOC_ENV:
        # dask leaves the values of the last cluster it started in this process's
        # environment, where they would take precedence over its config
        monkeypatch.delenv(name, raising=False)
    with dask.config.set({"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": 4096}):
        tuned = _worker_malloc_env()
    assert tuned == {"MALLOC_MMAP_THRESHOLD_": None, "MALLOC_TRIM_THRESHOLD_": "4096"}

    assert _worker_malloc_env() == WORKER_MALLOC_ENV


@pytest.mark.cluster
def test_a_given_scheduler_is_used_whatever_the_size(
    repo: icechunk.Repository, local_cluster: LocalCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(THREADS_BELOW_ENV, raising=False)

    where = _write_in_a_default_flow(repo, str(local_cluster.scheduler_address))

    assert where == local_cluster.scheduler_address
    assert os.getpid() not in set(np.unique(read_back(repo)["pid"].values))


def test_the_threshold_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(THREADS_BELOW_ENV, raising=False)
    assert threads_below_bytes() == 64 * 2**20
    monkeypatch.setenv(THREADS_BELOW_ENV, "1000")
    assert threads_below_bytes() == 1000
    monkeypatch.setenv(THREADS_BELOW_ENV, "64MiB")
    with pytest.raises(ValueError, match=f"{THREADS_BELOW_ENV}='64MiB' is not a byte count"):
        threads_below_bytes()


def test_the_nannys_kill_at_shutdown_is_dropped_only_while_dask_is_turned_down(
    caplog: pytest.LogCaptureFixture,
) -> None:
    nanny = logging.getLogger("distributed.nanny")
    dask_logger = logging.getLogger("distributed")
    level = dask_logger.level
    try:
        with caplog.at_level(logging.WARNING, logger="distributed.nanny"):
            dask_logger.setLevel(logging.WARNING)
            nanny.warning("Worker process still alive after 4.0 seconds, killing")
            nanny.warning("Worker process died unexpectedly")
            dask_logger.setLevel(logging.INFO)
            nanny.warning("Worker process still alive after 4.0 seconds, killing")
    finally:
        dask_logger.setLevel(level)
    assert [r.getMessage() for r in caplog.records] == [
        "Worker process died unexpectedly",
        "Worker process still alive after 4.0 seconds, killing",
    ]
