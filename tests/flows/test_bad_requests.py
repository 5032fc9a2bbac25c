"""Bad requests at the flow level: a clear error naming what to change; nothing written."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import icechunk
import pytest

from flows import Target, append_flow, create_flow
from flows.targets import TargetError
from tests.conftest import read_back, tip

pytestmark = pytest.mark.usefixtures("prefect_harness")

SOURCE = {
    "kind": "synthetic",
    "start": "2020-01-01",
    "periods": 24,
    "ny": 3,
    "nx": 4,
    "time_chunk": 24,
}


@pytest.fixture
def created(tmp_path: Path, scheduler_address: str) -> tuple[Target, icechunk.Repository, str]:
    target = Target(repo=str(tmp_path / "repo"))
    create_flow(target, SOURCE, scheduler_address=scheduler_address)
    repo = icechunk.Repository.open(icechunk.local_filesystem_storage(target.repo))
    return target, repo, tip(repo)


def test_an_unreachable_scheduler_is_refused_before_writing(created) -> None:  # type: ignore[no-untyped-def]
    target, repo, before = created
    later = {**SOURCE, "start": "2020-01-02"}
    with pytest.raises(TargetError, match=r"Dask scheduler at 'tcp://127\.0\.0\.1:9'.*unset"):
        append_flow(target, later, append_dim="time", scheduler_address="tcp://127.0.0.1:9")
    assert tip(repo) == before


def test_files_that_do_not_exist_are_named(created, tmp_path: Path, scheduler_address: str) -> None:  # type: ignore[no-untyped-def]
    target, repo, before = created
    missing = str(tmp_path / "incoming" / "era5_*.nc")
    with pytest.raises(FileNotFoundError, match="era5_"):
        append_flow(
            target,
            {"kind": "files", "paths": [missing]},
            append_dim="time",
            scheduler_address=scheduler_address,
        )
    assert tip(repo) == before


def test_a_source_factory_that_raises_changes_nothing(created, scheduler_address: str) -> None:  # type: ignore[no-untyped-def]
    target, repo, before = created
    broken = {"kind": "python", "function": "tests.flows.python_sources:does_not_exist"}
    with pytest.raises((ImportError, AttributeError, ValueError), match="does_not_exist"):
        append_flow(target, broken, append_dim="time", scheduler_address=scheduler_address)
    assert tip(repo) == before


def test_a_group_path_that_escapes_is_refused(created, scheduler_address: str) -> None:  # type: ignore[no-untyped-def]
    from tasks.errors import PlanError

    target, repo, before = created
    with pytest.raises(PlanError, match=r"'\.\./x'.*'\.'"):
        create_flow(target, SOURCE, group="../x", scheduler_address=scheduler_address)
    assert tip(repo) == before


def test_parameters_of_the_wrong_type_are_refused(tmp_path: Path) -> None:
    from prefect.exceptions import ParameterTypeError

    with pytest.raises(ParameterTypeError, match=r"on_overlap: Input should be 'error', 'skip'"):
        append_flow(
            Target(repo=str(tmp_path / "r")), SOURCE, append_dim="time", on_overlap="sometimes"
        )


# -- the group's declared spec (tasks/spec.py): a drifting source is refused --------------------

DRIFTED = "tests.flows.python_sources:drifted"


def _drifted(**kwargs: object) -> dict[str, object]:
    return {"kind": "python", "function": DRIFTED, "kwargs": kwargs}


def test_a_source_whose_dtype_changes_mid_stream_is_refused_with_the_branch_unchanged(
    tmp_path: Path, scheduler_address: str
) -> None:
    from flows import scheduled_append_flow
    from tasks.spec import read_spec

    target = Target(repo=str(tmp_path / "repo"))
    run = {"scheduler_address": scheduler_address}
    scheduled_append_flow(target, _drifted(), scheduled_time=dt.datetime(2020, 1, 1, 11), **run)
    repo = icechunk.Repository.open(icechunk.local_filesystem_storage(target.repo))
    before = tip(repo)
    spec = read_spec(repo.readonly_session(branch="main").store, None)
    assert spec is not None
    assert spec.variables["air_temperature"].dtype == "float32"

    # the provider now delivers float64: the next scheduled run is refused, nothing published
    state = scheduled_append_flow(
        target,
        _drifted(dtype="float64"),
        scheduled_time=dt.datetime(2020, 1, 1, 23),
        return_state=True,
        **run,
    )

    assert state.is_failed()
    assert state.message is not None
    assert "'air_temperature' has dtype float64 but the store holds float32" in state.message
    assert "update_spec=True" in state.message
    assert tip(repo) == before
    assert read_back(repo).sizes["time"] == 12


def test_a_source_whose_units_change_is_refused_with_the_branch_unchanged(
    tmp_path: Path, scheduler_address: str
) -> None:
    from tasks.errors import PlanError

    target = Target(repo=str(tmp_path / "repo"))
    create_flow(target, _drifted(periods=6), scheduler_address=scheduler_address)
    repo = icechunk.Repository.open(icechunk.local_filesystem_storage(target.repo))
    before = tip(repo)
    with pytest.raises(PlanError, match=r"units 'degC' but the group's spec declares 'K'"):
        append_flow(
            target,
            _drifted(start="2020-01-01T06", periods=6, units="degC"),
            append_dim="time",
            scheduler_address=scheduler_address,
        )
    assert tip(repo) == before


def test_a_modify_that_changes_the_declared_structure_needs_update_spec(
    tmp_path: Path, scheduler_address: str
) -> None:
    from flows import modify_flow
    from tasks.errors import PlanError
    from tasks.spec import read_spec

    target = Target(repo=str(tmp_path / "repo"))
    run = {"scheduler_address": scheduler_address}
    create_flow(target, _drifted(periods=6), **run)
    repo = icechunk.Repository.open(icechunk.local_filesystem_storage(target.repo))
    before = tip(repo)
    celsius = _drifted(periods=6, units="degC")
    with pytest.raises(PlanError, match=r"units 'K' → 'degC'.*update_spec=True"):
        modify_flow(target, celsius, **run)
    assert tip(repo) == before

    modify_flow(target, celsius, update_spec=True, **run)

    spec = read_spec(repo.readonly_session(branch="main").store, None)
    assert spec is not None
    assert spec.variables["air_temperature"].units == "degC"
    assert read_back(repo).air_temperature.attrs["units"] == "degC"
