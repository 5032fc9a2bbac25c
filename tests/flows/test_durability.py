"""Durability of the write flows end to end (Prefect harness, the session's 2-process cluster):
exactly-once appends, what a commit records, concurrent runs on one repository, overlapping
region runs, and staged (write-audit-publish) runs.

Every test starts from group "g": 72 hourly labels from 2020-01-01 in time chunks of 12,
copied from one local repository, or, for the tests whose runs commit concurrently, created
on the S3 test server (the local filesystem loses concurrent commits; see the ``s3``
fixture). Concurrent runs are separate processes (see ``FlowProcess``). Results are read
back with xarray and compared with what plain xarray stores for the same operations applied
to a Dataset.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import icechunk
import numpy as np
import pytest
import xarray as xr

from flows import Target, append_flow, create_flow, region_flow
from flows.credentials import load_credentials
from flows.write import RunOptions
from tasks.errors import CommitConflictError, VerificationError
from tests.conftest import plain_xarray, read_back, tip
from tests.flows.durability_sources import DATA_VARS, revised
from tests.flows.python_sources import GRID, scaled, synthetic
from tests.s3_server import S3Endpoint, s3_server

pytestmark = pytest.mark.usefixtures("prefect_harness")

GROUP = "g"
STORED = 72  # labels in the base repository
CHUNK = GRID["time_chunk"]


def synthetic_source(start: str, periods: int) -> dict[str, Any]:
    return {"kind": "synthetic", "start": start, "periods": periods, **GRID}


def python_source(function: str, module: str = "python_sources", **kwargs: Any) -> dict[str, Any]:
    return {"kind": "python", "function": f"tests.flows.{module}:{function}", "kwargs": kwargs}


def label(k: int) -> str:
    """The k-th synthetic label (hourly from 2020-01-01) as text a source accepts."""
    return str(synthetic(periods=k + 1).time.values[k])[:19]


def repository(target: Target) -> icechunk.Repository:
    return target.open_repository(credentials=load_credentials(target))


def combine(*pieces: xr.Dataset) -> xr.Dataset:
    """Consecutive windows as one Dataset (what the same writes give applied in order)."""
    crs = synthetic(periods=1)["crs"]
    return xr.concat(
        [piece.assign(crs=crs) for piece in pieces],
        dim="time",
        data_vars="minimal",
        coords="minimal",
        compat="override",
        join="exact",
        combine_attrs="override",
    )


def last_commit(target: Target) -> icechunk.SnapshotInfo:
    return next(iter(repository(target).ancestry(branch="main")))


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory, scheduler_address: str) -> Path:
    path = tmp_path_factory.mktemp("durability") / "repo"
    create_flow(
        Target(repo=str(path)),
        synthetic_source("2020-01-01", STORED),
        group=GROUP,
        scheduler_address=scheduler_address,
    )
    return path


@pytest.fixture
def target(base: Path, tmp_path: Path) -> Target:
    shutil.copytree(base, tmp_path / "repo")
    return Target(repo=str(tmp_path / "repo"))


@pytest.fixture(scope="module")
def s3() -> Iterator[S3Endpoint]:
    """Concurrent commits need object storage: on the local filesystem, commits of runs
    finishing together were lost (a branch update overwrote another one) and work branches
    vanished (RefNotFoundError), as icechunk warns. This S3 server makes its conditional
    writes atomic (tests/s3_server.py)."""
    with s3_server() as endpoint:
        yield endpoint


@pytest.fixture(scope="module")
def s3_secret(s3: S3Endpoint, prefect_harness: str) -> str:
    """The server's credentials in a Secret block, as a deployment would hold them: the
    forks the flows pickle to the cluster then carry them (workers have no AWS variables)."""
    from prefect.blocks.system import Secret

    name = "icefloe-durability-s3"
    value = {"access_key_id": s3.access_key_id, "secret_access_key": s3.secret_access_key}
    Secret(value=value).save(name, overwrite=True)
    return name


@pytest.fixture
def s3_target(s3: S3Endpoint, s3_secret: str, scheduler_address: str) -> Target:
    """Group "g" as in ``base``, in a fresh bucket of the S3 server."""
    repo, options = s3.fresh_bucket_options()
    target = Target(repo=repo, storage_options=options, credentials_secret_block=s3_secret)
    create_flow(
        target,
        synthetic_source("2020-01-01", STORED),
        group=GROUP,
        scheduler_address=scheduler_address,
    )
    return target


@pytest.fixture
def flow_env(prefect_harness: str, tmp_path: Path) -> Iterator[dict[str, str]]:
    """The environment of a flow run in a process of its own: the session's Prefect API.
    Processes the test started and left running are killed afterwards."""
    yield {
        **os.environ,
        "PREFECT_API_URL": prefect_harness,
        "PREFECT_LOCAL_STORAGE_PATH": str(tmp_path / "prefect-results"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    }
    while FlowProcess.started:
        process = FlowProcess.started.pop()
        if process.poll() is None:
            process.kill()
            process.wait()


class FlowProcess:
    """One flow run in its own process (``python -m tests.flows.run_flow``).

    Concurrent runs are processes, not threads: the write flows cannot share a process
    (see test_counting_scheduler_keeps_each_thread_on_its_own_client), and one process per
    run is how a worker runs deployments anyway. The run starts when ``go`` exists.
    """

    started: ClassVar[list[subprocess.Popen[bytes]]] = []

    def __init__(
        self,
        name: str,
        flow: str,
        env: dict[str, str],
        log_dir: Path,
        after: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        self.name = name
        self.log = log_dir / f"{name}.log"
        self.go = log_dir / "go"
        spec = json.dumps({"flow": flow, "kwargs": kwargs, "go": str(self.go), "after": after})
        with self.log.open("w") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "tests.flows.run_flow", spec],
                cwd=Path(__file__).parents[2],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        FlowProcess.started.append(self.process)

    def ready(self) -> bool:
        assert self.process.poll() is None, f"{self.name} exited:\n{self.log.read_text()[-3000:]}"
        return "READY" in self.log.read_text()

    def outcome(self, timeout: float = 240) -> dict[str, Any]:
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise
        lines = [line for line in self.log.read_text().splitlines() if line.startswith("RESULT ")]
        assert lines, f"{self.name} printed no result:\n{self.log.read_text()[-3000:]}"
        return json.loads(lines[-1].removeprefix("RESULT "))


def start_together(runs: list[FlowProcess]) -> None:
    """Wait until every process has imported everything, then let them all go at once."""
    deadline = time.monotonic() + 120
    while not all(run.ready() for run in runs):
        assert time.monotonic() < deadline, "the flow processes did not start"
        time.sleep(0.05)
    runs[0].go.touch()


# -- exactly once --------------------------------------------------------------------------


def test_append_skip_is_exactly_once_and_overwrite_upserts(
    target: Target, tmp_path: Path, scheduler_address: str
) -> None:
    window = synthetic_source(label(STORED), 24)
    first = append_flow(target, window, "time", GROUP, "skip", scheduler_address=scheduler_address)
    assert first.snapshot_id == tip(repository(target))
    assert not first.skipped

    again = append_flow(target, window, "time", GROUP, "skip", scheduler_address=scheduler_address)
    assert (again.skipped, again.snapshot_id) == (True, None)
    assert tip(repository(target)) == first.snapshot_id

    # Revised values for the last 12 stored labels and 12 new ones: an upsert.
    correction = python_source("revised", "durability_sources", start=label(84), periods=24)
    upsert = append_flow(
        target, correction, "time", GROUP, "overwrite", scheduler_address=scheduler_address
    )
    assert upsert.snapshot_id == tip(repository(target))
    expected = combine(synthetic(periods=84), revised(label(84), 24))
    xr.testing.assert_identical(
        read_back(repository(target), GROUP), plain_xarray(expected, tmp_path)
    )
    assert read_back(repository(target), GROUP).sizes["time"] == 108


def test_commit_metadata_carries_run_key_base_and_label_range(
    target: Target, scheduler_address: str
) -> None:
    before = tip(repository(target))
    result = append_flow(
        target,
        synthetic_source(label(STORED), 12),
        "time",
        GROUP,
        scheduler_address=scheduler_address,
        options=RunOptions(run_key="nightly-2020-01-04"),
    )

    block = last_commit(target).metadata["icefloe"]
    assert last_commit(target).id == result.snapshot_id
    assert block["run_key"] == "nightly-2020-01-04"
    assert block["base_snapshot"] == before
    assert block["label_range"] == ["2020-01-04 00:00:00", "2020-01-04 11:00:00"]
    assert (block["mode"], block["group"], block["append_dim"]) == ("append", GROUP, "time")


# -- concurrency ---------------------------------------------------------------------------


def test_concurrent_region_and_append_runs_all_land(
    s3_target: Target, tmp_path: Path, scheduler_address: str, flow_env: dict[str, str]
) -> None:
    """6 region runs on disjoint chunks and 2 appends of consecutive windows, all at once,
    on one repository: every run commits once, and the result is the sequential one.

    They are interleaved the hard way: the first append starts once every region run is
    writing, and no region run's write can finish before that append landed. So each region
    run's first attempt is based on the old tip and its commit conflicts on metadata (the
    arrays were resized): each must start over, and still land.
    """
    target = s3_target
    before = tip(repository(target))
    sync = tmp_path / "sync"
    sync.mkdir()
    factors = [2.0 + i for i in range(6)]
    common = {"target": target.model_dump(), "group": GROUP, "scheduler_address": scheduler_address}

    def run(name: str, flow: str, **kwargs: Any) -> FlowProcess:
        return FlowProcess(name, flow, flow_env, tmp_path, **common, **kwargs)

    gate = {"sync_dir": str(sync), "target": target.model_dump(), "group": GROUP}
    runs = [
        run(
            f"region-{i}",
            "region",
            source=python_source(
                "gated_scaled",
                "durability_sources",
                start=label(CHUNK * i),
                periods=CHUNK,
                factor=f,
                run=str(i),
                labels=STORED + CHUNK,
                **gate,
            ),
        )
        for i, f in enumerate(factors)
    ]
    # The first append starts once every region run is writing (their first attempts are
    # based on the old tip); the second once the first holds the group's metadata lock, or
    # landed (consecutive windows must land in order: a gap is a PlanError).
    runs.append(
        run(
            "append-1",
            "append",
            source=synthetic_source(label(STORED), CHUNK),
            append_dim="time",
            after={"started": {"dir": str(sync), "count": len(runs)}},
        )
    )
    runs.append(
        run(
            "append-2",
            "append",
            source=synthetic_source(label(STORED + CHUNK), CHUNK),
            append_dim="time",
            after={"lock": {"group": GROUP, "dim": "time", "length": STORED + CHUNK}},
        )
    )
    start_together(runs)

    outcomes = {r.name: r.outcome() for r in runs}

    failed = {name: o for name, o in outcomes.items() if "ok" not in o}
    assert not failed, failed
    snapshots = [o["ok"]["snapshot_id"] for o in outcomes.values()]
    assert all(snapshots)
    assert len(set(snapshots)) == 8
    ancestry = [s.id for s in repository(target).ancestry(branch="main")]
    assert set(snapshots) == set(ancestry[:8])  # each run is exactly one commit on main
    assert ancestry[8] == before
    for i in range(6):
        log = (tmp_path / f"region-{i}.log").read_text()
        assert "starting over from the new tip" in log, f"region-{i} never started over"
    expected = combine(
        *(scaled(label(CHUNK * i), CHUNK, f) for i, f in enumerate(factors)),
        synthetic(label(STORED), 2 * CHUNK),
    )
    xr.testing.assert_identical(
        read_back(repository(target), GROUP), plain_xarray(expected, tmp_path)
    )


def test_overlapping_region_runs_never_mix(
    s3_target: Target, tmp_path: Path, scheduler_address: str, flow_env: dict[str, str]
) -> None:
    """Two region runs over the same two chunks, started together: the result is one of the
    two complete writes, chunk by chunk; a run that lost fails naming arrays and chunks."""
    target = s3_target
    start, periods, factors = CHUNK, 2 * CHUNK, (5.0, 7.0)
    runs = [
        FlowProcess(
            f"region-x{f:g}",
            "region",
            flow_env,
            tmp_path,
            target=target.model_dump(),
            group=GROUP,
            scheduler_address=scheduler_address,
            source=python_source("scaled", start=label(start), periods=periods, factor=f),
        )
        for f in factors
    ]
    start_together(runs)
    outcomes = [r.outcome() for r in runs]

    failed = [o for o in outcomes if "ok" not in o]
    assert len(failed) <= 1, failed
    if failed:
        (error,) = failed
        assert error["error"] == "CommitConflictError", error
        assert error["overlapping"]
        assert "air_temperature" in error["message"]
        assert "chunks" in error["message"]
        winner = next(i for i, o in enumerate(outcomes) if "ok" in o)
        assert tip(repository(target)) == outcomes[winner]["ok"]["snapshot_id"]
    else:  # the runs did not overlap in time after all: the later one started from the
        # earlier one's commit (never a silent last-writer-wins) and wins whole
        ancestry = list(repository(target).ancestry(branch="main"))
        ids = [s.id for s in ancestry]
        winner = min(range(2), key=lambda i: ids.index(outcomes[i]["ok"]["snapshot_id"]))
        loser = outcomes[1 - winner]["ok"]["snapshot_id"]
        assert ancestry[0].metadata["icefloe"]["base_snapshot"] == loser

    stored = read_back(repository(target), GROUP)
    writes = [scaled(label(start), periods, f).load() for f in factors]
    owners = set()
    for name in DATA_VARS:
        for k in range(start // CHUNK, (start + periods) // CHUNK):
            window = {"time": slice(k * CHUNK - start, (k + 1) * CHUNK - start)}
            chunk = stored[name].isel(time=slice(k * CHUNK, (k + 1) * CHUNK)).values
            matches = {i for i, w in enumerate(writes) if np.array_equal(chunk, w[name][window])}
            assert len(matches) == 1, f"{name} chunk {k} is neither complete write"
            owners |= matches
    assert owners == {winner}, f"chunks from both runs: {owners}"


# -- staged publish ------------------------------------------------------------------------


def test_staged_publish_whose_audit_fails_keeps_the_commit_on_its_branch(
    target: Target, scheduler_address: str
) -> None:
    before = tip(repository(target))
    state = region_flow(
        target,
        python_source("with_nans", "durability_sources", start=label(24), periods=CHUNK),
        group=GROUP,
        scheduler_address=scheduler_address,
        options=RunOptions(publish="staged", max_nan_fraction=0.0),
        return_state=True,
    )

    assert state.is_failed()
    staging = f"icefloe/{state.state_details.flow_run_id}"
    with pytest.raises(VerificationError, match=f"kept on branch '{staging}'") as caught:
        state.result()
    assert "'air_temperature' is 25.0% missing" in str(caught.value)

    repo = repository(target)
    assert tip(repo) == before
    assert staging in repo.list_branches()
    audited = next(iter(repo.ancestry(branch=staging)))
    assert audited.id in str(caught.value)
    assert audited.parent_id == before
    assert audited.metadata["icefloe"]["flow_run_id"] == str(state.state_details.flow_run_id)
    staged = read_back(repo, GROUP, branch=staging)
    assert bool(staged["air_temperature"].isel(time=slice(24, 36)).isnull().any())


def test_staged_publish_that_passes_moves_the_target_and_drops_the_branch(
    target: Target, tmp_path: Path, scheduler_address: str
) -> None:
    state = region_flow(
        target,
        python_source("scaled", start=label(24), periods=CHUNK),
        group=GROUP,
        scheduler_address=scheduler_address,
        options=RunOptions(publish="staged", max_nan_fraction=0.0),
        return_state=True,
    )
    result = state.result()

    repo = repository(target)
    assert tip(repo) == result.snapshot_id
    assert repo.list_branches() == {"main"}
    assert f"icefloe/{state.state_details.flow_run_id}" not in repo.list_branches()
    expected = combine(
        synthetic(periods=24), scaled(label(24), CHUNK), synthetic(label(36), STORED - 36)
    )
    xr.testing.assert_identical(read_back(repo, GROUP), plain_xarray(expected, tmp_path))


# -- known bug -----------------------------------------------------------------------------


def test_counting_scheduler_keeps_each_thread_on_its_own_client(scheduler_address: str) -> None:
    """Three runs' lazy writes in three threads, interleaved as concurrent flow runs do:
    run A enters, run B enters, A ends and closes its client, run C enters, B ends.
    C's computation must still run on C's client."""
    import dask.array as da
    from distributed import Client

    from tasks.progress import TaskCount, counting_scheduler

    a_in, a_go, a_out = threading.Event(), threading.Event(), threading.Event()
    b_in, b_go, b_out = threading.Event(), threading.Event(), threading.Event()
    client_a = Client(scheduler_address, set_as_default=False)
    client_b = Client(scheduler_address, set_as_default=False)

    def run(client: Client, entered: threading.Event, go: threading.Event, out: threading.Event):
        with counting_scheduler(client, TaskCount()):
            entered.set()
            go.wait(30)
        out.set()

    run_a = threading.Thread(target=run, args=(client_a, a_in, a_go, a_out))
    run_b = threading.Thread(target=run, args=(client_b, b_in, b_go, b_out))
    try:
        run_a.start()
        assert a_in.wait(30)
        run_b.start()
        assert b_in.wait(30)
        a_go.set()
        assert a_out.wait(30)
        client_a.close()  # run A's flow ended: its task runner closes its client
        count = TaskCount()
        with (
            Client(scheduler_address, set_as_default=False) as client_c,
            counting_scheduler(client_c, count),
        ):
            b_go.set()
            assert b_out.wait(30)
            total = da.ones(8, chunks=2).sum().compute()
        assert total == 8
        assert count.snapshot()[0] > 0  # it ran on C's client
    finally:
        a_go.set()
        b_go.set()
        run_a.join(30)
        run_b.join(30)
        client_a.close()
        client_b.close()


def test_an_overlap_conflict_names_the_target_branch() -> None:
    import zarr

    from tasks.publish import publish

    repo = icechunk.Repository.create(icechunk.in_memory_storage())
    session = repo.writable_session("main")
    zarr.create_array(session.store, name="a", shape=(4,), chunks=(2,), dtype="f4")
    base = session.commit("create")
    forks = []
    for value in (1.0, 2.0):
        fork = repo.writable_session("main").fork()
        zarr.open_array(fork.store, path="a", mode="r+")[0:2] = value
        forks.append(fork)
    publish(repo, "main", base, [forks[0]], "first")

    with pytest.raises(CommitConflictError) as caught:
        publish(repo, "main", base, [forks[1]], "second")

    assert "/a" in str(caught.value)
    assert "branch 'main'" in str(caught.value), str(caught.value)
