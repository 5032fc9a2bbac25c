"""maintenance_flow end to end: it refuses to collect under an open icefloe run, and what it
collects never changes what the branch reads."""

from __future__ import annotations

import datetime as dt
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import icechunk
import pytest
import xarray as xr
import zarr
from prefect import flow
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
from prefect.states import Completed, Running

from flows import Target, append_flow, create_flow, maintenance_flow, region_flow
from flows.maintenance import MaintenanceResult
from tasks.errors import PlanError
from tasks.maintenance import expire_and_collect
from tasks.publish import publish
from tests.conftest import read_back, tip
from tests.flows.python_sources import GRID

pytestmark = pytest.mark.usefixtures("prefect_harness", "no_dead_runs")


@pytest.fixture(autouse=False)
def no_dead_runs(prefect_harness: str) -> None:
    """Runs that other tests SIGKILLed stay RUNNING in the API until someone marks them
    crashed, and an open run holds garbage collection back, as it should. Here, where
    every such process is known to be dead, mark them Crashed as an operator would."""
    from prefect.client.schemas.filters import FlowRunFilterState, FlowRunFilterStateType
    from prefect.client.schemas.objects import StateType
    from prefect.states import Crashed

    with get_client(sync_client=True) as client:
        stale = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                state=FlowRunFilterState(
                    type=FlowRunFilterStateType(any_=[StateType.RUNNING, StateType.PENDING])
                )
            )
        )
        for run in stale:
            client.set_flow_run_state(
                run.id, Crashed(message="process killed by a test"), force=True
            )


ZERO = dt.timedelta(0)


def synthetic_source(start: str = "2020-01-01", periods: int = 24) -> dict[str, Any]:
    return {"kind": "synthetic", "start": start, "periods": periods, **GRID}


def repository(target: Target) -> icechunk.Repository:
    return icechunk.Repository.open(icechunk.local_filesystem_storage(target.repo))


def files(target: Target) -> dict[str, int]:
    root = Path(target.repo)
    return {str(p.relative_to(root)): p.stat().st_size for p in root.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def history(tmp_path_factory: pytest.TempPathFactory, scheduler_address: str) -> Path:
    """A repository with garbage to collect: overwritten chunks in older snapshots, and a
    commit on a branch that was deleted (unreachable already, so even a dry run finds it)."""
    path = tmp_path_factory.mktemp("maintenance") / "repo"
    target = Target(repo=str(path))
    create_flow(target, synthetic_source(), scheduler_address=scheduler_address)
    append_flow(target, synthetic_source("2020-01-02"), "time", scheduler_address=scheduler_address)
    region_flow(
        target,
        {
            "kind": "python",
            "function": "tests.flows.python_sources:scaled",
            "kwargs": {"start": "2020-01-01T12:00", "periods": 12},
        },
        scheduler_address=scheduler_address,
    )
    repo = repository(target)
    repo.create_branch("scratch", tip(repo))
    session = repo.writable_session("scratch")
    zarr.open_array(session.store, path="air_temperature", mode="r+")[:] = 0.0
    session.commit("scratch work, abandoned")
    repo.delete_branch("scratch")
    return path


@pytest.fixture
def target(history: Path, tmp_path: Path) -> Target:
    copy = tmp_path / "repo"
    shutil.copytree(history, copy)  # keeps the objects' modification times
    return Target(repo=str(copy))


@flow(name="icefloe-append")
def _an_icefloe_flow() -> None:
    """Stands in for an append run that is in flight (created through the API, never run)."""


@flow(name="not-icefloe-append")
def _another_flow() -> None:
    """Open too, but not icefloe's: its name only contains the prefix."""


@pytest.fixture
def open_runs() -> Iterator[dict[str, Any]]:
    """A RUNNING icefloe-append run, and a RUNNING run of a flow that is not icefloe's."""
    with get_client(sync_client=True) as client:
        ours = client.create_flow_run(_an_icefloe_flow, state=Running())
        theirs = client.create_flow_run(_another_flow, state=Running())
        ours = client.read_flow_run(ours.id)
        runs = {"ours": ours, "theirs": theirs}
        yield runs
        for run in runs.values():
            client.set_flow_run_state(run.id, Completed(), force=True)


def test_refuses_a_cutoff_younger_than_an_open_run(
    target: Target, open_runs: dict[str, Any]
) -> None:
    started = dt.datetime.fromtimestamp(open_runs["ours"].start_time.timestamp(), dt.UTC)
    margin = dt.timedelta(minutes=10)
    too_recent = started - margin + dt.timedelta(milliseconds=1)
    before, listing = tip(repository(target)), files(target)

    with pytest.raises(PlanError, match=r"oldest open run started at .*pass older_than <="):
        maintenance_flow(target, older_than=too_recent, margin=margin)
    assert tip(repository(target)) == before
    assert files(target) == listing

    # Old enough while the run is still open: accepted (and nothing that young is touched).
    accepted = maintenance_flow(
        target, older_than=started - margin - dt.timedelta(seconds=1), margin=margin
    )
    assert accepted.oldest_open_run == started
    assert (accepted.chunks_deleted, accepted.snapshots_deleted) == (0, 0)

    # The same too-recent cutoff is fine once the run ended: the refusal was the open run's.
    with get_client(sync_client=True) as client:
        client.set_flow_run_state(open_runs["ours"].id, Completed(), force=True)
    after = maintenance_flow(target, older_than=too_recent, margin=margin)
    assert after.oldest_open_run is None  # the other flow's open run is not icefloe's
    assert tip(repository(target)) == before


def test_collecting_keeps_the_branch_identical(target: Target) -> None:
    expected = read_back(repository(target))
    before = tip(repository(target))

    state = maintenance_flow(target, older_than=ZERO, margin=ZERO, return_state=True)
    result = state.result()

    assert isinstance(result, MaintenanceResult)
    assert not result.dry_run
    assert result.snapshots_expired >= 2  # create and append lie under the region commit
    assert result.chunks_deleted >= 1  # the chunks the region run overwrote
    assert result.snapshots_deleted >= 1
    assert result.bytes_deleted > 0
    assert MaintenanceResult.model_validate_json(result.model_dump_json()) == result
    assert tip(repository(target)) == before
    xr.testing.assert_identical(read_back(repository(target)), expected)
    artifact = _artifact(state.state_details.flow_run_id)
    assert f"| chunks deleted | {result.chunks_deleted} |" in artifact


def test_dry_run_deletes_nothing(target: Target) -> None:
    expected = read_back(repository(target))
    listing = files(target)
    ancestry = [s.id for s in repository(target).ancestry(branch="main")]

    state = maintenance_flow(target, older_than=ZERO, margin=ZERO, dry_run=True, return_state=True)
    result = state.result()

    assert result.dry_run
    assert result.snapshots_expired == 0
    assert result.snapshots_deleted >= 1  # the abandoned branch's commit would go
    assert files(target) == listing
    assert [s.id for s in repository(target).ancestry(branch="main")] == ancestry
    xr.testing.assert_identical(read_back(repository(target)), expected)
    assert "dry run: nothing deleted" in _artifact(state.state_details.flow_run_id)


def test_a_negative_margin_is_refused(target: Target) -> None:
    with pytest.raises(PlanError, match="margin"):
        maintenance_flow(target, older_than=ZERO, margin=dt.timedelta(minutes=-5))


def _artifact(flow_run_id: Any) -> str:
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
        )
    assert len(artifacts) == 1
    return str(artifacts[0].data)


