"""A killed, terminated or cancelled run leaves nothing behind, and its re-run completes.

Each case runs an append (5 batches, holding the group's metadata lock) in a process of
its own (tests/flows/crash_run.py) that waits at a phase: write_metadata, the middle of
write_lazy (its own LocalCluster computing the third batch), or commit. The test then
SIGKILLs it, SIGTERMs it (a pod eviction), or cancels its flow run through the Prefect
API (``prefect flow-run cancel``, the UI's Cancel), and checks:

- it stops within 10 s, and within 10 s more no process it started is left (its
  process tree is walked just before the signal: the temporary Prefect server, the
  LocalCluster's worker processes, the resource tracker, the lifeline watchdog);
- the branch is unchanged;
- the group's lock is free again within the bound (ICEFLOE_LOCK_LEASE_SECONDS);
- a re-run with the same run key completes, writes only the batches the killed run had
  not finished, and gives the same data as an uninterrupted run.

Prefect modes: "temporary" (no PREFECT_API_URL: the flow process starts Prefect's
temporary server) and "server" (a real ``prefect server start``, shared by the session).
The full product of 3 signals × 2 modes × 3 points is 18 runs of about 15 s; the cases
below cover every signal at every point, every signal in both modes and every point in
both modes (all pairs), with the middle of write_lazy, the costliest to get right, in all
six combinations: 12 runs.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import icechunk
import psutil
import pytest
import xarray as xr
from prefect.client.orchestration import SyncPrefectClient
from prefect.settings import PREFECT_LOCAL_STORAGE_PATH
from prefect.states import Cancelling

import tasks.batches
from flows import Target, append_flow, create_flow
from flows.lifeline import CANCEL_POLL_SECONDS
from flows.locks import lease_seconds, lock_holder, serialized
from flows.sources import SyntheticSource
from tests.conftest import plain_xarray, read_back, tip
from tests.flows import crash_run, kill_run
from tests.flows.durability_sources import FIRST_DAY

pytestmark = [pytest.mark.usefixtures("prefect_harness"), pytest.mark.slow]

STOP_SECONDS = 10.0  # the bound for a run to stop, and for its processes to go
CASES = [
    # every pair of (how, mode, point) once: nine runs instead of eighteen. Mid-write, each
    # way of stopping once and both API modes; the other points take the remaining pairs.
    ("SIGKILL", "server", "write_lazy"),
    ("SIGTERM", "temporary", "write_lazy"),
    ("cancel", "server", "write_lazy"),
    ("SIGKILL", "temporary", "write_metadata"),
    ("SIGTERM", "server", "write_metadata"),
    ("cancel", "temporary", "write_metadata"),
    ("SIGKILL", "temporary", "commit"),
    ("SIGTERM", "server", "commit"),
    ("cancel", "temporary", "commit"),
]
# batches the killed run finished, by point: a re-run writes only the others
FINISHED = {"write_metadata": 0, "write_lazy": 2, "commit": kill_run.BATCHES}


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory, scheduler_address: str) -> Path:
    path = tmp_path_factory.mktemp("crash") / "repo"
    create_flow(Target(repo=str(path)), FIRST_DAY, scheduler_address=scheduler_address)
    return path


@pytest.fixture(scope="module")
def temporary_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """PREFECT_HOME of the temporary-server runs: its database, created by the first one,
    is reused by the next ones (as on a user's machine), which start their server faster."""
    return tmp_path_factory.mktemp("prefect-temporary-home")


@pytest.fixture(scope="module")
def expected(tmp_path_factory: pytest.TempPathFactory) -> xr.Dataset:
    full = SyntheticSource(**{**FIRST_DAY, "periods": 24 + 120}).open()
    return plain_xarray(full, tmp_path_factory.mktemp("expected"))


def _environment(mode: str, request: pytest.FixtureRequest, home: Path) -> dict[str, str]:
    env = {
        **os.environ,
        # the re-run, here, finds the killed run's finished batches in the same place
        "PREFECT_LOCAL_STORAGE_PATH": str(PREFECT_LOCAL_STORAGE_PATH.value()),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PYTHONUNBUFFERED": "1",  # a failure shows the log up to the moment it stopped
    }
    if mode == "server":
        env["PREFECT_API_URL"] = request.getfixturevalue("prefect_server")
    else:
        env.pop("PREFECT_API_URL", None)
        env["PREFECT_HOME"] = str(home)
    return env


def _tree(pid: int) -> list[psutil.Process]:
    return psutil.Process(pid).children(recursive=True)


def _running(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _wait_for(at: Path, process: subprocess.Popen[bytes], log: Path) -> dict[str, str]:
    deadline = time.monotonic() + 240
    while not at.exists():
        assert process.poll() is None, f"the run ended early:\n{log.read_text()[-4000:]}"
        assert time.monotonic() < deadline, f"the run never arrived:\n{log.read_text()[-4000:]}"
        time.sleep(0.1)
    return json.loads(at.read_text())


@pytest.fixture
def started() -> Iterator[list[subprocess.Popen[bytes]]]:
    processes: list[subprocess.Popen[bytes]] = []
    yield processes
    for process in processes:
        if process.poll() is None:
            process.kill()
            process.wait()


@pytest.mark.parametrize(("how", "mode", "point"), CASES)
def test_a_stopped_run_leaves_nothing_behind_and_its_rerun_completes(
    how: str,
    mode: str,
    point: str,
    base: Path,
    tmp_path: Path,
    temporary_home: Path,
    expected: xr.Dataset,
    request: pytest.FixtureRequest,
    started: list[subprocess.Popen[bytes]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    run_key = f"crash-{how}-{mode}-{point}"
    shutil.copytree(base, tmp_path / "repo")
    target = Target(repo=str(tmp_path / "repo"))
    repo = icechunk.Repository.open(icechunk.local_filesystem_storage(target.repo))
    before = tip(repo)
    at, counted, log = tmp_path / "at.json", tmp_path / "batches", tmp_path / "run.log"
    counted.touch()
    with log.open("w") as out:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.flows.crash_run",
                target.repo,
                point,
                str(at),
                str(counted),
                run_key,
            ],
            cwd=Path(__file__).parents[2],
            env=_environment(mode, request, temporary_home),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    started.append(process)
    info = _wait_for(at, process, log)
    tree = _tree(process.pid)
    commands = [" ".join(p.cmdline()) for p in tree]
    if mode == "temporary":
        assert any("uvicorn" in c for c in commands), commands  # its own Prefect server
    if point == "write_lazy":
        assert sum("multiprocessing.spawn" in c for c in commands) >= 2, commands  # workers
    assert lock_holder(target, None, repo) is not None

    if how == "SIGKILL":
        process.send_signal(signal.SIGKILL)
    elif how == "SIGTERM":
        process.send_signal(signal.SIGTERM)
    else:
        with SyncPrefectClient(info["api_url"]) as client:
            client.set_flow_run_state(info["flow_run_id"], Cancelling(), force=True)
    # a cancellation is seen at the run's next look at its state
    bound = STOP_SECONDS + (CANCEL_POLL_SECONDS if how == "cancel" else 0)
    try:
        process.wait(bound)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the run did not stop within {bound} s:\n{log.read_text()[-4000:]}")
    _, left = psutil.wait_procs([p for p in tree if _running(p)], timeout=STOP_SECONDS)
    left = [p for p in left if _running(p)]
    assert not left, f"left running: {[' '.join(p.cmdline()) for p in left]}"

    assert tip(repo) == before
    assert repo.list_branches() == {"main"}
    if mode == "server" and how != "SIGKILL":
        with SyncPrefectClient(info["api_url"]) as client:
            state = client.read_flow_run(info["flow_run_id"]).state
        assert state is not None
        assert state.type.value == ("CANCELLED" if how == "cancel" else "CRASHED"), state

    # the lock is free within the bound
    took = _lock_wait(target, repo)
    assert took < lease_seconds() + 10, f"the lock took {took:.1f} s to come back"

    rerun: list[int] = []
    original = tasks.batches.write_batch
    monkeypatch.setattr(
        tasks.batches, "write_batch", lambda *a, **k: rerun.append(1) or original(*a, **k)
    )
    result = append_flow(
        target,
        kill_run.WINDOW,
        append_dim="time",
        scheduler_address=request.getfixturevalue("scheduler_address"),
        options=crash_run.options(run_key),
    )
    assert result.snapshot_id == tip(repo)
    assert counted.read_text().count("batch") == FINISHED[point]
    assert len(rerun) == kill_run.BATCHES - FINISHED[point]
    xr.testing.assert_identical(read_back(repo), expected)
    assert lock_holder(target, None, repo) is None


def _lock_wait(target: Target, repo: icechunk.Repository) -> float:
    """How long taking the group's lock takes now (bounded: fails past lease + 10 s)."""
    took: list[float] = []

    def take() -> None:
        began = time.monotonic()
        with serialized(target, None, repo=repo):
            took.append(time.monotonic() - began)

    thread = threading.Thread(target=take, daemon=True)
    thread.start()
    thread.join(lease_seconds() + 10)
    assert took, "the killed run's lock never came back"
    return took[0]


def test_a_worker_killed_mid_write_the_run_still_writes_every_chunk(
    base: Path, tmp_path: Path, expected: xr.Dataset
) -> None:
    """SIGKILL one worker process of the run's cluster while its batches are computing:
    dask recomputes the lost blocks on the nanny's replacement, and the run completes with
    exactly the data of an uninterrupted run. A batch's task run completes only once its
    fork holds all its chunks (batches run in the flow process, not as tasks on the
    workers), so a completed task whose chunks are missing (prefect#15442) cannot happen."""
    from distributed import Client, LocalCluster

    shutil.copytree(base, tmp_path / "repo")
    target = Target(repo=str(tmp_path / "repo"))
    window = {k: v for k, v in kill_run.WINDOW.items() if k != "kind"}
    source = {
        "kind": "python",
        "function": "tests.flows.durability_sources:slow_synthetic",
        "kwargs": {"delay": 0.3, **window},
    }
    with (
        LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
        ) as cluster,
        Client(cluster) as client,
    ):
        victim = sorted(client.run(os.getpid).values())[0]
        killed: list[float] = []

        def kill_when_busy() -> None:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                if sum(len(keys) for keys in client.processing().values()) >= 2:
                    time.sleep(0.5)
                    os.kill(victim, signal.SIGKILL)
                    killed.append(time.monotonic())
                    return
                time.sleep(0.05)

        killer = threading.Thread(target=kill_when_busy, daemon=True)
        killer.start()
        result = append_flow(
            target,
            source,
            append_dim="time",
            scheduler_address=cluster.scheduler_address,
            options=crash_run.options("worker-killed"),
        )
        finished = time.monotonic()
        killer.join(10)
    assert killed, "the worker was never killed"
    assert killed[0] < finished, "the worker was killed after the write ended"
    repo = icechunk.Repository.open(icechunk.local_filesystem_storage(target.repo))
    assert result.snapshot_id == tip(repo)
    xr.testing.assert_identical(read_back(repo), expected)
