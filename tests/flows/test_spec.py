"""``icefloe spec show|init|diff`` and the same from Python (flows/spec.py)."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import icechunk
import pytest
import xarray as xr
import zarr
from typer.testing import CliRunner

from flows import Target, append_flow, create_flow
from flows.cli import app
from flows.sources import SyntheticSource
from flows.spec import diff_spec, init_spec, show_spec
from tasks.errors import PlanError
from tasks.spec import SPEC_KEY, DatasetSpec
from tests.conftest import read_back, tip
from tests.flows.python_sources import GRID

runner = CliRunner()


def synthetic(start: str = "2020-01-01", periods: int = 12) -> xr.Dataset:
    return SyntheticSource(start=start, periods=periods, **GRID).open()


def python_source(**kwargs: Any) -> dict[str, Any]:
    return {"kind": "python", "function": "tests.flows.python_sources:drifted", "kwargs": kwargs}


@pytest.fixture
def legacy(tmp_path: Path) -> Target:
    """A repository whose root group plain xarray wrote: no spec, as before specs existed."""
    path = tmp_path / "repo"
    repo = icechunk.Repository.create(icechunk.local_filesystem_storage(str(path)))
    session = repo.writable_session("main")
    synthetic().to_zarr(session.store, zarr_format=3, consolidated=False)
    session.commit("written by plain xarray")
    return Target(repo=str(path))


def _repo(target: Target) -> icechunk.Repository:
    return icechunk.Repository.open(icechunk.local_filesystem_storage(target.repo))


def _stored_spec(target: Target) -> DatasetSpec:
    """The spec read with zarr from the branch tip, not through icefloe."""
    store = _repo(target).readonly_session(branch="main").store
    return DatasetSpec.model_validate(json.loads(zarr.open_group(store, mode="r").attrs[SPEC_KEY]))


def test_a_group_without_a_spec_gets_one_from_its_arrays_in_one_commit(legacy: Target) -> None:
    assert show_spec(legacy) is None
    shown = runner.invoke(app, ["spec", "show", "--target", legacy.repo])
    assert shown.exit_code == 1
    assert shown.stderr.startswith("error: cannot write to the root group: the group has no spec")
    inferred = runner.invoke(app, ["spec", "show", "--target", legacy.repo, "--inferred"])
    assert inferred.exit_code == 0, inferred.output

    done = runner.invoke(app, ["spec", "init", "--target", legacy.repo])

    assert done.exit_code == 0, done.output
    spec = _stored_spec(legacy)
    assert spec.to_yaml() == inferred.stdout
    assert spec.step == "h"
    assert spec.variables["air_temperature"].dtype == "float32"
    [commit, *_] = _repo(legacy).ancestry(branch="main")
    block = commit.metadata["icefloe"]
    assert block["mode"] == "spec"
    assert block["variables"] == sorted(spec.variables)
    assert block["icefloe_version"]
    assert runner.invoke(app, ["spec", "show", "--target", legacy.repo]).stdout == spec.to_yaml()
    # and the data is what it was
    xr.testing.assert_identical(read_back(_repo(legacy)), synthetic().load())


def test_init_keeps_a_spec_the_group_has_unless_forced(legacy: Target) -> None:
    init_spec(legacy)
    before = tip(_repo(legacy))
    with pytest.raises(PlanError, match=r"has a spec already.*--force"):
        init_spec(legacy)
    assert tip(_repo(legacy)) == before
    # the same spec again: nothing to commit
    spec, snapshot = init_spec(legacy, force=True)
    assert tip(_repo(legacy)) == snapshot == before
    assert _stored_spec(legacy) == spec
    # another append dimension: a new spec, committed
    spec, snapshot = init_spec(legacy, append_dim="lat", force=True)
    assert tip(_repo(legacy)) == snapshot != before
    assert _stored_spec(legacy).append_dim == "lat"


def test_a_yaml_spec_sets_the_bounds_and_must_describe_the_data(
    legacy: Target, tmp_path: Path
) -> None:
    inferred = DatasetSpec.from_group(
        __import__("tasks.stored", fromlist=["StoredGroup"]).StoredGroup(
            _repo(legacy).readonly_session(branch="main").store, None
        )
    )
    wrong = inferred.model_copy(deep=True)
    wrong.variables["air_temperature"] = wrong.variables["air_temperature"].model_copy(
        update={"dtype": "float64"}
    )
    wrong.step = "30min"
    path = tmp_path / "wrong.yaml"
    path.write_text(wrong.to_yaml())
    before = tip(_repo(legacy))

    refused = runner.invoke(app, ["spec", "init", "--target", legacy.repo, "--from", str(path)])

    assert refused.exit_code == 1
    assert "dtype float32 → float64" in refused.stderr
    assert tip(_repo(legacy)) == before
    with pytest.raises(PlanError, match=r"stored labels along 'time' are not every '30min'"):
        init_spec(legacy, spec=wrong.model_copy(update={"variables": inferred.variables}))

    bounded = inferred.to_yaml().replace("max_delay: null", "max_delay: 3h")
    path.write_text(bounded.replace("max_nan_fraction: {}", "max_nan_fraction: {'*': 0.2}"))
    done = runner.invoke(app, ["spec", "init", "--target", legacy.repo, "--from", str(path)])
    assert done.exit_code == 0, done.output
    spec = _stored_spec(legacy)
    assert str(spec.max_delay) == "3:00:00"
    assert spec.nan_fraction_limit("air_temperature") == 0.2


def test_diff_against_a_yaml_file_and_against_a_source(legacy: Target, tmp_path: Path) -> None:
    init_spec(legacy)
    path = tmp_path / "spec.yaml"
    path.write_text(_stored_spec(legacy).to_yaml())
    same = runner.invoke(app, ["spec", "diff", "--target", legacy.repo, "--from", str(path)])
    assert (same.exit_code, same.stdout.strip()) == (0, "No differences from the group's spec.")
    path.write_text(path.read_text().replace("step: h", "step: 6h"))
    changed = runner.invoke(app, ["spec", "diff", "--target", legacy.repo, "--from", str(path)])
    assert (changed.exit_code, changed.stdout.strip()) == (1, "- step 'h' → '6h'")

    assert diff_spec(legacy, source=python_source(periods=3)) == []
    drifted = python_source(periods=3, dtype="float64", units="degC")
    assert diff_spec(legacy, source=drifted) == [
        "variable 'air_temperature': dtype float32 → float64, units 'K' → 'degC'"
    ]
    from tests.flows.python_sources import drifted as drifted_data

    renamed = drifted_data(periods=3).rename(air_temperature="tas")
    assert diff_spec(legacy, dataset=renamed) == [
        "variable 'air_temperature' is missing",
        "variable 'tas' is new",
    ]
    shown = runner.invoke(
        app, ["spec", "diff", "--target", legacy.repo, "--source", json.dumps(drifted)]
    )
    assert shown.exit_code == 1
    assert "dtype float32 → float64" in shown.stdout


def test_diff_needs_exactly_one_thing_to_compare(legacy: Target) -> None:
    done = runner.invoke(app, ["spec", "diff", "--target", legacy.repo])
    assert done.exit_code == 2
    assert done.stderr.strip() == "error: give exactly one of --from SPEC.yaml or --source SOURCE"


@pytest.mark.usefixtures("prefect_harness")
def test_a_spec_declared_ahead_rules_the_first_write(
    tmp_path: Path, scheduler_address: str
) -> None:
    """Declared before the repository exists; the scheduled append's first run follows it."""
    target = Target(repo=str(tmp_path / "repo"))
    spec = DatasetSpec.from_dataset(python_source_data := synthetic(periods=12), "time").model_copy(
        update={"max_delay": dt.timedelta(hours=2)}
    )
    spec.variables["air_temperature"] = spec.variables["air_temperature"].model_copy(
        update={"chunks": (4, 2, 3)}
    )
    path = tmp_path / "spec.yaml"
    path.write_text(spec.to_yaml())
    done = runner.invoke(app, ["spec", "init", "--target", target.repo, "--from", str(path)])
    assert done.exit_code == 0, done.output

    append_flow(
        target,
        python_source(periods=12),
        append_dim="time",
        create_missing=True,
        scheduler_address=scheduler_address,
    )

    back = read_back(_repo(target))
    xr.testing.assert_identical(back, python_source_data.load())
    store = _repo(target).readonly_session(branch="main").store
    assert xr.open_zarr(store).air_temperature.encoding["chunks"] == (4, 2, 3)
    assert _stored_spec(target).diff(spec) == []
    # a create in another dtype is refused against the declaration, nothing written
    other = Target(repo=str(tmp_path / "other"))
    init_spec(other, spec=spec)
    before = tip(_repo(other))
    with pytest.raises(PlanError, match=r"dtype float32 → float64"):
        create_flow(other, python_source(dtype="float64"), scheduler_address=scheduler_address)
    assert tip(_repo(other)) == before