# -- the base snapshot of an open run --------------------------------------------------------


def _run_in_flight(path: Path, started: Any = None) -> tuple[icechunk.Repository, str, Any, Any]:
    """A run based on snapshot S has written a chunk into its fork, and another commit
    moved the branch off S since. Returns the repository, S, the fork and when the run
    started (``started()`` is called between S's commit and the run's first write)."""
    repo = icechunk.Repository.create(icechunk.local_filesystem_storage(str(path)))
    session = repo.writable_session("main")
    zarr.create_array(session.store, name="a", shape=(8,), chunks=(2,), dtype="f4")[:] = 1
    session.commit("create")
    session = repo.writable_session("main")
    zarr.open_array(session.store, path="a", mode="r+")[6:8] = 9
    base = session.commit("the run's base")
    time.sleep(0.3)
    run_started = started() if started else dt.datetime.now(dt.UTC)
    time.sleep(0.3)
    fork = repo.writable_session("main").fork()
    zarr.open_array(fork.store, path="a", mode="r+")[0:2] = 5
    session = repo.writable_session("main")
    zarr.open_array(session.store, path="a", mode="r+")[4:6] = 7
    session.commit("another run landed")
    return repo, base, fork, run_started


def _published_values(repo: icechunk.Repository, base: str, fork: Any) -> list[float]:
    publish(repo, "main", base, [fork], "the open run commits")
    session = repo.readonly_session(branch="main")
    return zarr.open_array(session.store, path="a", mode="r")[:].tolist()


def test_the_base_snapshot_of_an_open_run_is_kept(tmp_path: Path) -> None:
    """The flow keeps the cutoff older than the snapshot an open run is based on."""
    with get_client(sync_client=True) as client:
        run_ids = []

        def started() -> dt.datetime:
            run = client.create_flow_run(_an_icefloe_flow, state=Running())
            run_ids.append(run.id)
            start = client.read_flow_run(run.id).start_time
            return dt.datetime.fromtimestamp(start.timestamp(), dt.UTC)

        try:
            repo, base, fork, run_started = _run_in_flight(tmp_path / "repo", started)
            result = maintenance_flow(
                Target(repo=str(tmp_path / "repo")),
                older_than=run_started - dt.timedelta(milliseconds=1),
                margin=ZERO,
            )
        finally:
            for run_id in run_ids:
                client.set_flow_run_state(run_id, Completed(), force=True)

    assert result.kept_bases == [base]
    written = next(s for s in repo.ancestry(branch="main") if s.id == base).written_at
    assert result.cutoff < written < result.requested_cutoff
    assert result.snapshots_expired >= 1  # the older "create" snapshot still goes
    assert _published_values(repo, base, fork) == [5, 5, 1, 1, 7, 7, 9, 9]


def test_expire_and_collect_keeps_an_open_runs_base(tmp_path: Path) -> None:
    repo, base, fork, run_started = _run_in_flight(tmp_path / "repo")
    expire_and_collect(repo, run_started - dt.timedelta(milliseconds=1), run_started, margin=ZERO)
    assert _published_values(repo, base, fork) == [5, 5, 1, 1, 7, 7, 9, 9]
