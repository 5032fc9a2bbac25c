"""Each write flow end to end: the real DaskTaskRunner on a 2-process cluster, read back
independently with xarray and compared with what plain xarray stores for the same data."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import icechunk
import pytest
import xarray as xr
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

from flows import Target, WriteResult, append_flow, create_flow, modify_flow, region_flow
from flows.metadata import RunInfo, commit_metadata
from flows.sources import PythonSource, SyntheticSource, ZarrSource
from tasks.cluster import on_scheduler
from tasks.errors import PlanError, VerificationError
from tests.conftest import plain_xarray, read_back, tip
from tests.flows.python_sources import GRID, scaled, synthetic, with_celsius

pytestmark = pytest.mark.usefixtures("prefect_harness")

SECRET = "SECRET-abc123"


def synthetic_source(start: str = "2020-01-01", periods: int = 48) -> dict[str, Any]:
    # A plain dict, as a deployment or the UI passes it: the flow validates it into a model.
    return {"kind": "synthetic", "start": start, "periods": periods, **GRID}


def python_source(function: str, **kwargs: Any) -> dict[str, Any]:
    return {
        "kind": "python",
        "function": f"tests.flows.python_sources:{function}",
        "kwargs": kwargs,
    }


@pytest.fixture
def target(tmp_path: Path) -> Target:
    return Target(repo=str(tmp_path / "repo"))


def repository(target: Target) -> icechunk.Repository:
    return icechunk.Repository.open(icechunk.local_filesystem_storage(target.repo))


def test_create_writes_what_plain_xarray_writes(
    target: Target, tmp_path: Path, scheduler_address: str
) -> None:
    result = create_flow(target, synthetic_source(), scheduler_address=scheduler_address)

    assert isinstance(result, WriteResult)
    assert result.snapshot_id == tip(repository(target))
    assert (result.mode, result.branch, result.group, result.skipped) == (
        "create",
        "main",
        None,
        False,
    )
    assert "air_temperature" in result.variables
    assert result.chunks_written > 0
    assert result.bytes_written > 0
    xr.testing.assert_identical(read_back(repository(target)), plain_xarray(synthetic(), tmp_path))


def test_create_refuses_an_existing_group_and_overwrite_replaces_it(
    target: Target, tmp_path: Path, scheduler_address: str
) -> None:
    create_flow(target, synthetic_source(), group="g", scheduler_address=scheduler_address)
    before = tip(repository(target))

    with pytest.raises(PlanError):
        create_flow(target, synthetic_source(), group="g", scheduler_address=scheduler_address)
    assert tip(repository(target)) == before

    result = create_flow(
        target,
        synthetic_source("2021-06-01", 24),
        group="g",
        overwrite=True,
        scheduler_address=scheduler_address,
    )
    assert result.mode == "overwrite"
    assert result.group == "g"
    xr.testing.assert_identical(
        read_back(repository(target), "g"), plain_xarray(synthetic("2021-06-01", 24), tmp_path)
    )


def test_modify_with_only_new_vars_adds_the_new_variable(
    target: Target, tmp_path: Path, scheduler_address: str
) -> None:
    create_flow(target, synthetic_source(), scheduler_address=scheduler_address)

    result = modify_flow(
        target,
        python_source("with_celsius"),
        only_new_vars=True,
        scheduler_address=scheduler_address,
    )

    assert result.mode == "modify"
    assert result.variables == ["air_temperature_celsius"]
    xr.testing.assert_identical(
        read_back(repository(target)), plain_xarray(with_celsius(), tmp_path)
    )


def test_append_extends_the_group_and_a_skip_rerun_commits_nothing(
    target: Target, tmp_path: Path, scheduler_address: str
) -> None:
    create_flow(target, synthetic_source(periods=24), scheduler_address=scheduler_address)
    second_day = synthetic_source("2020-01-02", 24)

    result = append_flow(target, second_day, append_dim="time", scheduler_address=scheduler_address)

    assert result.mode == "append"
    assert result.snapshot_id == tip(repository(target))
    xr.testing.assert_identical(read_back(repository(target)), plain_xarray(synthetic(), tmp_path))
    block = next(iter(repository(target).ancestry(branch="main"))).metadata["icefloe"]
    assert block["append_dim"] == "time"
    assert block["label_range"][0].startswith("2020-01-02")

    rerun = append_flow(
        target.model_dump(),  # as a deployment passes it
        second_day,
        "time",
        on_overlap="skip",
        scheduler_address=scheduler_address,
    )

    assert (rerun.snapshot_id, rerun.skipped) == (None, True)
    assert tip(repository(target)) == result.snapshot_id


@pytest.mark.parametrize("region", ["auto", {"time": (12, 24)}])
def test_region_overwrites_the_window(
    target: Target, tmp_path: Path, scheduler_address: str, region: Any
) -> None:
    create_flow(target, synthetic_source(), scheduler_address=scheduler_address)
    window = python_source("scaled", start="2020-01-01T12:00", periods=12)

    result = region_flow(target, window, region=region, scheduler_address=scheduler_address)

    assert result.mode == "region"
    full = synthetic()
    expected = xr.concat(
        [
            full.isel(time=slice(0, 12)),
            scaled("2020-01-01T12:00", 12).assign(crs=full["crs"]),
            full.isel(time=slice(24, None)),
        ],
        dim="time",
        data_vars="minimal",
        coords="minimal",
        compat="override",
        join="exact",
        combine_attrs="override",
    )
    xr.testing.assert_identical(read_back(repository(target)), plain_xarray(expected, tmp_path))
    block = next(iter(repository(target).ancestry(branch="main"))).metadata["icefloe"]
    assert block["region"]["time"] == [12, 24]


def test_dry_run_writes_nothing_and_returns_the_plan(
    target: Target, tmp_path: Path, scheduler_address: str
) -> None:
    planned = create_flow(target, synthetic_source(), dry_run=True)
    assert not Path(target.repo).exists()  # not even the repository is created
    assert (planned.snapshot_id, planned.skipped, planned.mode) == (None, False, "create")

    create_flow(target, synthetic_source(periods=24), scheduler_address=scheduler_address)
    before = tip(repository(target))

    planned = append_flow(target, synthetic_source("2020-01-02", 24), "time", dry_run=True)

    assert tip(repository(target)) == before
    assert (planned.snapshot_id, planned.skipped, planned.mode) == (None, False, "append")
    assert planned.chunks_written > 0
    assert planned.plan is not None
    assert "resize" in planned.plan
    xr.testing.assert_identical(
        read_back(repository(target)), plain_xarray(synthetic(periods=24), tmp_path)
    )


def test_failing_verify_leaves_the_branch_unchanged(
    target: Target, scheduler_address: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    create_flow(target, synthetic_source(periods=24), scheduler_address=scheduler_address)
    before = tip(repository(target))

    def fail(*args: Any, **kwargs: Any) -> None:
        raise VerificationError(["time: stored labels differ from the plan"], group=None)

    monkeypatch.setattr("tasks.writer.verify_store", fail)
    with pytest.raises(VerificationError):
        append_flow(
            target, synthetic_source("2020-01-02", 24), "time", scheduler_address=scheduler_address
        )

    assert tip(repository(target)) == before
    assert read_back(repository(target)).sizes["time"] == 24


@pytest.mark.parametrize(
    ("function", "error"),
    [("failing", "the upstream archive is down"), ("failing_lazily", "could not be read")],
)
def test_failing_source_leaves_the_branch_unchanged(
    target: Target, scheduler_address: str, function: str, error: str
) -> None:
    create_flow(target, synthetic_source(periods=24), scheduler_address=scheduler_address)
    before = tip(repository(target))

    with pytest.raises(RuntimeError, match=error):
        append_flow(
            target,
            python_source(function, start="2020-01-02", periods=24),
            "time",
            scheduler_address=scheduler_address,
        )

    assert tip(repository(target)) == before
    assert read_back(repository(target)).sizes["time"] == 24


def test_commit_metadata_names_the_run_and_hides_secrets(
    target: Target, scheduler_address: str
) -> None:
    # The runner chosen with with_options (no scheduler_address parameter) also reaches the cluster.
    create = on_scheduler(create_flow, scheduler_address)
    result = create(target, python_source("with_token", token=SECRET))

    snapshot = next(iter(repository(target).ancestry(branch="main")))
    block = snapshot.metadata["icefloe"]
    assert block["mode"] == "create"
    assert block["group"] is None
    assert block["variables"] == result.variables
    assert block["source"] == "python tests.flows.python_sources:with_token (kwargs: token)"
    assert block["parameters_digest"].startswith("sha256:")
    assert block["flow_run_id"]
    assert block["icefloe_version"]
    assert block["deployment"] is None
    assert SECRET not in json.dumps(snapshot.metadata) + snapshot.message
    assert SECRET not in _artifacts_text(block["flow_run_id"])


def test_metadata_never_shows_storage_option_or_kwargs_values() -> None:
    from tasks.plan import WritePlan

    plan = WritePlan(mode="create", group="g", arrays=(), group_attrs={}, attrs_changed=())
    target = Target(
        repo="s3://bucket/repo", storage_options={"endpoint_url": f"https://{SECRET}.example"}
    )
    sources = [
        ZarrSource(url="s3://bucket/data.zarr", storage_options={"region": SECRET}),
        PythonSource(function="pkg.mod:fn", kwargs={"token": SECRET, "nested": {"pw": [SECRET]}}),
        SyntheticSource(),
    ]
    for source in sources:
        block = commit_metadata(
            plan=plan,
            source=source,
            target=target,
            parameters={"target": target, "source": source},
            run=RunInfo(),
        )
        assert SECRET not in json.dumps(block), block


@pytest.mark.parametrize("write_flow", [create_flow, modify_flow, append_flow, region_flow])
def test_flows_publish_a_parameter_schema(write_flow: Any) -> None:
    """Deployments and the UI form are built from it: every parameter must serialise."""
    from prefect.utilities.callables import parameter_schema

    schema = parameter_schema(write_flow.fn).model_dump()
    assert schema["required"][:2] == ["target", "source"]
    assert "scheduler_address" in schema["properties"]


def _artifacts_text(flow_run_id: str) -> str:
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
        )
    assert artifacts, "the run published no artifacts"
    return json.dumps([a.model_dump(mode="json") for a in artifacts])


def test_appends_split_manifests_along_time_and_region_runs_keep_the_split(
    tmp_path: Path, scheduler_address: str
) -> None:
    # 12 hours a chunk; 2 time chunks a manifest (set on the target, recorded in the repo)
    split = Target(repo=str(tmp_path / "repo"), manifests={"split_size": 2})
    create_flow(split, synthetic_source(periods=48), scheduler_address=scheduler_address)
    append_flow(
        split, synthetic_source("2020-01-03", 48), "time", scheduler_address=scheduler_address
    )

    def air_manifests() -> list[int]:
        repo = repository(split)
        return sorted(
            m.num_chunk_refs
            for m in repo.list_manifest_files(repo.lookup_branch("main"))
            if m.num_chunk_refs == 2 or m.num_chunk_refs > 4
        )

    # 8 time chunks of the 4 variables with time, two to a manifest, and the time
    # coordinate's 2 chunks (of 48, its first write's length) in one
    assert air_manifests() == [2] * 17

    # a run with the default target (no size given) keeps the recorded split
    window = python_source("scaled", start="2020-01-01T12:00", periods=12)
    region_flow(Target(repo=split.repo), window, scheduler_address=scheduler_address)
    assert air_manifests() == [2] * 17
    expected = xr.concat(
        [
            synthetic(periods=96).isel(time=slice(0, 12)),
            scaled("2020-01-01T12:00", 12).assign(crs=synthetic()["crs"]),
            synthetic(periods=96).isel(time=slice(24, None)),
        ],
        dim="time",
        data_vars="minimal",
        coords="minimal",
        compat="override",
        join="exact",
        combine_attrs="override",
    )
    xr.testing.assert_identical(read_back(repository(split)), plain_xarray(expected, tmp_path))
